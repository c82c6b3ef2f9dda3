"""Visual Word Encoder and Hybrid Spatial Pyramid Pooling (Ru, Du and Wu, "Learning Visual Words
for Weakly-Supervised Semantic Segmentation", IJCAI 2021, Sec. 3.2-3.5), one function per equation.

Notation (paper Sec. 3): ``F`` (B, d, h, w) is the backbone's last feature map, ``C`` (k, d) the
learnable codebook of k visual words, ``P`` the word probabilities of every pixel. The paper writes
S and P as (hw × k) matrices per image; here they are kept as maps (B, k, h, w), word j in channel
j, which is the same matrix transposed and reshaped.

Data flow of one training batch (the network composes these, :mod:`pipeline.wsss.networks`):

- ``F`` → ``word_similarity`` (Eq. 1) → ``word_probabilities`` (Eq. 2) → ``word_labels`` (Eq. 3)
  and ``word_frequency`` (Eq. 4);
- ``F`` → ``hspp`` (Eq. 7, from ``pyramid_max_pool`` Eq. 5 and ``global_average_pool`` Eq. 6);
- three linear layers give p^img, p^word, p^w2i and ``vwe_loss`` (Eq. 9) sums three
  ``multilabel_soft_margin_loss`` (Eq. 8).

CAM inference (Sec. 3.5): ``class_activation_maps`` (Eq. 10), ``word_activation_maps`` (Eq. 11),
``fuse_cams`` (Eq. 12, ReLU then element-wise max).

Where the authors' code (rulixiang/vwe) departs from the paper, the network follows the code by
default and keeps the paper as an option (``wsss.vwe`` in config.yaml): Eq. 4 sums over the
pixels (:func:`word_frequency`), the backbone is detached after its second stage, and the CAMs
are the image branch's alone (Eq. 10; Eq. 11-12 as an option).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def _check_maps(name: str, x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")


# --- Sec. 3.2: visual word encoder ------------------------------------------------------------


def word_similarity(features: Tensor, codebook: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of every pixel feature with every visual word (VWE Eq. 1).

    S_ij = F_i^T C_j / (||F_i||_2 ||C_j||_2).

    Args:
        features: (B, d, h, w) float feature map F.
        codebook: (k, d) float codebook C (one word per row).
        eps: lower bound of the norms (a zero vector has similarity 0 with every word).
    Returns:
        (B, k, h, w) float similarities in [-1, 1]; channel j is word j.
    Raises:
        ValueError: ``features`` not 4-D, or ``codebook`` not (k, d) with the features' d.
    """
    _check_maps("features", features)
    if codebook.dim() != 2 or codebook.shape[1] != features.shape[1]:
        raise ValueError(f"codebook: expected (k, {features.shape[1]}), got shape {tuple(codebook.shape)}")
    pixels = F.normalize(features, dim=1, eps=eps)
    words = F.normalize(codebook, dim=1, eps=eps)
    return F.conv2d(pixels, words[:, :, None, None])


def word_probabilities(similarity: Tensor) -> Tensor:
    """Probability of each pixel belonging to each word: softmax over the words (VWE Eq. 2).

    Args:
        similarity: (B, k, h, w) float similarities S from :func:`word_similarity`.
    Returns:
        (B, k, h, w) float P, in (0, 1), summing to 1 over dim 1 at every pixel.
    """
    _check_maps("similarity", similarity)
    return similarity.softmax(dim=1)


def word_labels(probabilities: Tensor) -> Tensor:
    """Visual word labels of an image (VWE Eq. 3): y^word_j = 1 iff word j is the most probable
    word (Y_i = argmax_j P_ij) of at least one pixel i.

    A label, not a prediction: the result carries no gradient.

    Args:
        probabilities: (B, k, h, w) float word probabilities P.
    Returns:
        (B, k) float multi-hot y^word with values in {0, 1} (at least one 1 per image).
    """
    _check_maps("probabilities", probabilities)
    k = probabilities.shape[1]
    winners = probabilities.detach().argmax(dim=1).flatten(1)  # (B, hw) word index Y_i
    labels = probabilities.new_zeros((probabilities.shape[0], k), dtype=probabilities.dtype)
    return labels.scatter_(1, winners, 1.0)


#: Reductions of Eq. 4 over the pixels (:func:`word_frequency`).
WORD_FREQUENCY_REDUCTIONS = ("sum", "mean")


def word_frequency(probabilities: Tensor, reduction: str = "sum") -> Tensor:
    """Soft frequency of each visual word in the image (VWE Eq. 4).

    ``reduction="sum"``: f^word_j = sum_i P_ij, the authors' code (rulixiang/vwe
    ``network/resnet_cam.py``: ``x_hist = torch.sum(x_corr, [2,3], keepdim=True)``);
    ``reduction="mean"``: f^word_j = 1/(hw) sum_i P_ij, the paper's Eq. 4 as printed.

    Why the sum is the default: the codebook C learns only through this term (p^w2i = W^w2i f^word
    feeds L_cls(p^w2i, y^img); y^word is a label without gradient and the other two terms do not
    read C). The cosines of Eq. 1 lie in [-1, 1], so P is close to uniform (≈ 1/k) and the mean
    makes f^word ≈ 1/k whatever the image; every derivative with respect to P carries the factor
    1/(hw) as well. Measured on a 32 × 32 map (k = 256, default init, random images;
    ``tests/test_losses_vwe.py``): |p^w2i| ≈ 4e-3 with the mean against ≈ 4 with the sum, the
    codebook's gradient ~10^4 times smaller, and three SGD steps move the codebook ~3,500 times
    less, so that averaged it stays at its initialisation. The two differ only by the factor hw,
    which also scales the word CAMs of Eq. 11 through the learned W^w2i.

    Args:
        probabilities: (B, k, h, w) float word probabilities P.
        reduction: ``"sum"`` (authors' code) or ``"mean"`` (paper).
    Returns:
        (B, k) float frequencies, summing to hw (``sum``) or 1 (``mean``) over the words.
    Raises:
        ValueError: unknown ``reduction``.
    """
    _check_maps("probabilities", probabilities)
    if reduction == "sum":
        return probabilities.sum(dim=(2, 3))
    if reduction == "mean":
        return probabilities.mean(dim=(2, 3))
    raise ValueError(f"word_frequency: reduction={reduction!r}, expected one of {list(WORD_FREQUENCY_REDUCTIONS)}")


# --- Sec. 3.3: hybrid spatial pyramid pooling ---------------------------------------------------


def pyramid_max_pool(features: Tensor, split: int) -> Tensor:
    """Local maxima averaged over an r × r partition of the map (VWE Eq. 5).

    Every division of size (h/r × w/r) is max-pooled to a d-vector (F^max, r × r × d), and
    f_r^max = 1/r^2 sum_{i,j} F^max_{i,j,:}. When h or w is not a multiple of r the divisions are
    those of ``adaptive_max_pool2d`` (PyTorch's rounding, neighbouring bins may share a row or
    column) so that every pixel belongs to a division; the authors' code drops the remainder.

    Args:
        features: (B, d, h, w) float feature map F, h, w >= r.
        split: r >= 1, divisions per side.
    Returns:
        (B, d) float pooled features.
    Raises:
        ValueError: r < 1 or the map is smaller than r × r.
    """
    _check_maps("features", features)
    if split < 1:
        raise ValueError(f"split r={split}: must be >= 1")
    if min(features.shape[-2:]) < split:
        raise ValueError(f"features {tuple(features.shape[-2:])} are smaller than the {split}x{split} partition")
    return F.adaptive_max_pool2d(features, split).mean(dim=(2, 3))


def global_average_pool(features: Tensor) -> Tensor:
    """Global average pooling f^gap = 1/(hw) sum_{i,j} F_{i,j,:} (VWE Eq. 6; Zhou et al. 2016).

    Args:
        features: (B, d, h, w) float.
    Returns:
        (B, d) float.
    """
    _check_maps("features", features)
    return features.mean(dim=(2, 3))


def hspp(features: Tensor, splits: Sequence[int] = (1, 2, 4), gamma: float = 2.0) -> Tensor:
    """Hybrid spatial pyramid pooling (VWE Eq. 7).

    f^hspp = (sum_{r in splits} f_r^max + γ f^gap) / (γ + |splits|); the paper has r ∈ {1, 2, 4}
    and γ = 2 (Sec. 4.1), hence its denominator γ + 3.

    Args:
        features: (B, d, h, w) float feature map F.
        splits: the pyramid levels r.
        gamma: γ >= 0, weight of the global average.
    Returns:
        (B, d) float pooled features.
    Raises:
        ValueError: empty ``splits`` or γ < 0 (and see :func:`pyramid_max_pool`).
    """
    if not splits:
        raise ValueError("hspp: empty list of pyramid levels")
    if gamma < 0:
        raise ValueError(f"hspp: gamma={gamma} must be >= 0")
    pooled = gamma * global_average_pool(features)
    for split in splits:
        pooled = pooled + pyramid_max_pool(features, int(split))
    return pooled / (gamma + len(splits))


# --- Sec. 3.4: losses ---------------------------------------------------------------------------


def multilabel_soft_margin_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Multi-label soft-margin loss (VWE Eq. 8; ``torch.nn.MultiLabelSoftMarginLoss``).

    L = -1/L sum_i [y_i log σ(p_i) + (1 - y_i) log(1 - σ(p_i))], averaged over the batch. Eq. 8
    as printed omits the leading minus sign; the loss minimised (PyTorch's, which the paper cites)
    has it. Also the classification loss of the ``cam`` baseline (EPS' code).

    Args:
        logits: (B, L) float scores p (real-valued).
        targets: (B, L) float labels y in {0, 1} (values in [0, 1] are accepted as soft labels).
    Returns:
        scalar float ≥ 0.
    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: expected equal (B, L) shapes"
        )
    logits, targets = logits.float(), targets.float()
    per_class = targets * F.logsigmoid(logits) + (1.0 - targets) * F.logsigmoid(-logits)
    return -per_class.mean()


def vwe_loss(
    image_logits: Tensor, image_labels: Tensor, word_logits: Tensor, word_targets: Tensor, w2i_logits: Tensor
) -> dict[str, Tensor]:
    """The three terms of the VWE objective (VWE Eq. 9); their sum is the loss.

    L = L_cls(p^img, y^img) + L_cls(p^word, y^word) + L_cls(p^w2i, y^img).

    Args:
        image_logits: (B, K) p^img = W^img · HSPP(F).
        image_labels: (B, K) y^img in {0, 1}.
        word_logits: (B, k) p^word = W^word · GAP(F).
        word_targets: (B, k) y^word from :func:`word_labels`.
        w2i_logits: (B, K) p^w2i = W^w2i · f^word.
    Returns:
        ``{"cls_img", "cls_word", "cls_w2i"}``, each a scalar float ≥ 0.
    """
    return {
        "cls_img": multilabel_soft_margin_loss(image_logits, image_labels),
        "cls_word": multilabel_soft_margin_loss(word_logits, word_targets),
        "cls_w2i": multilabel_soft_margin_loss(w2i_logits, image_labels),
    }


# --- Sec. 3.5: CAM inference --------------------------------------------------------------------


def class_activation_maps(features: Tensor, weight: Tensor) -> Tensor:
    """Class activation maps M_c = sum_i W_{i,c} F_{:,i,:} (VWE Eq. 10; Zhou et al. CVPR 2016).

    The classifier weights applied to every pixel of the feature map (no bias, no ReLU).

    Args:
        features: (B, d, h, w) float feature map (F, or the word maps P for Eq. 11).
        weight: (K, d) or (K, d, 1, 1) float weights of the 1×1 classifier.
    Returns:
        (B, K, h, w) float, real-valued.
    Raises:
        ValueError: shapes that do not match.
    """
    _check_maps("features", features)
    if weight.dim() == 4:
        weight = weight.flatten(1)
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight: expected (K, {features.shape[1]}), got shape {tuple(weight.shape)}")
    return F.conv2d(features, weight[:, :, None, None])


def word_activation_maps(probabilities: Tensor, w2i_weight: Tensor) -> Tensor:
    """Word-branch CAMs M_c^word = sum_i W^w2i_{i,c} P_{:,i,:} (VWE Eq. 11).

    Args:
        probabilities: (B, k, h, w) float word probabilities P.
        w2i_weight: (K, k) or (K, k, 1, 1) weights of the word-to-image layer W^w2i.
    Returns:
        (B, K, h, w) float, real-valued.
    """
    return class_activation_maps(probabilities, w2i_weight)


def fuse_cams(image_cams: Tensor, word_cams: Tensor) -> Tensor:
    """Final CAM M_c = max(ReLU(M_c^img), ReLU(M_c^word)) (VWE Eq. 12, element-wise).

    Args:
        image_cams: (B, K, h, w) M^img from Eq. 10.
        word_cams: (B, K, h, w) M^word from Eq. 11.
    Returns:
        (B, K, h, w) float ≥ 0.
    Raises:
        ValueError: shapes differ.
    """
    if image_cams.shape != word_cams.shape:
        raise ValueError(f"image_cams {tuple(image_cams.shape)} and word_cams {tuple(word_cams.shape)} differ")
    return torch.maximum(F.relu(image_cams), F.relu(word_cams))


__all__ = [
    "WORD_FREQUENCY_REDUCTIONS",
    "class_activation_maps",
    "fuse_cams",
    "global_average_pool",
    "hspp",
    "multilabel_soft_margin_loss",
    "pyramid_max_pool",
    "vwe_loss",
    "word_activation_maps",
    "word_frequency",
    "word_labels",
    "word_probabilities",
    "word_similarity",
]
