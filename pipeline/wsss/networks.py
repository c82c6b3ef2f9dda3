"""CAM networks of the offline WSSS baselines (``cam``, ``vwe``, ``iscam``) on a timm backbone.

WILSON (Cermelli et al. CVPR 2022, Sec. 4.2) compares against WSSS methods adapted to the
incremental setting: a classifier is trained on the images of step t with the image-level labels
of the step's K new classes, and its class activation maps become hard pseudo-labels. Channel k of
every network here is the split's ``new_classes[k]``.

- ``cam`` (:class:`CamNet`): global average pooling + bias-free 1×1 classifier; CAMs are the
  classifier weights applied to the feature map (Zhou et al. CVPR 2016). Dropout before the
  classifier as in EPS' ``resnet38_cls`` (the implementation WILSON used for its CAM baseline).
- ``vwe`` (:class:`VweNet`): visual word encoder + hybrid spatial pyramid pooling (Ru et al.
  IJCAI 2021, Eq. 1-12; :mod:`pipeline.wsss.vwe`).
- ``iscam`` (:class:`IsCamNet`): softmax CAMs over background + K classes (Jonnarth and Felsberg,
  ICASSP 2022, Eq. 1; :mod:`pipeline.wsss.iscam`).

Every network maps (B, 3, H, W) ImageNet-normalised float images to a dict in ``forward`` (what
its objective needs) and has ``cams(image)`` → (B, C, h, w) float ≥ 0 at feature resolution
(h = ceil(H / output_stride)), with C = K, or C = 1 + K and channel 0 the background when
``has_background`` is true. The backbone is built by :func:`pipeline.models.segmenter.build_backbone`
(timm ``features_only``, ``pretrained: imagenet | none | path``).

Frozen BatchNorm: the papers' code bases (IRNet for VWE, PSA/SEAM for EPS and ISCAM) keep the
backbone's BatchNorm layers in eval mode with fixed affine parameters. ``freeze_bn`` does the
same, but only for pretrained backbones: a randomly initialised timm ResNet zero-initialises the
last BN scale of every block, and freezing it would keep every residual branch at zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.models.segmenter import build_backbone
from pipeline.wsss.iscam import cam_probabilities
from pipeline.wsss.vwe import (
    WORD_FREQUENCY_REDUCTIONS,
    class_activation_maps,
    fuse_cams,
    global_average_pool,
    hspp,
    word_activation_maps,
    word_frequency,
    word_labels,
    word_probabilities,
    word_similarity,
)

#: Config keys every CAM network reads (``wsss.<name>`` in config.yaml).
BACKBONE_KEYS = ("backbone", "output_stride", "pretrained", "freeze_bn", "dropout")


class _CamBase(nn.Module):
    """Backbone, optional frozen BN, feature extraction; subclasses add their heads."""

    name = ""
    has_background = False

    def __init__(
        self, backbone: nn.Module, num_classes: int, output_stride: int, dropout: float = 0.0, freeze_bn: bool = False
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"{self.name}: num_classes={num_classes}, expected >= 1 new class")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{self.name}: dropout={dropout}, expected 0 <= dropout < 1")
        self.backbone = backbone
        self.num_classes, self.output_stride, self.freeze_bn = num_classes, output_stride, freeze_bn
        self.feature_dim = backbone.feature_info.channels()[-1]
        self.dropout = nn.Dropout2d(dropout)
        if freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    for parameter in module.parameters():
                        parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> _CamBase:
        super().train(mode)
        if self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def features(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) → (B, d, ceil(H/os), ceil(W/os)) float backbone features F."""
        return self.backbone(image)[-1]

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the feature map of an H × W image (every stride-2 layer rounds up)."""
        return math.ceil(height / self.output_stride), math.ceil(width / self.output_stride)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters trained from scratch (the papers give them 10× the backbone's learning rate);
        every other parameter belongs to the backbone."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    def tracked_parameters(self) -> dict[str, Tensor]:
        """Parameters whose movement from their initial values the CAM stage records beside the
        model (:func:`parameter_drift`), by name. Default: none."""
        return {}


class CamNet(_CamBase):
    """CAM (Zhou et al. CVPR 2016): GAP → dropout → bias-free 1×1 classifier (EPS' resnet38_cls).

    ``forward(image)`` → ``{"logits": (B, K) float}``; ``cams(image)`` → (B, K, h, w) ReLU(W · F).
    """

    name = "cam"

    def __init__(
        self, backbone: nn.Module, num_classes: int, output_stride: int, dropout: float = 0.5, freeze_bn: bool = False
    ):
        super().__init__(backbone, num_classes, output_stride, dropout, freeze_bn)
        self.classifier = nn.Conv2d(self.feature_dim, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        pooled = global_average_pool(self.dropout(self.features(image)))
        return {"logits": F.linear(pooled, self.classifier.weight.flatten(1))}

    def cams(self, image: Tensor) -> Tensor:
        return F.relu(class_activation_maps(self.features(image), self.classifier.weight))


def _detach_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook: the module's output without gradient (nothing upstream learns)."""
    return output.detach()


def backbone_stage(backbone: nn.Module, stage: int) -> nn.Module:
    """Stage ``stage`` (1-based, after the stem) of a timm ``features_only`` backbone, found
    through timm's ``feature_info``: the module whose output is the stage's feature map. ResNet:
    ``layer{stage}`` (stage 2 = ``layer2``, stride 8); EfficientNet: ``blocks.{stage}`` (stage 2
    = the stride-8 block group); ConvNeXt-like backbones whose first feature is at stride 4:
    ``stages.{stage - 1}``.

    Raises:
        ValueError: no such stage (names the backbone's feature modules).
    """
    every = backbone.feature_info.info  # all feature maps the model has, not only the out_indices taken
    names = [entry["module"] for entry in every]
    # Backbones that report the stem's stride-2 output as feature 0 (ResNet, EfficientNet) number
    # their stages from index 1; the others (first feature at stride 4) from index 0.
    stem_first = every[0]["reduction"] == 2
    index = stage if stem_first else stage - 1
    if not 0 <= index < len(names) or (stem_first and index == 0):
        raise ValueError(
            f"vwe: detach_after_stage={stage}: the backbone has no stage {stage} (its feature modules: {names})"
        )
    return backbone.get_submodule(names[index])


#: Values of ``wsss.vwe.cams_from``: the image branch alone (authors' code) or Eq. 12's fusion.
VWE_CAM_SOURCES = ("image", "fused")


class VweNet(_CamBase):
    """Visual words + HSPP (Ru et al. IJCAI 2021, Fig. 2).

    Codebook C (k, d) (init as the authors' code: Kaiming normal, a = √5); W^img (d → K) on HSPP
    features, W^word (d → k) on GAP features, W^w2i (k → K) on word frequencies, all bias-free
    (Eq. 10-11 use the weights alone).

    ``forward(image)`` → ``{"logits": p^img (B, K), "word_logits": p^word (B, k),
    "w2i_logits": p^w2i (B, K), "word_labels": y^word (B, k) in {0, 1}}``.
    ``cams(image)`` → (B, K, h, w): ReLU(M^img) (Eq. 10; ``cams_from="image"``) or
    max(ReLU(M^img), ReLU(M^word)) (Eq. 10-12; ``cams_from="fused"``).

    Args (beyond the backbone's):
        num_words: k (256, Sec. 4.1).
        pyramid_levels: r of Eq. 5 ({1, 2, 4}).
        gamma: γ of Eq. 7 (2, Sec. 4.1).
        detach_word_features: the encoder reads F without gradient to the backbone (authors' code;
            the paper does not say), so only the codebook and W^w2i learn from the word branch.
        word_frequency_reduction: Eq. 4 over the pixels, ``"sum"`` (authors' code: the codebook
            learns) or ``"mean"`` (paper; see :func:`pipeline.wsss.vwe.word_frequency`).
        detach_after_stage: the backbone's output of residual stage s (1-based,
            :func:`backbone_stage`) is detached, so the stem and stages 1..s never learn:
            ``2`` is the authors' ``x2 = self.stage2(x1).detach()`` (the paper is silent);
            ``None``: the whole backbone learns.
        cams_from: ``"image"``: the CAMs are the image branch's, ReLU(W^img · F) (authors'
            ``return_cam``; the paper's Sec. 3.5 fuses both branches); ``"fused"``: Eq. 12. With
            ``word_frequency_reduction="sum"`` the logit p^w2i is the *sum* of M^word over the
            pixels, so M^word is ~hw times smaller than M^img and the fusion is mostly M^img.
    """

    name = "vwe"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        output_stride: int,
        dropout: float = 0.0,
        freeze_bn: bool = False,
        num_words: int = 256,
        pyramid_levels=(1, 2, 4),
        gamma: float = 2.0,
        detach_word_features: bool = True,
        word_frequency_reduction: str = "sum",
        detach_after_stage: int | None = 2,
        cams_from: str = "image",
    ):
        super().__init__(backbone, num_classes, output_stride, dropout, freeze_bn)
        if num_words < 1:
            raise ValueError(f"vwe: num_words={num_words}, expected >= 1")
        if word_frequency_reduction not in WORD_FREQUENCY_REDUCTIONS:
            raise ValueError(
                f"vwe: word_frequency_reduction={word_frequency_reduction!r}, "
                f"expected one of {list(WORD_FREQUENCY_REDUCTIONS)}"
            )
        if cams_from not in VWE_CAM_SOURCES:
            raise ValueError(f"vwe: cams_from={cams_from!r}, expected one of {list(VWE_CAM_SOURCES)}")
        if detach_after_stage is not None and (
            isinstance(detach_after_stage, bool) or not isinstance(detach_after_stage, int) or detach_after_stage < 1
        ):
            raise ValueError(f"vwe: detach_after_stage={detach_after_stage!r}, expected a stage >= 1 or None")
        self.pyramid_levels, self.gamma = tuple(int(r) for r in pyramid_levels), float(gamma)
        self.detach_word_features = detach_word_features
        self.word_frequency_reduction, self.cams_from = word_frequency_reduction, cams_from
        self.detach_after_stage = detach_after_stage
        if detach_after_stage is not None:
            backbone_stage(self.backbone, detach_after_stage).register_forward_hook(_detach_output)
        self.codebook = nn.Parameter(torch.empty(num_words, self.feature_dim))
        nn.init.kaiming_normal_(self.codebook, a=math.sqrt(5))
        self.classifier = nn.Conv2d(self.feature_dim, num_classes, 1, bias=False)  # W^img
        self.word_classifier = nn.Conv2d(self.feature_dim, num_words, 1, bias=False)  # W^word
        self.word_to_image = nn.Conv2d(num_words, num_classes, 1, bias=False)  # W^w2i

    @property
    def num_words(self) -> int:
        return self.codebook.shape[0]

    def tracked_parameters(self) -> dict[str, Tensor]:
        """The codebook C (k, d): it learns only through the word-frequency term (Eq. 4), so its
        drift from the initial values shows whether the word branch trains at all."""
        return {"codebook": self.codebook}

    def word_maps(self, features: Tensor) -> Tensor:
        """(B, d, h, w) F → (B, k, h, w) word probabilities P (Eq. 1-2)."""
        source = features.detach() if self.detach_word_features else features
        return word_probabilities(word_similarity(source, self.codebook))

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        features = self.dropout(self.features(image))
        probabilities = self.word_maps(features)
        frequency = word_frequency(probabilities, self.word_frequency_reduction)
        return {
            "logits": F.linear(hspp(features, self.pyramid_levels, self.gamma), self.classifier.weight.flatten(1)),
            "word_logits": F.linear(global_average_pool(features), self.word_classifier.weight.flatten(1)),
            "w2i_logits": F.linear(frequency, self.word_to_image.weight.flatten(1)),
            "word_labels": word_labels(probabilities),
        }

    def cams(self, image: Tensor) -> Tensor:
        features = self.features(image)
        image_cams = class_activation_maps(features, self.classifier.weight)
        if self.cams_from == "image":
            return F.relu(image_cams)
        word_cams = word_activation_maps(self.word_maps(features), self.word_to_image.weight)
        return fuse_cams(image_cams, word_cams)


class IsCamNet(_CamBase):
    """Importance-sampling CAM network (Jonnarth and Felsberg, ICASSP 2022, Sec. 3.1).

    Bias-free 1×1 classifier over 1 + K channels (background first) on dropout(F), as the
    authors' ``resnet38_cam`` ``fc8`` (Xavier init). The SEAM parts of the authors' network
    (pixel correlation module, equivariance losses) are not part of the paper's Eq. 1-8 and are
    left out.

    ``forward(image)`` → ``{"scores": s (B, 1+K, h, w) logits, "probs": a (B, 1+K, h, w)}``;
    ``cams(image)`` → (B, 1 + K, h, w) softmax probabilities a (Eq. 1), channel 0 background.
    """

    name = "iscam"
    has_background = True

    def __init__(
        self, backbone: nn.Module, num_classes: int, output_stride: int, dropout: float = 0.5, freeze_bn: bool = False
    ):
        super().__init__(backbone, num_classes, output_stride, dropout, freeze_bn)
        self.classifier = nn.Conv2d(self.feature_dim, num_classes + 1, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        scores = self.classifier(self.dropout(self.features(image)))
        return {"scores": scores, "probs": cam_probabilities(scores)}

    def cams(self, image: Tensor) -> Tensor:
        return cam_probabilities(self.classifier(self.features(image)))


CAM_NETWORKS: dict[str, type[_CamBase]] = {"cam": CamNet, "vwe": VweNet, "iscam": IsCamNet}
#: Keys of ``wsss.vwe`` beyond :data:`BACKBONE_KEYS` that :func:`build_cam_model` reads.
VWE_KEYS = (
    "num_words",
    "pyramid_levels",
    "gamma",
    "detach_word_features",
    "word_frequency_reduction",
    "detach_after_stage",
    "cams_from",
)


def parameter_drift(initial: dict[str, Tensor], final: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """How far each tracked parameter moved in training: ``{name: {"norm_initial", "norm_final",
    "relative_change"}}`` with the Frobenius norms ‖P₀‖, ‖P‖ and ‖P − P₀‖ / ‖P₀‖ (a fraction,
    0 = unchanged; computed in float64 on the CPU).

    Args:
        initial, final: the same names, each a tensor of the same shape (any dtype and device).

    Raises:
        ValueError: the names or a shape differ, or an initial tensor is all zeros (no relative
            change).
    """
    if set(initial) != set(final):
        raise ValueError(f"parameter_drift: names differ, {sorted(initial)} vs {sorted(final)}")
    drift = {}
    for name in sorted(initial):
        before = initial[name].detach().to("cpu", torch.float64)
        after = final[name].detach().to("cpu", torch.float64)
        if before.shape != after.shape:
            raise ValueError(f"parameter_drift: {name} has shape {tuple(before.shape)} → {tuple(after.shape)}")
        norm = float(torch.linalg.vector_norm(before))
        if norm == 0.0:
            raise ValueError(f"parameter_drift: {name} is all zeros initially, no relative change")
        drift[name] = {
            "norm_initial": norm,
            "norm_final": float(torch.linalg.vector_norm(after)),
            "relative_change": float(torch.linalg.vector_norm(after - before)) / norm,
        }
    return drift


def build_cam_model(name: str, cfg: dict, num_classes: int) -> _CamBase:
    """Build the CAM network ``name`` from its config section (``wsss.<name>``).

    Args:
        name: ``cam``, ``vwe`` or ``iscam``.
        cfg: ``backbone`` (timm name), ``output_stride`` (8, 16 or 32), ``pretrained``
            (``imagenet`` | ``none`` | path), ``freeze_bn``, ``dropout``; ``vwe`` also
            ``num_words``, ``pyramid_levels``, ``gamma``, ``detach_word_features``,
            ``word_frequency_reduction``, ``detach_after_stage`` (int or null), ``cams_from``.
        num_classes: K, the new classes of the step.
    Returns:
        The network (train mode, CPU).
    Raises:
        ValueError: unknown name, missing key (named), bad value; FileNotFoundError: missing
            backbone checkpoint.
    """
    if name not in CAM_NETWORKS:
        raise ValueError(f"unknown CAM network {name!r}; known: {', '.join(CAM_NETWORKS)}")
    missing = [key for key in BACKBONE_KEYS if key not in cfg]
    if name == "vwe":
        missing += [key for key in VWE_KEYS if key not in cfg]
    if missing:
        raise ValueError(f"wsss.{name}: missing key(s) {', '.join(missing)}")
    backbone = build_backbone(cfg["backbone"], int(cfg["output_stride"]), str(cfg["pretrained"]))
    common = {
        "output_stride": int(cfg["output_stride"]),
        "dropout": float(cfg["dropout"]),
        "freeze_bn": bool(cfg["freeze_bn"]) and str(cfg["pretrained"]) != "none",
    }
    if name == "vwe":
        return VweNet(
            backbone,
            num_classes,
            num_words=int(cfg["num_words"]),
            pyramid_levels=cfg["pyramid_levels"],
            gamma=float(cfg["gamma"]),
            detach_word_features=bool(cfg["detach_word_features"]),
            word_frequency_reduction=str(cfg["word_frequency_reduction"]),
            detach_after_stage=cfg["detach_after_stage"],
            cams_from=str(cfg["cams_from"]),
            **common,
        )
    return CAM_NETWORKS[name](backbone, num_classes, **common)


def save_cam_model(path: str | Path, net: _CamBase, meta: dict) -> None:
    """Save weights and what rebuilds the network (atomic, byte-deterministic:
    :func:`pipeline.checkpoint.save_checkpoint`).

    The file holds ``{"state_dict": net.state_dict(), "meta": meta}``. ``meta`` must hold
    ``cam_cfg`` (the ``wsss.<name>`` section); ``cam`` (the name) and ``num_classes`` are taken
    from the network. Anything else JSON-like (task, step, classes, training settings, learned
    scalars) is kept.

    Raises:
        ValueError: no ``cam_cfg``; TypeError: ``meta`` holds something else than tensors,
            numbers, strings, None and containers of them (names the key). Nothing is written.
    """
    if "cam_cfg" not in meta:
        raise ValueError(f"{path}: meta needs 'cam_cfg' (the wsss.<name> config section) to rebuild the network")
    meta = dict(meta, cam=net.name, num_classes=net.num_classes)
    save_checkpoint({"state_dict": net.state_dict(), "meta": meta}, path)


def load_cam_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[_CamBase, dict]:
    """Rebuild a network saved by :func:`save_cam_model` (backbone built with ``pretrained: none``
    and overwritten by the saved weights, so loading never needs the network); eval mode.

    The file is read with the safe unpickler only (:func:`pipeline.checkpoint.load_checkpoint`):
    a file holding other Python objects is refused, never run.

    Returns:
        ``(net, meta)``: the network on ``device`` in eval mode and the saved ``meta`` dict.
    Raises:
        pipeline.checkpoint.CheckpointNotFoundError (a FileNotFoundError and ValueError): no such
        file; pipeline.checkpoint.CheckpointError (a ValueError): empty, truncated or corrupt
        file, a file the safe loader refuses (names the global), not a CAM network of this
        pipeline, or weights that do not fit the network its meta describes. Every message
        names the file.
    """
    path = Path(path)
    payload = load_checkpoint(path, map_location=device, what="CAM model file")
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in payload or not {"cam", "cam_cfg", "num_classes"} <= set(meta):
        raise CheckpointError(
            f"{path}: not a CAM network of this pipeline (expected keys state_dict, meta.cam, meta.cam_cfg, "
            "meta.num_classes); give the model.pt written by train-cam"
        )
    net = build_cam_model(meta["cam"], dict(meta["cam_cfg"], pretrained="none"), int(meta["num_classes"]))
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the network its meta describes ({err})") from err
    return net.to(device).eval(), meta


__all__ = [
    "CAM_NETWORKS",
    "CamNet",
    "IsCamNet",
    "VweNet",
    "build_cam_model",
    "load_cam_model",
    "parameter_drift",
    "save_cam_model",
]
