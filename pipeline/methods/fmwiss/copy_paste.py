"""FMWISS's memory-based copy-paste augmentation (Sec. 3.4, Fig. 4; the targets of Eq. 8-9).

"In step t, we randomly pick one pair of foreground images and labels from a randomly selected
old class archive, and randomly paste them to the new class image" (Yu et al., CVPR 2023,
``shared/papers/004``). The pasted pixels get target 1 for their class in the old-class BCE loss
(Eq. 8-9); Sec. 4.5.4 fixes the augmentation probability to 0.5. The archives are a
:class:`pipeline.methods.fmwiss.memory.MemoryBank`.

Choices the paper leaves open: one instance per augmented image (as written in the paper), at its
stored scale by default (bank and training images come from the same dataset, and the training
transform rescales the composed image afterwards), shrunk if needed so that it fits, at a
uniformly random position with the whole instance inside the image.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from pipeline.methods.fmwiss.memory import MemoryBank, check_image_label


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask to ``size`` (h, w): pixels at least half covered (bilinear/antialiased
    coverage, PIL); if that leaves none (a thin instance shrunk), the most covered pixels."""
    coverage = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(size[::-1], Image.BILINEAR))
    out = coverage >= 0.5
    return out if out.any() else coverage >= coverage.max()


def copy_paste(
    image: np.ndarray,
    mask: np.ndarray,
    bank: MemoryBank,
    rng: np.random.Generator,
    prob: float = 0.5,
    scale_range: tuple[float, float] = (1.0, 1.0),
    classes: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memory-based copy-paste augmentation (FMWISS Sec. 3.4, Fig. 4; the targets of Eq. 9).

    With probability ``prob`` (0.5 in FMWISS Sec. 4.5.4), one instance drawn by
    :meth:`MemoryBank.sample` is scaled by ``s ~ U(scale_range)`` (shrunk further if it would not
    fit; bilinear image, mask = pixels at least half covered, never empty), and pasted at a
    uniformly random position with the whole instance inside the image.

    Args:
        image: (H, W, 3) uint8 training image (of new classes).
        mask: (H, W) uint8 its label map (whatever the step uses: 255 where unknown).
        bank: the memory bank of old classes.
        rng: the generator (one draw decides whether to paste; more only if it does).
        prob: probability in ``[0, 1]`` of pasting.
        scale_range: ``(low, high)``, ``0 < low <= high``; (1, 1) keeps the stored scale.
        classes: restrict to these classes (default every class of the bank).
    Returns:
        ``(image, mask, pasted)``: new arrays (the inputs are not modified): the image with the
        instance's pixels copied where its mask is true, the mask set to the instance's class
        there, and ``pasted`` (H, W) uint8 = that class on pasted pixels, 0 elsewhere (where
        Eq. 9 sets the old-class target of the pasted class to 1).
    Raises:
        ValueError: bad shapes/dtypes, ``prob`` outside ``[0, 1]``, a bad ``scale_range``, or
            no instance to paste (see :meth:`MemoryBank.sample`).
    """
    image, mask = np.asarray(image), np.asarray(mask)
    check_image_label(image, mask)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"copy-paste prob must be in [0, 1], got {prob}")
    low, high = (float(v) for v in scale_range)
    if not 0 < low <= high:
        raise ValueError(f"copy-paste scale_range must satisfy 0 < low <= high, got {scale_range}")
    image, mask = image.copy(), mask.copy()
    pasted = np.zeros(mask.shape, dtype=np.uint8)
    if rng.random() >= prob:
        return image, mask, pasted
    c, crop, crop_mask = bank.sample(rng, classes)
    height, width = mask.shape
    h, w = crop_mask.shape
    scale = low if low == high else float(rng.uniform(low, high))
    scale = min(scale, height / h, width / w)
    size = (min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale))))
    if size != (h, w):
        crop = np.asarray(Image.fromarray(crop).resize(size[::-1], Image.BILINEAR))
        crop_mask = _resize_mask(crop_mask, size)
        h, w = size
    top = int(rng.integers(height - h + 1))
    left = int(rng.integers(width - w + 1))
    region = np.s_[top : top + h, left : left + w]
    image[region][crop_mask] = crop[crop_mask]
    mask[region][crop_mask] = c
    pasted[region][crop_mask] = c
    return image, mask, pasted


__all__ = ["copy_paste"]
