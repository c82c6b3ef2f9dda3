"""Contour (boundary) F-score of segmentation masks, accumulated per class over a dataset.

Source: Jonnarth & Felsberg, "Importance sampling CAMs for weakly-supervised segmentation"
(ICASSP 2022; ``shared/papers/003``), Sec. 4.1: "We adapt the code from Perazzi et al. [DAVIS]
and compute the F-score by first accumulating bipartite matches of the boundaries between the
predicted and ground-truth masks, efficiently approximated using morphological operations.
Subsequently, we compute the class-wise F-scores over the dataset which we then average. [...]
we compute the contour accuracy by considering this no-class region as background."

The boundary measure itself is DAVIS's ``f_measure`` (Perazzi et al., CVPR 2016,
``davis2017-evaluation/davis2017/metrics.py``), which descends from the BSDS boundary benchmark
(Martin et al., TPAMI 2004):

* **boundaries** (:func:`seg2bmap`): a pixel is a boundary pixel of a binary mask when the mask
  differs between it and its east, south or south-east neighbour; the image border is not a
  boundary. A straight edge of length n gives n boundary pixels.
* **matching**: a predicted boundary pixel is *matched* when a ground-truth boundary pixel lies
  within ``tolerance`` pixels (Euclidean distance ``<= tolerance``; DAVIS dilates with
  ``skimage.morphology.disk(tolerance)``, which is the same set; here
  ``scipy.ndimage.distance_transform_edt``). Ground-truth boundary pixels are matched the same
  way against the predicted boundary.
* **tolerance** (:func:`tolerance_pixels`): the paper gives no value and uses DAVIS's code, whose
  default is ``bound_th = 0.008``: a value ``>= 1`` is a number of pixels, a value in ``[0, 1)``
  a fraction of the image diagonal, rounded up: ``ceil(0.008 * hypot(H, W))`` (5 px for a
  500x375 VOC image, 2 px for a 96x96 demo image). This is also the BSDS convention
  (``maxDist = 0.0075`` of the diagonal).

Accumulation over a dataset (paper 003, "accumulating [...] matches [...] Subsequently, we
compute the class-wise F-scores over the dataset"): for each class the numbers of matched and
total predicted and ground-truth boundary pixels are **summed over all images**, then
``P = matched_pred / n_pred``, ``R = matched_gt / n_gt`` and ``F = 2PR / (P + R)`` per class
(not the mean of per-image F-scores), and the reported contour F is the mean of the class F-scores.

Conventions (documented choices where the papers are silent):

* a class with no boundary pixel in either the prediction or the ground truth over the whole
  dataset is *not counted* (F = NaN, reported as None, left out of the mean); this includes an
  image where the class is absent from both, which adds nothing to the sums;
* a class with boundary pixels on one side only (prediction empty, or ground truth empty) has
  F = 0; so does ``P + R = 0``;
* void pixels (255) of the ground truth: ``void="background"`` (default, paper 003) treats them
  as background (the background class's ground-truth mask includes them; no class mask does);
  ``void="ignore"`` follows DAVIS's ``void_pixels``: void pixels are cleared from *both* binary
  masks (prediction and ground truth) before the boundaries are extracted;
* prediction values that are no class (e.g. 255 "unlabelled" pixels of a pseudo-label) belong
  to no class mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from pipeline.data.classes import VOID

#: DAVIS / paper-003 default tolerance: a fraction of the image diagonal (``bound_th``).
DEFAULT_TOLERANCE = 0.008
#: Ways of treating ground-truth void pixels (see the module docstring).
VOID_MODES = ("background", "ignore")
#: Columns of the per-class count arrays.
COUNT_FIELDS = ("matched_pred", "n_pred", "matched_gt", "n_gt")


def tolerance_pixels(tolerance: int | float | None, shape: Sequence[int]) -> float:
    """The matching distance in pixels for an image (DAVIS ``f_measure``'s ``bound_pix``).

    Args:
        tolerance: None for the default :data:`DEFAULT_TOLERANCE` (0.008); a value ``>= 1`` is
            a number of pixels (used as is); a value in ``[0, 1)`` is a fraction of the image
            diagonal, rounded up: ``ceil(tolerance * hypot(H, W))``.
        shape: ``(H, W)`` of the image.
    Returns:
        The tolerance in pixels (float ``>= 0``); boundary pixels at Euclidean distance
        ``<= tolerance`` match.
    Raises:
        ValueError: a negative or non-finite tolerance (names the value).
    """
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE
    tolerance = float(tolerance)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"contour tolerance must be a finite value >= 0, got {tolerance!r}")
    if tolerance >= 1:
        return tolerance
    return float(math.ceil(tolerance * math.hypot(shape[0], shape[1])))


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary map of a binary mask (DAVIS ``_seg2bmap`` at the mask's own resolution).

    Args:
        mask: (H, W) array, non-zero = inside.
    Returns:
        (H, W) bool: True where the mask differs between a pixel and its east, south or
        south-east neighbour (pixels of both sides can be marked: a straight edge of length n
        yields n pixels). The image border itself is not a boundary.
    Raises:
        ValueError: ``mask`` is not 2-D.
    """
    seg = np.asarray(mask).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap: expected a (H, W) mask, got shape {seg.shape}")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def _matched(points: np.ndarray, targets: np.ndarray, tolerance: float) -> int:
    """Number of True pixels of ``points`` within ``tolerance`` of a True pixel of ``targets``.

    Both are boolean crops holding every boundary pixel of the image, so the distance transform
    of the crop is the exact distance to the nearest target pixel.
    """
    distance = ndimage.distance_transform_edt(~targets)
    return int(np.count_nonzero(distance[points] <= tolerance))


def boundary_counts(pred_mask: np.ndarray, gt_mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Matched and total boundary pixels of one pair of binary masks (DAVIS ``f_measure`` counts).

    Args:
        pred_mask: (H, W) bool (or 0/1) predicted mask of one class.
        gt_mask: (H, W) bool (or 0/1) ground-truth mask of the class.
        tolerance: matching distance in pixels (see :func:`tolerance_pixels`).
    Returns:
        (4,) int64 ``[matched_pred, n_pred, matched_gt, n_gt]`` (:data:`COUNT_FIELDS`):
        predicted boundary pixels with a ground-truth boundary pixel within ``tolerance``, all
        predicted boundary pixels, and the same for the ground truth against the prediction.
    Raises:
        ValueError: the shapes differ.
    """
    pred_mask, gt_mask = np.asarray(pred_mask), np.asarray(gt_mask)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"pred mask shape {pred_mask.shape} != gt mask shape {gt_mask.shape}")
    pred_b, gt_b = seg2bmap(pred_mask), seg2bmap(gt_mask)
    n_pred, n_gt = int(np.count_nonzero(pred_b)), int(np.count_nonzero(gt_b))
    if n_pred == 0 or n_gt == 0:
        return np.array([0, n_pred, 0, n_gt], dtype=np.int64)
    # Work on the bounding box of all boundary pixels (exact: see _matched).
    rows, cols = np.nonzero(pred_b | gt_b)
    box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    pred_b, gt_b = pred_b[box], gt_b[box]
    return np.array(
        [_matched(pred_b, gt_b, tolerance), n_pred, _matched(gt_b, pred_b, tolerance), n_gt], dtype=np.int64
    )


def f_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F-score from summed boundary counts.

    Args:
        counts: (..., 4) non-negative counts ``[matched_pred, n_pred, matched_gt, n_gt]``.
    Returns:
        ``(precision, recall, f)``, float64 arrays of shape ``(...)`` in ``[0, 1]``.
        ``precision = matched_pred / n_pred`` (NaN if ``n_pred == 0``), ``recall`` likewise;
        ``f = 2PR / (P + R)``, with ``f = 0`` when exactly one of ``n_pred``, ``n_gt`` is 0 or
        ``P + R = 0``, and ``f = NaN`` (class not counted) when both are 0.
    Raises:
        ValueError: the last axis is not 4 or a count is negative.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape[-1:] != (4,) or (counts < 0).any():
        raise ValueError(f"expected non-negative (..., 4) boundary counts, got shape {counts.shape}")
    matched_pred, n_pred, matched_gt, n_gt = np.moveaxis(counts, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, matched_pred / np.maximum(n_pred, 1), np.nan)
        recall = np.where(n_gt > 0, matched_gt / np.maximum(n_gt, 1), np.nan)
        total = precision + recall
        f = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    f = np.where((n_pred == 0) | (n_gt == 0), 0.0, f)
    f = np.where((n_pred == 0) & (n_gt == 0), np.nan, f)
    return precision, recall, f


def _values(labels: np.ndarray) -> set[int]:
    """The distinct values of an integer label map (bincount for uint8, else np.unique)."""
    if labels.dtype == np.uint8:
        return set(np.flatnonzero(np.bincount(labels.ravel(), minlength=256)).tolist())
    return set(np.unique(labels).tolist())


def class_boundary_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Sequence[int],
    tolerance: int | float | None = None,
    void: str = "background",
) -> np.ndarray:
    """Per-class boundary counts of one label map against its ground truth.

    Args:
        pred: (H, W) integer label map (values that are not in ``classes`` belong to no class).
        gt: (H, W) integer ground truth, 255 void (see ``void``).
        classes: K class indices to measure (background 0 included if wanted).
        tolerance: see :func:`tolerance_pixels` (default 0.008 of the diagonal, rounded up).
        void: ``"background"`` (paper 003) or ``"ignore"`` (DAVIS ``void_pixels``); see the
            module docstring.
    Returns:
        (K, 4) int64 counts ``[matched_pred, n_pred, matched_gt, n_gt]`` per class, in the order
        of ``classes``; zeros for a class absent from both maps.
    Raises:
        ValueError: shapes differ or are not 2-D, or an unknown ``void`` mode.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"expected (H, W) pred and gt of one shape, got {pred.shape} and {gt.shape}")
    if void not in VOID_MODES:
        raise ValueError(f"void must be one of {VOID_MODES}, got {void!r}")
    tol = tolerance_pixels(tolerance, gt.shape)
    is_void = gt == VOID
    if void == "background":
        gt = np.where(is_void, 0, gt)
        keep = None
    else:
        keep = ~is_void
    present = _values(pred) | _values(gt)
    counts = np.zeros((len(classes), 4), dtype=np.int64)
    for k, c in enumerate(classes):
        if c not in present:
            continue
        pred_mask, gt_mask = pred == c, gt == c
        if keep is not None:
            pred_mask &= keep
            gt_mask &= keep
        counts[k] = boundary_counts(pred_mask, gt_mask, tol)
    return counts


class ContourFScore:
    """Accumulates per-class boundary counts over images; F per class over the dataset (paper 003).

    Example::

        contour = ContourFScore([0, 1, 2])
        for pred, gt in pairs:                  # (H, W) uint8 maps, gt 255 = void
            contour.update(pred, gt)
        p, r, f = contour.per_class()           # (3,) float64 each, NaN = class not counted
        contour.mean_f()                        # mean F over the counted classes

    Args:
        classes: class indices measured (background 0 included if wanted).
        tolerance: see :func:`tolerance_pixels`; computed per image from its size.
        void: ``"background"`` or ``"ignore"`` (module docstring).
    """

    def __init__(self, classes: Iterable[int], tolerance: int | float | None = None, void: str = "background") -> None:
        self.classes = [int(c) for c in classes]
        if void not in VOID_MODES:
            raise ValueError(f"void must be one of {VOID_MODES}, got {void!r}")
        tolerance_pixels(tolerance, (1, 1))  # validate now
        self.tolerance = tolerance
        self.void = void
        self.counts = np.zeros((len(self.classes), 4), dtype=np.int64)
        self.n_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Add one image; returns its (K, 4) counts (see :func:`class_boundary_counts`)."""
        counts = class_boundary_counts(pred, gt, self.classes, self.tolerance, self.void)
        self.counts += counts
        self.n_images += 1
        return counts

    def per_class(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(precision, recall, f)``, each (K,) float64, from the summed counts (:func:`f_from_counts`)."""
        return f_from_counts(self.counts)

    def mean_f(self) -> float | None:
        """Mean of the class F-scores over the counted classes (None if no class is counted)."""
        f = self.per_class()[2]
        f = f[~np.isnan(f)]
        return float(f.mean()) if f.size else None


def contour_f_score(pred: np.ndarray, gt: np.ndarray, tolerance: int | float | None = None) -> float:
    """F-score of the boundaries of one pair of binary masks (DAVIS ``f_measure``, our empty rules).

    Args:
        pred: (H, W) predicted binary mask.
        gt: (H, W) ground-truth binary mask.
        tolerance: see :func:`tolerance_pixels`.
    Returns:
        F in ``[0, 1]``; NaN when neither mask has a boundary pixel, 0 when only one has.
    """
    tol = tolerance_pixels(tolerance, np.shape(gt))
    return float(f_from_counts(boundary_counts(pred, gt, tol))[2])


__all__ = [
    "COUNT_FIELDS",
    "DEFAULT_TOLERANCE",
    "VOID_MODES",
    "ContourFScore",
    "boundary_counts",
    "class_boundary_counts",
    "contour_f_score",
    "f_from_counts",
    "seg2bmap",
    "tolerance_pixels",
]
