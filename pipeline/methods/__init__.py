"""Methods as objectives plugged into the shared loop (:mod:`pipeline.train.loop`).

Adding a method is one module here and one entry in :data:`OBJECTIVES`: a factory taking the
method's config section, the :class:`StepContext` (None at step 0) and the model being trained.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from pipeline.methods.base import PixelSupervised
from pipeline.methods.context import StepContext
from pipeline.methods.fmwiss import FMWISS, segmenter_atrous_rates
from pipeline.methods.mib import MiB
from pipeline.methods.pseudo import PseudoLabelDistillation
from pipeline.methods.variants import resolve_method
from pipeline.methods.wilson import Wilson


def _pixel(name: str) -> Callable:
    return lambda cfg, context, model: PixelSupervised(cfg.get("loss", "ce"), cfg.get("head_lr_mult", 1.0), name)


OBJECTIVES: dict[str, Callable] = {
    "base": _pixel("base"),
    "ft": _pixel("ft"),
    "joint": _pixel("joint"),
    "mib": lambda cfg, context, model: MiB(context, cfg["kd_weight"], cfg["kd_alpha"], cfg["head_lr_mult"]),
    "wilson": lambda cfg, context, model: Wilson(
        context, model.backbone.feature_info.channels()[-1], cfg["warmup_epochs"], cfg["alpha"],
        cfg["focal_lambda"], cfg["focal_gamma"], cfg["ngwp_eps"], cfg.get("relaxed", False),
        cfg["restrict_to_labels"], cfg["head_lr_mult"]),
    "fmwiss": lambda cfg, context, model: FMWISS(
        context, model.backbone.feature_info.channels()[-1], cfg["warmup_epochs"], cfg["lambda_dcl"], cfg["tau"],
        cfg["points_per_class"], cfg["alpha"], cfg["beta"], cfg["head_lr_mult"],
        restrict_to_labels=cfg["restrict_to_labels"], pasted_one_hot=cfg["pasted_one_hot"],
        suppress_background=cfg["suppress_background"], teacher_prior=cfg["teacher_prior"],
        all_bce_reduction=cfg["all_bce_reduction"],
        atrous_rates=segmenter_atrous_rates(model)),
}
# The offline WSSS baselines differ only in the CAM network that made their pseudo-labels.
for _cam in ("cam", "vwe", "iscam"):
    OBJECTIVES[_cam] = (lambda name: lambda cfg, context, model: PseudoLabelDistillation(
        name, context, cfg["head_lr_mult"]))(_cam)


def build_objective(name: str, cfg: dict, context: StepContext | None = None, model: nn.Module | None = None):
    """The objective of method ``name`` built from its config section.

    Raises:
        ValueError: unknown method, or an incremental method without a step context.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    if name not in ("base", "ft", "joint") and context is None:
        raise ValueError(f"method {name!r} runs at steps t >= 1 and needs the step context")
    return OBJECTIVES[name](cfg, context, model)


__all__ = ["OBJECTIVES", "StepContext", "build_objective", "resolve_method"]
