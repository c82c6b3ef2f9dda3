"""The contract between the one training loop (:mod:`pipeline.train.loop`) and what it trains.

An :class:`Objective` is what a method adds to the loop: its losses, its extra modules and their
learning rates, and a hook at the start of each epoch. Every hook has a default here, so the loop
calls them all and never asks ``hasattr``. Segmentation methods extend it in
:class:`pipeline.methods.base.Method` (supervision, classifier init, data adapter, config);
the CAM networks of the offline baselines in :mod:`pipeline.wsss.objectives`.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class Objective:
    """Hooks of the shared loop, with defaults (override what the method needs).

    Attributes:
        name: recorded in the history and the resume fingerprint.
        warmup_before_training: epochs run before the training epochs at the held learning rate
            (FMWISS's teacher warm-up, Sec. 4.2); 0 for none.
    """

    name: str = "objective"
    warmup_before_training: ClassVar[int] = 0

    def modules(self) -> dict[str, nn.Module]:
        """Extra modules the method trains (localizer, teacher); the loop moves them to the device,
        puts them in train mode each epoch and checkpoints them. Default: none."""
        return {}

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """SGD parameter groups (``params`` and optionally ``lr``). Default: the model at ``lr``."""
        return [{"params": list(model.parameters()), "lr": lr}]

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Called after the loop put the model and the extra modules in train mode (0-based
        ``epoch``). Default: nothing."""

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        """Named scalar float32 losses of one batch; the loop back-propagates their sum.

        Raises:
            NotImplementedError: the default (every objective defines it).
        """
        raise NotImplementedError(f"{type(self).__name__} defines no losses()")

    def learned(self) -> dict:
        """Learned scalars to record beside the trained model (IS-CAM's σ, μ). Default: none."""
        return {}


__all__ = ["Objective"]
