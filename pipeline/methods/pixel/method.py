"""Pixel-label objectives: step 0 (``base``), fine-tuning (``ft``) and joint training (``joint``).

The three differ only in their data, which the stage prepares from :attr:`supervision`:
``base`` and ``ft`` see the pixel labels of the classes of the current step (others are
background), ``joint`` the labels of every seen class on the images of all steps so far.
"""

from __future__ import annotations

from torch import Tensor, nn
from pipeline.methods.pixel.losses import pixel_binary_cross_entropy, pixel_cross_entropy
from pipeline.methods.base import segmenter_param_groups


LOSSES = {"ce": pixel_cross_entropy, "bce": pixel_binary_cross_entropy}


class PixelSupervised:
    """Pixel-label objective: CE (DeepLabV3, MiB) or BCE (WILSON's step 0) on the batch masks.

    Args:
        loss: ``ce`` or ``bce``.
        head_lr_mult: learning-rate multiplier of the ASPP head and classifier over the backbone's.
        name: the method name recorded in histories (``base``, ``ft`` or ``joint``).
    """

    SUPERVISION = {"base": "pixel-current", "ft": "pixel-current", "joint": "pixel-seen"}

    def __init__(self, loss: str = "ce", head_lr_mult: float = 1.0, name: str = "base", context=None):
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {sorted(LOSSES)}")
        if name not in self.SUPERVISION:
            raise ValueError(f"PixelSupervised serves {sorted(self.SUPERVISION)}, not {name!r}")
        self.supervision = self.SUPERVISION[name]
        self.name, self.loss_name, self.loss_fn, self.head_lr_mult = name, loss, LOSSES[loss], head_lr_mult

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        return segmenter_param_groups(model, lr, self.head_lr_mult)

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        return {self.loss_name: self.loss_fn(out["out"].float(), batch["mask"])}

