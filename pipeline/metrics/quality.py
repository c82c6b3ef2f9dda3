"""Quality of pseudo-label maps against the ground truth: region mIoU and contour F-score.

The two numbers paper 003 reports for pseudo-labels (Jonnarth & Felsberg, ICASSP 2022,
``shared/papers/003``, Sec. 4.1-4.3, Fig. 2, Table 1): "area mIoU" (region similarity, the VOC
IoU accumulated over the dataset, :mod:`pipeline.metrics.miou`) and "contour F-score" (contour
accuracy, :mod:`pipeline.metrics.contour`). Used by the stages that write pseudo-labels (CAM
baselines, FMWISS co-segmentation) to report how good their masks are.

Class handling (choices where the papers are silent):

* the measured classes are background 0 plus the ``classes`` given (e.g. the classes a step's
  pseudo-labels may hold);
* ground-truth values that are not measured classes are mapped to background 0 (an object of a
  class the pseudo-label is not asked about is, for that pseudo-label, background; the same
  convention as :func:`pipeline.data.tasks.eval_target_lut`); 255 stays void;
* region IoU ignores ground-truth void pixels (standard VOC). The contour F-score treats them as
  background by default, as paper 003 does (``void="background"``; ``"ignore"`` for DAVIS's
  convention);
* a prediction value 255 marks an *unlabelled* pixel (pseudo-labels often leave uncertain pixels
  unlabelled): it counts as a miss of the ground-truth class there (a false negative for IoU) and
  belongs to no class mask for the contours. Any other value outside ``{0} ∪ classes`` is an
  error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from pipeline.data.classes import BACKGROUND, VOID, class_name
from pipeline.metrics.contour import ContourFScore
from pipeline.metrics.miou import ConfusionMatrix, iou_per_class


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


class MaskQuality:
    """Accumulates region IoU and contour F-score of pseudo-label maps over images.

    Args:
        classes: object classes measured (e.g. ``[16, 17, 18, 19, 20]``); background 0 is always
            measured (listing it is allowed); values in ``1..254``.
        tolerance: contour matching tolerance (:func:`pipeline.metrics.contour.tolerance_pixels`):
            None = 0.008 of the image diagonal rounded up (DAVIS/paper 003), ``>= 1`` pixels,
            ``[0, 1)`` a fraction of the diagonal.
        void: how the contour score treats ground-truth void: ``"background"`` (paper 003) or
            ``"ignore"`` (DAVIS).
        class_names: optional ``{class: name}`` overriding the VOC names in :meth:`result`.
    Raises:
        ValueError: a class outside ``1..254`` (names it), a bad tolerance or void mode.

    Example::

        quality = MaskQuality([16, 17, 18, 19, 20])
        for image_id in ids:
            quality.update(pseudo_label[image_id], load_mask(...), image_id)
        quality.result()   # {"miou", "per_class_iou", "contour_f", "per_class_f", "n_images"}
    """

    def __init__(
        self,
        classes: Iterable[int],
        tolerance: int | float | None = None,
        void: str = "background",
        class_names: Mapping[int, str] | None = None,
    ) -> None:
        objects = sorted({int(c) for c in classes} - {BACKGROUND})
        bad = [c for c in objects if not 0 < c < VOID]
        if bad:
            raise ValueError(f"MaskQuality: class {bad[0]} outside 1..{VOID - 1}")
        self.classes = [BACKGROUND, *objects]
        self.num_classes = self.classes[-1] + 1  # C: confusion matrix over 0..C-1, plus "unlabelled"
        names = dict(class_names or {})
        self.names = [str(names.get(c, class_name(c))) for c in self.classes]
        # ground truth: measured classes kept, other classes -> background, void kept
        self._gt_lut = np.zeros(256, dtype=np.uint8)
        self._gt_lut[self.classes] = self.classes
        self._gt_lut[VOID] = VOID
        self._pred_ok = np.zeros(256, dtype=bool)
        self._pred_ok[self.classes] = True
        self._pred_ok[VOID] = True
        self._confusion = ConfusionMatrix(self.num_classes + 1, ignore_index=VOID)
        self._contour = ContourFScore(self.classes, tolerance, void)
        self.n_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, image_id: str | None = None) -> None:
        """Add one image.

        Args:
            pred: (H, W) uint8 pseudo-label: values in ``{0} ∪ classes``, or 255 (unlabelled).
            gt: (H, W) uint8 ground truth, 255 void; other classes are mapped to background.
            image_id: named in error messages.
        Raises:
            ValueError: shapes differ or are not 2-D, an array is not uint8-valued, or ``pred``
                holds a value outside ``{0} ∪ classes ∪ {255}`` (names the value and the id).
        """
        where = f"image {image_id!r}: " if image_id is not None else ""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ValueError(f"{where}expected (H, W) pred and gt of one shape, got {pred.shape} and {gt.shape}")
        pred = _as_uint8(pred, f"{where}pred")
        gt = _as_uint8(gt, f"{where}gt")
        counts = np.bincount(pred.ravel(), minlength=256)
        bad = np.flatnonzero((counts > 0) & ~self._pred_ok)
        if bad.size:
            raise ValueError(
                f"{where}pred holds value {int(bad[0])}, not a measured class {self.classes} nor 255 (unlabelled)"
            )
        gt = self._gt_lut[gt]
        # unlabelled predictions go to the extra column C: a false negative of the gt class
        self._confusion.update(np.where(pred == VOID, self.num_classes, pred).astype(np.int64), gt)
        self._contour.update(pred, gt)
        self.n_images += 1

    def result(self) -> dict:
        """The quality of every image added so far.

        Returns:
            ``{"miou": float in [0, 1] or None, "per_class_iou": {name: float | None},
            "contour_f": float in [0, 1] or None, "per_class_f": {name: float | None},
            "n_images": int}``. Per-class dicts list background then ``classes`` in index order.
            An IoU is None for a class absent from both prediction and ground truth, an F for a
            class with no boundary pixel in either (module :mod:`pipeline.metrics.contour`); the
            means (over background + classes) skip the None entries and are None if all are.
        """
        iou = iou_per_class(self._confusion.matrix)[self.classes]
        f = self._contour.per_class()[2]
        return {
            "miou": _mean(iou),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.names, iou)},
            "contour_f": _mean(f),
            "per_class_f": {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.names, f)},
            "n_images": self.n_images,
        }


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what}: expected an integer label map, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        value = array.min() if array.min() < 0 else array.max()
        raise ValueError(f"{what}: value {int(value)} outside 0..255")
    return array.astype(np.uint8)


__all__ = ["MaskQuality", "class_name"]
