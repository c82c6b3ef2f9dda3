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

from pipeline.io import atomic_path
from pipeline.models.segmenter import build_backbone
from pipeline.wsss.iscam import cam_probabilities
from pipeline.wsss.vwe import (
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


class VweNet(_CamBase):
    """Visual words + HSPP (Ru et al. IJCAI 2021, Fig. 2).

    Codebook C (k, d) (init as the authors' code: Kaiming normal, a = √5); W^img (d → K) on HSPP
    features, W^word (d → k) on GAP features, W^w2i (k → K) on word frequencies, all bias-free
    (Eq. 10-11 use the weights alone).

    ``forward(image)`` → ``{"logits": p^img (B, K), "word_logits": p^word (B, k),
    "w2i_logits": p^w2i (B, K), "word_labels": y^word (B, k) in {0, 1}}``.
    ``cams(image)`` → (B, K, h, w) max(ReLU(M^img), ReLU(M^word)) (Eq. 10-12).

    Args (beyond the backbone's):
        num_words: k (256, Sec. 4.1).
        pyramid_levels: r of Eq. 5 ({1, 2, 4}).
        gamma: γ of Eq. 7 (2, Sec. 4.1).
        detach_word_features: the encoder reads F without gradient to the backbone (authors' code;
            the paper does not say), so only the codebook and W^w2i learn from the word branch.
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
    ):
        super().__init__(backbone, num_classes, output_stride, dropout, freeze_bn)
        if num_words < 1:
            raise ValueError(f"vwe: num_words={num_words}, expected >= 1")
        self.pyramid_levels, self.gamma = tuple(int(r) for r in pyramid_levels), float(gamma)
        self.detach_word_features = detach_word_features
        self.codebook = nn.Parameter(torch.empty(num_words, self.feature_dim))
        nn.init.kaiming_normal_(self.codebook, a=math.sqrt(5))
        self.classifier = nn.Conv2d(self.feature_dim, num_classes, 1, bias=False)  # W^img
        self.word_classifier = nn.Conv2d(self.feature_dim, num_words, 1, bias=False)  # W^word
        self.word_to_image = nn.Conv2d(num_words, num_classes, 1, bias=False)  # W^w2i

    @property
    def num_words(self) -> int:
        return self.codebook.shape[0]

    def word_maps(self, features: Tensor) -> Tensor:
        """(B, d, h, w) F → (B, k, h, w) word probabilities P (Eq. 1-2)."""
        source = features.detach() if self.detach_word_features else features
        return word_probabilities(word_similarity(source, self.codebook))

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        features = self.dropout(self.features(image))
        probabilities = self.word_maps(features)
        return {
            "logits": F.linear(hspp(features, self.pyramid_levels, self.gamma), self.classifier.weight.flatten(1)),
            "word_logits": F.linear(global_average_pool(features), self.word_classifier.weight.flatten(1)),
            "w2i_logits": F.linear(word_frequency(probabilities), self.word_to_image.weight.flatten(1)),
            "word_labels": word_labels(probabilities),
        }

    def cams(self, image: Tensor) -> Tensor:
        features = self.features(image)
        image_cams = class_activation_maps(features, self.classifier.weight)
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


def build_cam_model(name: str, cfg: dict, num_classes: int) -> _CamBase:
    """Build the CAM network ``name`` from its config section (``wsss.<name>``).

    Args:
        name: ``cam``, ``vwe`` or ``iscam``.
        cfg: ``backbone`` (timm name), ``output_stride`` (8, 16 or 32), ``pretrained``
            (``imagenet`` | ``none`` | path), ``freeze_bn``, ``dropout``; ``vwe`` also
            ``num_words``, ``pyramid_levels``, ``gamma``, ``detach_word_features``.
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
        missing += [key for key in ("num_words", "pyramid_levels", "gamma", "detach_word_features") if key not in cfg]
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
            **common,
        )
    return CAM_NETWORKS[name](backbone, num_classes, **common)


def save_cam_model(path: str | Path, net: _CamBase, meta: dict) -> None:
    """Save weights and what rebuilds the network (atomic write).

    ``meta`` must hold ``cam_cfg`` (the ``wsss.<name>`` section); ``cam`` (the name) and
    ``num_classes`` are taken from the network. Anything else JSON-like (task, step, classes,
    training settings) is kept.
    """
    if "cam_cfg" not in meta:
        raise ValueError(f"{path}: meta needs 'cam_cfg' (the wsss.<name> config section) to rebuild the network")
    meta = dict(meta, cam=net.name, num_classes=net.num_classes)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": net.state_dict(), "meta": meta}, tmp)


def load_cam_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[_CamBase, dict]:
    """Rebuild a network saved by :func:`save_cam_model` (backbone built with ``pretrained: none``
    and overwritten by the saved weights, so loading never needs the network); eval mode.

    Raises:
        FileNotFoundError: no such file; ValueError: not a CAM network of this pipeline.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CAM model file not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError... for bad files
        raise ValueError(f"{path}: not a readable model file ({err})") from err
    if not isinstance(payload, dict) or "state_dict" not in payload or "cam" not in payload.get("meta", {}):
        raise ValueError(f"{path}: not a CAM network of this pipeline (expected keys state_dict, meta.cam)")
    meta = payload["meta"]
    net = build_cam_model(meta["cam"], dict(meta["cam_cfg"], pretrained="none"), int(meta["num_classes"]))
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval(), meta


__all__ = ["CAM_NETWORKS", "CamNet", "IsCamNet", "VweNet", "build_cam_model", "load_cam_model", "save_cam_model"]
