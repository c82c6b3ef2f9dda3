"""Offline WSSS baselines at an incremental step (WILSON Sec. 4.2, "CAM", "SEAM", ... rows).

A CAM network trained on the step's images and image-level labels gives hard pseudo-labels of
the new classes (stages ``train-cam`` and ``pseudo-labels``); the segmentation model then learns
them while keeping the old model's knowledge: the pseudo-labels replace WILSON's localizer output
q in Eq. 7 (hard one-hot targets instead of Eq. 6's soft ones), the background is the minimum of
the old model's background and the pseudo-label's, old classes are the old model's sigmoid
outputs, and the loss is WILSON's Eq. 8. The three baselines (``cam``, ``vwe``, ``iscam``) differ
only in the network that produced the pseudo-labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from pipeline.data.classes import VOID
from pipeline.methods.base import OldModelMethod, StepContext, StepInputs
from pipeline.methods.pseudo.data import pseudo_label_dataset
from pipeline.methods.registry import MethodSpec, register_method
from pipeline.methods.wilson.losses import segmentation_loss, wilson_target


def hard_pseudo_target(pseudo: Tensor, num_classes: int, new_classes: list[int]) -> Tensor:
    """One-hot q of a hard pseudo-label map for WILSON Eq. 7 (the q of Eq. 5 made from labels).

    Args:
        pseudo: (B, H, W) int64 pseudo-label map: 0 background, a new class index, or 255 void
            (ignored pixels; their q is all zero and the loss skips them).
        num_classes: |Y^t|, channels of q.
        new_classes: indices of C^t (the last channels).
    Returns:
        (B, |Y^t|, H, W) float32 q: q^b = 1 where the pseudo-label is background, q^c = 1 where it
        is new class c; the old channels are 0 (Eq. 7 takes them from the old model).
    Raises:
        ValueError: a pseudo-label value that is neither 0, a new class nor 255.
    """
    allowed = torch.tensor([0, *new_classes, VOID], device=pseudo.device)
    bad = pseudo[~torch.isin(pseudo, allowed)]
    if bad.numel():
        raise ValueError(f"pseudo-label value {int(bad[0])} is not background, a new class {list(new_classes)} or 255")
    b, h, w = pseudo.shape
    q = torch.zeros(b, num_classes, h, w, device=pseudo.device)
    for c in [0, *new_classes]:
        q[:, c] = (pseudo == c).float()
    return q


@register_method("cam", "vwe", "iscam")
class PseudoLabelDistillation(OldModelMethod):
    """Objective of the offline baselines: hard pseudo-labels for C^t + old-model targets (WILSON
    Eq. 7) through the per-class logistic loss (WILSON Eq. 8).

    The batch's ``pseudo`` holds the pseudo-label map (0, new classes, 255 void/padding) made by
    the ``pseudo-labels`` stage with the CAM network of the spec (``spec.cam_network``); the
    ground truth is never read.

    Args:
        context: the step and the frozen step t-1 model.
        head_lr_mult: learning-rate multiplier of the head (WILSON's 10 for its own head).
    """

    classifier_init = "prior"  # sigmoid outputs (Eq. 8): new classes start at a low probability

    def __init__(self, context: StepContext, head_lr_mult: float = 10.0):
        self.context, self.head_lr_mult = context, head_lr_mult

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec
    ) -> PseudoLabelDistillation:
        return cls(context, cfg["head_lr_mult"]).bind(spec)

    def dataset(self, inputs: StepInputs) -> Dataset:
        return pseudo_label_dataset(
            inputs.data_index,
            inputs.split,
            inputs.train,
            inputs.cache("pseudo", f"the pseudo-labels stage's .h5 of {self.spec.cam_network}"),
        )

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        logits = out["out"].float()
        old_logits = self.old_logits(batch["image"])
        with torch.no_grad():
            if old_logits.shape[-2:] != logits.shape[-2:]:
                old_logits = F.interpolate(old_logits, size=logits.shape[-2:], mode="bilinear", align_corners=False)
            q = hard_pseudo_target(batch["pseudo"], self.context.num_classes, self.context.new_classes)
            target = wilson_target(q, old_logits, self.context.new_classes)
        return {"seg": segmentation_loss(logits, target, valid=batch["valid"])}
