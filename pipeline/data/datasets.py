"""Datasets of a step: the images of a split, image-level labels, lazily opened HDF5 caches."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.cache import open_cache
from pipeline.data.classes import VOID
from pipeline.data.tasks import pixel_target_lut
from pipeline.data.transforms import TrainTransform
from pipeline.data.voc import VOCSegmentation
from pipeline.io import read_json


def step_dataset(data_index: str | Path, ids: list[str], transform) -> VOCSegmentation:
    """A :class:`VOCSegmentation` over ``ids`` of the dataset described by a prepare-data index."""
    index = read_json(data_index)
    return VOCSegmentation(index["root"], ids, mask_dir=index["mask_dir"], transform=transform)


def val_ids(data_index: str | Path, split: str = "val") -> list[str]:
    """The validation ids listed in a prepare-data index (``split``: ``val``, or a second
    evaluation set such as COCO-to-VOC's ``val_voc``).

    Raises:
        ValueError: the index has no such split (names the file and the splits it has).
    """
    splits = read_json(data_index)["splits"]
    if split not in splits:
        raise ValueError(f"{data_index}: no split {split!r}; splits present: {sorted(splits)}")
    return list(splits[split])


def index_table(data_index: str | Path) -> str:
    """The task table a prepare-data index's labels are numbered for: its ``task_table`` key
    (``coco80`` for COCO-to-VOC, :mod:`pipeline.data.coco_voc`), else ``voc``."""
    return str(read_json(data_index).get("task_table", "voc"))


#: Image-level supervision: every mask value (classes and void) becomes background, so only the
#: void padding added by the random crop is left (as ``valid`` = False) for the objective to ignore.
BLANK_LUT = np.zeros(256, dtype=np.uint8)


class NamedTargets(Dataset):
    """Names the transform's ``mask`` for what it holds (DESIGN.md, batch keys): ``gt`` (ground
    truth in the step's label space), ``pseudo`` (a hard pseudo-label map read from a cache), or
    ``valid`` (image-level supervision: only the void padding of a blank mask is kept, as a bool
    map, False = ignore).

    Raises:
        ValueError: an unknown ``name``.
    """

    NAMES = ("gt", "pseudo", "valid")

    def __init__(self, dataset: Dataset, name: str):
        if name not in self.NAMES:
            raise ValueError(f"mask name {name!r}: expected one of {self.NAMES}")
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = dict(self.dataset[i])
        mask = sample.pop("mask")
        if self.name == "valid":
            sample["valid"] = mask != VOID
        else:
            sample[self.name] = mask
            sample["valid"] = mask != VOID
        return sample


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


def pixel_dataset(
    data_index: str | Path, ids: list[str], train: dict, task: str, step: int, learned: str = "current"
) -> Dataset:
    """Training samples with pixel labels ``gt`` (int64 (h, w), 255 void) of the classes learned at
    ``step`` (``current``) or of every seen class (``seen``); the others are background.

    Args:
        train: the loop's section (``crop_size``, ``scale_range``).
    """
    lut = pixel_target_lut(task, step, learned, index_table(data_index))
    dataset = step_dataset(data_index, ids, TrainTransform(train["crop_size"], tuple(train["scale_range"]), lut))
    return NamedTargets(dataset, "gt")


def image_label_dataset(data_index: str | Path, split: dict, train: dict, num_classes: int) -> Dataset:
    """Training samples with image-level ``labels`` (B, |Y^t|) of the split and ``valid`` (False on
    the crop padding); no pixel label reaches the method."""
    transform = TrainTransform(train["crop_size"], tuple(train["scale_range"]), BLANK_LUT)
    dataset = NamedTargets(step_dataset(data_index, split["ids"], transform), "valid")
    return WithImageLabels(dataset, split["labels"], num_classes)


class PerProcess:
    """A handle (an HDF5 reader) made on first use in each process by ``factory()``: h5py handles
    do not survive a fork into DataLoader workers, so a pickled copy starts without one."""

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory
        self._handle, self._pid = None, None

    def get(self) -> Any:
        if self._pid != os.getpid():
            self._handle, self._pid = self.factory(), os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        return {"factory": self.factory, "_handle": None, "_pid": None}


def lazy_cache(path: str | Path, expected: dict | None = None) -> PerProcess:
    """A per-process :func:`pipeline.cache.open_cache` reader of ``path`` (checked against
    ``expected`` when opened)."""
    return PerProcess(functools.partial(open_cache, str(path), expected))
