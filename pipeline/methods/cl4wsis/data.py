"""Data adapters of CL4WSIS: pixel labels + Panoptic-DeepLab targets from the instance maps (step 0,
where "the model is provided with fully pixel-wise annotations", Sec. 3), and image-level labels
(steps t >= 1, both phases: WILSON's adapter, :func:`pipeline.data.datasets.image_label_dataset`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.classes import VOID
from pipeline.data.datasets import step_dataset
from pipeline.data.instances import load_instance_map, resolve_instance_dir
from pipeline.data.tasks import pixel_target_lut
from pipeline.data.transforms import TrainTransform
from pipeline.io import read_json
from pipeline.models.panoptic import panoptic_targets


class InstanceTargets(Dataset):
    """Training samples with the class map ``gt`` and Panoptic-DeepLab targets of its instances.

    The image, class map and instance map (``SegmentationObject[Aug]/<id>.png``) take the same
    random scale, crop and flip (:class:`pipeline.data.transforms.TrainTransform`, the instance map
    as an ``extra`` map, nearest); instances of classes not learned at the step (background in
    ``gt``) are dropped, void and crop padding are void. ``dataset[i]`` is the transform's
    ``{"id", "image"}`` plus ``gt`` (h, w) int64 (255 void), ``valid`` (h, w) bool, and from
    :func:`pipeline.models.panoptic.panoptic_targets` ``center`` (1, h, w), ``offset`` (2, h, w)
    ``(dy, dx)``, ``center_weight`` (1, h, w) and ``offset_weight`` (1, h, w), float32.

    ``center_weight``: ``instances`` (1 on instance pixels, the authors' ``label_generation``
    weight map, used for both heads) or ``all`` (1 on every non-void pixel, Panoptic-DeepLab's).

    Args:
        data_index: the prepare-data index (``root``, ``mask_dir``; ``instance_dir`` if present,
            else ``auto``).
        ids: the step's image ids.
        train: the loop section (``crop_size``, ``scale_range``).
        task, step: the label space (classes of other steps → background).
        sigma: Gaussian of the center heatmap (px).
        center_weight: ``instances`` or ``all``.
    Raises:
        DatasetError: no instance folder (names the root); when read: a missing map or one of
            another size than the class map (names the id and both files).
        ValueError: an unknown ``center_weight``.
    """

    def __init__(
        self,
        data_index: str | Path,
        ids: list[str],
        train: dict,
        task: str,
        step: int,
        sigma: float = 6.0,
        center_weight: str = "instances",
    ):
        if center_weight not in ("instances", "all"):
            raise ValueError(f"center_weight={center_weight!r}: expected 'instances' or 'all'")
        index = read_json(data_index)
        self.images = step_dataset(data_index, ids, None)
        self.instance_dir = resolve_instance_dir(index["root"], index.get("instance_dir", "auto"))
        lut = pixel_target_lut(task, step, "current")
        self.transform = TrainTransform(train["crop_size"], tuple(train["scale_range"]), lut)
        self.sigma, self.center_weight = float(sigma), center_weight

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        sample = self.images[i]
        image_id = sample["id"]
        path = self.instance_dir / f"{image_id}.png"
        instances = load_instance_map(path, image_id)
        if instances.shape != sample["mask"].shape:
            raise ValueError(
                f"id {image_id!r}: instance map {path} is {instances.shape[1]}x{instances.shape[0]} (WxH), "
                f"the class map {sample['mask'].shape[1]}x{sample['mask'].shape[0]}; expected the same size"
            )
        out = self.transform({**sample, "extra": instances[None].astype(np.uint8)})
        gt = out.pop("mask")
        ids = out.pop("extra")[0]
        ids = torch.where(gt == 0, torch.zeros_like(ids), ids)  # classes not learned at the step
        ids = torch.where(gt == VOID, torch.full_like(ids, VOID), ids)
        targets = panoptic_targets(ids, sigma=self.sigma, void=VOID)
        weight = targets["offset_weight"] if self.center_weight == "instances" else targets["center_weight"]
        return {
            **out,
            "gt": gt,
            "valid": gt != VOID,
            "center": targets["center"],
            "offset": targets["offset"],
            "center_weight": weight,
            "offset_weight": targets["offset_weight"],
        }


__all__ = ["InstanceTargets"]
