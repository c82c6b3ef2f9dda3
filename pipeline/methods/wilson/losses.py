"""WILSON losses and pseudo-supervision (Cermelli et al., "Incremental Learning in Semantic
Segmentation from Image Labels", CVPR 2022, Sec. 3.2-3.3), one function per equation.

Notation (paper Sec. 3.1): ``z`` (B, |Y^t|, h, w) are the localizer's pixel scores for every
class seen so far (channel 0 background, then the old classes, then the new classes C^t as the
last channels, the order of :class:`pipeline.models.segmenter.IncrementalClassifier`);
``m = softmax(z)`` over the classes; ``old_logits`` are the logits of the frozen model of step
t-1 (|Y^{t-1}| channels = background + old classes). ``|I|`` is the number of pixels h*w.

Data flow of one step (the caller composes these):

- localizer: ``classification_loss`` (Eq. 1-3) + ``localization_prior_loss`` (Eq. 4);
- segmenter: ``m`` → ``hard_pseudo_labels`` (Eq. 5) → ``soft_pseudo_labels`` (Eq. 6) →
  [``restrict_to_image_labels``, optional] → ``wilson_target`` (Eq. 7) → ``segmentation_loss``
  (Eq. 8). Fig. 2: no gradient flows through the pseudo-supervision; ``segmentation_loss`` and
  ``localization_prior_loss`` detach their targets;
- localizer, after the warm-up (Sec. 4.3, Araslanov & Roth's self-supervision): ``m`` →
  :func:`pipeline.methods.wilson.pamr.pamr_refine` → label mask → ``pseudo_gt_mask`` →
  ``balanced_mask_cross_entropy``;
- encoder, after the warm-up (authors' ``--loss_de 1``, not in the paper):
  ``feature_distillation_loss``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def _check_maps(name: str, x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")


def _check_channels(name: str, channels: Sequence[int], num_channels: int) -> list[int]:
    channels = [int(c) for c in channels]
    if not channels:
        raise ValueError(f"{name}: empty list of classes")
    if len(set(channels)) != len(channels):
        raise ValueError(f"{name}={channels}: repeated class index")
    bad = [c for c in channels if not 0 <= c < num_channels]
    if bad:
        raise ValueError(f"{name}={channels}: indices {bad} outside [0, {num_channels})")
    return channels


# --- Sec. 3.2: training the localizer -----------------------------------------------------


def ngwp_pool(scores: Tensor, eps: float = 1.0) -> Tensor:
    """Normalised global weighted pooling of pixel scores (WILSON Eq. 1; Araslanov & Roth,
    CVPR 2020, Eq. 2).

    ``eps`` is "a small constant" in WILSON; we use 1.0, the value of Araslanov & Roth and of
    both papers' public code. With eps=1 a class with little mask mass (sum_i m_i << 1) gets a
    score shrunk towards 0, which is what makes the pooling "normalised".

    Args:
        scores: (B, C, H, W) float logits z of the localizer, all classes incl. background.
        eps: ≥ 0, stabiliser added to the mask mass in the denominator.
    Returns:
        (B, C) float image-level scores sum_i m_i z_i / (eps + sum_i m_i), m = softmax over C;
        real-valued (a shrunk weighted mean of the z of that class).
    Raises:
        ValueError: ``scores`` not 4-D, or eps < 0.
    """
    _check_maps("scores", scores)
    if eps < 0:
        raise ValueError(f"eps={eps}: must be ≥ 0")
    masks = scores.softmax(dim=1)
    return (masks * scores).sum((2, 3)) / (eps + masks.sum((2, 3)))


def focal_penalty(scores: Tensor, lam: float = 0.01, gamma: float = 3.0) -> Tensor:
    """Focal mask penalty (WILSON Eq. 2; Araslanov & Roth, CVPR 2020, Eq. 3).

    Defaults λ=0.01, γ=3 are WILSON Sec. 4.3 (following Araslanov & Roth).

    Args:
        scores: (B, C, H, W) float logits z of the localizer.
        lam: λ ≥ 0, offset inside the log (λ > 0 keeps it finite for an empty mask).
        gamma: γ ≥ 0, focusing exponent.
    Returns:
        (B, C) float (1 - mbar)^γ · log(λ + mbar) with mbar = sum_i m_i / |I| in (0, 1),
        m = softmax over C; values in (log λ, log(1 + λ)), ≤ 0 whenever mbar ≤ 1 - λ.
    Raises:
        ValueError: ``scores`` not 4-D, or λ < 0, or γ < 0.
    """
    _check_maps("scores", scores)
    if lam < 0 or gamma < 0:
        raise ValueError(f"lam={lam}, gamma={gamma}: both must be ≥ 0")
    mean_mask = scores.softmax(dim=1).mean((2, 3))
    return (1.0 - mean_mask).pow(gamma) * torch.log(lam + mean_mask)


def image_scores(scores: Tensor, eps: float = 1.0, lam: float = 0.01, gamma: float = 3.0) -> Tensor:
    """Image-level class *logits* nGWP + FOC of the localizer (WILSON Eq. 1 + Eq. 2).

    The paper's image prediction is ŷ = σ(this) (Eq. 3); we return the logits, not ŷ, so that
    Eq. 3 can be computed stably with ``binary_cross_entropy_with_logits``.

    Args:
        scores: (B, C, H, W) float logits z of the localizer.
        eps, lam, gamma: see :func:`ngwp_pool` and :func:`focal_penalty`.
    Returns:
        (B, C) float logits, real-valued; σ of them is ŷ in (0, 1).
    Raises:
        ValueError: as :func:`ngwp_pool` and :func:`focal_penalty`.
    """
    return ngwp_pool(scores, eps) + focal_penalty(scores, lam, gamma)


def classification_loss(
    scores: Tensor,
    image_labels: Tensor,
    classes: Sequence[int],
    eps: float = 1.0,
    lam: float = 0.01,
    gamma: float = 3.0,
) -> Tensor:
    """Multi-label soft-margin loss of the pooled localizer scores (WILSON Eq. 3).

    -1/|K| sum_{c in K} [y^c log ŷ^c + (1 - y^c) log(1 - ŷ^c)], ŷ = σ(nGWP + FOC), averaged over
    the batch; computed from the logits (``binary_cross_entropy_with_logits``), which equals
    ``F.multilabel_soft_margin_loss`` on the K columns. K = C^t (the new classes) in the
    standard setting; in the paper's relaxed setting the caller passes all seen object classes.
    The other channels still enter through the softmax of Eq. 1-2.

    Args:
        scores: (B, C, H, W) float logits z of the localizer (C = |Y^t|).
        image_labels: (B, C) float image labels in {0, 1} indexed like the channels of z (only
            the K columns are read; values are not checked, soft labels in [0, 1] also work).
        classes: channel indices K, non-empty, distinct, in [0, C).
        eps, lam, gamma: see :func:`ngwp_pool` and :func:`focal_penalty`.
    Returns:
        Scalar float tensor ≥ 0.
    Raises:
        ValueError: ``scores`` not 4-D, ``image_labels`` not (B, C), bad ``classes``, or bad
            eps/λ/γ.
    """
    _check_maps("scores", scores)
    if image_labels.shape != scores.shape[:2]:
        raise ValueError(f"image_labels: expected shape {tuple(scores.shape[:2])}, got {tuple(image_labels.shape)}")
    index = _check_channels("classes", classes, scores.shape[1])
    logits = image_scores(scores, eps, lam, gamma)[:, index]
    return F.binary_cross_entropy_with_logits(logits, image_labels[:, index].to(logits.dtype))


def localization_prior_loss(scores: Tensor, old_logits: Tensor) -> Tensor:
    """Localization prior: per-class logistic loss of the localizer's old channels against the
    old model's probabilities (WILSON Eq. 4).

    -1/(|Y^{t-1}| |I|) sum_i sum_{c in Y^{t-1}} [ω_i^c log σ(z_i^c) + (1 - ω_i^c) log(1 - σ(z_i^c))],
    ω = σ(old_logits), averaged over the batch. The old channels are the first |Y^{t-1}|
    channels of z (background + old classes); the new channels are not supervised here. ω is
    a constant (detached): the old model is frozen (Fig. 2).

    Args:
        scores: (B, C, h, w) float logits z of the localizer, C = |Y^t|.
        old_logits: (B, C_old, h, w) float logits of the step t-1 model, C_old = |Y^{t-1}| ≤ C,
            at the resolution of z (the caller interpolates the old model's output to (h, w)).
    Returns:
        Scalar float tensor ≥ 0 (its minimum, the entropy of ω, is > 0 for soft ω).
    Raises:
        ValueError: not 4-D, batch or spatial sizes differ, or C_old > C.
    """
    _check_maps("scores", scores)
    _check_maps("old_logits", old_logits)
    b, c, h, w = scores.shape
    if (old_logits.shape[0], *old_logits.shape[2:]) != (b, h, w):
        raise ValueError(
            f"old_logits {tuple(old_logits.shape)} vs scores {tuple(scores.shape)}: batch and (H, W) must "
            "match; interpolate the old model's logits to the localizer's resolution first"
        )
    num_old_channels = old_logits.shape[1]
    if num_old_channels > c:
        raise ValueError(f"old_logits has {num_old_channels} channels, more than the {c} of scores")
    target = torch.sigmoid(old_logits.detach()).to(scores.dtype)
    return F.binary_cross_entropy_with_logits(scores[:, :num_old_channels], target)


# --- Sec. 3.3: pseudo-supervision for the segmentation model ---------------------------------


def hard_pseudo_labels(masks: Tensor) -> Tensor:
    """One-hot of the most likely class per pixel (WILSON Eq. 5).

    Ties go to the lowest class index (``torch.argmax``), so every pixel has exactly one 1.

    Args:
        masks: (B, C, H, W) float class scores per pixel, normally m = softmax(z) over C (any
            monotone score gives the same result).
    Returns:
        (B, C, H, W) tensor of ``masks.dtype`` with values in {0, 1}, summing to 1 over C.
    Raises:
        ValueError: ``masks`` not 4-D.
    """
    _check_maps("masks", masks)
    index = masks.argmax(dim=1, keepdim=True)
    return torch.zeros_like(masks).scatter_(1, index, 1.0)


def soft_pseudo_labels(masks: Tensor, alpha: float = 0.5) -> Tensor:
    """Smoothed pseudo-labels q = α q_hard + (1 - α) m (WILSON Eq. 6; α = 0.5, Sec. 4.3).

    Args:
        masks: (B, C, H, W) float m = softmax(z) of the localizer, values in [0, 1].
        alpha: α in [0, 1]; 1 gives the hard labels of Eq. 5, 0 gives m.
    Returns:
        (B, C, H, W) float q in [0, 1]; sums to 1 over C when ``masks`` does.
    Raises:
        ValueError: ``masks`` not 4-D, or α outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must be in [0, 1]")
    return alpha * hard_pseudo_labels(masks) + (1.0 - alpha) * masks


def restrict_to_image_labels(q: Tensor, image_labels: Tensor, background: int = 0) -> Tensor:
    """Zero the localizer's map of every object class the image is not labelled with.

    Not in the paper: the authors' code (``fcdl94/WILSON``, ``train.py``:
    ``int_masks_orig[:, 1:] *= l1h``) multiplies the localizer's softmax m of **every object
    class** by the image labels before Eq. 5-6, so the argmax of Eq. 5 is taken among the
    labelled classes and background only. In the standard setting the labels hold the new
    classes only, so the old channels are zeroed too (their target comes from the old model in
    Eq. 7); in the relaxed setting (WILSON Table 5) they hold every seen class present.

    Args:
        q: (B, C, H, W) float per-class maps (m of Eq. 5, or q of Eq. 6).
        image_labels: (B, C) float or bool image labels indexed like the channels of q
            (nonzero = present; the background entry is ignored).
        background: the background channel, always kept.
    Returns:
        (B, C, H, W) new tensor of ``q.dtype``: q[b, c] = 0 for every c != background with
        image_labels[b, c] == 0; the background channel unchanged.
    Raises:
        ValueError: ``q`` not 4-D, ``image_labels`` not (B, C), or ``background`` out of range.
    """
    _check_maps("q", q)
    if image_labels.shape != q.shape[:2]:
        raise ValueError(f"image_labels: expected shape {tuple(q.shape[:2])}, got {tuple(image_labels.shape)}")
    if not 0 <= background < q.shape[1]:
        raise ValueError(f"background={background}: must be a channel in [0, {q.shape[1]})")
    keep = (image_labels != 0).to(q.dtype)
    keep[:, background] = 1
    return q * keep[:, :, None, None]


def wilson_target(q: Tensor, old_logits: Tensor, new_classes: Sequence[int], background: int = 0) -> Tensor:
    """Final pixel-level pseudo-supervision q̂ (WILSON Eq. 7).

    q̂^b = min(σ(old)^b, q^b) for the background b; q̂^c = q^c for the new classes c in C^t;
    q̂^c = σ(old)^c for the old classes. Not a distribution over C (hence Eq. 8's logistic loss).
    Gradients are not cut here; :func:`segmentation_loss` treats q̂ as a constant.

    Args:
        q: (B, |Y^t|, H, W) float pseudo-labels of Eq. 6, values in [0, 1].
        old_logits: (B, |Y^{t-1}|, H, W) float logits of the step t-1 model at the resolution of
            q (the caller interpolates).
        new_classes: the channel indices of C^t; must be exactly |Y^{t-1}| .. |Y^t| - 1 (the new
            classes are the last channels), in that order.
        background: channel of the background b in [0, |Y^{t-1}|) (0 in this pipeline).
    Returns:
        (B, |Y^t|, H, W) float q̂ in [0, 1], dtype of q.
    Raises:
        ValueError: not 4-D, batch or spatial sizes differ, ``new_classes`` are not the last
            |Y^t| - |Y^{t-1}| channels, or ``background`` is not an old channel.
    """
    _check_maps("q", q)
    _check_maps("old_logits", old_logits)
    b, c, h, w = q.shape
    num_old_channels = old_logits.shape[1]
    if (old_logits.shape[0], *old_logits.shape[2:]) != (b, h, w):
        raise ValueError(
            f"old_logits {tuple(old_logits.shape)} vs q {tuple(q.shape)}: batch and (H, W) must match; "
            "interpolate the old model's logits first"
        )
    if [int(k) for k in new_classes] != list(range(num_old_channels, c)) or num_old_channels >= c:
        raise ValueError(
            f"new_classes={list(new_classes)}: must be the last channels {list(range(num_old_channels, c))} "
            f"(q has {c} channels, old_logits {num_old_channels})"
        )
    if not 0 <= background < num_old_channels:
        raise ValueError(f"background={background}: must be an old channel in [0, {num_old_channels})")
    old_probs = torch.sigmoid(old_logits).to(q.dtype)
    target = torch.cat([old_probs, q[:, num_old_channels:]], dim=1)
    target[:, background] = torch.minimum(old_probs[:, background], q[:, background])
    return target


def segmentation_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-class logistic loss of the segmentation output against the soft target q̂ (WILSON Eq. 8).

    -1/|I| sum_i sum_{c in Y^t} [q̂_i^c log σ(p_i^c) + (1 - q̂_i^c) log(1 - σ(p_i^c))]: summed over
    classes, averaged over the counted pixels of the whole batch (the paper's "log(p)" in the
    first term is read as log σ(p), as in its second term and the authors' code). q̂ is detached
    (Fig. 2: no gradient through the pseudo-supervision). The authors' code additionally drops
    images whose pseudo-label misses one of their labelled classes; that is not done here.

    Args:
        logits: (B, C, H, W) float logits p of the segmentation model (independent sigmoids).
        target: (B, C, H, W) float q̂ in [0, 1], same shape as ``logits``.
        valid: optional (B, H, W) bool mask of the pixels to count (False = void or padding);
            None counts every pixel.
    Returns:
        Scalar float tensor ≥ 0; 0 if no pixel is counted.
    Raises:
        ValueError: shapes differ, not 4-D, or ``valid`` is not (B, H, W).
    """
    _check_maps("logits", logits)
    if target.shape != logits.shape:
        raise ValueError(f"target {tuple(target.shape)} vs logits {tuple(logits.shape)}: shapes must match")
    per_pixel = F.binary_cross_entropy_with_logits(logits, target.detach().to(logits.dtype), reduction="none").sum(
        dim=1
    )
    if valid is None:
        return per_pixel.mean()
    b, _, h, w = logits.shape
    if valid.shape != (b, h, w):
        raise ValueError(f"valid: expected shape {(b, h, w)}, got {tuple(valid.shape)}")
    valid = valid.to(torch.bool)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


# --- Sec. 4.3: self-supervised segmentation loss on the localizer (Araslanov & Roth 2020) -----


def pseudo_gt_mask(
    masks: Tensor,
    cutoff_top: float = 0.6,
    cutoff_bkg: float = 0.7,
    cutoff_low: float = 0.2,
    ambiguous: bool = True,
    background: int = 0,
) -> Tensor:
    """Binary pseudo ground truth from continuous masks: the confident pixels of each class.

    Per image and class c, t_c = max(cutoff_c · max_i m_i^c, cutoff_low) with cutoff_c =
    ``cutoff_bkg`` for the background and ``cutoff_top`` otherwise; pixel i is a pixel of c when
    m_i^c > t_c (strictly). ``cutoff_low`` is a floor of the threshold: a class whose best pixel is
    weak (cutoff · max ≤ cutoff_low) keeps only pixels above cutoff_low, and a class zeroed out
    (not in the image labels) gets none. With ``ambiguous``, a pixel claimed by more than one
    class is dropped for all of them.

    Source: ``pseudo_gtmask`` in ``wss/single_stage.py`` of fcdl94/WILSON (Araslanov & Roth's
    1-stage-wseg); WILSON's call in ``train.py``: ``pseudo_gtmask(int_masks_soft, ambiguous=True,
    cutoff_top=0.6, cutoff_bkg=0.7, cutoff_low=0.2)`` (the defaults here).

    Args:
        masks: (B, C, H, W) float masks, normally the PAMR-refined, label-masked softmax of the
            localizer, values in [0, 1].
        cutoff_top, cutoff_bkg: fractions of the per-image maximum, in [0, 1].
        cutoff_low: lowest threshold, in [0, 1].
        ambiguous: drop pixels that are above the threshold of several classes.
        background: the background channel (``cutoff_bkg``).
    Returns:
        (B, C, H, W) float tensor (dtype of ``masks``) in {0, 1}; with ``ambiguous`` at most one 1
        per pixel (a pixel with none is "ignore"). No gradient (built by comparisons).
    Raises:
        ValueError: ``masks`` not 4-D, a cutoff outside [0, 1], or ``background`` out of range.
    """
    _check_maps("masks", masks)
    for name, value in (("cutoff_top", cutoff_top), ("cutoff_bkg", cutoff_bkg), ("cutoff_low", cutoff_low)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value}: must be in [0, 1]")
    if not 0 <= background < masks.shape[1]:
        raise ValueError(f"background={background}: must be a channel in [0, {masks.shape[1]})")
    cutoff = torch.full((masks.shape[1],), cutoff_top, dtype=masks.dtype, device=masks.device)
    cutoff[background] = cutoff_bkg
    peak = masks.detach().amax(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    threshold = (peak * cutoff[:, None, None]).clamp(min=cutoff_low)
    pseudo = (masks.detach() > threshold).to(masks.dtype)
    if ambiguous:
        pseudo = pseudo * (pseudo.sum(dim=1, keepdim=True) <= 1).to(masks.dtype)
    return pseudo


def balanced_mask_cross_entropy(
    logits: Tensor, pseudo_gt: Tensor, image_labels: Tensor, valid: Tensor | None = None, background: int = 0
) -> Tensor:
    """Class-balanced cross-entropy of the localizer against its binary pseudo ground truth.

    Per image b: loss_b = w_b · 1/|I| sum_i ω_i CE_i, with CE_i = -log softmax(z_i)[y_i],
    y_i = the class of pixel i in ``pseudo_gt`` (a pixel with no class is ignored: CE_i = 0),
    ω_i = (N - N_{y_i}) / (1 + N) where N_c counts the pixels of class c in the image and N = sum_c
    N_c (so each class weighs in about equally, whatever its area; a single class gives 0), and
    w_b = 1 if the pseudo ground truth holds exactly 1 + (number of labelled object classes)
    classes (the background and every labelled class found), else 0. Averaged over the batch.

    Source: ``balanced_mask_loss_ce`` in ``wss/single_stage.py`` of fcdl94/WILSON (Araslanov &
    Roth's 1-stage-wseg), WILSON ``train.py``: ``l_cls = balanced_mask_loss_ce(int_masks_raw,
    pseudo_gt_seg, l1h)``. Not the authors': the optional ``valid`` (the crop padding of this
    pipeline, which the authors' loss does not know of) removes pixels before N_c is counted. The
    authors' function resizes the logits to the pseudo ground truth; here they must match.

    Args:
        logits: (B, C, H, W) float logits z of the localizer (with gradient).
        pseudo_gt: (B, C, H, W) float in {0, 1}, at most one 1 per pixel (:func:`pseudo_gt_mask`);
            detached here.
        image_labels: (B, C) float or bool image labels indexed like the channels (nonzero =
            present; the background entry is ignored, the background always counts).
        valid: optional (B, H, W) bool, False = pixel not counted (treated as "no class").
        background: the background channel.
    Returns:
        Scalar float tensor ≥ 0; 0 when no image has all its classes in the pseudo ground truth.
    Raises:
        ValueError: shapes differ, not 4-D, ``image_labels`` not (B, C), ``valid`` not (B, H, W),
            or ``background`` out of range.
    """
    _check_maps("logits", logits)
    if pseudo_gt.shape != logits.shape:
        raise ValueError(f"pseudo_gt {tuple(pseudo_gt.shape)} vs logits {tuple(logits.shape)}: shapes must match")
    b, c, h, w = logits.shape
    if image_labels.shape != (b, c):
        raise ValueError(f"image_labels: expected shape {(b, c)}, got {tuple(image_labels.shape)}")
    if not 0 <= background < c:
        raise ValueError(f"background={background}: must be a channel in [0, {c})")
    pseudo_gt = pseudo_gt.detach().to(logits.dtype)
    if valid is not None:
        if valid.shape != (b, h, w):
            raise ValueError(f"valid: expected shape {(b, h, w)}, got {tuple(valid.shape)}")
        pseudo_gt = pseudo_gt * valid.to(torch.bool)[:, None].to(logits.dtype)
    assigned = pseudo_gt.sum(dim=1) >= 1  # (B, H, W)
    target = pseudo_gt.argmax(dim=1)
    per_class = pseudo_gt.sum(dim=(2, 3))  # N_c: (B, C)
    total = per_class.sum(dim=1, keepdim=True)  # N: (B, 1)
    class_weight = (total - per_class) / (1.0 + total)  # (B, C)
    pixel_weight = (pseudo_gt * class_weight[:, :, None, None]).sum(dim=1)  # ω_i: (B, H, W)
    ce = F.cross_entropy(logits, target, reduction="none") * assigned.to(logits.dtype)
    object_labels = (image_labels != 0).clone()
    object_labels[:, background] = False
    expected = object_labels.sum(dim=1) + 1
    image_weight = (expected == (per_class > 0).sum(dim=1)).to(logits.dtype)  # w_b
    return (image_weight * (pixel_weight * ce).mean(dim=(1, 2))).mean()


# --- encoder feature distillation (authors' code, not in the paper) ----------------------------


def feature_distillation_loss(features: Tensor, old_features: Tensor) -> Tensor:
    """Mean squared error between the encoder features of the new and of the old model.

    1/(B F h w) sum (f - f_old)^2, f_old detached (the old model is frozen). Not in the WILSON
    paper: the authors' published command (``run.sh``, README) passes ``--loss_de 1``, and their
    ``train.py`` adds ``lde = loss_de * nn.MSELoss()(features['body'], features_old['body'])``,
    the encoder ("body") output of both models (ILT's distillation on the encoder, Michieli &
    Zanuttigh 2019).

    Args:
        features: (B, F, h, w) float encoder features of the model being trained.
        old_features: (B, F, h, w) float encoder features of the step t-1 model.
    Returns:
        Scalar float tensor ≥ 0.
    Raises:
        ValueError: shapes differ.
    """
    if features.shape != old_features.shape:
        raise ValueError(f"old_features {tuple(old_features.shape)} vs features {tuple(features.shape)}: must match")
    return F.mse_loss(features, old_features.detach().to(features.dtype))
