"""The one training loop every method runs in; a method plugs in an
:class:`pipeline.objective.Objective` (every hook has a default there, so the loop calls them all).

The loop owns the device, AMP and channels_last (CUDA only), the SGD optimiser with the
poly learning-rate schedule, checkpoints every epoch (model, objective modules, optimiser,
scheduler, AMP scaler, epoch, history, RNG states), automatic resume after a kill, progress bars
and the per-epoch log line and metrics history. A method owns only its losses and targets.

Determinism: every epoch re-seeds torch/numpy/random and the data order from ``(seed, epoch)``,
so an epoch computes the same thing whether the run was interrupted before it or not; on the CPU
a fixed seed gives the same weights bit for bit (tests/test_train_resume.py shows it).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.data.transforms import pad_collate
from pipeline.io import atomic_path, write_text
from pipeline.objective import Objective

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Optimisation settings shared by all methods (defaults: WILSON Sec. 4.3 / MiB).

    Attributes:
        epochs: number of passes over the training set.
        batch_size: images per iteration (the last incomplete batch is dropped).
        lr: base learning rate of SGD; objectives may scale it per parameter group.
        momentum, weight_decay: SGD settings (0.9, 1e-4 in the papers).
        poly_power: exponent of the polynomial decay lr * (1 - it / total) ** power.
        seed: seeds data order, augmentation and initialisation-time randomness.
        amp: mixed precision (float16 autocast + grad scaling), used on CUDA only.
        eval_every: run the validation callback every N epochs (0: only at the end, if given).
        hold_epochs: the first N epochs keep the learning rate ``lr``; the poly decay runs over
            the remaining ``epochs - hold_epochs`` (FMWISS warms its teacher up "before training
            the segmentation model", Sec. 4.2; WILSON decays "then", after its warm-up, Sec. 4.3).
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    seed: int = 0
    amp: bool = True
    eval_every: int = 0
    hold_epochs: int = 0


def held_poly_factor(iteration: int, hold_iters: int, total_iters: int, power: float) -> float:
    """Learning-rate factor at ``iteration`` (0-based): 1 for the first ``hold_iters``, then
    (1 - (iteration - hold) / (total - hold)) ** power, reaching 0 at ``total_iters``
    (torch's PolynomialLR when ``hold_iters`` = 0)."""
    if iteration < hold_iters:
        return 1.0
    span = max(total_iters - hold_iters, 1)
    return max(1.0 - (iteration - hold_iters) / span, 0.0) ** power


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA if available else CPU; ``cuda``/``cuda:N``/``cpu`` as given.

    Raises:
        RuntimeError: CUDA requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} requested but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch, distinct for every (seed, epoch) pair."""
    return (seed * 1_000_003 + epoch * 7_919) % 2**62


def _worker_init(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)
    random.seed(torch.initial_seed())


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fingerprint(*parts) -> str:
    """A short hash of JSON-serialisable parts; a checkpoint resumes only if it matches."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex, first 16 characters): ties a checkpoint to its inputs."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def write_history(path: Path, history: list[dict]) -> None:
    """Write the per-epoch history as CSV (atomic); columns are the union of all rows' keys."""
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


class Trainer:
    """Runs :func:`fit`; kept as a class so stages can reach the optimiser and history."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        dataset: Dataset,
        cfg: LoopConfig,
        run_dir: str | Path,
        device: torch.device,
        workers: int = 0,
        validate: Callable[[nn.Module], dict] | None = None,
        tag: str = "",
    ):
        self.model, self.objective, self.dataset, self.cfg = model, objective, dataset, cfg
        self.run_dir = Path(run_dir)
        self.device, self.workers, self.validate = device, workers, validate
        self.use_amp = cfg.amp and device.type == "cuda"
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.history_path = self.run_dir / "history.csv"
        self.fingerprint = fingerprint(asdict(cfg), objective.name, tag, len(dataset))
        if len(dataset) < cfg.batch_size:
            raise ValueError(f"training set has {len(dataset)} images, fewer than batch_size={cfg.batch_size}")
        self.iters_per_epoch = len(dataset) // cfg.batch_size

        self.extra = nn.ModuleDict(objective.modules())
        memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.model.to(device, memory_format=memory_format)
        self.extra.to(device)
        self.optimizer = torch.optim.SGD(
            objective.param_groups(model, cfg.lr), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        if not 0 <= cfg.hold_epochs <= cfg.epochs:
            raise ValueError(f"hold_epochs={cfg.hold_epochs}: must be in [0, epochs={cfg.epochs}]")
        hold, total = cfg.hold_epochs * self.iters_per_epoch, cfg.epochs * self.iters_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            functools.partial(held_poly_factor, hold_iters=hold, total_iters=total, power=cfg.poly_power),
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.history: list[dict] = []
        self.start_epoch = 0

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "history": self.history,
            "model": self.model.state_dict(),
            "extra": self.extra.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def try_resume(self) -> bool:
        """Load ``checkpoint.pt`` if it belongs to this run; a stale one is ignored (logged)."""
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was written by a run with other settings: starting from scratch", self.checkpoint_path)
            return False
        self.model.load_state_dict(state["model"])
        self.extra.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.history = state["history"]
        self.start_epoch = state["epoch"] + 1
        log.info("resumed from %s after epoch %d/%d", self.checkpoint_path, self.start_epoch, self.cfg.epochs)
        return True

    # -- one epoch ---------------------------------------------------------------------------
    def loader(self, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch))
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.workers,
            collate_fn=pad_collate,
            generator=generator,
            worker_init_fn=_worker_init,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def to_device(self, batch: dict) -> dict:
        moved = {}
        for key, value in batch.items():
            if isinstance(value, Tensor):
                value = value.to(self.device, non_blocking=True)
                if key == "image" and self.device.type == "cuda":
                    value = value.contiguous(memory_format=torch.channels_last)
            moved[key] = value
        return moved

    def train_epoch(self, epoch: int) -> dict:
        seed_everything(epoch_seed(self.cfg.seed, epoch))
        self.model.train()
        self.extra.train()
        self.objective.on_epoch_start(epoch, self.model)
        sums: dict[str, float] = {}
        started = time.perf_counter()
        bar = tqdm(
            self.loader(epoch),
            total=self.iters_per_epoch,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            leave=False,
            file=sys.stderr,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        for iteration, batch in enumerate(bar):
            batch = self.to_device(batch)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                out = self.model(batch["image"])
                losses = self.objective.losses(batch, out, epoch)
            total = sum(losses.values())
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1}, iteration {iteration}: "
                    + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            for key, value in {"loss": total, **losses}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{float(total.detach()):.4f}")
        bar.close()
        row = {"epoch": epoch + 1}
        row.update({key: value / self.iters_per_epoch for key, value in sums.items()})
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["time_s"] = time.perf_counter() - started
        return row

    def fit(self) -> list[dict]:
        """Train from the last checkpoint (or from scratch) to ``cfg.epochs``; returns the history."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.try_resume()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            row = self.train_epoch(epoch)
            last = epoch + 1 == self.cfg.epochs
            if self.validate is not None and ((self.cfg.eval_every and (epoch + 1) % self.cfg.eval_every == 0) or last):
                row.update(self.validate(self.model))
                self.model.train()
            self.history.append(row)
            log.info(
                "epoch %d/%d  %s",
                epoch + 1,
                self.cfg.epochs,
                "  ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch"
                ),
            )
            write_history(self.history_path, self.history)
            self.save_checkpoint(epoch)
        if self.start_epoch >= self.cfg.epochs:
            write_history(self.history_path, self.history)
        return self.history

    def remove_checkpoint(self) -> None:
        """Delete the checkpoint once the final model is written (it is as large as the model)."""
        self.checkpoint_path.unlink(missing_ok=True)


def fit(
    model: nn.Module,
    objective: Objective,
    dataset: Dataset,
    cfg: LoopConfig,
    run_dir: str | Path,
    device: torch.device,
    workers: int = 0,
    validate: Callable[[nn.Module], dict] | None = None,
    tag: str = "",
) -> list[dict]:
    """Train ``model`` with ``objective`` on ``dataset``; see :class:`Trainer`.

    Args:
        model: a :class:`pipeline.models.Segmenter` (returns a dict with ``out`` logits).
        objective: the method's losses (:class:`Objective`).
        dataset: yields transformed samples (``image`` float (3, H, W), ``mask`` int64 (H, W), ...).
        cfg: optimisation settings.
        run_dir: where ``checkpoint.pt`` and ``history.csv`` are written.
        device: from :func:`resolve_device`.
        workers: DataLoader worker processes.
        validate: optional callback ``model -> {"val_miou": float, ...}`` added to the history.
        tag: anything else that must match for a checkpoint to be resumed (e.g. the split file hash).
    Returns:
        The history: one dict per epoch (``epoch``, ``loss`` and each named loss, ``lr``, ``time_s``).
    Raises:
        FloatingPointError: a non-finite loss; ValueError: fewer images than one batch.
    """
    trainer = Trainer(model, objective, dataset, cfg, run_dir, device, workers, validate, tag)
    return trainer.fit()


__all__ = ["LoopConfig", "Objective", "Trainer", "fit", "resolve_device", "seed_everything", "write_history"]
