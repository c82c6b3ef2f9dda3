"""Pixel-label methods: step 0 (``base``), fine-tuning (``ft``) and joint training (``joint``).

The three share one loss and differ only in their data: ``base`` and ``ft`` see the pixel labels
of the classes of the current step (others are background), ``joint`` the labels of every seen
class on the images of all steps so far.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from pipeline.data.datasets import pixel_dataset
from pipeline.data.tasks import joint_ids
from pipeline.io import read_json
from pipeline.methods.base import Method, StepContext, StepInputs
from pipeline.methods.pixel.losses import pixel_binary_cross_entropy, pixel_cross_entropy
from pipeline.methods.registry import MethodSpec, register_method

LOSSES = {"ce": pixel_cross_entropy, "bce": pixel_binary_cross_entropy}


@register_method("base", "ft")
class PixelSupervised(Method):
    """Pixel-label objective: CE (DeepLabV3, MiB) or BCE (WILSON's step 0) on the batch's ``gt``.

    Args:
        loss: ``ce`` or ``bce``.
        head_lr_mult: learning-rate multiplier of the ASPP head and classifier over the backbone's.
    Raises:
        ValueError: an unknown loss.
    """

    def __init__(self, loss: str, head_lr_mult: float = 1.0):
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {sorted(LOSSES)}")
        self.loss_name, self.loss_fn, self.head_lr_mult = loss, LOSSES[loss], head_lr_mult

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec
    ) -> PixelSupervised:
        return cls(cfg["loss"], cfg["head_lr_mult"]).bind(spec)

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        return {self.loss_name: self.loss_fn(out["out"].float(), batch["gt"])}


@register_method("joint")
class Joint(PixelSupervised):
    """Joint training, the upper bound: pixel labels of every seen class on the images of steps
    0..t (the protocol's filter at each step), fine-tuned from the step t-1 model."""

    def dataset(self, inputs: StepInputs) -> Dataset:
        index = read_json(inputs.data_index)
        ids = joint_ids(
            {i: index["index"][i] for i in index["splits"]["train"]},
            inputs.task,
            inputs.step,
            inputs.split["protocol"],
            index.get("task_table", "voc"),  # COCO-to-VOC: coco80 (pipeline.data.coco_voc)
        )
        return pixel_dataset(inputs.data_index, ids, inputs.train, inputs.task, inputs.step, learned="seen")
