"""CL4WSIS losses (Hsieh et al., "Class-incremental Continual Learning for Instance Segmentation with
Image-level Weak Supervision", ICCV 2023, Sec. 3.1-3.2), one function per equation or component.

Phase 1 (CL for WSSS, Sec. 3.1) is WILSON's objective (the paper: "Our approach includes [9] as a
special case", Table 8) plus three additions; the WILSON parts are the functions of
:mod:`pipeline.methods.wilson.losses`, not repeated here:

- encoder L2 distillation: :func:`pipeline.methods.wilson.losses.feature_distillation_loss`;
- image-label BCE through the aggregator (nGWP + focal penalty):
  :func:`~pipeline.methods.wilson.losses.classification_loss`;
- the Decoder's pixel BCE distillation of old classes:
  :func:`~pipeline.methods.wilson.losses.localization_prior_loss`;
- the label-smoothed Decoder output as the Segmenter's target, with the old classes distilled
  from the previous Segmenter: :func:`~pipeline.methods.wilson.losses.soft_pseudo_labels`,
  :func:`~pipeline.methods.wilson.losses.wilson_target`,
  :func:`~pipeline.methods.wilson.losses.segmentation_loss`;
- new here: the Peak Generator's thresholding and image-label loss (:func:`peak_stimulation`,
  :func:`peak_generator_loss`), feature-level augmentation consistency (:func:`class_mean_probability`,
  :func:`augmentation_consistency_loss`, Eq. 1) and random dropout (:func:`current_class_score`,
  :func:`dropout_region`, :func:`random_old_classes`, :func:`random_dropout_loss`, Eq. 2-4).

Phase 2 (CL for WSIS, Sec. 3.2): :func:`weighted_center_loss` (Eq. 5), :func:`weighted_offset_loss`
(Eq. 6), :func:`old_class_weight` (W^old), :func:`center_distillation_loss` (Eq. 7),
:func:`offset_distillation_loss` (Eq. 8). The synthetic labels of Eq. 5-6 are made in
:mod:`pipeline.methods.cl4wsis.synthetic`.

Notation: ``scores`` z (B, |Y^{0:t}|, h, w) are the Decoder's pixel logits, channel 0 background,
then the old classes, the new classes Y^t last; |Y^{0:t-1}| = ``num_old_channels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from pipeline.methods.wilson.losses import focal_penalty, ngwp_pool


def _check_maps(name: str, x: Tensor, dims: int = 4) -> None:
    if x.dim() != dims:
        raise ValueError(f"{name}: expected a {dims}-D tensor, got shape {tuple(x.shape)}")


def _channels(name: str, channels: Sequence[int], num: int) -> list[int]:
    channels = [int(c) for c in channels]
    if not channels or len(set(channels)) != len(channels) or not all(0 <= c < num for c in channels):
        raise ValueError(f"{name}={channels}: expected distinct channel indices in [0, {num}), at least one")
    return channels


# --- Sec. 3.2 "Peak Generator" (trained in Phase 1 through the aggregator) -----------------------


def peak_stimulation(scores: Tensor, gamma: float = 0.7) -> Tensor:
    """The Peak Generator's first layer: keep the core pixels of each channel (CL4WSIS Sec. 3.2).

    x = ReLU(z); pixels with x < τ_c = γ · max_i x_i^c (per image and channel, the global max
    pooling G of the paper) are set to 0, the others keep their value. γ = 0.7 (Sec. 3.2). The
    ReLU is the authors' (``PAM.forward`` of ``wss/modules.py``; the paper thresholds Z^pg
    directly); for a channel with a positive maximum the two agree on the kept pixels.

    Args:
        scores: (B, K, h, w) float maps (the Decoder's logits of the new classes).
        gamma: γ in [0, 1].
    Returns:
        (B, K, h, w) float, ≥ 0, zero outside the core pixels; the gradient flows through the kept
        values (the threshold is a constant).
    Raises:
        ValueError: not 4-D, or γ outside [0, 1].
    """
    _check_maps("scores", scores)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma}: must be in [0, 1]")
    x = F.relu(scores)
    peak = x.detach().amax(dim=(2, 3), keepdim=True)
    return torch.where(x < gamma * peak, torch.zeros_like(x), x)


def peak_generator_loss(
    peak_scores: Tensor, image_labels: Tensor, focal: bool = False, lam: float = 0.01, gamma: float = 3.0
) -> Tensor:
    """Image-label BCE of the Peak Generator's output through the aggregator (CL4WSIS Sec. 3.2: "The
    peak map Z^pg is then processed by a convolution layer, followed by our pixel aggregator to
    enable the training with the Global Image Labels").

    Image logits = nGWP (WILSON Eq. 1, ε = 1, softmax over the K channels of ``peak_scores`` only)
    [+ focal penalty (WILSON Eq. 2) when ``focal``]; loss = mean over the batch and the K classes
    of BCE(logit, label). The authors' ``PeakGenerator.fc`` pools with nGWP without the focal
    penalty over the new classes only, and ``train.py`` adds
    ``F.binary_cross_entropy_with_logits(peak_logits[:, new], l1h[:, new])`` (the default here);
    ``focal=True`` is the paper's "our pixel aggregator" (nGWP + focal penalty).

    Args:
        peak_scores: (B, K, h, w) float Z^pg after the 1x1 convolution (K = |Y^t|).
        image_labels: (B, K) float in {0, 1}, the image labels of the same K classes.
        focal, lam, gamma: the focal penalty (λ, γ of WILSON Eq. 2).
    Returns:
        Scalar float ≥ 0.
    Raises:
        ValueError: not 4-D, or labels not (B, K).
    """
    _check_maps("peak_scores", peak_scores)
    if image_labels.shape != peak_scores.shape[:2]:
        raise ValueError(
            f"image_labels: expected shape {tuple(peak_scores.shape[:2])}, got {tuple(image_labels.shape)}"
        )
    logits = ngwp_pool(peak_scores, eps=1.0)
    if focal:
        logits = logits + focal_penalty(peak_scores, lam, gamma)
    return F.binary_cross_entropy_with_logits(logits, image_labels.to(logits.dtype))


# --- Sec. 3.1 "Augmentation Consistency" (Eq. 1) --------------------------------------------------


def class_mean_probability(scores: Tensor, channels: Sequence[int], average: str = "logit") -> Tensor:
    """Z̄: the per-pixel class-averaged probability of the Decoder's output (CL4WSIS Sec. 3.1).

    The paper: "For each pixel, we average the classification probabilities of all classes at
    first and obtain Z̄" (``average="probability"``: mean_c σ(z_c) over ``channels``). The
    authors' ``train.py`` takes σ of the *mean logit* of the *new* classes
    (``torch.sigmoid(torch.mean(A[:, old_classes:], dim=1))``): ``average="logit"`` with
    ``channels`` = the new classes (the method's default).

    Args:
        scores: (B, C, h, w) float Decoder logits.
        channels: the channels averaged.
        average: ``logit`` (σ of the mean) or ``probability`` (mean of σ).
    Returns:
        (B, h, w) float in (0, 1).
    Raises:
        ValueError: not 4-D, bad channels, or unknown ``average``.
    """
    _check_maps("scores", scores)
    index = _channels("channels", channels, scores.shape[1])
    picked = scores[:, index]
    if average == "logit":
        return torch.sigmoid(picked.mean(dim=1))
    if average == "probability":
        return torch.sigmoid(picked).mean(dim=1)
    raise ValueError(f"average={average!r}: expected 'logit' or 'probability'")


def flip_view(x: Tensor) -> Tensor:
    """Horizontal flip of a (..., h, w) map; its own inverse."""
    return x.flip(-1)


def rotate_view(x: Tensor, quarter_turns: int) -> Tensor:
    """Rotation of a (..., h, w) map by ``quarter_turns`` x 90° (``torch.rot90`` over the last two
    dims, counter-clockwise); ``rotate_view(y, -k)`` undoes ``rotate_view(x, k)`` for any h, w."""
    return torch.rot90(x, int(quarter_turns), dims=(-2, -1))


def augmentation_consistency_loss(mean_prob: Tensor, mean_prob_flip: Tensor, mean_prob_rot: Tensor) -> Tensor:
    """Feature-level augmentation consistency, FLAC (CL4WSIS Eq. 1).

    Z̃ = max(Z̄, Z̄_flp^{-1}, Z̄_rot^{-1}) pixel-wise (the union of the three views, detached: a
    target); loss = 1/K · 1/(HW) · (||Z̄ − Z̃||² + ||Z̄_flp^{-1} − Z̃||² + ||Z̄_rot^{-1} − Z̃||²), averaged
    over the batch. K = 3, the number of views, as the authors' ``train.py`` (``(mse + mse + mse) /
    3``); the paper calls K "the number of augmentations". The views are compared in the frame of
    the original image (the inputs are already inverse-transformed); the authors compare the
    rotated view in the rotated frame, the same pixels for 90° turns of a square map.

    Args:
        mean_prob, mean_prob_flip, mean_prob_rot: (B, h, w) float Z̄ of the original features and
            of the flipped and rotated features, each mapped back to the original frame.
    Returns:
        Scalar float ≥ 0; 0 when the three maps agree.
    Raises:
        ValueError: shapes differ or not 3-D.
    """
    _check_maps("mean_prob", mean_prob, 3)
    if mean_prob_flip.shape != mean_prob.shape or mean_prob_rot.shape != mean_prob.shape:
        raise ValueError(
            f"views {tuple(mean_prob.shape)}, {tuple(mean_prob_flip.shape)}, {tuple(mean_prob_rot.shape)}: "
            "must have the same shape (map the views back to the original frame first)"
        )
    target = torch.maximum(torch.maximum(mean_prob, mean_prob_flip), mean_prob_rot).detach()
    views = (mean_prob, mean_prob_flip, mean_prob_rot)
    return sum(F.mse_loss(view, target) for view in views) / len(views)


# --- Sec. 3.1 "Random Dropout" (Eq. 2-4) ---------------------------------------------------------


def current_class_score(scores: Tensor, new_channels: Sequence[int]) -> Tensor:
    """Ẑ_{i,j} = max_{c ∈ Y^t} Z_{i,j,c}: a pixel's highest score of a current-step class (CL4WSIS Eq. 2).

    Args:
        scores: (B, C, h, w) float Decoder logits (or probabilities: any monotone map).
        new_channels: the channels of Y^t.
    Returns:
        (B, h, w) float.
    Raises:
        ValueError: not 4-D or bad channels.
    """
    _check_maps("scores", scores)
    index = _channels("new_channels", new_channels, scores.shape[1])
    return scores[:, index].amax(dim=1)


def dropout_region(score_hat: Tensor, probability: bool = False) -> Tensor:
    """P = {(i, j) | σ(Ẑ_{i,j}) > 0.5}: the pixels confidently of a current class (CL4WSIS Eq. 3).

    Args:
        score_hat: (B, h, w) float Ẑ of Eq. 2: logits, or probabilities σ(Ẑ) with ``probability``
            (the authors compute P from the label-masked sigmoid of the eval-mode Decoder).
        probability: ``score_hat`` already holds σ(Ẑ).
    Returns:
        (B, h, w) bool; no gradient.
    """
    _check_maps("score_hat", score_hat, 3)
    prob = score_hat.detach() if probability else torch.sigmoid(score_hat.detach())
    return prob > 0.5


def random_old_classes(shape: Sequence[int], num_old_channels: int, device=None, generator=None) -> Tensor:
    """C_{i,j}: an old class drawn uniformly from Y^{0:t-1} for each pixel (CL4WSIS Sec. 3.1, Eq. 4).

    Y^{0:t-1} holds the background (channel 0) and the old classes, the first ``num_old_channels``
    channels; the authors' ``RandropLoss`` draws ``random_(0, old_classes)``, background included.

    Args:
        shape: (B, h, w).
        num_old_channels: |Y^{0:t-1}| ≥ 1.
        device, generator: torch's (the loop seeds the global generator per epoch).
    Returns:
        (B, h, w) int64 in [0, num_old_channels).
    Raises:
        ValueError: num_old_channels < 1.
    """
    if num_old_channels < 1:
        raise ValueError(f"num_old_channels={num_old_channels}: must be >= 1")
    return torch.randint(0, num_old_channels, tuple(shape), device=device, generator=generator)


def random_dropout_loss(scores: Tensor, region: Tensor, old_classes: Tensor) -> Tensor:
    """Random dropout towards an old class: −1/|P| Σ_{(i,j) ∈ P} log σ(Z_{i,j,C_{i,j}}) (CL4WSIS Eq. 4).

    Raising a confident current-class pixel's score of a random old class takes it out of the
    current class in nGWP's softmax-weighted pooling, a soft, trainable dropout of discriminative
    regions. As the authors' ``RandropLoss`` (``BCEWithLogitsLossWithIgnoreIndex`` weighted by the
    one-hot target: only the positive term), only the chosen class's logit is pushed.

    Args:
        scores: (B, C, h, w) float Decoder logits (with gradient).
        region: (B, h, w) bool P (Eq. 3).
        old_classes: (B, h, w) int64 C_{i,j} in [0, C) (:func:`random_old_classes`).
    Returns:
        Scalar float ≥ 0; 0 (with the graph) when P is empty.
    Raises:
        ValueError: shapes differ (a class outside [0, C) fails in ``gather``; not checked here,
            which would cost a host synchronisation per iteration).
    """
    _check_maps("scores", scores)
    b, c, h, w = scores.shape
    if region.shape != (b, h, w) or old_classes.shape != (b, h, w):
        raise ValueError(
            f"region {tuple(region.shape)} and old_classes {tuple(old_classes.shape)}: expected {(b, h, w)}"
        )
    picked = scores.gather(1, old_classes[:, None].long())[:, 0]  # Z_{i,j,C_{i,j}}: (B, h, w)
    region = region.to(torch.bool)
    count = region.sum()
    nll = -F.logsigmoid(picked) * region.to(picked.dtype)
    return nll.sum() / count.clamp(min=1)


# --- Sec. 3.2 Phase 2: synthetic center/offset supervision and selective distillation --------------


def _weights(name: str, weight: Tensor, like: Tensor) -> Tensor:
    """A (B, H, W) or (B, 1, H, W) weight as (B, 1, H, W), detached (values ≥ 0 are the caller's
    contract: checking them would cost a host synchronisation per iteration)."""
    if weight.dim() == 3:
        weight = weight[:, None]
    b, _, h, w = like.shape
    if weight.shape != (b, 1, h, w):
        raise ValueError(f"{name}: expected shape {(b, 1, h, w)} or {(b, h, w)}, got {tuple(weight.shape)}")
    return weight.detach().to(like.dtype)


def weighted_center_loss(center: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """ℓ^syn_center = 1/N · Σ W ⊙ (C^t − C^syn)² (CL4WSIS Eq. 5; Panoptic-DeepLab's L2 center loss).

    N is the number of pixels with W > 0 (the paper: "W^syn with N foreground pixels"; the
    authors' ``Weighted_MSELoss``: ``loss.sum() / (weight > 0).sum()``). The weight multiplies the
    squared error once, as the authors' code; Eq. 5 written literally, ||W ⊙ (C − C^syn)||², would
    square it (the same for W ∈ {0, 1}, the isolated instances).

    Args:
        center: (B, 1, H, W) float predicted heatmap C^t (with gradient).
        target: (B, 1, H, W) float C^syn (detached here).
        weight: (B, H, W) or (B, 1, H, W) float W^syn ≥ 0.
    Returns:
        Scalar float ≥ 0; 0 (with the graph) when no pixel has W > 0.
    Raises:
        ValueError: shapes differ.
    """
    _check_maps("center", center)
    if target.shape != center.shape:
        raise ValueError(f"target {tuple(target.shape)} vs center {tuple(center.shape)}: shapes must match")
    weight = _weights("weight", weight, center)
    count = (weight > 0).sum()
    return (weight * (center - target.detach().to(center.dtype)) ** 2).sum() / count.clamp(min=1)


def weighted_offset_loss(offset: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """ℓ^syn_offset = 1/N · Σ W ⊙ |O^t − O^syn| (CL4WSIS Eq. 6; Panoptic-DeepLab's L1 offset loss).

    Summed over both offset channels (dy, dx) and the pixels, divided by the N pixels with W > 0
    (the authors' ``Weighted_L1_Loss``).

    Args:
        offset: (B, 2, H, W) float predicted offsets O^t in pixels (with gradient).
        target: (B, 2, H, W) float O^syn (detached here).
        weight: (B, H, W) or (B, 1, H, W) float W^syn ≥ 0.
    Returns:
        Scalar float ≥ 0; 0 (with the graph) when no pixel has W > 0.
    Raises:
        ValueError: shapes differ.
    """
    _check_maps("offset", offset)
    if offset.shape[1] != 2 or target.shape != offset.shape:
        raise ValueError(f"offset {tuple(offset.shape)}, target {tuple(target.shape)}: expected equal (B, 2, H, W)")
    weight = _weights("weight", weight, offset)
    count = (weight > 0).sum()
    return (weight * (offset - target.detach().to(offset.dtype)).abs()).sum() / count.clamp(min=1)


def old_class_weight(semantic: Tensor, old_classes: Sequence[int]) -> Tensor:
    """W^old: 1 where the semantic map S holds an old class of Y^{0:t-1} (background excluded), else
    0 (CL4WSIS Sec. 3.2, "Semantic-aware Selective Distillation").

    Args:
        semantic: (B, H, W) int64 semantic map S (the Phase-1 Segmenter's argmax).
        old_classes: the old object classes (no background).
    Returns:
        (B, 1, H, W) float in {0, 1}; M = its sum.
    Raises:
        ValueError: not 3-D, or background (0) among ``old_classes``.
    """
    _check_maps("semantic", semantic, 3)
    old = [int(c) for c in old_classes]
    if 0 in old:
        raise ValueError(f"old_classes={old}: the background is not an old class of W^old")
    index = torch.tensor(old, dtype=semantic.dtype, device=semantic.device)
    return torch.isin(semantic, index).to(torch.float32)[:, None]


def center_distillation_loss(center: Tensor, old_center: Tensor, weight_old: Tensor) -> Tensor:
    """ℓ^dist_center = 1/M · ||W^old ⊙ (C^t − C^{t−1})||² (CL4WSIS Eq. 7): the previous Segmenter's
    heatmap distilled on the pixels of old classes only, M of them (W^old ∈ {0, 1}, so
    :func:`weighted_center_loss` computes it exactly).

    Args:
        center: (B, 1, H, W) float C^t; old_center: (B, 1, H, W) float C^{t−1} (the frozen step
            t−1 model; detached); weight_old: W^old from :func:`old_class_weight`.
    Returns:
        Scalar float ≥ 0; 0 when M = 0.
    """
    return weighted_center_loss(center, old_center, weight_old)


def offset_distillation_loss(offset: Tensor, old_offset: Tensor, weight_old: Tensor) -> Tensor:
    """ℓ^dist_offset = 1/M · ||W^old ⊙ (O^t − O^{t−1})||_1 (CL4WSIS Eq. 8), on the M old-class pixels.

    Args:
        offset: (B, 2, H, W) float O^t; old_offset: (B, 2, H, W) float O^{t−1} (detached);
            weight_old: W^old from :func:`old_class_weight`.
    Returns:
        Scalar float ≥ 0; 0 when M = 0.
    """
    return weighted_offset_loss(offset, old_offset, weight_old)


__all__ = [
    "augmentation_consistency_loss",
    "center_distillation_loss",
    "class_mean_probability",
    "current_class_score",
    "dropout_region",
    "flip_view",
    "offset_distillation_loss",
    "old_class_weight",
    "peak_generator_loss",
    "peak_stimulation",
    "random_dropout_loss",
    "random_old_classes",
    "rotate_view",
    "weighted_center_loss",
    "weighted_offset_loss",
]
