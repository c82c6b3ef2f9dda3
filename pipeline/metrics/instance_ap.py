"""Mask average precision of instance segmentation, the PASCAL VOC protocol (numpy only).

What CL4WSIS reports (Tables 2-10: AP@0.5 and AP@0.5:0.95 per class group) is computed by the
authors with chainercv's ``calc_instance_segmentation_voc_prec_rec`` and
``calc_detection_voc_ap(use_07_metric=False)`` (their ``train.py``/``metrics/voc_evaluation.py``;
chainercv cites the FCIS evaluation). This module is that computation, checked against values
worked out by hand and, where the protocols must agree, against pycocotools (``tests/test_instance_ap.py``):

1. Per image and class, predictions in decreasing score order; each is matched to the ground
   truth of its class with the highest mask IoU (``matching="voc"``, the VOC devkit and
   chainercv): IoU >= threshold and that ground truth not matched yet -> true positive; IoU >=
   threshold but already matched -> false positive (a duplicate); IoU below -> false positive.
   A prediction whose best ground truth is *difficult* is ignored (neither), and difficult ground
   truth is not counted in the recall (chainercv's detection rule; its instance version has no
   difficult flags: without ``gt_difficult`` nothing is difficult). ``matching="unmatched"`` is
   COCO's rule instead: the best ground truth among those *not matched yet* (the two differ only
   when a prediction's best ground truth was taken and a second one also passes the threshold).
2. Per class, the predictions of all images sorted by score (stable: ties keep the order in
   which they were added), cumulative TP/FP, precision ``TP / (TP + FP)``, recall ``TP / #GT``.
3. AP = area under the precision/recall curve with the VOC 2010+ interpolation: precision made
   monotone (running maximum from the right), summed over the points where recall changes,
   ``sum (r_i+1 - r_i) p_interp(r_i+1)`` with sentinels (0, 0) and (1, 0) -- not the 11-point
   VOC 2007 metric. A class with no (non-difficult) ground truth has AP NaN and is left out of
   the means (chainercv's ``nanmean``); a class with ground truth and no prediction has AP 0.

IoU thresholds: :data:`IOU_THRESHOLDS` (default) are the ten 0.50, 0.55, ..., 0.95 of
"AP@[.5:.95]" (COCO's definition, the paper's "IoU threshold from 0.5 to 0.95").
:data:`AUTHORS_IOU_THRESHOLDS` are the authors' ``np.arange(0.5, 0.95, 0.05)``: nine values,
0.50 ... 0.90 (the stop is exclusive, so 0.95 is missing), the variant that reproduces their
numbers; it raises the mean because the hardest threshold is left out. Their float steps drift
by a few 1e-16 (0.7000000000000002); chainercv computes the IoU in float32 and numpy compares a
float32 array with a Python float in float32, where the drift vanishes. This module does the
same (IoU rounded to float32, thresholds cast to float32), so an IoU of exactly 7/10 passes 0.70
in both threshold lists, and the results equal chainercv's. "AP@0.5:0.95" of a class is the mean of its APs over
the thresholds, and the mAP the mean of that over classes (the authors' order of ``nanmean``).

Masks are compared over every pixel: void pixels belong to no ground-truth mask and are not
ignored, so a prediction covering the VOC boundary band pays for it in its union (as chainercv).

COCO (``pycocotools.COCOeval``) differs in two more ways, so its AP@0.5 is not this one: it
samples the interpolated precision at the 101 recalls 0, 0.01, ..., 1 and averages them, and it
keeps at most 100 detections per image. For a monotone precision envelope ``p`` the two
integrals differ by at most 1/101: ``COCO = (p(0) + sum_j p(j/100)) / 101`` while VOC is
``integral p``, and ``sum_j p(j/100) / 100`` lies within ``(p(0) - p(1)) / 100`` below it; if
every recall step is a multiple of 1/100, ``COCO = (p(0) + 100 VOC) / 101`` exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pipeline.data.classes import BACKGROUND, VOC_CLASSES

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
AUTHORS_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.arange(0.5, 0.95, 0.05).tolist())
MATCHING = ("voc", "unmatched")


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two sets of binary masks.

    Args:
        masks_a: (N, H, W) bool; masks_b: (K, H, W) bool.
    Returns:
        (N, K) float64; 0 where both masks are empty.
    """
    a, b = np.asarray(masks_a, dtype=bool), np.asarray(masks_b, dtype=bool)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask sizes differ: {a.shape[1:]} and {b.shape[1:]}")
    pixels = int(np.prod(a.shape[1:]))
    a, b = a.reshape(len(a), pixels), b.reshape(len(b), pixels)
    # float32 products of 0/1 sum to exact integers below 2**24 px (any image of these datasets)
    inter = (a.astype(np.float32) @ b.T.astype(np.float32)).astype(np.float64)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_ap(precision: np.ndarray | None, recall: np.ndarray | None) -> float:
    """Area under one class's PR curve, VOC 2010+ (chainercv ``calc_detection_voc_ap``, ``use_07_metric=False``).

    Args:
        precision, recall: (M,) values after each prediction in score order (precision NaN
            where TP + FP = 0, i.e. only ignored predictions so far); None -> NaN.
    Returns:
        AP in [0, 1], NaN if ``recall`` is None (no ground truth).
    """
    if precision is None or recall is None:
        return float("nan")
    mpre = np.concatenate(([0.0], np.nan_to_num(np.asarray(precision, dtype=np.float64)), [0.0]))
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _match(iou: np.ndarray, difficult: np.ndarray, thresholds: np.ndarray, matching: str) -> np.ndarray:
    """Match one image's predictions of one class (rows, in decreasing score order) to its ground truth.

    Returns:
        (N, T) int8: 1 true positive, 0 false positive, -1 ignored (matched a difficult one).
    """
    n, k = iou.shape
    out = np.zeros((n, len(thresholds)), dtype=np.int8)
    if k == 0:
        return out
    for t, threshold in enumerate(thresholds.astype(iou.dtype)):
        taken = np.zeros(k, dtype=bool)
        for i in range(n):
            if matching == "voc":
                j = int(iou[i].argmax())  # the first maximum, as numpy's argmax in chainercv
                if iou[i, j] < threshold:
                    continue
            else:  # best among the not-yet-matched, non-difficult ones first (COCO's order)
                j = -1
                for candidates in (~taken & ~difficult, ~taken & difficult):
                    scores = np.where(candidates & (iou[i] >= threshold), iou[i], -1.0)
                    if scores.max() >= 0:
                        j = int(scores.argmax())
                        break
                if j < 0:
                    continue
            if difficult[j]:
                out[i, t] = -1
            elif not taken[j]:
                out[i, t] = 1
            taken[j] = True
    return out


def _as_masks(masks, name: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W), got shape {masks.shape}")
    return masks.astype(bool, copy=False)


class InstanceAP:
    """Accumulates predictions and ground truth image by image; :meth:`result` gives the APs.

    Example::

        ap = InstanceAP(num_classes=21)           # classes 1..20, 0 is background
        for pred, gt in images:
            ap.update(pred.masks, pred.labels, pred.scores, gt.masks, gt.labels)
        result = ap.result()                      # "ap" (T, 21), "ap50", "ap_mean", "map50", "map"

    Args:
        num_classes: C, including background (class indices 1..C-1 are evaluated).
        iou_thresholds: the thresholds (:data:`IOU_THRESHOLDS`, :data:`AUTHORS_IOU_THRESHOLDS`);
            the first is the one ``ap50``/``map50`` report, so it must be 0.5 for those names
            to hold.
        matching: ``"voc"`` (default) or ``"unmatched"`` (module docstring).
    """

    def __init__(
        self, num_classes: int, iou_thresholds: Sequence[float] = IOU_THRESHOLDS, matching: str = "voc"
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and one class), got {num_classes}")
        if matching not in MATCHING:
            raise ValueError(f"unknown matching {matching!r}; expected one of {MATCHING}")
        self.num_classes = num_classes
        self.iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
        if self.iou_thresholds.ndim != 1 or not len(self.iou_thresholds):
            raise ValueError("iou_thresholds must be a non-empty sequence")
        self.matching = matching
        self.n_pos = np.zeros(num_classes, dtype=np.int64)
        self._seen = np.zeros(num_classes, dtype=bool)
        self._scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self._matches: list[list[np.ndarray]] = [[] for _ in range(num_classes)]

    def _labels(self, labels, n: int, name: str) -> np.ndarray:
        labels = np.asarray(labels).reshape(-1)
        if labels.size != n:
            raise ValueError(f"{name} has {labels.size} labels for {n} masks")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"{name} must be integer class indices, got dtype {labels.dtype}")
        bad = labels[(labels < 1) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(f"{name} contains class {int(bad[0])}; expected 1..{self.num_classes - 1}")
        return labels.astype(np.int64)

    def update(self, pred_masks, pred_labels, pred_scores, gt_masks, gt_labels, gt_difficult=None) -> None:
        """Add one image.

        Args:
            pred_masks: (N, H, W) bool; pred_labels: (N,) classes 1..C-1; pred_scores: (N,) float.
            gt_masks: (K, H, W) bool; gt_labels: (K,) classes; gt_difficult: (K,) bool or None.
        """
        pred_masks, gt_masks = _as_masks(pred_masks, "pred_masks"), _as_masks(gt_masks, "gt_masks")
        if pred_masks.shape[1:] != gt_masks.shape[1:] and len(pred_masks) and len(gt_masks):
            raise ValueError(f"prediction masks are {pred_masks.shape[1:]} but ground truth {gt_masks.shape[1:]}")
        pred_labels = self._labels(pred_labels, len(pred_masks), "pred_labels")
        gt_labels = self._labels(gt_labels, len(gt_masks), "gt_labels")
        pred_scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        if pred_scores.size != len(pred_masks):
            raise ValueError(f"pred_scores has {pred_scores.size} scores for {len(pred_masks)} masks")
        difficult = (
            np.zeros(len(gt_masks), dtype=bool) if gt_difficult is None else np.asarray(gt_difficult, bool).reshape(-1)
        )
        if difficult.size != len(gt_masks):
            raise ValueError(f"gt_difficult has {difficult.size} flags for {len(gt_masks)} masks")
        for c in np.unique(np.concatenate([pred_labels, gt_labels])):
            keep_p, keep_g = pred_labels == c, gt_labels == c
            order = np.argsort(-pred_scores[keep_p], kind="stable")
            scores = pred_scores[keep_p][order]
            self._seen[c] = True
            self.n_pos[c] += int((~difficult[keep_g]).sum())
            if not scores.size:
                continue
            # float32 as chainercv's mask_iou, compared with float32 thresholds (see the module docstring)
            iou = mask_iou(pred_masks[keep_p][order], gt_masks[keep_g]).astype(np.float32)
            self._scores[c].append(scores)
            self._matches[c].append(_match(iou, difficult[keep_g], self.iou_thresholds, self.matching))

    def precision_recall(self, c: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Precision and recall of class ``c``, (T, M) each, after each of its M predictions in
        score order; None where chainercv has None (class never seen / no ground truth)."""
        if not self._seen[c]:
            return None, None
        t = len(self.iou_thresholds)
        if self._scores[c]:
            scores = np.concatenate(self._scores[c])
            matches = np.concatenate(self._matches[c])[np.argsort(-scores, kind="stable")].T
        else:
            matches = np.zeros((t, 0), dtype=np.int8)
        tp, fp = np.cumsum(matches == 1, axis=1), np.cumsum(matches == 0, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
        recall = tp / self.n_pos[c] if self.n_pos[c] > 0 else None
        return precision, recall

    def ap(self) -> np.ndarray:
        """(T, C) float64 AP per threshold and class; NaN for background and classes without ground truth."""
        out = np.full((len(self.iou_thresholds), self.num_classes), np.nan)
        for c in range(1, self.num_classes):
            precision, recall = self.precision_recall(c)
            if precision is None or recall is None:
                continue
            out[:, c] = [voc_ap(p, r) for p, r in zip(precision, recall)]
        return out

    def result(self) -> dict:
        """``{"iou_thresholds": list, "ap": (T, C), "ap50": (C,) AP at the first threshold,
        "ap_mean": (C,) mean over thresholds, "map50", "map": nanmean over classes (None if no
        class has ground truth), "n_gt": (C,) non-difficult ground-truth counts}``."""
        ap = self.ap()
        has_gt = ~np.isnan(ap[0])
        ap_mean = np.full(self.num_classes, np.nan)
        ap_mean[has_gt] = ap[:, has_gt].mean(0)
        return {
            "iou_thresholds": self.iou_thresholds.tolist(),
            "ap": ap,
            "ap50": ap[0].copy(),
            "ap_mean": ap_mean,
            "map50": float(np.nanmean(ap[0])) if has_gt.any() else None,
            "map": float(np.nanmean(ap_mean)) if has_gt.any() else None,
            "n_gt": self.n_pos.copy(),
        }


def evaluate_instances(
    pred_masks: Iterable,
    pred_labels: Iterable,
    pred_scores: Iterable,
    gt_masks: Iterable,
    gt_labels: Iterable,
    num_classes: int,
    gt_difficults: Iterable | None = None,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    matching: str = "voc",
) -> dict:
    """One-call form over a dataset (chainercv ``eval_instance_segmentation_voc``'s arguments, one
    entry per image): :meth:`InstanceAP.result`."""
    acc = InstanceAP(num_classes, iou_thresholds, matching)
    items = list(zip(pred_masks, pred_labels, pred_scores, gt_masks, gt_labels, strict=True))
    difficults = [None] * len(items) if gt_difficults is None else list(gt_difficults)
    if len(difficults) != len(items):
        raise ValueError(f"gt_difficults has {len(difficults)} entries for {len(items)} images")
    for item, difficult in zip(items, difficults):
        acc.update(*item, difficult)
    return acc.result()


def _mean_or_none(values: np.ndarray, classes: Sequence[int]) -> float | None:
    picked = values[list(classes)] if len(classes) else np.empty(0)
    picked = picked[~np.isnan(picked)]
    return float(picked.mean()) if picked.size else None


def group_means(values: np.ndarray, groups: Mapping[str, Iterable[int]]) -> dict[str, float | None]:
    """Mean of per-class ``values`` (C,) over each group of classes, NaN classes left out; a
    group without a class with ground truth gives None. E.g. ``{"1-10": ..., "11-15": ..., "16-20": ...}``
    for 10-5-5 (CL4WSIS Table 4)."""
    out = {}
    for name, classes in groups.items():
        classes = sorted({int(c) for c in classes})
        bad = [c for c in classes if not 0 <= c < len(values)]
        if bad:
            raise ValueError(f"group {name!r} contains class {bad[0]} outside [0, {len(values)})")
        out[name] = _mean_or_none(values, [c for c in classes if c != BACKGROUND])
    return out


def summarize(
    result: Mapping, old_classes: Iterable[int], new_classes: Iterable[int], class_names: Sequence[str] | None = None
) -> dict:
    """Per-class AP and the old/new/all means of one evaluation, as the CL4WSIS tables.

    Args:
        result: :meth:`InstanceAP.result`.
        old_classes: object classes of the previous steps ("1-15" in 15-5); at step 0 the base
            classes with ``new_classes=[]``.
        new_classes: object classes of this step ("16-20").
        class_names: C names (default the VOC names when C <= 21).
    Returns:
        ``{"per_class": {name: {"ap50", "ap"}} for classes 1..C-1 (None where NaN), "ap50_old",
        "ap50_new", "ap50_all", "ap_old", "ap_new", "ap_all", "iou_thresholds"}``; ``all`` is old
        and new together (no background: it has no instances), the paper's "All" column (the
        mean over classes, e.g. (15 x 47.6 + 5 x 19.8) / 20 = 40.7 in Table 2).
    """
    ap50, ap = np.asarray(result["ap50"], float), np.asarray(result["ap_mean"], float)
    c = len(ap50)
    if class_names is None:
        class_names = VOC_CLASSES[:c] if c <= len(VOC_CLASSES) else [str(i) for i in range(c)]
    if len(class_names) != c:
        raise ValueError(f"class_names has {len(class_names)} names for {c} classes")
    old, new = sorted({int(k) for k in old_classes}), sorted({int(k) for k in new_classes})
    groups = {"old": old, "new": new, "all": sorted({*old, *new})}
    means50, means = group_means(ap50, groups), group_means(ap, groups)

    def value(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    return {
        "per_class": {str(class_names[k]): {"ap50": value(ap50[k]), "ap": value(ap[k])} for k in range(1, c)},
        **{f"ap50_{name}": means50[name] for name in groups},
        **{f"ap_{name}": means[name] for name in groups},
        "iou_thresholds": list(result["iou_thresholds"]),
    }


__all__ = [
    "AUTHORS_IOU_THRESHOLDS",
    "IOU_THRESHOLDS",
    "InstanceAP",
    "evaluate_instances",
    "group_means",
    "mask_iou",
    "summarize",
    "voc_ap",
]
