"""Step 0: the segmentation model learns the base classes from pixel labels."""

from __future__ import annotations

from torch import Tensor, nn

from pipeline.losses.supervised import pixel_binary_cross_entropy, pixel_cross_entropy

LOSSES = {"ce": pixel_cross_entropy, "bce": pixel_binary_cross_entropy}


class PixelSupervised:
    """Pixel-label objective: CE (DeepLabV3, MiB) or BCE (WILSON's step 0) on the batch masks.

    Args:
        loss: ``ce`` or ``bce``.
        head_lr_mult: learning-rate multiplier of the ASPP head and classifier over the
            backbone's (WILSON Sec. 4.3: 0.001 backbone, 0.01 head → 10).
    """

    name = "base"

    def __init__(self, loss: str = "ce", head_lr_mult: float = 10.0):
        if loss not in LOSSES:
            raise ValueError(f"train_base.loss={loss!r}: expected one of {sorted(LOSSES)}")
        self.loss_name, self.loss_fn, self.head_lr_mult = loss, LOSSES[loss], head_lr_mult

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        return [
            {"params": list(model.backbone.parameters()), "lr": lr},
            {"params": list(model.head.parameters()) + list(model.classifier.parameters()), "lr": lr * self.head_lr_mult},
        ]

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        return {self.loss_name: self.loss_fn(out["out"].float(), batch["mask"])}
