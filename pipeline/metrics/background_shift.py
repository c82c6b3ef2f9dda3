"""Background shift from a confusion matrix: where the pixels of each class group go.

In class-incremental segmentation the background of step t holds the old classes (and future
ones), so a model learns to call old objects background or takes them for a new class, and a
weakly supervised step may leave the new objects in the background (MiB, Cermelli et al., CVPR
2020, Sec. 3: "background shift"; WILSON, Cermelli et al., CVPR 2022, Sec. 3). Four fractions
measure it on the evaluation's confusion matrix (rows ground truth, columns prediction, as
:func:`pipeline.metrics.miou.confusion_matrix`), pooled over the pixels of a group:

- ``old_as_new``: old-class pixels predicted as any new class, ``sum(C[old, new]) / sum(C[old, :])``;
- ``old_as_background``: old-class pixels predicted as background, ``sum(C[old, 0]) / sum(C[old, :])``;
- ``new_as_background``: new-class pixels predicted as background, ``sum(C[new, 0]) / sum(C[new, :])``;
- ``background_as_new``: background pixels predicted as any new class, ``sum(C[0, new]) / sum(C[0, :])``.

Pooled means a class with many pixels weighs more than a small one (the fraction of *pixels*,
not a mean over classes). numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data.classes import BACKGROUND

#: The four fractions, in table order.
SHIFT_KEYS: tuple[str, ...] = ("old_as_new", "old_as_background", "new_as_background", "background_as_new")


def _square(conf) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {conf.shape}")
    if (conf < 0).any():
        raise ValueError("confusion matrix has negative counts")
    return conf.astype(np.float64)


def _indices(classes: Sequence[int], size: int, what: str) -> list[int]:
    out = sorted({int(c) for c in classes} - {BACKGROUND})
    bad = [c for c in out if not 0 <= c < size]
    if bad:
        raise ValueError(f"{what} holds class index {bad[0]} outside [0, {size}) of the confusion matrix")
    return out


def row_normalise(conf) -> np.ndarray:
    """Each row divided by its sum: the fraction of a ground-truth class's pixels given to each
    predicted class.

    Args:
        conf: (C, C) non-negative counts, rows ground truth, columns prediction.
    Returns:
        (C, C) float64, rows summing to 1; a class without ground-truth pixels has a row of NaN.
    Raises:
        ValueError: not square, or negative counts.
    """
    conf = _square(conf)
    totals = conf.sum(axis=1, keepdims=True)
    out = np.full_like(conf, np.nan)
    np.divide(conf, totals, out=out, where=totals > 0)
    return out


def background_shift(conf, old_classes: Sequence[int], new_classes: Sequence[int]) -> dict[str, float | None]:
    """The four background-shift fractions of one confusion matrix (module docstring).

    Args:
        conf: (C, C) non-negative counts, rows ground truth, columns prediction; index =
            class index (0 background).
        old_classes: object classes learned before the step (background dropped if given).
        new_classes: object classes added by the steps after step 0 (background dropped).
    Returns:
        ``{key: fraction in [0, 1] or None}`` for :data:`SHIFT_KEYS`; None where the group of
        ground-truth pixels is empty (no new classes at step 0, a group absent from the set).
    Raises:
        ValueError: bad matrix, a class index outside it, or a class both old and new.
    """
    conf = _square(conf)
    size = conf.shape[0]
    old = _indices(old_classes, size, "old_classes")
    new = _indices(new_classes, size, "new_classes")
    both = set(old) & set(new)
    if both:
        raise ValueError(f"classes {sorted(both)} are both old and new")

    def fraction(rows: list[int], cols: list[int]) -> float | None:
        total = conf[rows, :].sum() if rows and cols else 0.0
        return float(conf[np.ix_(rows, cols)].sum() / total) if total > 0 else None

    return {
        "old_as_new": fraction(old, new),
        "old_as_background": fraction(old, [BACKGROUND]),
        "new_as_background": fraction(new, [BACKGROUND]),
        "background_as_new": fraction([BACKGROUND], new),
    }


__all__ = ["SHIFT_KEYS", "background_shift", "row_normalise"]
