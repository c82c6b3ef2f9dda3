"""Helpers shared by the training stages: logging, run inputs, datasets for a step."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from torch import nn

from pipeline.eval.evaluate import make_validator, report_classes
from pipeline.io import read_json
from pipeline.models import save_model
from pipeline.train.distributed import SINGLE, init_distributed
from pipeline.train.loop import LoopConfig, Trainer, resolve_device


def setup_logging(verbose: bool = False) -> None:
    """Log lines ``time level message`` to stderr (Snakemake redirects stderr to the rule's log)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def parse_params(text: str) -> dict:
    """The ``--params`` JSON string a rule passes (its config sections); errors name the text."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--params is not valid JSON ({err}): {text[:200]!r}") from err
    if not isinstance(params, dict):
        raise ValueError(f"--params must be a JSON object, got {type(params).__name__}")
    return params


def set_threads(threads: int) -> None:
    """Limit torch's CPU threads to what the scheduler gave the job (``threads`` ≤ 0: leave as is)."""
    if threads > 0:
        torch.set_num_threads(threads)


def add_run_arguments(parser: argparse.ArgumentParser, params_help: str) -> None:
    """Options every training stage shares: inputs, run folder, seed and compute."""
    parser.add_argument("--split", required=True, help="step{t}.json written by the splits stage")
    parser.add_argument("--data", required=True, help="dataset index JSON written by prepare-data")
    parser.add_argument("--params", required=True, help=params_help)
    parser.add_argument("--outdir", required=True, help="run directory (model.pt, history.csv, checkpoint.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")


def train_and_save(
    model: nn.Module,
    objective,
    dataset,
    train: dict,
    args: argparse.Namespace,
    device: torch.device,
    task: str,
    step: int,
    meta: dict,
    tag: str,
    warmup_epochs: int = 0,
) -> list[dict]:
    """Run the shared loop with the config section ``train`` (validation every ``eval_every``
    epochs), write ``model.pt`` with ``meta`` and drop the checkpoint; returns the history.

    ``warmup_epochs`` run before the ``train["epochs"]`` epochs, at the constant learning rate
    (an objective's warm-up "before training the segmentation model", FMWISS Sec. 4.2); the
    poly decay covers the ``train["epochs"]`` epochs."""
    cfg = LoopConfig(
        epochs=train["epochs"] + warmup_epochs,
        hold_epochs=warmup_epochs,
        batch_size=train["batch_size"],
        lr=train["lr"],
        momentum=train["momentum"],
        weight_decay=train["weight_decay"],
        poly_power=train["poly_power"],
        seed=args.seed,
        precision=train["precision"],
        compile=train["compile"],
        eval_every=train["eval_every"],
        tensorboard=train.get("tensorboard", False),  # issue 18: event files in the run folder
    )
    validate = (
        make_validator(args.data, task, step, device, batch_size=train["eval_batch_size"])
        if train["eval_every"]
        else None
    )
    outdir = Path(args.outdir)
    world = getattr(args, "world", SINGLE)
    trainer = Trainer(
        model, objective, dataset, cfg, outdir, device, workers=args.workers, validate=validate, tag=tag, world=world
    )
    history = trainer.fit()
    if not world.is_main:  # rank 0 writes the model
        return history
    save_model(
        outdir / "model.pt",
        model,
        {
            **meta,
            "seed": args.seed,
            "train": train,
            "precision": trainer.precision.name,
            "processes": world.size,
            "final_loss": history[-1]["loss"] if history else None,
        },
    )
    trainer.remove_checkpoint()
    logging.getLogger(__name__).info("wrote %s", outdir / "model.pt")
    return history


def split_classes_of_model(model_path, split_path, split: dict, meta: dict, num_outputs: int) -> tuple:
    """Check that a model fits the split it is evaluated on, and give the split's class sets.

    Args:
        model_path, split_path: the files, for the messages.
        split: the split's JSON (``task``, ``step``, optional ``task_table``).
        meta: the model's metadata (``task``, ``step``).
        num_outputs: the model's output channels.
    Returns:
        ``(task, step, table, seen, old, new)``: the class sets of
        :func:`pipeline.eval.evaluate.report_classes`.
    Raises:
        ValueError: the model is of another task or step, or its outputs are not the seen classes.
    """
    task, step = split["task"], int(split["step"])
    if (meta.get("task"), meta.get("step")) != (task, step):
        raise ValueError(
            f"{model_path} is a model of task {meta.get('task')} step {meta.get('step')}, "
            f"but {split_path} is task {task} step {step}"
        )
    table = split.get("task_table", "voc")
    seen, old, new = report_classes(task, step, table)
    if num_outputs != len(seen):
        raise ValueError(
            f"{model_path}: {num_outputs} outputs, expected {len(seen)} seen classes of {task} step {step}"
        )
    return task, step, table, seen, old, new


def start_run(args: argparse.Namespace) -> tuple[dict, dict, torch.device]:
    """Prologue of a training stage: logging, CPU threads, ``--params``, the split, the device, and
    the training processes (several under ``torchrun``; :mod:`pipeline.train.distributed`).

    Sets ``args.world``; returns ``(params, split, device)`` (this process's device)."""
    setup_logging()
    set_threads(args.threads)
    world, device = init_distributed(resolve_device(args.device))
    args.world = world
    if world.distributed:
        logging.getLogger(__name__).info("process %d of %d on %s", world.rank, world.size, device)
    return parse_params(args.params), read_json(args.split), device
