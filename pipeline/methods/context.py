"""What an incremental objective knows about its step."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.data.tasks import new_classes, seen_classes


@dataclass
class StepContext:
    """The learning step t >= 1 of a task, and the frozen model of step t-1.

    Attributes:
        task, step: e.g. "15-5", 1.
        old_model: the step t-1 segmenter, frozen, in eval mode, on the training device.
        num_old: |Y^{t-1}|, background + classes learned before t = the first channels of the logits.
        new_classes: C^t, class indices (= channel indices) added at step t (the last channels).
        num_classes: |Y^t| = num_old + len(new_classes).
    """

    task: str
    step: int
    old_model: nn.Module
    num_old: int
    new_classes: list[int]
    num_classes: int

    @classmethod
    def build(cls, task: str, step: int, old_model: nn.Module) -> "StepContext":
        """Freeze ``old_model`` and derive the class sets of ``task`` at ``step``."""
        if step < 1:
            raise ValueError(f"an incremental step is t >= 1, got {step}")
        old_model.eval()
        for parameter in old_model.parameters():
            parameter.requires_grad_(False)
        num_old = len(seen_classes(task, step - 1))
        return cls(task, step, old_model, num_old, new_classes(task, step), len(seen_classes(task, step)))
