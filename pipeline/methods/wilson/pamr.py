"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, "Single-Stage Semantic Segmentation
from Image Labels", CVPR 2020, Sec. 3), which WILSON uses on its localizer's masks before the
self-supervised segmentation loss (Cermelli et al. CVPR 2022, Sec. 4.3).

Source: the authors' code, ``models/mods/pamr.py`` of visinf/1-stage-wseg, copied unchanged into
fcdl94/WILSON as ``wss/modules.py`` (``LocalAffinity``, ``LocalAffinityCopy``, ``LocalStDev``,
``LocalAffinityAbs``, ``PAMR``). Their shift kernels (3×3 convolutions with one-hot weights, one
output channel per neighbour) are written here as slices of the replicate-padded tensor, which
gives the same values in the same neighbour order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

# (row, column) of the 3×3 kernel taps in the authors' channel order, centre excluded
# (LocalAffinity / LocalAffinityCopy); LocalStDev also takes the centre, between taps 3 and 4.
_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))
_WITH_CENTRE = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2))


def _shifted(x: Tensor, dilations: Sequence[int], taps: Sequence[tuple[int, int]]) -> Tensor:
    """(B, K, H, W) -> (B, K, P, H, W): for each dilation d and each tap (r, c), the value of the
    pixel at offset ((r - 1) d, (c - 1) d), replicate padding at the borders (P = len(taps) ×
    len(dilations), dilation-major as the authors' ``torch.cat``)."""
    h, w = x.shape[-2:]
    views = []
    for d in dilations:
        padded = F.pad(x, [d, d, d, d], mode="replicate")
        views.extend(padded[..., r * d : r * d + h, c * d : c * d + w] for r, c in taps)
    return torch.stack(views, dim=2)


def pamr_affinity(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """The local affinity of PAMR: for each pixel i and each neighbour j of its 3×3 neighbourhood
    at every dilation, softmax over j of mean over channels k of -|I_i^k - I_j^k| / (1e-8 + 0.1 σ_i^k).

    σ_i^k is the standard deviation (unbiased, ``torch.std``) of channel k over the 9 taps of
    *every* dilation together (9 × len(dilations) values, the centre repeated once per dilation),
    as ``LocalStDev`` in the authors' ``pamr.py``. The kernel is invariant to a per-channel affine
    map of the intensities with positive scale (the difference and σ scale alike) up to the 1e-8:
    a normalised image gives the affinities of the raw one.

    Args:
        image: (B, K, H, W) float image (K channels, e.g. RGB, any per-channel normalisation).
        dilations: non-empty, positive integer dilations.
    Returns:
        (B, 1, P, H, W) float affinities in [0, 1], P = 8 × len(dilations), summing to 1 over P.
    Raises:
        ValueError: ``image`` not 4-D, or bad ``dilations``.
    """
    if image.dim() != 4:
        raise ValueError(f"image: expected a (B, K, H, W) tensor, got shape {tuple(image.shape)}")
    dilations = _check_dilations(dilations)
    sigma = _shifted(image, dilations, _WITH_CENTRE).std(dim=2, keepdim=True)  # (B, K, 1, H, W)
    diff = (image.unsqueeze(2) - _shifted(image, dilations, _NEIGHBOURS)).abs()  # (B, K, P, H, W)
    logits = (-diff / (1e-8 + 0.1 * sigma)).mean(dim=1, keepdim=True)
    return logits.softmax(dim=2)


def pamr_refine(
    image: Tensor, masks: Tensor, iterations: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12)
) -> Tensor:
    """Refine per-class masks by propagating them along the image's local affinity (PAMR).

    ``iterations`` times: m_i <- sum_j a_ij m_j over the neighbours j of pixel i (the centre is
    not a neighbour), a = :func:`pamr_affinity` (computed once), replicate padding at the borders.
    A convex combination per pixel, so values stay in the range of ``masks`` and a distribution
    over classes stays one. WILSON's call (``train.py``): ``PAMR(num_iter=10, dilations=[1, 2, 4,
    8, 12])`` on the localizer's softmax and the de-normalised image bilinearly resized
    (``align_corners=True``) to the localizer's resolution; Araslanov & Roth's default dilations
    add 24. The authors' module first resizes the masks to the image; here both must already have
    the same (H, W).

    Args:
        image: (B, K, H, W) float image at the masks' resolution (see :func:`pamr_affinity`).
        masks: (B, C, H, W) float masks, normally a softmax over C (values in [0, 1]).
        iterations: ≥ 0 propagation steps (0 returns ``masks`` unchanged).
        dilations: non-empty, positive integer dilations of the 3×3 neighbourhood.
    Returns:
        (B, C, H, W) float refined masks, dtype of ``masks``; no gradient is cut (the caller
        detaches, as the authors do).
    Raises:
        ValueError: not 4-D, batch or (H, W) differ, ``iterations`` < 0, or bad ``dilations``.
    """
    if masks.dim() != 4:
        raise ValueError(f"masks: expected a (B, C, H, W) tensor, got shape {tuple(masks.shape)}")
    if image.dim() != 4 or (image.shape[0], *image.shape[2:]) != (masks.shape[0], *masks.shape[2:]):
        raise ValueError(
            f"image {tuple(image.shape)} vs masks {tuple(masks.shape)}: batch and (H, W) must match; "
            "resize the image to the masks' resolution first"
        )
    if iterations < 0:
        raise ValueError(f"iterations={iterations}: must be ≥ 0")
    dilations = _check_dilations(dilations)
    affinity = pamr_affinity(image.to(masks.dtype), dilations)  # (B, 1, P, H, W)
    for _ in range(iterations):
        masks = (_shifted(masks, dilations, _NEIGHBOURS) * affinity).sum(dim=2)
    return masks


def _check_dilations(dilations: Sequence[int]) -> list[int]:
    dilations = list(dilations)
    if not dilations or any(int(d) != d or d < 1 for d in dilations):
        raise ValueError(f"dilations={dilations}: must be a non-empty list of positive integers")
    return [int(d) for d in dilations]
