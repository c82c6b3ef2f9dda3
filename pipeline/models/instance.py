"""The segmenter with a Panoptic-DeepLab instance branch (CL4WSIS Sec. 4.3).

CL4WSIS (Hsieh et al., ICCV 2023) builds its *Segmenter* as Panoptic-DeepLab (Cheng et al., CVPR
2020) whose semantic branch is DeepLabV3: the semantic part is this pipeline's
:class:`pipeline.models.segmenter.Segmenter` (encoder, ASPP head, incremental classifier), and
:class:`InstanceSegmenter` adds the *instance branch*, Panoptic-DeepLab's instance decoder:

- an ASPP on the encoder's last feature map (torchvision's ``ASPP``, the module the semantic
  head uses; ``aspp_channels`` wide, with its dropout 0.5 as Panoptic-DeepLab's);
- a top-down path over lower encoder levels (one per entry of ``low_level_strides``, each the
  deepest encoder level at that stride other than the last), each projected by a 1x1 conv + BN +
  ReLU to ``low_level_project`` channels, concatenated with the upsampled (bilinear,
  ``align_corners=True``) path and fused by a 5x5 depthwise-separable conv (depthwise 5x5 + BN +
  ReLU, pointwise 1x1 + BN + ReLU) to ``decoder_channels``;
- two heads, each a 5x5 depthwise-separable conv to ``head_channels`` and a 1x1 conv: the
  *center* heatmap (1 channel, class-agnostic as Panoptic-DeepLab and CL4WSIS Sec. 3; the
  authors' code predicts one heatmap per class, BESTIE's layout) and the 2-D *offsets*
  ``(dy, dx)``.

Channel counts and strides of the encoder levels come from timm's ``feature_info`` of the
segmenter's backbone; the lower levels are read by forward hooks on the backbone's modules, so
the semantic segmenter is unchanged (its weights load as they are). Defaults in config.yaml
(``methods.cl4wsis.instance``) are the authors' (``modules/panoptic_deeplab.py`` of
AI-Application-and-Integration-Lab/CL4WSIS): levels at strides 16, 8, 4 projected to 64, 32,
16 channels, decoder 128, ASPP 256, heads 128 (center) and 32 (offset), ASPP rates 3, 6, 9.

Outputs are upsampled (bilinear, ``align_corners=False``) to the input size, offsets *not*
rescaled: the offsets are learned in input pixels (their targets are made at input resolution),
as the authors' code does (``F.interpolate(outputs['offset'], size=images.shape[-2:])``), while
Panoptic-DeepLab's reference multiplies upsampled offsets by the scale factor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.models.segmenter import Segmenter, build_segmenter, save_model

#: Keys of the ``instance`` settings (config ``methods.cl4wsis.instance``).
INSTANCE_KEYS = (
    "low_level_strides",
    "low_level_project",
    "aspp_channels",
    "decoder_channels",
    "center_head_channels",
    "offset_head_channels",
    "atrous_rates",
)


def separable_conv(in_channels: int, out_channels: int, kernel_size: int = 5) -> nn.Sequential:
    """Panoptic-DeepLab's depthwise-separable conv: depthwise k x k + BN + ReLU, pointwise 1x1 + BN
    + ReLU (``depthwise_separable_conv`` of the reference decoder). Keeps the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InstanceDecoder(nn.Module):
    """Panoptic-DeepLab's instance decoder and heads (module docstring).

    ``forward(features, low_level)`` maps the encoder's last map (B, F, h, w) and the lower maps
    (each (B, F_i, h_i, w_i), from the deepest to the shallowest) to ``(center (B, 1, h_L, w_L),
    offset (B, 2, h_L, w_L))`` float at the resolution of the last lower map (the last map's when
    there is none). Raw outputs: no sigmoid on the heatmap (Panoptic-DeepLab's MSE target is the
    Gaussian itself).

    Args:
        in_channels: F.
        low_level_channels: F_i of the lower maps, deepest first.
        low_level_project: their projected widths (same length).
        aspp_channels, decoder_channels, center_head_channels, offset_head_channels: widths.
        atrous_rates: the three ASPP rates.
    Raises:
        ValueError: lengths differ, a non-positive width, or not three rates.
    """

    def __init__(
        self,
        in_channels: int,
        low_level_channels: Sequence[int],
        low_level_project: Sequence[int],
        aspp_channels: int = 256,
        decoder_channels: int = 128,
        center_head_channels: int = 128,
        offset_head_channels: int = 32,
        atrous_rates: Sequence[int] = (3, 6, 9),
    ):
        super().__init__()
        if len(low_level_channels) != len(low_level_project):
            raise ValueError(
                f"low_level_project={list(low_level_project)}: one width per lower level "
                f"({len(low_level_channels)} levels: {list(low_level_channels)} channels)"
            )
        widths = [in_channels, aspp_channels, decoder_channels, center_head_channels, offset_head_channels]
        if min([*widths, *low_level_channels, *low_level_project]) < 1:
            raise ValueError(f"instance branch widths must be >= 1, got {widths} and {list(low_level_project)}")
        if len(atrous_rates) != 3:
            raise ValueError(f"atrous_rates={list(atrous_rates)}: expected three rates")
        self.aspp = ASPP(in_channels, list(atrous_rates), aspp_channels)
        self.project = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, p, 1, bias=False), nn.BatchNorm2d(p), nn.ReLU(inplace=True))
            for c, p in zip(low_level_channels, low_level_project)
        )
        fuse_in = [aspp_channels if i == 0 else decoder_channels for i in range(len(low_level_project))]
        self.fuse = nn.ModuleList(separable_conv(f + p, decoder_channels) for f, p in zip(fuse_in, low_level_project))
        top = decoder_channels if low_level_project else aspp_channels
        self.center_head = nn.Sequential(
            separable_conv(top, center_head_channels), nn.Conv2d(center_head_channels, 1, 1)
        )
        self.offset_head = nn.Sequential(
            separable_conv(top, offset_head_channels), nn.Conv2d(offset_head_channels, 2, 1)
        )

    def forward(self, features: Tensor, low_level: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if len(low_level) != len(self.project):
            raise ValueError(f"expected {len(self.project)} lower feature maps, got {len(low_level)}")
        x = self.aspp(features)
        for level, project, fuse in zip(low_level, self.project, self.fuse):
            skip = project(level)
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = fuse(torch.cat([x, skip], dim=1))
        return self.center_head(x), self.offset_head(x)


def low_level_indices(backbone: nn.Module, strides: Sequence[int]) -> list[int]:
    """Indices into ``backbone.feature_info`` of the lower levels read by the instance branch.

    For each stride (deepest first), the deepest encoder level with that reduction that is not
    the last level (the ASPP's input).

    Args:
        backbone: a timm ``features_only`` model (``feature_info`` over all its levels).
        strides: reductions, e.g. (16, 8, 4) (the authors' res4, res3, res2 at output stride 16).
    Returns:
        Level indices, in the order of ``strides``.
    Raises:
        ValueError: a stride no level other than the last has (names the available ones).
    """
    info = backbone.feature_info
    reductions = [info.reduction(i) for i in range(len(info))]
    last = len(info) - 1
    out = []
    for stride in strides:
        candidates = [i for i in range(last) if reductions[i] == stride]
        if not candidates:
            raise ValueError(
                f"instance.low_level_strides: no encoder level at stride {stride} below the last one "
                f"(levels' strides: {reductions}, the last is the ASPP's input); choose among {sorted(set(reductions[:last]))}"
            )
        out.append(candidates[-1])
    return out


def _module_path(backbone: nn.Module, name: str) -> str:
    """The path of a feature level's module: timm's FeatureListNet flattens dotted names with ``_``.

    Raises:
        ValueError: no such module.
    """
    for candidate in (name, name.replace(".", "_")):
        try:
            backbone.get_submodule(candidate)
        except AttributeError:
            continue
        return candidate
    raise ValueError(f"encoder has no module {name!r} (timm feature_info module name)")


def _keep_output(module: nn.Module, inputs: Any, output: Tensor) -> None:
    """Forward hook of a lower feature level: keeps its output while ``module.keep_output`` is set
    (inside :meth:`InstanceSegmenter.forward` only). State lives on the hooked module, so a
    ``copy.deepcopy`` of the model hooks its own copy."""
    if getattr(module, "keep_output", False):
        module.kept_output = output


class InstanceSegmenter(nn.Module):
    """:class:`Segmenter` + Panoptic-DeepLab instance branch (CL4WSIS's Segmenter, Sec. 4.3).

    ``forward(x)`` takes (B, 3, H, W) normalised float images and returns the segmenter's dict
    (``out`` (B, C, H, W) logits, ``features``, ``head``) plus ``center`` (B, 1, H, W) float
    heatmap scores (trained towards [0, 1]) and ``offset`` (B, 2, H, W) float ``(dy, dx)`` in
    input pixels, both at input resolution.

    ``semantic_frozen`` (CL4WSIS Phase 2: "only train the instance branch"): the segmenter runs
    without gradient and the instance branch reads its features detached; the caller keeps the
    frozen modules in eval mode (:meth:`freeze_semantic`).

    ``backbone``, ``head``, ``classifier`` and ``num_classes`` are the segmenter's, so code written
    for a :class:`Segmenter` (parameter groups, ``classifier.add_step``, evaluation) works on it.

    Args:
        segmenter: the semantic model.
        instance_cfg: the keys of :data:`INSTANCE_KEYS` (config ``methods.cl4wsis.instance``).
    Raises:
        ValueError: a missing or unknown key, or a stride the encoder lacks.
    """

    def __init__(self, segmenter: Segmenter, instance_cfg: dict[str, Any]):
        super().__init__()
        missing = [k for k in INSTANCE_KEYS if k not in instance_cfg]
        unknown = sorted(set(instance_cfg) - set(INSTANCE_KEYS))
        if missing or unknown:
            raise ValueError(
                f"instance settings: missing keys {missing}, unknown keys {unknown}; expected {INSTANCE_KEYS}"
            )
        self.instance_cfg = {k: instance_cfg[k] for k in INSTANCE_KEYS}
        self.segmenter = segmenter
        backbone = segmenter.backbone
        self.levels = low_level_indices(backbone, instance_cfg["low_level_strides"])
        info = backbone.feature_info
        self.instance = InstanceDecoder(
            info.channels(len(info) - 1),
            [info.channels(i) for i in self.levels],
            list(instance_cfg["low_level_project"]),
            int(instance_cfg["aspp_channels"]),
            int(instance_cfg["decoder_channels"]),
            int(instance_cfg["center_head_channels"]),
            int(instance_cfg["offset_head_channels"]),
            list(instance_cfg["atrous_rates"]),
        )
        self.semantic_frozen = False
        self.level_modules = [_module_path(backbone, info.module_name(level)) for level in self.levels]
        for path in self.level_modules:
            backbone.get_submodule(path).register_forward_hook(_keep_output)

    @property
    def backbone(self) -> nn.Module:
        return self.segmenter.backbone

    @property
    def head(self) -> nn.Module:
        return self.segmenter.head

    @property
    def classifier(self) -> nn.Module:
        return self.segmenter.classifier

    @property
    def num_classes(self) -> int:
        return self.segmenter.num_classes

    def freeze_semantic(self, frozen: bool = True) -> None:
        """Phase 2: no gradient through the segmenter, its parameters frozen and in eval mode (BN
        statistics kept, as the authors' ``model.module.body.eval()``, ``head.eval()``); call again
        after every ``train()`` (the loop's ``on_epoch_start`` hook)."""
        self.semantic_frozen = frozen
        for parameter in self.segmenter.parameters():
            parameter.requires_grad_(not frozen)
        if frozen:
            self.segmenter.eval()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        context = torch.no_grad() if self.semantic_frozen else contextlib.nullcontext()
        modules = [self.backbone.get_submodule(path) for path in self.level_modules]
        for module in modules:
            module.keep_output = True
        try:
            with context:
                out = self.segmenter(x)
            low = [module.kept_output for module in modules]
        finally:
            for module in modules:
                module.keep_output, module.kept_output = False, None
        features = out["features"]
        if self.semantic_frozen:
            features, low = features.detach(), [t.detach() for t in low]
        center, offset = self.instance(features, low)
        size = x.shape[-2:]
        out["center"] = F.interpolate(center, size=size, mode="bilinear", align_corners=False)
        out["offset"] = F.interpolate(offset, size=size, mode="bilinear", align_corners=False)
        return out


def build_instance_segmenter(
    model_cfg: dict, classes_per_step: list[int], instance_cfg: dict[str, Any]
) -> InstanceSegmenter:
    """A :class:`InstanceSegmenter` from the ``model`` section and the instance settings.

    Args:
        model_cfg: as :func:`pipeline.models.segmenter.build_segmenter`.
        classes_per_step: classifier blocks, e.g. [16] at step 0 of 15-5.
        instance_cfg: :data:`INSTANCE_KEYS`.
    """
    return InstanceSegmenter(build_segmenter(model_cfg, classes_per_step), instance_cfg)


def save_instance_model(path: str | Path, model: InstanceSegmenter, meta: dict) -> None:
    """Save weights and ``meta`` (+ ``instance`` settings and ``classes_per_step``) atomically and
    byte-deterministically (:func:`pipeline.models.segmenter.save_model`)."""
    save_model(path, model, dict(meta, instance=model.instance_cfg))


def load_instance_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[InstanceSegmenter, dict]:
    """Rebuild a model saved by :func:`save_instance_model` (backbone built with ``pretrained:
    none``, then overwritten; safe unpickler only).

    Returns:
        ``(model, meta)`` with the model on ``device``.
    Raises:
        pipeline.checkpoint.CheckpointError: missing/corrupt/unsafe file, not an instance model
            (no ``meta.instance``: a semantic model of ``train-base``/``train-step``), or weights
            that do not fit; every message names the file.
    """
    path = Path(path)
    payload = load_checkpoint(path, map_location=device, what="instance model file")
    meta = payload.get("meta") if isinstance(payload, dict) else None
    required = {"model", "classes_per_step", "instance"}
    if not isinstance(meta, dict) or "state_dict" not in payload or not required <= set(meta):
        raise CheckpointError(
            f"{path}: not an instance model (expected keys state_dict, meta.model, meta.classes_per_step, "
            "meta.instance); a semantic model.pt has no instance branch: give the instance model of the step"
        )
    model = build_instance_segmenter(dict(meta["model"], pretrained="none"), meta["classes_per_step"], meta["instance"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the model its meta describes ({err})") from err
    return model.to(device), meta


__all__ = [
    "INSTANCE_KEYS",
    "InstanceDecoder",
    "InstanceSegmenter",
    "build_instance_segmenter",
    "load_instance_model",
    "low_level_indices",
    "save_instance_model",
    "separable_conv",
]
