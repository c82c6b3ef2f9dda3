"""Contour F-score (paper 003 / DAVIS f_measure) and MaskQuality, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.metrics.contour import (
    ContourFScore,
    boundary_counts,
    class_boundary_counts,
    contour_f_score,
    f_from_counts,
    seg2bmap,
    tolerance_pixels,
)
from pipeline.metrics.quality import MaskQuality


def square(top: int, left: int, side: int = 3, shape=(10, 10)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


# Boundary of the 3x3 square at rows 2-4, cols 2-4 (a pixel differing from its E, S or SE
# neighbour): 5 inside pixels on the bottom row / right column, 7 outside pixels above / left.
SQUARE_BOUNDARY = {(4, 2), (4, 3), (4, 4), (2, 4), (3, 4), (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (3, 1), (4, 1)}


def test_seg2bmap_of_a_square_by_hand():
    bmap = seg2bmap(square(2, 2))
    assert bmap.dtype == bool
    assert set(zip(*np.nonzero(bmap))) == SQUARE_BOUNDARY


def test_seg2bmap_image_border_is_not_a_boundary():
    assert not seg2bmap(np.ones((5, 7), bool)).any()
    left = np.zeros((5, 7), bool)
    left[:, :3] = True  # one vertical edge: column 2, every row
    assert set(zip(*np.nonzero(seg2bmap(left)))) == {(r, 2) for r in range(5)}


@pytest.mark.parametrize(
    "shift, tolerance, matched",
    [
        (0, 0, 12),  # identical
        (1, 0, 6),  # shared pixels: (4,2) (4,3) (4,4) (1,2) (1,3) (1,4)
        (1, 1, 12),  # every pixel has its copy 1 px away
        (2, 1, 8),  # 4 of 12 are 2 px or sqrt(5) px away on each side
    ],
)
def test_square_shifted_within_and_beyond_the_tolerance(shift, tolerance, matched):
    counts = boundary_counts(square(2, 2 + shift), square(2, 2), tolerance)
    np.testing.assert_array_equal(counts, [matched, 12, matched, 12])
    assert contour_f_score(square(2, 2 + shift), square(2, 2), tolerance) == pytest.approx(matched / 12)


@pytest.mark.parametrize(
    "shift, tolerance, expected", [(1, 0, 0.0), (1, 1, 1.0), (2, 1, 0.0), (2, 2, 1.0), (3, 2.5, 0.0), (3, 3, 1.0)]
)
def test_straight_edge_matches_iff_shift_within_tolerance(shift, tolerance, expected):
    gt = np.zeros((8, 12), bool)
    gt[:, :4] = True
    pred = np.zeros((8, 12), bool)
    pred[:, : 4 + shift] = True
    assert contour_f_score(pred, gt, tolerance) == expected


def test_tolerance_conventions():
    assert tolerance_pixels(None, (375, 500)) == 5  # ceil(0.008 * 625)
    assert tolerance_pixels(None, (96, 96)) == 2  # ceil(0.008 * 135.8)
    assert tolerance_pixels(0.01, (300, 400)) == 5  # fraction of the diagonal 500
    assert tolerance_pixels(3, (10, 10)) == 3  # >= 1: pixels
    assert tolerance_pixels(0, (10, 10)) == 0
    with pytest.raises(ValueError, match="-1"):
        tolerance_pixels(-1, (10, 10))


def test_empty_mask_conventions():
    empty = np.zeros((10, 10), bool)
    assert math.isnan(contour_f_score(empty, empty))  # not counted
    assert contour_f_score(empty, square(2, 2)) == 0.0  # missed object
    assert contour_f_score(square(2, 2), empty) == 0.0  # hallucinated object
    p, r, f = f_from_counts(np.array([[0, 0, 0, 0], [0, 0, 0, 5], [3, 4, 0, 0], [0, 4, 0, 6]]))
    np.testing.assert_array_equal(np.isnan(f), [True, False, False, False])
    np.testing.assert_array_equal(f[1:], [0.0, 0.0, 0.0])
    assert math.isnan(p[1]) and r[1] == 0 and p[2] == 0.75 and math.isnan(r[2])


def test_dataset_accumulates_counts_not_per_image_scores():
    contour = ContourFScore([1], tolerance=1)
    a = np.zeros((8, 12), np.uint8)
    a[:, :4] = 1
    contour.update(a, a)  # 8 of 8 matched (F = 1)
    gt = np.zeros((16, 12), np.uint8)
    gt[:, :4] = 1
    pred = np.zeros((16, 12), np.uint8)
    pred[:, :6] = 1
    contour.update(pred, gt)  # 0 of 16 matched (F = 0)
    np.testing.assert_array_equal(contour.counts, [[8, 24, 8, 24]])
    assert contour.mean_f() == pytest.approx(1 / 3)  # not (1 + 0) / 2
    assert contour.n_images == 2


# 8x12 maps: gt class 1 in cols 0-3, background cols 4-7, class 2 cols 8-11;
# prediction: class 1 one column too wide (cols 0-4).
GT3 = np.zeros((8, 12), np.uint8)
GT3[:, :4] = 1
GT3[:, 8:] = 2
PRED3 = GT3.copy()
PRED3[:, 4] = 1


def test_three_class_counts_by_hand():
    counts = class_boundary_counts(PRED3, GT3, [0, 1, 2], tolerance=0)
    # class 1: pred edge col 4, gt col 3; class 2: col 7 both; background: cols 3|4 and 7
    np.testing.assert_array_equal(counts, [[8, 16, 8, 16], [0, 8, 0, 8], [8, 8, 8, 8]])


def test_mask_quality_three_classes_by_hand():
    quality = MaskQuality([1, 2], tolerance=0)
    quality.update(PRED3, GT3, "img")
    result = quality.result()
    # IoU: background 24 / 32, class 1 32 / 40, class 2 1
    assert result["per_class_iou"] == pytest.approx({"background": 0.75, "aeroplane": 0.8, "bicycle": 1.0})
    assert result["miou"] == pytest.approx((0.75 + 0.8 + 1.0) / 3)
    # contour F: background P = R = 8/16, class 1 no match, class 2 exact
    assert result["per_class_f"] == pytest.approx({"background": 0.5, "aeroplane": 0.0, "bicycle": 1.0})
    assert result["contour_f"] == pytest.approx(0.5)
    assert result["n_images"] == 1
    # default tolerance: ceil(0.008 * hypot(8, 12)) = 1 px: the 1-px shift is within it
    default = MaskQuality([1, 2])
    default.update(PRED3, GT3)
    assert default.result()["contour_f"] == 1.0


def test_mask_quality_void_and_unmeasured_classes():
    gt = GT3.copy()
    gt[:, 4] = 255  # void band beside class 1
    gt[:, 8:] = 7  # class 7 is not measured: background
    pred = PRED3.copy()
    pred[:, 8:] = 0
    quality = MaskQuality([1], tolerance=0)
    quality.update(pred, gt)
    result = quality.result()
    # IoU ignores void: class 1 and background exact
    assert result["per_class_iou"] == {"background": 1.0, "aeroplane": 1.0}
    # paper 003: void is background for contours -> pred edge col 4, gt edge col 3: no match
    assert result["per_class_f"] == {"background": 0.0, "aeroplane": 0.0}
    ignore = MaskQuality([1], tolerance=0, void="ignore")
    ignore.update(pred, gt)  # DAVIS: void cleared from both masks -> identical boundaries
    assert ignore.result()["per_class_f"] == {"background": 1.0, "aeroplane": 1.0}


def test_mask_quality_unlabelled_pred_and_absent_class():
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1
    pred = gt.copy()
    pred[0, :2] = 255  # unlabelled: a miss of class 1, no false positive
    quality = MaskQuality([1, 3], tolerance=1)
    quality.update(pred, gt)
    result = quality.result()
    assert result["per_class_iou"]["aeroplane"] == 0.5
    assert result["per_class_iou"]["background"] == 1.0
    assert result["per_class_iou"]["bird"] is None and result["per_class_f"]["bird"] is None
    assert result["miou"] == 0.75  # None left out of the mean


def test_mask_quality_errors_name_the_value():
    quality = MaskQuality([1, 2])
    with pytest.raises(ValueError, match=r"'x'.*value 7"):
        quality.update(np.full((4, 4), 7, np.uint8), np.zeros((4, 4), np.uint8), "x")
    with pytest.raises(ValueError, match=r"\(4, 4\) and \(4, 5\)"):
        quality.update(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="255"):
        MaskQuality([255])
    assert MaskQuality([1]).result() == {
        "miou": None,
        "per_class_iou": {"background": None, "aeroplane": None},
        "contour_f": None,
        "per_class_f": {"background": None, "aeroplane": None},
        "n_images": 0,
    }
