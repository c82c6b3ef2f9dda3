"""Pixel-supervised segmentation losses used at step 0 and by the pixel-supervised references."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from pipeline.data.classes import VOID


def pixel_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = VOID) -> Tensor:
    """Softmax cross-entropy averaged over labelled pixels (DeepLabV3; MiB's step 0).

    Args:
        logits: (B, C, H, W) float scores.
        target: (B, H, W) int64 class indices in [0, C) or ``ignore_index``.
    Returns:
        Scalar tensor ≥ 0.
    """
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def pixel_binary_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = VOID) -> Tensor:
    """Per-class logistic loss against one-hot targets, summed over classes and averaged over
    labelled pixels (WILSON's step-0 loss; the one-hot form of WILSON Eq. 8).

    Args:
        logits: (B, C, H, W) float scores (independent sigmoids, not a softmax).
        target: (B, H, W) int64 class indices in [0, C) or ``ignore_index``.
    Returns:
        Scalar tensor ≥ 0; 0 if no pixel is labelled.
    """
    valid = target != ignore_index
    one_hot = F.one_hot(target.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none").sum(dim=1)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)
