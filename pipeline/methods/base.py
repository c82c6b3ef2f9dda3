"""The method contract: :class:`Method` (every hook the loop and the step stage use, with
defaults), :class:`OldModelMethod` (methods that learn from the frozen step t-1 model), the
:class:`StepContext` a method gets at t >= 1 and the :class:`StepInputs` its data adapter reads.

Class sets (DESIGN.md): ``old`` = object classes learned before step t (background excluded),
``new`` = added at t, ``seen`` = background + old + new. The logits' channels are the seen classes
in order, so channel c is class c.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from pipeline.data.datasets import pixel_dataset
from pipeline.data.tasks import new_classes, seen_classes
from pipeline.methods.registry import MethodSpec
from pipeline.objective import Objective


def segmenter_param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """SGD groups: the backbone at ``lr``, the ASPP head and the classifier at ``lr * head_lr_mult``
    (WILSON Sec. 4.3: 0.001 for the encoder, 0.01 for the head)."""
    return [
        {"params": list(model.backbone.parameters()), "lr": lr},
        {"params": list(model.head.parameters()) + list(model.classifier.parameters()), "lr": lr * head_lr_mult},
    ]


@dataclass
class StepContext:
    """The learning step t >= 1 of a task, and the frozen model of step t-1.

    Attributes:
        task, step: e.g. "15-5", 1.
        old_model: the step t-1 segmenter, frozen, in eval mode, on the training device.
        num_old_channels: |Y^{t-1}|, channels of the old model: background + the old classes (learned
            before t); the first channels of the logits. (``old_classes`` excludes background.)
        new_classes: C^t, class indices (= channel indices) added at step t (the last channels).
        num_classes: |Y^t| = num_old_channels + len(new_classes).
    """

    task: str
    step: int
    old_model: nn.Module
    num_old_channels: int
    new_classes: list[int]
    num_classes: int

    @classmethod
    def build(cls, task: str, step: int, old_model: nn.Module, table: str = "voc") -> StepContext:
        """Freeze ``old_model`` and derive the class sets of ``task`` at ``step`` (``table``: the
        split's task table, :mod:`pipeline.data.tasks`).

        Raises:
            ValueError: ``step`` < 1.
        """
        if step < 1:
            raise ValueError(f"an incremental step is t >= 1, got {step}")
        old_model.eval()
        for parameter in old_model.parameters():
            parameter.requires_grad_(False)
        num_old_channels = len(seen_classes(task, step - 1, table))
        return cls(
            task,
            step,
            old_model,
            num_old_channels,
            new_classes(task, step, table),
            len(seen_classes(task, step, table)),
        )


@dataclass
class StepInputs:
    """What a method's data adapter (:meth:`Method.dataset`) reads to build its training set.

    Attributes:
        split: the ``splits`` stage's step{t}.json (ids, image-level labels, task, protocol, step).
        data_index: path of the ``prepare-data`` index (dataset root, mask folder, class presence).
        num_classes: |Y^t|, length of the image-label vectors.
        train: the validated ``train_step`` section (crop_size, scale_range, ...).
        caches: paths of the caches the method's spec ``reads`` (``pseudo``, ``coseg``, ``memory``).
    """

    split: dict
    data_index: str
    num_classes: int
    train: dict
    caches: dict[str, str] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.split["task"]

    @property
    def step(self) -> int:
        return int(self.split["step"])

    def cache(self, key: str, what: str) -> str:
        """The path of cache ``key``; ``what`` names its producer in the error.

        Raises:
            ValueError: the cache was not given.
        """
        if not self.caches.get(key):
            raise ValueError(f"this method needs --{key} ({what})")
        return self.caches[key]


class Method(Objective):
    """A segmentation method in the shared loop: its losses (:class:`Objective`), how its new
    classifier channels start, what its training set yields, and how it builds itself.

    Attributes:
        spec: the registry's :class:`MethodSpec` (set by :meth:`from_config`).
        classifier_init: ``background`` (MiB Sec. 3.4: new channels copy the background's) or
            ``prior`` (zero weights, bias logit(0.01): sigmoid outputs start low).
        head_lr_mult: learning-rate multiplier of the head (and extra modules) over the backbone's.
    """

    spec: MethodSpec
    classifier_init: ClassVar[str] = "background"
    head_lr_mult: float = 1.0

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec
    ) -> Method:
        """Build from the method's complete config section (``methods.<name>``, defaults from
        config.yaml, validated by the schema). Abstract: every registered method defines it.

        Raises:
            NotImplementedError: a subclass that does not define it.
        """
        raise NotImplementedError(f"{cls.__qualname__} defines no from_config()")

    def bind(self, spec: MethodSpec) -> Method:
        """Attach the registry spec; the recorded name is the spec's."""
        self.spec, self.name = spec, spec.name
        return self

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """The segmenter's two groups (:func:`segmenter_param_groups`) plus every extra module at
        the head's learning rate."""
        groups = segmenter_param_groups(model, lr, self.head_lr_mult)
        for module in self.modules().values():
            groups.append({"params": list(module.parameters()), "lr": lr * self.head_lr_mult})
        return groups

    def dataset(self, inputs: StepInputs) -> Dataset:
        """The step's training set as this method sees it (its data adapter).

        Default: pixel labels of the step's classes on the step's images (``gt``; classes of other
        steps are background, MiB's setting).
        """
        return pixel_dataset(inputs.data_index, inputs.split["ids"], inputs.train, inputs.task, inputs.step)


class OldModelMethod(Method):
    """A method that learns from the frozen step t-1 model: keeps it in eval mode and gives its
    logits on a batch."""

    context: StepContext

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.context.old_model.eval()

    def old_logits(self, image: Tensor) -> Tensor:
        """(B, |Y^{t-1}|, H, W) float32 logits of the old model on ``image``, without gradient."""
        with torch.no_grad():
            return self.context.old_model(image)["out"].float()


__all__ = ["Method", "OldModelMethod", "StepContext", "StepInputs", "segmenter_param_groups"]
