"""The one training loop every method runs in; a method plugs in an
:class:`pipeline.objective.Objective` (every hook has a default there, so the loop calls them all).

The loop owns the device, the precision (:mod:`pipeline.train.precision`: bf16/fp16 autocast on
CUDA, bf16 on CPUs where a probe shows it is faster), channels_last, optional ``torch.compile``,
data parallelism over processes (:mod:`pipeline.train.distributed`), the SGD (or Adam) optimiser with the
poly learning-rate schedule, checkpoints every epoch (model, objective modules, optimiser,
scheduler, scaler, epoch, history), automatic resume after a kill, progress bars, the per-epoch
log line and the metrics history. A method owns only its losses, targets and extra modules.

Determinism: the data order of an epoch is a permutation seeded by ``(seed, epoch)`` and every
sample is augmented under its own seed ``(seed, epoch, index)`` (:class:`EpochSampler`,
:class:`SeededSamples`), and each epoch re-seeds torch/numpy/random, so an epoch computes the
same thing whether the run was interrupted before it or not, with any number of data workers,
and (to float tolerance) with any number of processes sharing the global batch; on the CPU a
fixed seed gives the same weights bit for bit (tests/test_train_resume.py).

No host synchronisation per iteration: losses are summed on the device and their finiteness is
checked every ``finite_check_every`` iterations and at the end of each epoch.
"""

from __future__ import annotations

import contextlib
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

from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.data.transforms import pad_collate
from pipeline.io import file_sha256, write_text
from pipeline.objective import Objective
from pipeline.train.distributed import (
    SINGLE,
    EpochSampler,
    SeededSamples,
    World,
    all_mean,
    any_true,
    average_gradients,
    barrier,
)
from pipeline.train.precision import Precision, resolve_precision
from pipeline.train.tensorboard import TensorBoardLog, tensorboard_available

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Optimisation settings shared by all methods (defaults: WILSON Sec. 4.3 / MiB).

    Attributes:
        epochs: number of passes over the training set.
        batch_size: images per iteration over all processes (the global batch; the last
            incomplete batch is dropped).
        lr: base learning rate of SGD; objectives may scale it per parameter group.
        momentum, weight_decay: SGD settings (0.9, 1e-4 in the papers).
        poly_power: exponent of the polynomial decay lr * (1 - it / total) ** power.
        seed: seeds data order, augmentation and initialisation-time randomness.
        precision: ``auto`` | ``bfloat16`` | ``float16`` | ``float32`` (see
            :func:`pipeline.train.precision.resolve_precision`).
        compile: run the model through ``torch.compile``.
        eval_every: run the validation callback every N epochs (0: only at the end, if given).
        hold_epochs: the first N epochs keep the learning rate ``lr``; the poly decay runs over
            the remaining ``epochs - hold_epochs`` (FMWISS warms its teacher up "before training
            the segmentation model", Sec. 4.2; WILSON decays "then", after its warm-up, Sec. 4.3).
        finite_check_every: iterations between two checks that the losses are finite and below
            ``loss_limit`` (each check is one host synchronisation; also checked at epoch end).
        loss_limit: a loss above it stops the run as diverging (a guard, not a hyper-parameter:
            the papers' losses stay below ~10² per pixel and class summed).
        tensorboard: write TensorBoard event files into ``run_dir`` (rank 0, when the
            ``tensorboard`` package is installed; :mod:`pipeline.train.tensorboard`). Not part of
            the loop's own fingerprint (it changes no result).
        optimizer: ``sgd`` (momentum, the papers' default) or ``adam`` (``torch.optim.Adam``
            with ``weight_decay``, ``momentum`` unused: CL4WSIS Sec. 4.3, its step 0 and Phase 2).
            Enters the fingerprint only when not ``sgd``, so SGD runs keep theirs.
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    seed: int = 0
    precision: str = "auto"
    compile: bool = False
    eval_every: int = 0
    hold_epochs: int = 0
    finite_check_every: int = 50
    loss_limit: float = 1.0e6
    tensorboard: bool = False
    optimizer: str = "sgd"


def held_poly_factor(iteration: int, hold_iters: int, total_iters: int, power: float) -> float:
    """Learning-rate factor at ``iteration`` (0-based): 1 for the first ``hold_iters``, then
    (1 - (iteration - hold) / (total - hold)) ** power, reaching 0 at ``total_iters``
    (torch's PolynomialLR when ``hold_iters`` = 0)."""
    if iteration < hold_iters:
        return 1.0
    span = max(total_iters - hold_iters, 1)
    return max(1.0 - (iteration - hold_iters) / span, 0.0) ** power


#: ``LoopConfig.optimizer`` values.
OPTIMIZERS = ("sgd", "adam")


def build_optimizer(cfg: LoopConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The loop's optimiser over an objective's parameter groups: SGD with momentum (default) or
    Adam (``cfg.optimizer``), both with ``cfg.lr`` and ``cfg.weight_decay``.

    Raises:
        ValueError: an unknown ``cfg.optimizer``.
    """
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer={cfg.optimizer!r}: expected one of {OPTIMIZERS}")


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


def fingerprint(*parts) -> str:
    """A short hash of JSON-serialisable parts; a checkpoint resumes only if it matches."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex, first 16 characters): ties a checkpoint to its inputs."""
    return file_sha256(path)[:16]


class DivergenceError(FloatingPointError):
    """A loss became non-finite or exceeded the loop's ``loss_limit``; the last checkpoint is kept."""


class Trainer:
    """Runs :func:`fit`; kept as a class so stages can reach the optimiser and history.

    Args: see :func:`fit`; ``world`` is this process's place among the training processes
    (:func:`pipeline.train.distributed.init_distributed`).
    Raises:
        ValueError: fewer images than one batch, a batch not divisible by the processes, or a bad
            ``hold_epochs``/precision.
    """

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
        world: World = SINGLE,
    ):
        self.model, self.objective, self.dataset, self.cfg = model, objective, dataset, cfg
        self.run_dir = Path(run_dir)
        self.device, self.workers, self.validate, self.world = device, workers, validate, world
        self.precision: Precision = resolve_precision(cfg.precision, device)
        log.info("precision: %s", self.precision.reason)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.history_path = self.run_dir / "history.csv"
        # the learning curve so far, rewritten after each epoch; history.csv appears only at the end
        self.progress_path = self.run_dir / "history.partial.csv"
        settings = {k: v for k, v in asdict(cfg).items() if k != "tensorboard"}  # logging only, not the result
        if cfg.optimizer == "sgd":  # the default: fingerprints of the runs before the option stay valid
            settings.pop("optimizer")
        self.fingerprint = fingerprint(settings, self.precision.name, objective.name, tag, len(dataset))
        self.sampler = EpochSampler(len(dataset), cfg.batch_size, cfg.seed, world)
        self.iters_per_epoch = self.sampler.iterations
        if not 0 <= cfg.hold_epochs <= cfg.epochs:
            raise ValueError(f"hold_epochs={cfg.hold_epochs}: must be in [0, epochs={cfg.epochs}]")

        self.extra = nn.ModuleDict(objective.modules())
        if world.distributed and device.type == "cuda":  # BN statistics over the global batch
            self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.extra = nn.SyncBatchNorm.convert_sync_batchnorm(self.extra)
        memory_format = torch.channels_last if self.precision.channels_last else torch.contiguous_format
        self.model.to(device, memory_format=memory_format)
        self.extra.to(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = build_optimizer(cfg, objective.param_groups(model, cfg.lr))
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        hold, total = cfg.hold_epochs * self.iters_per_epoch, cfg.epochs * self.iters_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            functools.partial(held_poly_factor, hold_iters=hold, total_iters=total, power=cfg.poly_power),
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.scaler)
        self.history: list[dict] = []
        self.start_epoch = 0
        self._loader: DataLoader | None = None

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        """Rank 0 writes ``checkpoint.pt`` (atomic, byte-deterministic); every process waits."""
        if self.world.is_main:
            state = {
                "fingerprint": self.fingerprint,
                "epoch": epoch,
                "history": self.history,
                "model": self.model.state_dict(),
                "extra": self.extra.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
            }
            save_checkpoint(state, self.checkpoint_path)  # atomic, byte-deterministic
        barrier(self.world)

    def try_resume(self) -> bool:
        """Load ``checkpoint.pt`` if it belongs to this run (any number of processes).

        A checkpoint of other settings is ignored; one that cannot be read (truncated by a kill
        during a copy, corrupt, or refused by the safe unpickler) is moved aside to
        ``checkpoint.pt.unreadable`` and training starts over; both are logged as warnings.
        """
        if not self.checkpoint_path.exists():
            return False
        try:
            state = load_checkpoint(self.checkpoint_path, map_location=self.device, what="checkpoint")
        except CheckpointError as error:  # truncated, corrupt or unsafe: set aside, never trusted
            barrier(self.world)
            if self.world.is_main:
                aside = self.checkpoint_path.with_name(self.checkpoint_path.name + ".unreadable")
                self.checkpoint_path.replace(aside)
                log.warning(
                    "%s cannot be read (%s: %s); moved to %s, starting from scratch",
                    self.checkpoint_path,
                    type(error).__name__,
                    str(error).splitlines()[0][:200],
                    aside,
                )
            barrier(self.world)
            return False
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was written by a run with other settings: starting from scratch", self.checkpoint_path)
            return False
        self.model.load_state_dict(state["model"])
        self.extra.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = state["history"]
        self.start_epoch = state["epoch"] + 1
        log.info("resumed from %s after epoch %d/%d", self.checkpoint_path, self.start_epoch, self.cfg.epochs)
        return True

    # -- one epoch ---------------------------------------------------------------------------
    def loader(self, epoch: int) -> DataLoader:
        """The epoch's batches of this process (one DataLoader for the run: workers persist)."""
        self.sampler.set_epoch(epoch, epoch_seed(self.cfg.seed, epoch))
        if self._loader is None:
            self._loader = DataLoader(
                SeededSamples(self.dataset),
                batch_size=self.sampler.local_batch,
                sampler=self.sampler,
                drop_last=True,
                num_workers=self.workers,
                collate_fn=pad_collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
            )
        return self._loader

    def to_device(self, batch: dict) -> dict:
        moved = {}
        for key, value in batch.items():
            if isinstance(value, Tensor):
                value = value.to(self.device, non_blocking=True)
                if key == "image" and self.precision.channels_last:
                    value = value.contiguous(memory_format=torch.channels_last)
            moved[key] = value
        return moved

    def _autocast(self):
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    def _check(self, epoch: int, first: int, last: int, bad: Tensor, losses: dict[str, Tensor]) -> None:
        """Raise :class:`DivergenceError` if any loss of iterations ``first..last`` was non-finite
        or above the limit (one host sync, agreed over the processes)."""
        if not any_true(bad, self.world):
            return
        values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        kept = (
            f"the last checkpoint ({self.checkpoint_path}) is kept"
            if self.checkpoint_path.exists()
            else ("no checkpoint was written yet")
        )
        raise DivergenceError(
            f"loss non-finite or above {self.cfg.loss_limit:g} in epoch {epoch + 1}, iterations {first}-{last} "
            f"(last: {values}); {kept}. Lower the learning rate (train_*.lr, head_lr_mult), check the inputs "
            "of the step, or use precision: float32"
        )

    def train_epoch(self, epoch: int) -> dict:
        seed_everything(epoch_seed(self.cfg.seed, epoch) + self.world.rank)
        self.model.train()
        self.extra.train()
        self.objective.on_epoch_start(epoch, self.model)
        sums: dict[str, Tensor] = {}
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        started, window_start = time.perf_counter(), 0
        bar = tqdm(
            self.loader(epoch),
            total=self.iters_per_epoch,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            leave=False,
            file=sys.stderr,
            disable=not self.world.is_main,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        losses: dict[str, Tensor] = {}
        for iteration, batch in enumerate(bar):
            batch = self.to_device(batch)
            with self._autocast():
                out = self.forward(batch["image"])
                losses = self.objective.losses(batch, out, epoch)
            total = sum(losses.values())
            bad |= ~torch.isfinite(total) | (total.detach() > self.cfg.loss_limit)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            average_gradients(self.parameters, self.world)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            for key, value in {"loss": total, **losses}.items():
                value = value.detach().double()
                sums[key] = sums[key] + value if key in sums else value
            if (iteration + 1) % self.cfg.finite_check_every == 0:
                self._check(epoch, window_start, iteration, bad, losses)
                window_start = iteration + 1
                bar.set_postfix(loss=f"{float(sums['loss']) / (iteration + 1):.4f}")
        bar.close()
        self._check(epoch, window_start, self.iters_per_epoch - 1, bad, losses)
        row = {"epoch": epoch + 1}
        row.update({key: float(all_mean(value, self.world)) / self.iters_per_epoch for key, value in sums.items()})
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["time_s"] = time.perf_counter() - started
        return row

    def open_tensorboard(self) -> TensorBoardLog | None:
        """The run's TensorBoard writer on rank 0 when ``cfg.tensorboard`` and the package is
        installed (else None, logged once)."""
        if not (self.cfg.tensorboard and self.world.is_main):
            return None
        if not tensorboard_available():
            log.info("tensorboard is not installed: no event files (pip install -e '.[tensorboard]')")
            return None
        log.info("TensorBoard event files in %s", self.run_dir)
        return TensorBoardLog(self.run_dir, first_epoch=self.start_epoch + 1)

    def fit(self) -> list[dict]:
        """Train from the last checkpoint (or from scratch) to ``cfg.epochs``; returns the history."""
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        barrier(self.world)
        self.try_resume()
        board = self.open_tensorboard()
        try:
            self._fit_epochs(board)
        finally:
            if board is not None:
                board.close()
        if self.world.is_main:
            write_history(self.history_path, self.history)
            self.progress_path.unlink(missing_ok=True)
        return self.history

    def _fit_epochs(self, board: TensorBoardLog | None) -> None:
        for epoch in range(self.start_epoch, self.cfg.epochs):
            row = self.train_epoch(epoch)
            last = epoch + 1 == self.cfg.epochs
            validated = False
            if self.validate is not None and ((self.cfg.eval_every and (epoch + 1) % self.cfg.eval_every == 0) or last):
                if self.world.is_main:
                    row.update(self.validate(self.model))
                    validated = True
                barrier(self.world)
                self.model.train()
            if board is not None:
                board.log_epoch(epoch + 1, row, self.optimizer)
                preview = getattr(self.validate, "dataset", None)  # make_validator's val images
                if validated and preview is not None:
                    board.log_images(epoch + 1, self.model, preview, self.device)
                    self.model.train()
                board.flush()
            self.history.append(row)
            if self.world.is_main:
                log.info(
                    "epoch %d/%d  %s",
                    epoch + 1,
                    self.cfg.epochs,
                    "  ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch"
                    ),
                )
                write_history(self.progress_path, self.history)
            self.save_checkpoint(epoch)

    def remove_checkpoint(self) -> None:
        """Delete the checkpoint once the final model is written (it is as large as the model)."""
        if self.world.is_main:
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
    world: World = SINGLE,
) -> list[dict]:
    """Train ``model`` with ``objective`` on ``dataset``; see :class:`Trainer`.

    Args:
        model: a :class:`pipeline.models.Segmenter` (returns a dict with ``out`` logits).
        objective: the method's losses (:class:`pipeline.objective.Objective`).
        dataset: yields transformed samples (``image`` float (3, H, W), the method's keys).
        cfg: optimisation settings.
        run_dir: where ``checkpoint.pt`` and ``history.csv`` are written (by rank 0); the history
            so far is ``history.partial.csv`` after each epoch, renamed ``history.csv`` at the end.
        device: from :func:`resolve_device` (per process: :func:`pipeline.train.distributed.init_distributed`).
        workers: DataLoader worker processes (per process).
        validate: optional callback ``model -> {"val_miou": float, ...}`` added to the history (rank 0).
        tag: anything else that must match for a checkpoint to be resumed (e.g. the split file hash).
        world: the training processes (default: this one alone).
    Returns:
        The history: one dict per epoch (``epoch``, ``loss`` and each named loss, ``lr``, ``time_s``).
    Raises:
        DivergenceError: a non-finite or diverging loss; ValueError: fewer images than one batch.
    """
    trainer = Trainer(model, objective, dataset, cfg, run_dir, device, workers, validate, tag, world)
    return trainer.fit()


__all__ = [
    "OPTIMIZERS",
    "DivergenceError",
    "LoopConfig",
    "Trainer",
    "build_optimizer",
    "epoch_seed",
    "file_digest",
    "fingerprint",
    "fit",
    "held_poly_factor",
    "resolve_device",
    "seed_everything",
    "write_history",
]
