"""MiB (Cermelli et al., CVPR 2020): unbiased cross-entropy + unbiased knowledge distillation,
pixel labels of the new classes; the pixel-supervised reference of the WILSS tables."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pipeline.methods.base import OldModelMethod, StepContext
from pipeline.methods.mib.losses import unbiased_cross_entropy, unbiased_knowledge_distillation
from pipeline.methods.registry import MethodSpec, register_method


@register_method("mib")
class MiB(OldModelMethod):
    """Objective: L = L_unce + kd_weight * L_unkd / |Y^{t-1}| (MiB Eq. 4-7), on the batch's ``gt``
    (pixel labels of the new classes; old classes are background there).

    The division by the number of old classes (background included) is the authors' code, not the
    paper's Eq. 6: their λ_KD = 10 on VOC was tuned with it, so we keep it to match their numbers.

    Args:
        context: the step and the frozen step t-1 model.
        kd_weight: λ of the distillation term (10 in MiB's VOC scripts).
        kd_alpha: scaling of the old model's logits in the distillation (1: none).
        head_lr_mult: learning-rate multiplier of the head over the backbone.
    """

    def __init__(self, context: StepContext, kd_weight: float = 10.0, kd_alpha: float = 1.0, head_lr_mult: float = 1.0):
        self.context, self.kd_weight, self.kd_alpha, self.head_lr_mult = context, kd_weight, kd_alpha, head_lr_mult

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec
    ) -> MiB:
        return cls(context, cfg["kd_weight"], cfg["kd_alpha"], cfg["head_lr_mult"]).bind(spec)

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        logits = out["out"].float()
        old_logits = self.old_logits(batch["image"])
        return {
            "unce": unbiased_cross_entropy(logits, batch["gt"], self.context.num_old_channels),
            "unkd": self.kd_weight
            / self.context.num_old_channels
            * unbiased_knowledge_distillation(logits, old_logits, self.kd_alpha),
        }
