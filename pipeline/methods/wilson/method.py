"""WILSON (Cermelli et al., CVPR 2022): a localizer on the encoder learns the new classes from
image-level labels (nGWP + focal penalty, Eq. 1-3) and from the old model's localization prior
(Eq. 4); its soft pseudo-labels (Eq. 5-6), merged with the old model's outputs (Eq. 7), supervise
the segmentation model through a multi-label soft-margin loss (Eq. 8)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from pipeline.data.datasets import image_label_dataset
from pipeline.methods.base import OldModelMethod, StepContext, StepInputs
from pipeline.methods.registry import MethodSpec, register_method
from pipeline.methods.wilson.localizer import Localizer
from pipeline.methods.wilson.losses import (
    classification_loss,
    localization_prior_loss,
    restrict_to_image_labels,
    segmentation_loss,
    soft_pseudo_labels,
    wilson_target,
)


@register_method("wilson")
class Wilson(OldModelMethod):
    """Objective of WILSON; the loop trains the localizer with the segmentation model.

    Schedule (Sec. 4.3): for the first ``warmup_epochs`` only the localizer learns (its input
    features are detached and no segmentation loss is computed, so the segmenter gets no
    gradient); then everything learns from ℓ_CLS + ℓ_LOC + ℓ_SEG.

    Args:
        context: the step and the frozen step t-1 model.
        in_channels: channels of the encoder features the localizer reads.
        warmup_epochs: localizer-only epochs (5 in the paper).
        alpha: hard/soft mix of the pseudo-labels (Eq. 6, 0.5).
        focal_lambda, focal_gamma: λ and γ of the focal penalty (Eq. 2; 0.01 and 3).
        ngwp_eps: ε of nGWP (Eq. 1).
        relaxed: Eq. 3 over every seen class instead of the new ones (WILSON Table 5); the batch
            labels must then hold all seen classes present.
        restrict_to_labels: before Eq. 5, zero the localizer's map of every object class the
            image is not labelled with, old classes included unless relaxed (authors' code, not in
            the paper).
        head_lr_mult: learning-rate multiplier of the head and the localizer (0.01 / 0.001 = 10).
    """

    classifier_init = "prior"  # sigmoid outputs (Eq. 7-8): new classes start at a low probability

    def __init__(
        self,
        context: StepContext,
        in_channels: int,
        warmup_epochs: int = 5,
        alpha: float = 0.5,
        focal_lambda: float = 0.01,
        focal_gamma: float = 3.0,
        ngwp_eps: float = 1.0,
        relaxed: bool = False,
        restrict_to_labels: bool = True,
        head_lr_mult: float = 10.0,
    ):
        self.context = context
        self.localizer = Localizer(in_channels, context.num_classes)
        self.warmup_epochs, self.alpha = warmup_epochs, alpha
        self.focal = {"lam": focal_lambda, "gamma": focal_gamma, "eps": ngwp_eps}
        self.head_lr_mult, self.restrict_to_labels = head_lr_mult, restrict_to_labels
        self.cls_classes = list(range(1, context.num_classes)) if relaxed else list(context.new_classes)

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec
    ) -> Wilson:
        """``model``: the segmenter, whose last encoder stage feeds the localizer."""
        return cls(
            context,
            model.backbone.feature_info.channels()[-1],
            cfg["warmup_epochs"],
            cfg["alpha"],
            cfg["focal_lambda"],
            cfg["focal_gamma"],
            cfg["ngwp_eps"],
            cfg["relaxed"],
            cfg["restrict_to_labels"],
            cfg["head_lr_mult"],
        ).bind(spec)

    def modules(self) -> dict[str, nn.Module]:
        return {"localizer": self.localizer}

    def dataset(self, inputs: StepInputs) -> Dataset:
        """Image-level labels only (``labels``, ``valid``): no pixel label reaches WILSON."""
        return image_label_dataset(inputs.data_index, inputs.split, inputs.train, inputs.num_classes)

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        warmup = epoch < self.warmup_epochs
        features = out["features"].detach() if warmup else out["features"]
        scores = self.localizer(features).float()  # z: (B, |Y^t|, h, w)
        labels = batch["labels"].float()  # (B, |Y^t|) image-level labels
        old_logits = self.old_logits(batch["image"])  # (B, |Y^t-1|, H, W)
        old_small = F.interpolate(old_logits, size=scores.shape[-2:], mode="bilinear", align_corners=False)
        losses = {
            "cls": classification_loss(scores, labels, self.cls_classes, **self.focal),
            "loc": localization_prior_loss(scores, old_small),
        }
        if not warmup:
            with torch.no_grad():
                masks = F.interpolate(scores, size=old_logits.shape[-2:], mode="bilinear", align_corners=False).softmax(
                    dim=1
                )  # m: (B, |Y^t|, H, W)
                if self.restrict_to_labels:  # before Eq. 5: the argmax picks background or a labelled class
                    masks = restrict_to_image_labels(masks, labels)
                pseudo = soft_pseudo_labels(masks, self.alpha)  # Eq. 5-6
                target = wilson_target(pseudo, old_logits, self.context.new_classes)  # Eq. 7
            losses["seg"] = segmentation_loss(out["out"].float(), target, valid=batch["valid"])
        return losses
