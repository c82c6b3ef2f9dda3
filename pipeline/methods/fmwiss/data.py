"""Data adapter of FMWISS: the step's images with image-level labels, the fused co-segmentation
masks of the new classes (the ``coseg`` stage's cache, fused when read) and copy-paste of old-class
instances from the memory bank (Sec. 3.2, 3.4)."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.cache import open_cache
from pipeline.data.datasets import NamedTargets, PerProcess, WithImageLabels, lazy_cache, step_dataset
from pipeline.data.tasks import new_classes
from pipeline.data.transforms import TrainTransform
from pipeline.foundation.coseg import coseg_masks, expected_provenance, require_step
from pipeline.methods.fmwiss.copy_paste import copy_paste
from pipeline.methods.fmwiss.memory import MemoryBank


class CosegLabelled(Dataset):
    """FMWISS training samples: image-level labels, the fused co-segmentation masks of the new
    classes (``coseg`` cache, fused when read) and copy-paste of old-class instances (Sec. 3.4).

    ``dataset[i]`` adds to the transform's output ``pseudo`` (|C^t|, h, w) float32 {0, 1} (channel
    k = new_classes[k]; zero under pasted instances) and ``pasted`` (h, w) int64 (old class of the
    pasted pixels, 0 elsewhere). The mask is blanked (0, and 255 in the crop padding).

    Args:
        images: the step's images without transform (masks unused).
        coseg_path, coseg_cfg: the cache and the settings it is read with (fusion, top-K, ...).
        new_classes: C^t.
        memory_path: the memory bank (None: no copy-paste); paste_prob: probability of a paste.
        split: the step's ``step{t}.json``: the cache must be the one computed for its task,
            protocol, step and new classes (:func:`pipeline.foundation.coseg.step_attrs`), the bank
            one of step t-1 of its task and protocol.
    Raises:
        CacheError: a missing, stale or foreign cache or bank (names the file and the differing
            keys), or a cache lacking images of the step.
    """

    def __init__(
        self,
        images: Dataset,
        coseg_path: str,
        coseg_cfg: dict,
        new_classes: list[int],
        memory_path: str | None,
        paste_prob: float,
        transform,
        *,
        split: Mapping,
    ):
        self.images, self.transform = images, transform
        self.cfg, self.new_classes, self.paste_prob = coseg_cfg, list(new_classes), paste_prob
        self.cache = lazy_cache(coseg_path, expected_provenance(coseg_cfg))
        with open_cache(coseg_path, expected_provenance(coseg_cfg)) as reader:  # stale cache: error now
            require_step(reader, split)
            reader.require(images.ids, "co-segmentation")
        self.memory_path = memory_path
        self._bank = None
        if memory_path is not None:
            bank = {"task": split.get("task"), "protocol": split.get("protocol"), "step": int(split["step"]) - 1}
            MemoryBank(memory_path, expected=bank).close()  # a bank of another task or step: error now
            self._bank = PerProcess(functools.partial(MemoryBank, memory_path, expected=bank))

    def bank(self) -> MemoryBank | None:
        """The memory bank of this process (None without one)."""
        return None if self._bank is None else self._bank.get()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        sample = self.images[i]
        image_id, image = sample["id"], sample["image"]
        size = image.shape[:2]
        classes, masks = coseg_masks(self.cache.get().get(image_id), self.cfg, size)
        pseudo = np.zeros((len(self.new_classes), *size), dtype=np.uint8)
        for c, m in zip(classes, masks):
            if c in self.new_classes:
                pseudo[self.new_classes.index(c)] = m
        mask = np.zeros(size, dtype=np.uint8)
        pasted = np.zeros(size, dtype=np.uint8)
        bank = self.bank()
        if bank is not None and self.paste_prob > 0:
            rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))  # seeded by the loop per epoch
            image, mask, pasted = copy_paste(image, mask, bank, rng, prob=self.paste_prob)
            pseudo[:, pasted > 0] = 0
        out = self.transform(
            {
                "id": image_id,
                "image": image,
                "mask": np.zeros(size, dtype=np.uint8),
                "extra": np.concatenate([pseudo, pasted[None]]),
            }
        )
        extra = out.pop("extra")
        return {**out, "pseudo": extra[:-1].float(), "pasted": extra[-1]}


def coseg_dataset(
    data_index: str,
    split: dict,
    train: dict,
    num_classes: int,
    coseg_path: str,
    coseg_cfg: dict,
    memory_path: str | None,
    paste_prob: float,
) -> Dataset:
    """FMWISS's training samples: ``labels`` (|Y^t|,), ``pseudo`` (|C^t|, h, w) float {0, 1},
    ``pasted`` (h, w) int64 and ``valid`` (h, w) bool (False on the crop padding)."""
    transform = TrainTransform(train["crop_size"], tuple(train["scale_range"]))
    dataset = CosegLabelled(
        step_dataset(data_index, split["ids"], None),
        coseg_path,
        coseg_cfg,
        new_classes(split["task"], int(split["step"]), split.get("task_table", "voc")),
        memory_path,
        paste_prob,
        transform,
        split=split,
    )
    return WithImageLabels(NamedTargets(dataset, "valid"), split["labels"], num_classes)
