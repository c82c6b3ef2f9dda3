"""Stage ``train-base``: step 0 of a task, the segmentation model learns the base classes from pixel
labels (WILSON Sec. 4.3; MiB Sec. 4). Writes ``model.pt`` and ``history.csv`` in ``--outdir``;
resumes from ``checkpoint.pt`` there after an interruption."""

from __future__ import annotations

import argparse
import logging
import math

import torch

from pipeline import __version__
from pipeline.data.datasets import pixel_dataset
from pipeline.data.tasks import task_steps
from pipeline.methods import build_method
from pipeline.models import build_segmenter
from pipeline.stages.common import add_run_arguments, start_run, train_and_save
from pipeline.train.loop import fingerprint, seed_everything

log = logging.getLogger("pipeline.stages.train_base")


#: Initial probability of every class under the BCE loss (Lin et al., "Focal Loss for Dense Object
#: Detection", ICCV 2017, Sec. 4.1): sigmoids start near 0 instead of 0.5, so the first iterations
#: are not spent pushing down the many absent classes of every pixel.
PRIOR = 0.01


def init_prior_bias(classifier: torch.nn.Conv2d, prior: float) -> None:
    """Set the classifier biases to log(prior / (1 - prior)), i.e. sigmoid(bias) = prior."""
    torch.nn.init.constant_(classifier.bias, math.log(prior / (1 - prior)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, 'JSON: {"model": {...}, "train": {...}} (config sections model and train_base)')


def run(args: argparse.Namespace) -> None:
    params, split, device = start_run(args)
    model_cfg, train = params["model"], params["train"]
    if split.get("step") != 0:
        raise ValueError(f"{args.split}: train-base needs the split of step 0, got step {split.get('step')}")
    task = split["task"]

    dataset = pixel_dataset(args.data, split["ids"], train, task, 0)
    log.info(
        "task %s %s step 0: %d training images, classes %s, device %s",
        task,
        split["protocol"],
        len(dataset),
        split["seen_classes"],
        device,
    )

    seed_everything(args.seed)
    classes_per_step = [len(task_steps(task, split.get("task_table", "voc"))[0])]
    model = build_segmenter(model_cfg, classes_per_step)
    if train["loss"] == "bce":
        init_prior_bias(model.classifier.blocks[0], PRIOR)
    method = build_method("base", {"loss": train["loss"], "head_lr_mult": train["head_lr_mult"]})
    train_and_save(
        model,
        method,
        dataset,
        train,
        args,
        device,
        task,
        0,
        meta={
            "model": model_cfg,
            "task": task,
            "protocol": split["protocol"],
            "step": 0,
            "method": "base",
            "seen_classes": split["seen_classes"],
        },
        tag=fingerprint(model_cfg, train, split["ids"], PRIOR, __version__),
    )
