"""MiB's unbiased losses (Cermelli, Mancini, Rota Bulò, Ricci, Caputo, "Modeling the Background
for Incremental Learning in Semantic Segmentation", CVPR 2020).

At step t the annotation only covers the new classes; pixels of old classes are labelled
background, and the step-(t-1) model calls the pixels of new classes background. MiB therefore
compares like with like: the unbiased cross-entropy (Eq. 4-5) scores a background label with the
probability of "background or any old class", and the unbiased distillation (Eq. 6-7) scores the
old model's background with the new model's probability of "background or any new class".
The step objective is ``unbiased_cross_entropy + λ_KD · unbiased_knowledge_distillation``
(the paper's overall objective; its Eq. 1 as we recall the numbering).

Not in this module: MiB also initialises the new classifier channels from the background
channel (weights copied, biases lowered by log(|new| + 1), paper Sec. 3.4); that is done in
``pipeline/models/segmenter.py``, ``IncrementalClassifier.add_step``.

Loss weights: the authors' code (``argparser.py``, ``--method MiB``) sets λ_KD = 10 (``loss_kd``)
with the unbiased CE at weight 1; this is the value used for Pascal-VOC (the same flag also sets
10 for ADE20K). Two differences of that code from the equations implemented here, to keep in
mind when matching its numbers:

- its distillation term is divided by ``num_old_channels`` (``/ targets.shape[1]``, "average on the
  classes"), so its λ_KD = 10 corresponds to λ_KD = 10 / num_old_channels here (e.g. 10/16 on VOC 15-5);
- its cross-entropy is averaged over all pixels with void pixels contributing 0 (reduction
  ``'none'`` then ``.mean()``), whereas ``unbiased_cross_entropy`` averages over labelled pixels,
  like ``pixel_cross_entropy``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.data.classes import VOID


def _as_float32_if_half(logits: Tensor) -> Tensor:
    """Half-precision (AMP) logits are summed in float32; float32/float64 pass through."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def unbiased_cross_entropy(logits: Tensor, target: Tensor, num_old_channels: int, ignore_index: int = VOID) -> Tensor:
    """Unbiased cross-entropy of MiB (Eq. 4-5): background absorbs the old classes.

    With p = softmax(logits) over all C channels, a pixel labelled 0 is scored with
    p_0 + Σ_{0<c<num_old_channels} p_c (Eq. 5: background or any old class), a pixel labelled with a new
    class c ≥ num_old_channels with p_c; the loss is −log of that, averaged over labelled pixels (Eq. 4).
    Computed as logsumexp(logits[:, :num_old_channels]) − logsumexp(logits) (resp. logits_c − logsumexp),
    so it is stable for any finite logits. With ``num_old_channels == 1`` it is ordinary cross-entropy.

    Args:
        logits: (B, C, H, W) float scores of the step-t model over all seen classes; channels
            0..num_old_channels-1 are background + old classes, num_old_channels..C-1 the new classes. float16 and
            bfloat16 are computed in float32.
        target: (B, H, W) int64 labels in {0} ∪ [num_old_channels, C) or ``ignore_index`` (old-class
            ground truth already mapped to 0, as in the step-t annotation).
        num_old_channels: |Y^{t-1}|, the number of classes of step t-1 including background; 1 ≤ num_old_channels ≤ C.
        ignore_index: void label, excluded from the mean.
    Returns:
        Scalar tensor ≥ 0 (float32 for half inputs, else the logits' dtype); 0 if no pixel is
        labelled (still differentiable).
    Raises:
        ValueError: if ``num_old_channels`` is outside [1, C], if ``target``'s shape is not ``logits``'
            without the class axis, or if a non-void label is an old class (1..num_old_channels-1) or
            outside [0, C).
    """
    num_classes = logits.shape[1]
    if not 1 <= num_old_channels <= num_classes:
        raise ValueError(f"num_old_channels={num_old_channels} must be in [1, C={num_classes}]")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    valid = target != ignore_index
    labels = target.masked_fill(~valid, 0)
    bad = (labels < 0) | (labels >= num_classes) | ((labels > 0) & (labels < num_old_channels))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be 0, a new class in [{num_old_channels}, {num_classes}) or {ignore_index}; "
            f"got {sorted(set(labels[bad].tolist()))[:10]}"
        )
    logits = _as_float32_if_half(logits)
    log_partition = logits.logsumexp(dim=1)  # (B, H, W)
    log_background = logits[:, :num_old_channels].logsumexp(dim=1)  # background ∪ old classes
    log_label = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    nll = log_partition - torch.where(labels == 0, log_background, log_label)
    return nll.masked_fill(~valid, 0.0).sum() / valid.sum().clamp(min=1)


def unbiased_knowledge_distillation(logits: Tensor, old_logits: Tensor, alpha: float = 1.0) -> Tensor:
    """Unbiased knowledge distillation of MiB (Eq. 6-7): background absorbs the new classes.

    With q = softmax(alpha · old_logits) over the num_old_channels channels of the step-(t-1) model and
    p = softmax(logits) over all C channels of the step-t model, the new model's probability
    for the old background is p̂_0 = p_0 + Σ_{c≥num_old_channels} p_c (Eq. 7: background or any new
    class) and for an old class c its own p̂_c = p_c; the loss is
    −mean over all pixels of Σ_{c<num_old_channels} q_c log p̂_c (Eq. 6). No void mask: every pixel is
    distilled, as in the paper and the authors' code. With C == num_old_channels it is ordinary KD
    −Σ q log p. The authors' code additionally divides by num_old_channels (see the module docstring);
    this function does not.

    ``alpha`` follows the authors' code (``--alpha``, "hard-ify the soft-labels"): it multiplies
    the old logits only, i.e. an inverse temperature on the teacher, with the student's softmax
    left at temperature 1. It is not in the paper's equations; the default 1 is the paper's loss
    and the value MiB uses.

    Args:
        logits: (B, C, H, W) float scores of the step-t model; channels 0..num_old_channels-1 are
            background + old classes, num_old_channels..C-1 the new classes. float16 and bfloat16 are
            computed in float32.
        old_logits: (B, num_old_channels, H, W) float scores of the frozen step-(t-1) model at the same
            resolution; treated as a constant target (detached, no gradient flows into it).
        alpha: > 0, multiplies ``old_logits`` before the softmax.
    Returns:
        Scalar tensor ≥ 0 (a cross-entropy; float32 for half inputs, else the logits' dtype).
    Raises:
        ValueError: if ``old_logits`` has more channels than ``logits``, if the batch or spatial
            shapes differ, or if ``alpha`` ≤ 0.
    """
    num_old_channels, num_classes = old_logits.shape[1], logits.shape[1]
    if not 1 <= num_old_channels <= num_classes:
        raise ValueError(
            f"old_logits has {num_old_channels} channels, logits {num_classes}: need 1 ≤ num_old_channels ≤ C"
        )
    if old_logits.shape[:1] + old_logits.shape[2:] != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"old_logits {tuple(old_logits.shape)} and logits {tuple(logits.shape)} differ in B, H or W")
    if not alpha > 0:
        raise ValueError(f"alpha={alpha} must be > 0")
    logits = _as_float32_if_half(logits)
    q = (
        (alpha * _as_float32_if_half(old_logits.detach())).softmax(dim=1).to(logits.dtype)
    )  # (B, num_old_channels, H, W)
    log_partition = logits.logsumexp(dim=1, keepdim=True)  # (B, 1, H, W)
    log_background = torch.cat([logits[:, :1], logits[:, num_old_channels:]], dim=1).logsumexp(dim=1, keepdim=True)
    log_p_hat = (
        torch.cat([log_background, logits[:, 1:num_old_channels]], dim=1) - log_partition
    )  # (B, num_old_channels, H, W)
    return -(q * log_p_hat).sum(dim=1).mean()
