"""Stage ``train-step``: learning step t >= 1 of a task for one incremental method.

Starts from the model of step t-1 of the same method (step 0: the ``base`` model), grows its
classifier by the new classes (initialised from the background, MiB Sec. 3.4), keeps a frozen
copy as the old model, and trains with the method's objective in the shared loop. The data
follow the method's supervision: pixel labels of the new classes (``ft``, ``mib``), pixel labels
of every seen class on the images of all steps so far (``joint``), or image-level labels only
(``wilson``: the masks are blanked before they reach the objective). Writes ``model.pt`` and
``history.csv`` in ``--outdir`` and resumes from ``checkpoint.pt`` there.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.tasks import joint_ids, pixel_target_lut
from pipeline.data.transforms import TrainTransform
from pipeline.io import read_json
from pipeline.methods import StepContext, build_objective
from pipeline.models import load_model
from pipeline.train.common import add_run_arguments, start_run, step_dataset, train_and_save
from pipeline import __version__
from pipeline.train.loop import file_digest, fingerprint, seed_everything

log = logging.getLogger("pipeline.train.step")

#: Image-level supervision: every mask value (classes and void) becomes background, so only the
#: void padding added by the random crop is left for the objective to ignore.
BLANK_LUT = np.zeros(256, dtype=np.uint8)


class WithImageLabels(Dataset):
    """Adds ``labels``: a (num_classes,) float32 multi-hot tensor of an image's image-level labels."""

    def __init__(self, dataset, labels: dict[str, list[int]], num_classes: int):
        self.dataset, self.labels, self.num_classes = dataset, labels, num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset[i]
        multi_hot = torch.zeros(self.num_classes)
        multi_hot[self.labels[sample["id"]]] = 1.0
        return {**sample, "labels": multi_hot}


def training_data(supervision: str, split: dict, data_index: str, task: str, step: int, num_classes: int,
                  train: dict) -> Dataset:
    """The dataset of ``split`` prepared for a method's supervision (see the module docstring)."""
    crop, scales = train["crop_size"], tuple(train["scale_range"])
    if supervision == "pixel-current":
        return step_dataset(data_index, split["ids"], TrainTransform(crop, scales, pixel_target_lut(task, step)))
    if supervision == "pixel-seen":
        index = read_json(data_index)
        ids = joint_ids({i: index["index"][i] for i in index["splits"]["train"]}, task, step, split["protocol"])
        return step_dataset(data_index, ids, TrainTransform(crop, scales, pixel_target_lut(task, step, "seen")))
    if supervision == "image":
        dataset = step_dataset(data_index, split["ids"], TrainTransform(crop, scales, BLANK_LUT))
        return WithImageLabels(dataset, split["labels"], num_classes)
    raise ValueError(f"unknown supervision {supervision!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="ft | joint | mib | wilson")
    parser.add_argument("--previous", required=True, help="model.pt of step t-1 (step 0: the base model)")
    add_run_arguments(parser, 'JSON: {"train": {...}, "method": {...}} (config train_step and methods.<name>)')


def run(args: argparse.Namespace) -> None:
    params, split, device = start_run(args)
    train, method_cfg = params["train"], params["method"]
    task, step = split["task"], split["step"]
    if step < 1:
        raise ValueError(f"{args.split}: train-step needs a step t >= 1, got {step} (step 0 is train-base)")

    old_model, meta = load_model(args.previous, device)
    if (meta.get("task"), meta.get("step")) != (task, step - 1):
        raise ValueError(f"{args.previous} is task {meta.get('task')} step {meta.get('step')}; "
                         f"step {step} of {task} starts from step {step - 1}")
    seed_everything(args.seed)
    model, _ = load_model(args.previous, device)
    context = StepContext.build(task, step, old_model)
    objective = build_objective(args.method, method_cfg, context, model)
    model.classifier.add_step(len(context.new_classes), init=getattr(objective, "classifier_init", "background"))

    dataset = training_data(objective.supervision, split, args.data, task, step, context.num_classes, train)
    log.info("%s: task %s %s step %d, %d training images (%s), new classes %s, device %s", args.method, task,
             split["protocol"], step, len(dataset), objective.supervision, context.new_classes, device)
    train_and_save(model, objective, dataset, train, args, device, task, step,
                   meta={"model": meta["model"], "task": task, "protocol": split["protocol"], "step": step,
                         "method": args.method, "seen_classes": split["seen_classes"], "method_cfg": method_cfg,
                         "previous": str(args.previous)},
                   tag=fingerprint(args.method, method_cfg, train, split["ids"], file_digest(args.previous),
                                   __version__))
