"""Joint image/mask transforms (torchvision ``transforms.v2``), normalisation and batching.

Samples are dicts ``{"id": str, "image": ..., "mask": ...}`` as returned by
:class:`pipeline.data.voc.VOCSegmentation`. After :class:`TrainTransform` or :class:`EvalTransform`
the image is a float32 (3, H, W) tensor normalised with the ImageNet mean/std and the mask an
int64 (H, W) tensor of class indices with 255 = void.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.data.classes import VOID

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensors(sample: dict, lut: np.ndarray | None = None) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """uint8 (H, W, 3) image and (H, W) mask → tv_tensors; ``lut`` (256,) uint8 remaps mask values."""
    mask = sample["mask"] if lut is None else lut[sample["mask"]]
    image = tv_tensors.Image(torch.from_numpy(np.array(sample["image"], dtype=np.uint8)).permute(2, 0, 1))
    return image, tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).long())


class RandomScale(torch.nn.Module):
    """Resize image (bilinear) and mask (nearest) by one factor drawn uniformly in ``scale_range``."""

    def __init__(self, scale_range: tuple[float, float]):
        super().__init__()
        self.low, self.high = scale_range

    def forward(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        factor = self.low + (self.high - self.low) * torch.rand(()).item()
        height, width = image.shape[-2:]
        size = [max(1, round(height * factor)), max(1, round(width * factor))]
        return TF.resize(image, size, antialias=True), TF.resize(mask, size)


class TrainTransform:
    """Random scale, random crop (padded with void), horizontal flip, normalise.

    The augmentation of MiB/WILSON training (random scale in [0.5, 2.0], crop, flip); randomness
    comes from torch's global RNG, which the training loop seeds per epoch.

    Args:
        crop_size: side of the square crop in pixels.
        scale_range: (low, high) resize factors.
        lut: optional (256,) uint8 table mapping ground truth to training targets.
    """

    def __init__(self, crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0), lut: np.ndarray | None = None):
        self.lut = lut
        self.scale = RandomScale(tuple(scale_range))
        self.geometric = v2.Compose(
            [
                v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Mask: VOID, "others": 0}),
                v2.RandomHorizontalFlip(),
            ]
        )
        self.normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __call__(self, sample: dict) -> dict:
        """Transform ``{"id", "image", "mask"}``; an optional ``"extra"`` (K, H, W) uint8 stack of
        maps aligned with the mask (pseudo-masks, pasted-instance map) takes the same geometric
        transform (nearest) and comes back as ``"extra"`` (K, h, w) int64, 0 in the crop padding."""
        image, mask = to_tensors(sample, self.lut)
        extra = sample.get("extra")
        if extra is not None:
            extra = torch.from_numpy(np.ascontiguousarray(extra)).long()
            if extra.ndim != 3 or extra.shape[1:] != mask.shape:
                raise ValueError(
                    f"id {sample['id']!r}: extra maps {tuple(extra.shape)} do not match "
                    f"the mask {tuple(mask.shape)}; expected (K, H, W)"
                )
            mask = tv_tensors.Mask(torch.cat([mask[None], extra]))
        image, mask = self.geometric(*self.scale(image, mask))
        out = {"id": sample["id"], "image": self.normalise(image).as_subclass(Tensor)}
        if extra is None:
            out["mask"] = mask.as_subclass(Tensor)
            return out
        mask = mask.as_subclass(Tensor)
        out["mask"] = mask[0]
        out["extra"] = mask[1:].masked_fill(mask[1:] == VOID, 0)  # crop padding (filled with void) → 0
        return out


class EvalTransform:
    """Normalise only: evaluation runs at label resolution (no resize, no crop)."""

    def __init__(self, lut: np.ndarray | None = None):
        self.lut = lut
        self.normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __call__(self, sample: dict) -> dict:
        image, mask = to_tensors(sample, self.lut)
        return {"id": sample["id"], "image": self.normalise(image).as_subclass(Tensor), "gt": mask.as_subclass(Tensor)}


#: Batch keys whose integer maps are label maps, padded with void; every other map aligned with
#: the image (``valid``, soft masks, ``pasted``) is padded with 0 / False.
LABEL_MAP_KEYS = ("mask", "gt", "pseudo")


def pad_collate(samples: list[dict]) -> dict:
    """Batch samples of different sizes, padding at bottom/right: the image with 0, every map aligned
    with it (a tensor whose last two dims are the image's) with void if it is an integer label map
    of :data:`LABEL_MAP_KEYS`, else with 0 / False.

    Returns ``{"id": list[str], "image": (B, 3, H, W) float32, "size": (B, 2) int64 original
    (height, width), <each map key>: (B, ..., H, W)}``; other tensor keys are stacked, the rest
    gathered in lists.
    """
    heights = [s["image"].shape[-2] for s in samples]
    widths = [s["image"].shape[-1] for s in samples]
    height, width = max(heights), max(widths)
    batch = {"id": [s["id"] for s in samples], "size": torch.tensor(list(zip(heights, widths)), dtype=torch.long)}
    for key in samples[0]:
        if key == "id":
            continue
        values = [s[key] for s in samples]
        first = values[0]
        if (
            isinstance(first, Tensor)
            and first.ndim >= 2
            and all(v.shape[-2:] == (h, w) for v, h, w in zip(values, heights, widths))
        ):
            label_map = key in LABEL_MAP_KEYS and not first.is_floating_point() and first.dtype != torch.bool
            stacked = first.new_full((len(samples), *first.shape[:-2], height, width), VOID if label_map else 0)
            for i, v in enumerate(values):
                stacked[i, ..., : heights[i], : widths[i]] = v
            batch[key] = stacked
        else:
            batch[key] = torch.stack(values) if isinstance(first, Tensor) else values
    return batch


def denormalise(image: Tensor) -> Tensor:
    """Inverse of the ImageNet normalisation: (3, H, W) float → (3, H, W) float in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)
