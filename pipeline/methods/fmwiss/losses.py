"""FMWISS losses and targets (Yu et al., "Foundation Model Drives Weakly Incremental Learning for
Semantic Segmentation", CVPR 2023, Sec. 3.3-3.5), one function per equation.

Notation (paper Sec. 3): Y^t are the classes seen at step t (channel 0 background, then the old
classes, then the new classes C^t as the last channels, the order of
:class:`pipeline.models.segmenter.IncrementalClassifier`); Y^{t-1} = the first ``num_old_channels``
channels (background + old classes). ``T`` are the logits of the plug-in ASPP teacher
(:class:`pipeline.methods.fmwiss.teacher.ASPPTeacher`), ``f^{t-1}`` the frozen model of step t-1, ``f^t``
the segmentation model being trained (the student). ``M_refine`` (``pseudo``) are the fused
co-segmentation masks of the new classes (Eq. 5), one {0, 1} channel per new class. ``|I|`` is
the number of counted pixels (void/padding pixels are not counted), g = σ the logistic function.

Data flow of one step (the caller, :class:`pipeline.methods.fmwiss.FMWISS`, composes these):

- teacher: ``new_class_bce_loss`` (Eq. 6) on ``M_refine``; ``contrastive_pixel_classes`` →
  ``sample_class_points`` → ``dense_contrastive_loss`` (Eq. 7) on its pixel embeddings;
  ``old_class_targets`` (Eq. 9) → ``old_class_bce_loss`` (Eq. 8);
- student: ``distillation_targets`` (Eq. 10, from the teacher and the Eq. 9 targets) →
  ``all_class_bce_loss`` (Eq. 11);
- ``overall_loss_terms`` (Eq. 12) weights the four terms; their sum is L_overall.

Every BCE here is the *mean* over classes and counted pixels (the paper's 1/(|C||I|)) and over
the batch; targets are constants (detached): no gradient flows into the old model, and the
student's Eq. 11 does not train the teacher (Sec. 3.5: the teacher is distilled into f^t).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

#: Class id of ignored pixels in the maps of :func:`contrastive_pixel_classes`.
IGNORE = -1


def _check_maps(name: str, x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")


def _check_valid(valid: Tensor | None, like: Tensor) -> Tensor | None:
    if valid is None:
        return None
    b, _, h, w = like.shape
    if valid.shape != (b, h, w):
        raise ValueError(f"valid: expected shape {(b, h, w)}, got {tuple(valid.shape)}")
    return valid.to(torch.bool)


def _check_new_classes(new_classes: Sequence[int], num_channels: int) -> list[int]:
    """The new classes must be the last channels, in order (incremental classifier layout)."""
    new_classes = [int(c) for c in new_classes]
    num_old_channels = num_channels - len(new_classes)
    if not new_classes or new_classes != list(range(num_old_channels, num_channels)) or num_old_channels < 1:
        raise ValueError(
            f"new_classes={new_classes}: must be the last channels {list(range(max(num_old_channels, 1), num_channels))} "
            f"of the {num_channels} logits, after at least the background"
        )
    return new_classes


def _check_pasted(pasted: Tensor, batch: int, size: tuple[int, int], num_old_channels: int) -> Tensor:
    if pasted.shape != (batch, *size):
        raise ValueError(f"pasted: expected shape {(batch, *size)}, got {tuple(pasted.shape)}")
    pasted = pasted.long()
    if pasted.numel() and (int(pasted.min()) < 0 or int(pasted.max()) >= num_old_channels):
        raise ValueError(
            f"pasted: values must be 0 (not pasted) or an old class in [1, {num_old_channels}), "
            f"got range [{int(pasted.min())}, {int(pasted.max())}]"
        )
    return pasted


def _mean_bce(logits: Tensor, target: Tensor, valid: Tensor | None, classes: str = "mean") -> Tensor:
    """The per-class logistic loss, reduced over channels by ``classes`` (``mean`` or ``sum``),
    then averaged over counted pixels (0 if none)."""
    per_class = F.binary_cross_entropy_with_logits(logits, target.detach().to(logits.dtype), reduction="none")
    per_pixel = per_class.sum(dim=1) if classes == "sum" else per_class.mean(dim=1)
    if valid is None:
        return per_pixel.mean()
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


# --- Sec. 3.3: the teacher on the new classes ----------------------------------------------------


def new_class_bce_loss(
    teacher_logits: Tensor, pseudo: Tensor, new_classes: Sequence[int], valid: Tensor | None = None
) -> Tensor:
    """Pixel-wise BCE of the teacher's new classes against the fused masks, L_BCE^new (FMWISS Eq. 6).

    -1/(|C^t||I|) sum_i sum_{c in C^t} [M_i^c log p_i^c + (1 - M_i^c) log(1 - p_i^c)], p = σ(T):
    averaged over the new classes, the counted pixels and the batch. A new class the image is not
    labelled with has an all-zero mask, i.e. target 0 everywhere (the paper treats "all other
    classes as background"). The background and old channels are not supervised here (Eq. 8).

    Args:
        teacher_logits: (B, |Y^t|, H, W) float logits T of the teacher at the resolution of
            ``pseudo`` (the caller upsamples them).
        pseudo: (B, |C^t|, H, W) float M_refine in [0, 1] ({0, 1} for the fused masks), channel k
            for the class ``new_classes[k]``; detached.
        new_classes: channel indices of C^t = the last |C^t| channels of ``teacher_logits``.
        valid: optional (B, H, W) bool, False at void/padding pixels; None counts every pixel.
    Returns:
        Scalar float tensor ≥ 0; 0 if no pixel is counted.
    Raises:
        ValueError: not 4-D, ``pseudo`` not (B, |C^t|, H, W), ``new_classes`` not the last
            channels, or ``valid`` of the wrong shape.
    """
    _check_maps("teacher_logits", teacher_logits)
    _check_maps("pseudo", pseudo)
    b, c, h, w = teacher_logits.shape
    new = _check_new_classes(new_classes, c)
    if pseudo.shape != (b, len(new), h, w):
        raise ValueError(
            f"pseudo: expected shape {(b, len(new), h, w)} (one channel per new class at the "
            f"teacher's upsampled resolution), got {tuple(pseudo.shape)}"
        )
    return _mean_bce(teacher_logits[:, new[0] :], pseudo, _check_valid(valid, teacher_logits))


def contrastive_pixel_classes(
    pseudo: Tensor, pasted: Tensor, new_classes: Sequence[int], valid: Tensor | None = None, background: int = 0
) -> Tensor:
    """The class of each pixel for the dense contrastive loss (FMWISS Eq. 7, "pseudo annotation").

    The paper defines positives/negatives by the pixels' pseudo-labels but does not say which
    pixels outside the new-class masks count as what. Here, per pixel:

    - a pasted memory-bank instance (Sec. 3.4): its old class ``pasted[b, i]`` (it is a pixel label);
    - else exactly one new-class mask is 1: that new class;
    - else no new-class mask: ``background`` (pixels the co-segmentation leaves out; the old
      classes of the original image are not told apart, no old-model pseudo-label is used);
    - void/padding (``valid`` False) or two or more overlapping new-class masks (ambiguous):
      :data:`IGNORE` (-1).

    Args:
        pseudo: (B, |C^t|, H, W) float M_refine, a pixel is in mask k where the value is > 0.5.
        pasted: (B, H, W) int64, the old class of a pasted instance at its pixels, 0 elsewhere.
        new_classes: the class index of each channel of ``pseudo``.
        valid: optional (B, H, W) bool, False at void/padding pixels.
        background: class id of the pixels outside every mask (0).
    Returns:
        (B, H, W) int64 class ids in {-1} ∪ {background} ∪ old classes ∪ C^t.
    Raises:
        ValueError: shapes disagree, or ``new_classes`` does not have one entry per channel.
    """
    _check_maps("pseudo", pseudo)
    b, k, h, w = pseudo.shape
    if len(new_classes) != k:
        raise ValueError(f"new_classes has {len(new_classes)} entries for {k} pseudo channels")
    if pasted.shape != (b, h, w):
        raise ValueError(f"pasted: expected shape {(b, h, w)}, got {tuple(pasted.shape)}")
    inside = pseudo > 0.5
    count = inside.sum(dim=1)
    ids = torch.as_tensor([int(c) for c in new_classes], dtype=torch.long, device=pseudo.device)
    classes = torch.full((b, h, w), background, dtype=torch.long, device=pseudo.device)
    classes = torch.where(count == 1, ids[inside.to(torch.uint8).argmax(dim=1)], classes)
    classes = torch.where(count > 1, torch.full_like(classes, IGNORE), classes)
    pasted = pasted.long()
    classes = torch.where(pasted > 0, pasted, classes)
    valid = _check_valid(valid, pseudo)
    if valid is not None:
        classes = torch.where(valid, classes, torch.full_like(classes, IGNORE))
    return classes


def sample_class_points(
    pixel_classes: Tensor, points_per_class: int = 10, generator: torch.Generator | None = None
) -> Tensor:
    """Pick up to ``points_per_class`` pixels of every class present in the mini-batch (FMWISS
    Sec. 3.3, after Eq. 7: "ten points for each contained class of the current mini-batch").

    Uniform without replacement among all pixels of that class over the whole batch (not per
    image); a class with fewer pixels gives all of them. Ignored pixels (< 0) are never drawn.
    Randomness: ``generator`` if given (its device draws the keys), else the global torch RNG of
    the device of ``pixel_classes`` (seeded per epoch by the training loop).

    Args:
        pixel_classes: (B, h, w) or any-shaped int64 class ids, -1 = ignored
            (:func:`contrastive_pixel_classes`, at the embedding's resolution).
        points_per_class: ≥ 1, the maximum number of points per class (10 in the paper).
        generator: optional torch.Generator.
    Returns:
        (N,) int64 indices into ``pixel_classes.flatten()``, grouped by class in increasing class
        order; N = sum over present classes of min(points_per_class, count).
    Raises:
        ValueError: points_per_class < 1.
    """
    if points_per_class < 1:
        raise ValueError(f"points_per_class={points_per_class}: must be ≥ 1")
    flat = pixel_classes.flatten()
    candidates = torch.nonzero(flat >= 0).flatten()
    if candidates.numel() == 0:
        return candidates
    device = generator.device if generator is not None else flat.device
    keys = torch.rand(candidates.numel(), generator=generator, device=device).to(flat.device)
    shuffled = candidates[keys.argsort()]  # random order ...
    grouped = shuffled[flat[shuffled].argsort(stable=True)]  # ... within each class
    _, counts = torch.unique_consecutive(flat[grouped], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(grouped.numel(), device=flat.device) - torch.repeat_interleave(starts, counts)
    return grouped[rank < points_per_class]


def dense_contrastive_loss(embeddings: Tensor, classes: Tensor, tau: float = 0.1) -> Tensor:
    """Dense contrastive loss L_DCL^new over sampled pixel embeddings (FMWISS Eq. 7; InfoNCE,
    van den Oord et al. 2018).

    For an anchor i with positives P_i (the other points of its class) and negatives N_i (the
    points of every other class):
    L_i = 1/|P_i| sum_{q+ in P_i} -log[exp(i·q+/τ) / (exp(i·q+/τ) + sum_{q- in N_i} exp(i·q-/τ))].
    Note the denominator holds only the one positive and the negatives, as the paper writes (not
    SupCon's sum over all positives). Every point is an anchor; the loss is the mean of L_i over
    the anchors with at least one positive (0 if there is none; with no negatives L_i = 0).
    The dot products are used as given: pass L2-normalised embeddings (cosine similarity).

    Args:
        embeddings: (N, D) float pixel embeddings (L2-normalised: i·q in [-1, 1]).
        classes: (N,) int64 class id of each point.
        tau: τ > 0, the temperature (0.1 in the paper).
    Returns:
        Scalar float32 tensor ≥ 0 (computed in float32, log-sum-exp stabilised).
    Raises:
        ValueError: ``embeddings`` not 2-D, ``classes`` not (N,), or τ ≤ 0.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings: expected (N, D), got shape {tuple(embeddings.shape)}")
    if classes.shape != embeddings.shape[:1]:
        raise ValueError(f"classes: expected shape {tuple(embeddings.shape[:1])}, got {tuple(classes.shape)}")
    if tau <= 0:
        raise ValueError(f"tau={tau}: must be > 0")
    z = embeddings.float()
    with torch.autocast(z.device.type, enabled=False):  # float32 even under AMP
        sim = z @ z.t() / tau  # (N, N): i·q / τ
    same = classes[:, None] == classes[None, :]
    positive = same & ~torch.eye(len(classes), dtype=torch.bool, device=z.device)
    negative = ~same
    lowest = torch.finfo(sim.dtype).min  # exp(lowest) = 0, no NaN gradients
    log_negatives = sim.masked_fill(~negative, lowest).logsumexp(dim=1, keepdim=True)  # log sum_{N_i} exp
    per_pair = torch.logaddexp(sim, log_negatives) - sim  # -log(e^s+ / (e^s+ + sum e^s-))
    num_positives = positive.sum(dim=1)
    per_anchor = (per_pair * positive).sum(dim=1) / num_positives.clamp(min=1)
    anchors = num_positives > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    return per_anchor[anchors].mean()


# --- Sec. 3.4: the teacher on the old classes (memory-based copy-paste) -------------------------


def occlude_pseudo_labels(pseudo: Tensor, pasted: Tensor) -> Tensor:
    """Zero the new-class masks under pasted memory-bank instances (FMWISS Sec. 3.4).

    The fused masks come from the co-segmentation of the original image; a pasted old-class
    instance hides what was there, so no new class is visible at its pixels. (The data side
    already does this; the function is idempotent.)

    Args:
        pseudo: (B, |C^t|, H, W) float M_refine in [0, 1].
        pasted: (B, H, W) int64, > 0 at pasted pixels.
    Returns:
        (B, |C^t|, H, W) new tensor of ``pseudo.dtype``, 0 where ``pasted`` > 0.
    Raises:
        ValueError: not 4-D or ``pasted`` of the wrong shape.
    """
    _check_maps("pseudo", pseudo)
    b, _, h, w = pseudo.shape
    if pasted.shape != (b, h, w):
        raise ValueError(f"pasted: expected shape {(b, h, w)}, got {tuple(pasted.shape)}")
    return pseudo * (pasted == 0).to(pseudo.dtype)[:, None]


def old_class_targets(old_logits: Tensor, pasted: Tensor, one_hot: bool = True) -> Tensor:
    """Targets of the old classes g(f^{t-1}(x̂)) with the pasted instances' labels (FMWISS Eq. 9).

    σ(f^{t-1}(x̂)) everywhere, except at the pixels of a pasted instance of old class k, where the
    target of k is 1 (Eq. 9). Eq. 9 leaves the other old classes (and the background) there at
    σ(f^{t-1}); with ``one_hot`` (our default) they are set to 0, because the pasted pixels carry
    a pixel label of step t-1 (Sec. 3.4: "old class images and pixel labels"), which says the
    pixel is k and nothing else. ``one_hot=False`` is the literal Eq. 9.

    Args:
        old_logits: (B, |Y^{t-1}|, H, W) float logits of the frozen step t-1 model on the augmented
            image x̂; detached here.
        pasted: (B, H, W) int64, the old class (1 ≤ k < |Y^{t-1}|) of a pasted instance at its
            pixels, 0 elsewhere.
        one_hot: set the other old classes to 0 at pasted pixels.
    Returns:
        (B, |Y^{t-1}|, H, W) float targets in [0, 1], dtype of ``old_logits``.
    Raises:
        ValueError: not 4-D, ``pasted`` of the wrong shape or with a value outside [0, |Y^{t-1}|).
    """
    _check_maps("old_logits", old_logits)
    b, num_old_channels, h, w = old_logits.shape
    pasted = _check_pasted(pasted, b, (h, w), num_old_channels)
    target = torch.sigmoid(old_logits.detach())
    is_pasted = (pasted > 0)[:, None]  # (B, 1, H, W)
    hit = torch.zeros_like(target, dtype=torch.bool).scatter_(1, pasted[:, None], is_pasted)  # channel k there
    if one_hot:
        return torch.where(is_pasted, hit.to(target.dtype), target)
    return target.masked_fill(hit, 1.0)


def _check_teacher_and_old(teacher_logits: Tensor, old_target: Tensor) -> tuple[int, int]:
    """(|Y^t|, |Y^{t-1}|) of teacher logits and old targets that agree on batch and (H, W)."""
    _check_maps("teacher_logits", teacher_logits)
    _check_maps("old_target", old_target)
    b, c, h, w = teacher_logits.shape
    if (old_target.shape[0], *old_target.shape[2:]) != (b, h, w):
        raise ValueError(
            f"old_target {tuple(old_target.shape)} vs teacher_logits {tuple(teacher_logits.shape)}: "
            "batch and (H, W) must match"
        )
    return c, old_target.shape[1]


def old_class_bce_loss(teacher_logits: Tensor, old_target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Pixel-wise BCE of the teacher's old classes against the old targets, L_BCE^old (FMWISS Eq. 8).

    -1/(|Y^{t-1}||I|) sum_i sum_{c in Y^{t-1}} [g_i^c log p_i^c + (1 - g_i^c) log(1 - p_i^c)],
    p = σ(T), g = :func:`old_class_targets`; the old channels are the first |Y^{t-1}| channels of
    T (background included); the new channels are not supervised here. g is detached.

    Args:
        teacher_logits: (B, |Y^t|, H, W) float logits T of the teacher.
        old_target: (B, |Y^{t-1}|, H, W) float targets in [0, 1] at the same resolution,
            |Y^{t-1}| < |Y^t|.
        valid: optional (B, H, W) bool, False at void/padding pixels.
    Returns:
        Scalar float tensor ≥ 0; 0 if no pixel is counted.
    Raises:
        ValueError: not 4-D, batch or spatial sizes differ, |Y^{t-1}| ≥ |Y^t|, or bad ``valid``.
    """
    c, num_old_channels = _check_teacher_and_old(teacher_logits, old_target)
    if num_old_channels >= c:
        raise ValueError(
            f"old_target has {num_old_channels} channels, the teacher only {c} (needs new ones after them)"
        )
    return _mean_bce(teacher_logits[:, :num_old_channels], old_target, _check_valid(valid, teacher_logits))


# --- Sec. 3.5: distilling the teacher and the old model into the student --------------------------


def distillation_targets(
    teacher_logits: Tensor,
    old_target: Tensor,
    new_classes: Sequence[int],
    alpha: float = 0.5,
    beta: float = 0.9,
    image_labels: Tensor | None = None,
) -> Tensor:
    """Soft pixel targets q of the segmentation model (FMWISS Eq. 10).

    q^c = α |T|_hard^c + (1 - α) σ(T^c) for the new classes c in C^t;
    q^c = β g^c + (1 - β) σ(T^c) for the old classes (background included), with g the Eq. 9
    targets (σ(f^{t-1}) with the pasted labels; the paper writes g(f^{t-1}(x)), the old model's
    output on the same augmented input).

    |T|_hard is the one-hot of the argmax of T over *all* |Y^t| classes (ties → lowest index), so
    a new class gets the hard 1 only where the teacher prefers it to the background and the old
    classes (an argmax over the new classes alone would give every pixel a new class). With
    ``image_labels`` (WILSON's public code, not in the FMWISS paper) the new classes an image is
    not labelled with are left out of the argmax and their q is 0.

    Args:
        teacher_logits: (B, |Y^t|, H, W) float logits T of the teacher; detached here.
        old_target: (B, |Y^{t-1}|, H, W) float g in [0, 1] (:func:`old_class_targets`).
        new_classes: channel indices of C^t = the last |Y^t| - |Y^{t-1}| channels.
        alpha: α in [0, 1] (0.5 in the paper, Sec. 4.2).
        beta: β in [0, 1] (0.9 in the paper, Sec. 4.2).
        image_labels: optional (B, |Y^t|) float/bool image labels indexed like the channels
            (only the new-class columns are read; nonzero = present).
    Returns:
        (B, |Y^t|, H, W) float q in [0, 1], dtype of ``teacher_logits``, no gradient.
    Raises:
        ValueError: not 4-D, sizes differ, ``new_classes`` not the last channels after the
            |Y^{t-1}| old ones, α or β outside [0, 1], or ``image_labels`` not (B, |Y^t|).
    """
    c, num_old_channels = _check_teacher_and_old(teacher_logits, old_target)
    new = _check_new_classes(new_classes, c)
    if new[0] != num_old_channels:
        raise ValueError(f"new_classes={new}: must start right after the {num_old_channels} old channels")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value}: must be in [0, 1]")
    logits = teacher_logits.detach()
    probs = torch.sigmoid(logits)
    b = logits.shape[0]
    keep = torch.ones(b, c, dtype=torch.bool, device=logits.device)
    if image_labels is not None:
        if image_labels.shape != (b, c):
            raise ValueError(f"image_labels: expected shape {(b, c)}, got {tuple(image_labels.shape)}")
        keep[:, num_old_channels:] = image_labels[:, num_old_channels:].to(logits.device) != 0
    keep = keep[:, :, None, None]
    ranked = logits.masked_fill(~keep, float("-inf"))
    hard = torch.zeros_like(probs).scatter_(1, ranked.argmax(dim=1, keepdim=True), 1.0)
    new_q = (alpha * hard + (1.0 - alpha) * probs) * keep.to(probs.dtype)
    old_q = beta * old_target.detach().to(probs.dtype) + (1.0 - beta) * probs[:, :num_old_channels]
    return torch.cat([old_q, new_q[:, num_old_channels:]], dim=1)


def all_class_bce_loss(
    student_logits: Tensor, target: Tensor, valid: Tensor | None = None, class_reduction: str = "mean"
) -> Tensor:
    """Pixel-wise BCE of the segmentation model against q over every seen class, L_BCE^all
    (FMWISS Eq. 11).

    ``class_reduction="mean"`` (Eq. 11 as printed):
    -1/(|Y^t||I|) sum_i sum_{c in Y^t} [q_i^c log p_i^c + (1 - q_i^c) log(1 - p_i^c)], p = σ(f^t(x)),
    averaged over classes, counted pixels and the batch. ``"sum"``: summed over classes, averaged
    over pixels, as WILSON's Eq. 8 (on which FMWISS builds): |Y^t| times the mean, i.e. Eq. 12 with
    L_BCE^all weighted by |Y^t|. q is detached (the teacher is distilled into the student, it does
    not learn from it).

    Args:
        student_logits: (B, |Y^t|, H, W) float logits of the segmentation model.
        target: (B, |Y^t|, H, W) float q in [0, 1] (:func:`distillation_targets`).
        valid: optional (B, H, W) bool, False at void/padding pixels.
        class_reduction: ``mean`` or ``sum`` over the |Y^t| classes.
    Returns:
        Scalar float tensor ≥ 0; 0 if no pixel is counted.
    Raises:
        ValueError: shapes differ, not 4-D, bad ``valid``, or an unknown ``class_reduction``.
    """
    _check_maps("student_logits", student_logits)
    if target.shape != student_logits.shape:
        raise ValueError(
            f"target {tuple(target.shape)} vs student_logits {tuple(student_logits.shape)}: shapes must match"
        )
    if class_reduction not in ("mean", "sum"):
        raise ValueError(f"class_reduction={class_reduction!r}: expected 'mean' (Eq. 11) or 'sum' (WILSON Eq. 8)")
    return _mean_bce(student_logits, target, _check_valid(valid, student_logits), class_reduction)


def overall_loss_terms(
    new_bce: Tensor, dcl: Tensor, old_bce: Tensor, all_bce: Tensor | None = None, lambda_dcl: float = 0.1
) -> dict[str, Tensor]:
    """The weighted terms of L_overall = L_BCE^new + λ L_DCL^new + L_BCE^old + L_BCE^all (FMWISS Eq. 12).

    Returned as named terms (the training loop logs each and back-propagates their sum); the
    ``dcl`` entry is already multiplied by λ. ``all_bce`` is None during the teacher's warm-up
    (Sec. 4.2: only the teacher learns), and then left out.

    Args:
        new_bce, dcl, old_bce: scalar tensors of Eq. 6, 7, 8.
        all_bce: scalar tensor of Eq. 11, or None.
        lambda_dcl: λ ≥ 0 (0.1 in the paper, Sec. 4.2 and Table 5).
    Returns:
        ``{"new_bce", "dcl", "old_bce"[, "all_bce"]}`` scalar tensors whose sum is L_overall.
    Raises:
        ValueError: λ < 0.
    """
    if lambda_dcl < 0:
        raise ValueError(f"lambda_dcl={lambda_dcl}: must be ≥ 0")
    terms = {"new_bce": new_bce, "dcl": lambda_dcl * dcl, "old_bce": old_bce}
    if all_bce is not None:
        terms["all_bce"] = all_bce
    return terms
