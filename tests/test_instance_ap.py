"""pipeline.metrics.instance_ap: the VOC mask AP, on cases worked out by hand, and against COCOeval.

Masks are intervals of a 1 x 40 strip (``_strip(a, b)`` = pixels a..b-1), so every IoU is a
ratio of pixel counts that can be read off.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_dir  # noqa: E402  (tests/ is on sys.path under pytest)

from pipeline.metrics.instance_ap import (
    AUTHORS_IOU_THRESHOLDS,
    IOU_THRESHOLDS,
    InstanceAP,
    evaluate_instances,
    group_means,
    mask_iou,
    summarize,
    voc_ap,
)

# pycocotools 2.0 calls np.array(copy=False) on numpy 2 (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
WIDTH = 40
COCO = shared_dir() / "coco-mini"


def _strip(*intervals: tuple[int, int]) -> np.ndarray:
    """(N, 1, WIDTH) bool masks, mask i covering pixels a_i..b_i - 1."""
    masks = np.zeros((len(intervals), 1, WIDTH), dtype=bool)
    for i, (a, b) in enumerate(intervals):
        masks[i, 0, a:b] = True
    return masks


def _one(pred, labels, scores, gt, gt_labels, num_classes=3, **kwargs) -> dict:
    return evaluate_instances([_strip(*pred)], [labels], [scores], [_strip(*gt)], [gt_labels], num_classes, **kwargs)


def test_thresholds():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    assert len(AUTHORS_IOU_THRESHOLDS) == 9 and AUTHORS_IOU_THRESHOLDS[0] == 0.5
    assert abs(AUTHORS_IOU_THRESHOLDS[-1] - 0.9) < 1e-12  # np.arange(0.5, 0.95, 0.05): 0.95 missing


def test_mask_iou_by_hand():
    iou = mask_iou(_strip((0, 10), (5, 15), (30, 30)), _strip((0, 10), (8, 12)))
    np.testing.assert_allclose(iou, [[1.0, 2 / 12], [5 / 15, 4 / 10], [0.0, 0.0]])


def test_voc_ap_by_hand():
    assert voc_ap(np.array([1.0, 1.0]), np.array([0.5, 1.0])) == 1.0
    # FP then TP: precision (0, 1/2), recall (0, 1): the envelope is 1/2 over recall 0..1
    assert voc_ap(np.array([0.0, 0.5]), np.array([0.0, 1.0])) == 0.5
    # TP, FP, TP with 2 GT: precision (1, 1/2, 2/3) at recall (1/2, 1/2, 1)
    # = 1/2 * 1 + 1/2 * 2/3 (the monotone envelope, not 1/2 * 1/2)
    assert voc_ap(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(0.5 + 1 / 3)
    assert np.isnan(voc_ap(np.array([0.0]), None))


def test_perfect_predictions_give_one():
    gt = [_strip((0, 10), (20, 30)), _strip((5, 25))]
    result = evaluate_instances(gt, [[1, 2], [1]], [[0.9, 0.8], [0.7]], gt, [[1, 2], [1]], num_classes=3)
    np.testing.assert_array_equal(result["ap"][:, 1:], 1.0)
    assert result["map50"] == result["map"] == 1.0 and np.isnan(result["ap"][:, 0]).all()
    assert result["n_gt"].tolist() == [0, 2, 1]


def test_one_missed_ground_truth():
    # 2 GT of class 1, one predicted exactly: precision 1 up to recall 1/2, AP = 1/2
    result = _one([(0, 10)], [1], [0.9], [(0, 10), (20, 30)], [1, 1])
    np.testing.assert_array_equal(result["ap"][:, 1], 0.5)
    assert np.isnan(result["ap"][0, 2])  # class 2: no ground truth, left out of the mean
    assert result["map50"] == 0.5


def test_false_positive_with_a_higher_score_in_another_image():
    # image 1: a class-1 prediction on an image without class 1 (FP, score 0.95); image 2: the TP (0.9)
    result = evaluate_instances(
        [_strip((0, 10)), _strip((20, 30))], [[1], [1]], [[0.95], [0.9]],
        [_strip((0, 10)), _strip((20, 30))], [[2], [1]], num_classes=3,
    )  # fmt: skip
    assert result["ap50"][1] == 0.5  # precision (0, 1/2), recall (0, 1)
    assert result["ap50"][2] == 0.0  # the class-2 GT has no prediction: AP 0, not NaN
    assert result["map50"] == 0.25
    low = evaluate_instances(  # the same FP scored below the TP costs nothing
        [_strip((0, 10)), _strip((20, 30))], [[1], [1]], [[0.5], [0.9]],
        [_strip((0, 10)), _strip((20, 30))], [[2], [1]], num_classes=3,
    )  # fmt: skip
    assert low["ap50"][1] == 1.0


def test_duplicate_detection_and_both_threshold_lists():
    # GT 0..9 (10 px). The higher-scored prediction covers 0..5 (IoU 0.6), the lower one is exact.
    # IoU thresholds <= 0.6: the first is the TP and the exact one a duplicate (FP): AP 1.
    # Thresholds > 0.6: the first is an FP and the exact one the TP: precision (0, 1/2), AP 1/2.
    args = ([(0, 6), (0, 10)], [1, 1], [0.9, 0.8], [(0, 10)], [1])
    result = _one(*args)
    np.testing.assert_array_equal(result["ap"][:, 1], [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert result["ap_mean"][1] == pytest.approx((3 * 1 + 7 * 0.5) / 10)  # 0.65
    authors = _one(*args, iou_thresholds=AUTHORS_IOU_THRESHOLDS)  # 0.50 ... 0.90: one 0.5 fewer
    assert authors["ap_mean"][1] == pytest.approx((3 * 1 + 6 * 0.5) / 9)  # 0.667
    assert authors["map"] == pytest.approx(2 / 3) and result["map"] == pytest.approx(0.65)
    # a duplicate *after* the TP: match (1, 0), recall already 1 -> AP 1 at every threshold
    after = _one([(0, 10), (0, 6)], [1, 1], [0.9, 0.8], [(0, 10)], [1])
    np.testing.assert_array_equal(after["ap"][:, 1], 1.0)


def test_iou_exactly_at_a_threshold_passes_in_both_lists():
    # IoU 7/10 against 0.70 (and the authors' 0.7000000000000002): a match, as in chainercv (float32)
    for thresholds in (IOU_THRESHOLDS, AUTHORS_IOU_THRESHOLDS):
        result = _one([(0, 7)], [1], [0.9], [(0, 10)], [1], iou_thresholds=thresholds)
        t = [round(x, 2) for x in thresholds].index(0.7)
        assert result["ap"][t, 1] == 1.0 and result["ap"][t + 1, 1] == 0.0


def test_voc_matching_takes_the_best_ground_truth_even_if_matched():
    # GT a = 0..9, b = 10..19. p1 = a exactly (0.9); p2 = 3..15: IoU 7/16 with a (its best), 6/17
    # with b. At threshold 0.3, VOC: p2's best GT a is taken -> FP (AP 1/2); COCO's rule takes b.
    args = ([(0, 10), (3, 16)], [1, 1], [0.9, 0.8], [(0, 10), (10, 20)], [1, 1])
    voc = _one(*args, iou_thresholds=(0.3,))
    assert voc["ap50"][1] == 0.5
    unmatched = _one(*args, iou_thresholds=(0.3,), matching="unmatched")
    assert unmatched["ap50"][1] == 1.0


def test_difficult_ground_truth_is_ignored():
    # GT a (difficult) and b; only b is predicted: recall 1 of 1 -> AP 1 (else 1/2)
    args = ([(10, 20)], [1], [0.9], [(0, 10), (10, 20)], [1, 1])
    assert _one(*args)["ap50"][1] == 0.5
    result = _one(*args, gt_difficults=[[True, False]])
    assert result["ap50"][1] == 1.0 and result["n_gt"][1] == 1
    # a prediction on the difficult one is neither TP nor FP, even scored first
    both = _one([(0, 10), (10, 20)], [1, 1], [0.95, 0.9], [(0, 10), (10, 20)], [1, 1], gt_difficults=[[True, False]])
    assert both["ap50"][1] == 1.0
    only_difficult = _one([(0, 10)], [1], [0.9], [(0, 10)], [1], gt_difficults=[[True]])
    assert np.isnan(only_difficult["ap50"][1]) and only_difficult["map50"] is None


def test_two_classes_and_the_group_means():
    # class 1 perfect (AP 1), class 2 one of two found (AP 1/2), class 3 predicted but never in
    # the ground truth (NaN), class 4 in the ground truth but never predicted (AP 0)
    result = evaluate_instances(
        [_strip((0, 10), (20, 30), (30, 40))], [[1, 2, 3]], [[0.9, 0.8, 0.7]],
        [_strip((0, 10), (20, 30), (10, 20), (30, 35))], [[1, 2, 2, 4]], num_classes=5,
    )  # fmt: skip
    assert result["ap50"][1:].tolist()[:2] == [1.0, 0.5] and np.isnan(result["ap50"][3]) and result["ap50"][4] == 0
    assert result["map50"] == pytest.approx(0.5)  # (1 + 1/2 + 0) / 3
    summary = summarize(result, old_classes=[1, 2], new_classes=[3, 4], class_names=["bg", "a", "b", "c", "d"])
    assert summary["ap50_old"] == 0.75 and summary["ap50_new"] == 0.0 and summary["ap50_all"] == pytest.approx(0.5)
    assert summary["per_class"]["c"] == {"ap50": None, "ap": None} and summary["per_class"]["a"]["ap"] == 1.0
    assert group_means(result["ap50"], {"1-2": [1, 2], "3": [3], "0-4": range(5)}) == {
        "1-2": 0.75, "3": None, "0-4": pytest.approx(0.5)}  # fmt: skip


def test_summary_all_is_the_class_mean_of_the_paper():
    """CL4WSIS Table 2 (Ours, disjoint AP@0.5): 47.6 (1-15), 19.8 (16-20), All 40.7 = the class mean."""
    ap = np.full(21, np.nan)
    ap[1:16], ap[16:21] = 0.476, 0.198
    result = {"ap50": ap, "ap_mean": ap, "iou_thresholds": [0.5]}
    summary = summarize(result, range(1, 16), range(16, 21))
    assert round(100 * summary["ap50_all"], 1) == 40.7 and summary["ap50_old"] == pytest.approx(0.476)


def test_input_checks():
    acc = InstanceAP(3)
    with pytest.raises(ValueError, match="class 3"):
        acc.update(_strip((0, 5)), [3], [0.5], _strip((0, 5)), [1])
    with pytest.raises(ValueError, match="class 0"):
        acc.update(_strip((0, 5)), [0], [0.5], _strip((0, 5)), [1])
    with pytest.raises(ValueError, match="2 scores for 1 masks"):
        acc.update(_strip((0, 5)), [1], [0.5, 0.4], _strip((0, 5)), [1])
    with pytest.raises(ValueError, match="matching"):
        InstanceAP(3, matching="coco")
    acc.update(np.zeros((0, 1, WIDTH), bool), [], [], _strip((0, 5)), [1])  # no prediction at all
    assert acc.result()["ap50"][1] == 0.0


# --------------------------------------------------------------------------- COCOeval cross-check
def _coco_ap50(images: list[dict]) -> dict[int, float]:
    """COCOeval segm AP@0.5 per category (all areas, 100 detections) on ``images``: dicts with
    ``gt`` (K, H, W), ``gt_labels``, ``pred`` (N, H, W), ``labels``, ``scores``."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask):
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))

    gts, dts = [], []
    for i, im in enumerate(images):
        for m, c in zip(im["gt"], im["gt_labels"]):
            r = rle(m)
            box = mask_utils.toBbox(r).tolist()
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": int(c), "segmentation": r,
                        "area": float(m.sum()), "bbox": box, "iscrowd": 0})  # fmt: skip
        for m, c, s in zip(im["pred"], im["labels"], im["scores"]):
            dts.append({"image_id": i, "category_id": int(c), "segmentation": rle(m), "score": float(s)})
    categories = sorted({int(c) for im in images for c in [*im["gt_labels"], *im["labels"]]})
    sizes = [im["gt"].shape[1:] for im in images]
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)],
                    "annotations": gts, "categories": [{"id": c} for c in categories]}  # fmt: skip
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(dts), iouType="segm")
    evaluator.params.iouThrs = np.array([0.5])
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # (101 recalls, K), area all, 100 dets
    return {c: float(precision[:, k].mean()) for k, c in enumerate(evaluator.params.catIds) if precision[0, k] > -1}


def _voc(images: list[dict], num_classes: int) -> InstanceAP:
    acc = InstanceAP(num_classes, iou_thresholds=(0.5,))
    for im in images:
        acc.update(im["pred"], im["labels"], im["scores"], im["gt"], im["gt_labels"])
    return acc


def test_coco_ap50_equals_voc_where_the_protocols_coincide():
    """Recall steps of 1/4 (4 GT per class) lie on COCO's 1/100 grid, every prediction has at most
    one GT with IoU >= 0.5 (so COCO's and VOC's matching agree), no crowd, <= 100 detections: then
    COCO = (p(0) + 100 VOC) / 101 exactly (module docstring), and |COCO - VOC| <= 1/101."""
    pytest.importorskip("pycocotools", reason="pycocotools not installed: no COCOeval to compare with")
    rng = np.random.default_rng(3)
    images, size = [], 32
    for _ in range(4):  # 4 images x 2 classes x 1 GT each -> 4 GT per class
        gt = np.zeros((2, size, size), bool)
        gt[0, 2:12, 2:12], gt[1, 18:30, 16:28] = True, True
        preds, labels = [], []
        for k, c in enumerate((1, 2)):
            if rng.random() < 0.75:  # a hit (IoU >= 0.5), shifted by up to 2 px
                preds.append(np.roll(gt[k], tuple(rng.integers(-2, 3, 2)), axis=(0, 1)))
                labels.append(c)
            if rng.random() < 0.6:  # a false positive far from every GT
                fp = np.zeros((size, size), bool)
                fp[20:26, 2:8] = True
                preds.append(fp)
                labels.append(c)
        images.append({"gt": gt, "gt_labels": [1, 2], "pred": np.array(preds, bool).reshape(-1, size, size),
                       "labels": labels, "scores": rng.permutation(len(preds)) / 10 + rng.random() / 100})  # fmt: skip
    acc = _voc(images, 3)
    voc, coco = acc.ap()[0], _coco_ap50(images)
    assert sorted(coco) == [1, 2]
    for c in (1, 2):
        precision, _ = acc.precision_recall(c)
        p0 = float(np.nan_to_num(precision[0]).max())  # the envelope at recall 0
        assert coco[c] == pytest.approx((p0 + 100 * voc[c]) / 101, abs=1e-12), (c, coco[c], voc[c])
        assert abs(coco[c] - voc[c]) <= 1 / 101 + 1e-12
    assert 0 < voc[1] < 1 or 0 < voc[2] < 1  # not a trivial all-or-nothing case


@pytest.mark.skipif(not COCO.is_dir(), reason="shared/coco-mini not available")
def test_coco_ap50_within_1_over_101_on_real_coco_masks():
    """Real COCO val masks as ground truth, predictions derived from them (shifted copies, some
    dropped, false positives): wherever COCO's and VOC's matching agree (checked), the two AP@0.5
    differ by at most 1/101 per class (101-point sampling vs the area under the curve)."""
    pytest.importorskip("pycocotools", reason="pycocotools not installed: no COCOeval to compare with")
    from pycocotools import mask as mask_utils

    data = json.loads((COCO / "annotations" / "instances_val2017.json").read_text())
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        if not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(a)
    rng = np.random.default_rng(0)
    images = []
    for info in sorted(data["images"], key=lambda i: i["id"])[:12]:
        anns = by_image.get(info["id"], [])
        if not anns:
            continue
        h, w = info["height"], info["width"]
        gt = np.stack([mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w)))
                       if isinstance(a["segmentation"], list) else mask_utils.decode(a["segmentation"])
                       for a in anns]).astype(bool)  # fmt: skip
        labels = [a["category_id"] for a in anns]
        preds, plabels = [], []
        for m, c in zip(gt, labels):
            if rng.random() < 0.8:
                preds.append(np.roll(m, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)))
                plabels.append(c)
        for _ in range(3):
            y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
            fp = np.zeros((h, w), bool)
            fp[y : y + 40, x : x + 40] = True
            preds.append(fp)
            plabels.append(int(rng.choice(labels)))
        pred = np.array(preds, bool)
        keep = []
        for m, c in zip(pred, plabels):  # at most one GT of its class with IoU >= 0.5
            same = gt[[j for j, cl in enumerate(labels) if cl == c]]
            keep.append((mask_iou(m[None], same) >= 0.5).sum() <= 1)
        images.append({"gt": gt, "gt_labels": labels, "pred": pred[keep], "labels": np.array(plabels)[keep],
                       "scores": rng.random(int(np.sum(keep)))})  # fmt: skip
    voc, coco = _voc(images, 91).ap()[0], _coco_ap50(images)
    compared = [c for c in coco if not np.isnan(voc[c])]
    assert len(compared) >= 10 and sorted(compared) == sorted(coco)
    for c in compared:
        assert abs(coco[c] - voc[c]) <= 1 / 101 + 1e-12, (c, coco[c], voc[c])
    assert any(abs(coco[c] - voc[c]) > 1e-6 for c in compared)  # the protocols do differ here
