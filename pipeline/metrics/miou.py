"""Segmentation metrics: confusion matrix, per-class IoU and the WILSON old/new/all summary.

The IoU is the PASCAL VOC one (Everingham et al., "The PASCAL Visual Object Classes Challenge",
IJCV 2010): per class ``TP / (TP + FP + FN)`` accumulated over the whole validation set, and
the mean IoU is the mean over classes. The old/new/all split follows the reporting of WILSON
(Cermelli et al., CVPR 2022, Tables 1-2): "1-15" old object classes, "16-20" new classes,
"All" background and every class seen so far.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from pipeline.data.classes import BACKGROUND, VOC_CLASSES, VOID

_INTEGER_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
)


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name}: expected an integer array, got dtype {x.dtype}")
        if x.dtype == np.uint16 or x.dtype == np.uint32 or x.dtype == np.uint64:
            x = x.astype(np.int64)
        x = np.ascontiguousarray(x)
        return torch.from_numpy(x if x.flags.writeable else x.copy())  # read-only: e.g. np.asarray(PIL image)
    if isinstance(x, torch.Tensor):
        if x.dtype not in _INTEGER_DTYPES:
            raise TypeError(f"{name}: expected an integer tensor, got dtype {x.dtype}")
        return x
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _masked_confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, c: int, ignore_index: int | None
) -> torch.Tensor:
    """Reference path: drop ignored pixels, check both ranges exactly, then one bincount.

    Used when the fast path of :func:`_confusion_matrix_tensor` finds a value out of range, to
    tell a prediction out of range on an ignored pixel (allowed) from an error, and to name it.
    """
    if ignore_index is not None:
        valid = target != ignore_index
        target = target[valid]
        pred = pred[valid]
    bad_t = (target < 0) | (target >= c)
    if bool(bad_t.any()):
        raise ValueError(
            f"target contains value {target[bad_t][0].item()} outside [0, {c}) that is not ignore_index={ignore_index}"
        )
    bad_p = (pred < 0) | (pred >= c)
    if bool(bad_p.any()):
        raise ValueError(f"pred contains value {pred[bad_p][0].item()} outside [0, {c}) on a non-ignored pixel")
    return torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)


def _confusion_matrix_tensor(pred, target, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """Confusion matrix as an int64 tensor on the device of ``target`` (see :func:`confusion_matrix`).

    Fast path without boolean indexing (which dominates the cost on CPU): ignored pixels are sent
    to an extra bin ``C * C`` of the single ``bincount(target * C + pred)``. Any value out of
    range makes a code ``< 0`` or ``> C * C``, or lands in the extra bin (target ``C`` with
    prediction 0), which then holds more pixels than were ignored; every such case goes to
    :func:`_masked_confusion_matrix`, which raises the precise error.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = _as_tensor(pred, "pred")
    target = _as_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
    target = target.reshape(-1).to(torch.int64)
    c = num_classes
    if target.numel() == 0:
        return torch.zeros((c, c), dtype=torch.int64, device=target.device)
    codes = target * c + pred
    if ignore_index is not None:
        ignored = target == ignore_index
        codes = codes.masked_fill_(ignored, c * c)
        n_ignored = ignored.sum()
    else:
        n_ignored = torch.zeros((), dtype=torch.int64, device=target.device)
    p_min, p_max = torch.aminmax(pred)
    k_min, k_max = torch.aminmax(codes)
    # One transfer for the checks (a single synchronisation on CUDA).
    p_min, p_max, k_min, k_max, n_ignored = torch.stack([p_min, p_max, k_min, k_max, n_ignored]).tolist()
    if 0 <= p_min and p_max < c and 0 <= k_min and k_max <= c * c:
        counts = torch.bincount(codes, minlength=c * c + 1)
        if counts[c * c].item() == n_ignored:
            return counts[: c * c].reshape(c, c)
    return _masked_confusion_matrix(pred, target, c, ignore_index)


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = VOID) -> np.ndarray:
    """Pixel confusion matrix of a prediction against the ground truth.

    Args:
        pred: predicted labels, integer ``torch.Tensor`` (CPU or CUDA) or ``np.ndarray`` of any
            shape, e.g. ``(B, H, W)``; values in ``[0, num_classes)`` on every non-ignored pixel.
        target: ground-truth labels, same shape, integer; values in ``[0, num_classes)`` or
            ``ignore_index`` (255, VOC void, by default).
        num_classes: C, number of classes including background.
        ignore_index: target value whose pixels are skipped (prediction not checked there);
            ``None`` to count every pixel.

    Returns:
        ``np.ndarray`` int64 ``(C, C)``; entry ``[i, j]`` counts pixels of ground-truth class ``i``
        predicted as ``j`` (rows ground truth, columns prediction).

    Raises:
        ValueError: shapes differ, or a target value (other than ``ignore_index``) or a
            prediction value on a non-ignored pixel lies outside ``[0, C)``; the message names
            the value.
        TypeError: an input is not an integer tensor/array.

    Computed with one ``torch.bincount(target * C + pred)`` on the inputs' device (``pred`` is
    moved to ``target``'s), void pixels going to an extra bin that is dropped.
    """
    return _confusion_matrix_tensor(pred, target, num_classes, ignore_index).cpu().numpy()


class ConfusionMatrix:
    """Accumulates :func:`confusion_matrix` over batches (the counts stay on the inputs' device).

    Example::

        cm = ConfusionMatrix(21)              # ignore_index=255
        for pred, target in batches:          # e.g. (B, H, W) int64 tensors
            cm.update(pred, target)
        iou = iou_per_class(cm.matrix)        # float64 (21,)
    """

    def __init__(self, num_classes: int, ignore_index: int | None = VOID) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._counts: torch.Tensor | None = None

    def update(self, pred, target) -> None:
        """Add one batch; arguments and errors as in :func:`confusion_matrix`."""
        counts = _confusion_matrix_tensor(pred, target, self.num_classes, self.ignore_index)
        if self._counts is None:
            self._counts = counts
        else:
            self._counts += counts.to(self._counts.device)

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._counts = None

    @property
    def matrix(self) -> np.ndarray:
        """``np.ndarray`` int64 ``(C, C)``, rows ground truth, columns prediction (zeros if empty)."""
        if self._counts is None:
            return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self._counts.cpu().numpy()


def _check_conf(conf) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {conf.shape}")
    if (conf < 0).any():
        raise ValueError("confusion matrix has negative counts")
    return conf


def iou_per_class(conf) -> np.ndarray:
    """Per-class intersection over union from a confusion matrix.

    Args:
        conf: ``(C, C)`` non-negative counts, rows ground truth, columns prediction.

    Returns:
        ``np.ndarray`` float64 ``(C,)`` in ``[0, 1]``: ``TP / (TP + FP + FN)``; NaN for a class
        that occurs neither in the ground truth nor in the prediction (TP + FP + FN = 0).

    Raises:
        ValueError: ``conf`` is not square or has negative entries.
    """
    conf = _check_conf(conf).astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    iou = np.full(conf.shape[0], np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


def _mean_or_none(iou: np.ndarray, classes: Sequence[int]) -> float | None:
    values = iou[list(classes)] if len(classes) else np.empty(0)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def _class_list(classes: Iterable[int], num_classes: int, what: str) -> list[int]:
    out = sorted({int(c) for c in classes})
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"{what} contains class index {bad[0]} outside [0, {num_classes})")
    return out


def summarize(
    conf,
    seen_classes: Iterable[int],
    old_classes: Iterable[int],
    new_classes: Iterable[int],
    class_names: Sequence[str] | None = None,
) -> dict:
    """Per-class IoU and the old/new/all mean IoU of one evaluation, as reported by WILSON.

    Args:
        conf: ``(C, C)`` confusion matrix (rows ground truth, columns prediction).
        seen_classes: class indices learned so far (background may be included or not).
        old_classes: object classes of the previous steps ("1-15" in 15-5); at step 0 the
            caller passes the base classes here and ``new_classes=[]``.
        new_classes: object classes introduced at this step ("16-20" in 15-5).
        class_names: C names; default the VOC names when C <= 21, else ``"0".."C-1"``.

    Returns:
        ``{"per_class_iou": {name: float in [0, 1] or None} for every class 0..C-1 in index
        order, "miou_old", "miou_new", "miou_all", "pixel_accuracy"}`` as fractions in
        ``[0, 1]``. ``miou_old`` averages ``old_classes`` and ``miou_new`` ``new_classes``,
        both without background (class 0 is dropped from them); ``miou_all`` averages
        background and every seen class. Classes whose IoU is NaN (absent from ground truth
        and prediction) are left out of the means (nanmean) and reported as None; a mean
        over no class is None. ``pixel_accuracy`` is trace / total (None if no pixel).

    Raises:
        ValueError: bad confusion matrix, a class index outside ``[0, C)``, or
            ``class_names`` of the wrong length.
    """
    conf = _check_conf(conf)
    c = conf.shape[0]
    if class_names is None:
        class_names = VOC_CLASSES[:c] if c <= len(VOC_CLASSES) else [str(i) for i in range(c)]
    if len(class_names) != c:
        raise ValueError(f"class_names has {len(class_names)} names for {c} classes")
    seen = _class_list(seen_classes, c, "seen_classes")
    old = [k for k in _class_list(old_classes, c, "old_classes") if k != BACKGROUND]
    new = [k for k in _class_list(new_classes, c, "new_classes") if k != BACKGROUND]
    all_classes = sorted({BACKGROUND, *seen})
    iou = iou_per_class(conf)
    total = conf.sum()
    return {
        "per_class_iou": {str(name): (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
        "miou_old": _mean_or_none(iou, old),
        "miou_new": _mean_or_none(iou, new),
        "miou_all": _mean_or_none(iou, all_classes),
        "pixel_accuracy": float(np.trace(conf) / total) if total else None,
    }
