"""Stage ``train-step``: learning step t >= 1 of a task for one incremental method.

Starts from the model of step t-1 of the same method (step 0: the ``base`` model), grows its
classifier by the new classes (initialised from the background, MiB Sec. 3.4), keeps a frozen
copy as the old model, and trains with the method's objective in the shared loop. The data
follow the method's supervision: pixel labels of the new classes (``ft``, ``mib``), pixel labels
of every seen class on the images of all steps so far (``joint``), image-level labels only
(``wilson``: the masks are blanked before they reach the objective), hard pseudo-labels from an
HDF5 cache of the ``pseudo-labels`` stage (``cam``, ``vwe``, ``iscam``: they replace the masks),
or image-level labels + the fused co-segmentation masks of the ``coseg`` cache + copy-paste of
old-class instances from the memory bank (``fmwiss``). Writes ``model.pt`` and ``history.csv`` in
``--outdir`` and resumes from ``checkpoint.pt`` there.
"""

from __future__ import annotations

import os
import numpy as np
import torch
from torch.utils.data import Dataset
from pipeline.cache import CacheError, open_cache
from pipeline.data.datasets import LazyCache


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
    """

    def __init__(self, images: Dataset, coseg_path: str, coseg_cfg: dict, new_classes: list[int],
                 memory_path: str | None, paste_prob: float, transform):
        from pipeline.foundation.coseg import coseg_masks, expected_provenance

        self.images, self.transform, self.coseg_masks = images, transform, coseg_masks
        self.cfg, self.new_classes, self.paste_prob = coseg_cfg, list(new_classes), paste_prob
        self.cache = LazyCache(coseg_path, expected_provenance(coseg_cfg))
        with open_cache(coseg_path, expected_provenance(coseg_cfg)) as reader:  # stale cache: error now
            missing = [i for i in images.ids if i not in reader]
        if missing:
            raise CacheError(f"{coseg_path}: no co-segmentation for {len(missing)} training images, e.g. {missing[0]!r}")
        self.memory_path = memory_path
        self._bank, self._bank_pid = None, None

    def bank(self):
        if self.memory_path is None:
            return None
        if self._bank_pid != os.getpid():
            from pipeline.methods.fmwiss.memory import MemoryBank

            self._bank, self._bank_pid = MemoryBank(self.memory_path), os.getpid()
        return self._bank

    def __getstate__(self):
        return {**self.__dict__, "_bank": None, "_bank_pid": None}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        from pipeline.methods.fmwiss.memory import copy_paste

        sample = self.images[i]
        image_id, image = sample["id"], sample["image"]
        size = image.shape[:2]
        classes, masks = self.coseg_masks(self.cache.reader().get(image_id), self.cfg, size)
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
        out = self.transform({"id": image_id, "image": image, "mask": np.zeros(size, dtype=np.uint8),
                              "extra": np.concatenate([pseudo, pasted[None]])})
        extra = out.pop("extra")
        return {**out, "pseudo": extra[:-1].float(), "pasted": extra[-1]}

