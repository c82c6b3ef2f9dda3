"""Example figure of a pseudo-label cache: image | CAM of each labelled class | pseudo-label |
ground truth, one row per image (matplotlib's Agg canvas, no pyplot; written atomically).

The ground truth is shown as the pseudo-label is measured (:class:`pipeline.metrics.quality.MaskQuality`):
classes other than the step's new classes as background, void kept. Label maps use the VOC palette.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.nn import functional as F

from pipeline.cache import open_cache
from pipeline.data.classes import VOID, class_name, colourise
from pipeline.data.datasets import step_dataset
from pipeline.io import atomic_path
from pipeline.wsss.pseudo_labels import read_pseudo_label


def upsample_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float CAM → (H, W) float32 (bilinear), as the pseudo-labels are computed."""
    tensor = torch.from_numpy(np.asarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def step_ground_truth(gt: np.ndarray, new_classes: Sequence[int]) -> np.ndarray:
    """Ground truth with every class but the new ones as background (void kept)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[[int(c) for c in new_classes]] = [int(c) for c in new_classes]
    lut[VOID] = VOID
    return lut[gt]


def draw_rows(path: str | Path, rows: Sequence[Mapping]) -> None:
    """Draw the figure.

    Args:
        path: PNG to write (atomically).
        rows: per image ``{"id": str, "image": (H, W, 3) uint8, "cams": {class_id: (H, W) float in
            [0, 1]}, "label": (H, W) uint8, "gt": (H, W) uint8}``.
    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError(f"{path}: no image to draw")
    n_cams = max(1, max(len(row["cams"]) for row in rows))
    columns = 3 + n_cams
    fig = Figure(figsize=(2.2 * columns, 2.2 * len(rows)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        panels = [(row["image"], f"{row['id']}", None)]
        cams = list(row["cams"].items())
        for k in range(n_cams):
            if k < len(cams):
                c, cam = cams[k]
                panels.append((cam, f"CAM {class_name(c)}", "jet"))
            else:
                panels.append((None, "", None))
        panels += [(colourise(row["label"]), "pseudo-label", None), (colourise(row["gt"]), "ground truth", None)]
        for ax, (picture, title, cmap) in zip(axes[r], panels):
            ax.axis("off")
            if picture is None:
                continue
            if cmap is None:
                ax.imshow(picture, interpolation="nearest")
            else:
                ax.imshow(row["image"])
                ax.imshow(picture, cmap=cmap, vmin=0.0, vmax=1.0, alpha=0.5)
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)


def save_pseudo_label_figure(
    path: str | Path, cache: str | Path, provenance: Mapping, split: Mapping, data_index: str | Path, n_images: int = 4
) -> None:
    """Figure of the first ``n_images`` images of the split from a finished pseudo-label cache.

    CAMs shown are the cached scores of the labelled classes (``cams``), upsampled to the image.

    Raises:
        CacheError: the cache is missing or stale.
    """
    ids = list(split["ids"])[: max(1, n_images)]
    dataset = step_dataset(data_index, ids, transform=None)
    new_classes = [int(c) for c in split["new_classes"]]
    rows = []
    with open_cache(cache, provenance) as reader:
        for i, image_id in enumerate(ids):
            sample = dataset[i]
            size = sample["mask"].shape
            stored = reader.get(image_id)
            labelled = [c for c in new_classes if c in {int(x) for x in split["labels"][image_id]}]
            cams = {c: upsample_cam(stored["cams"][new_classes.index(c)], size) for c in labelled}
            rows.append(
                {
                    "id": image_id,
                    "image": sample["image"],
                    "cams": cams,
                    "label": read_pseudo_label(reader, image_id),
                    "gt": step_ground_truth(sample["mask"], new_classes),
                }
            )
    draw_rows(path, rows)


__all__ = ["draw_rows", "save_pseudo_label_figure", "step_ground_truth"]
