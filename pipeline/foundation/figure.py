"""Qualitative figure of the co-segmentation: image | initial mask | seed attention | fused | GT."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from pipeline.data.classes import class_name, colourise
from pipeline.io import atomic_path

COLUMNS = (
    "image",
    "initial mask (M_init)",
    "seed attention (M_seeds, pre-binary)",
    "fused (M_refine)",
    "ground truth (new classes)",
)


def coseg_figure(path: str | os.PathLike, rows: Sequence[dict], title: str = "") -> None:
    """Write the co-segmentation figure (matplotlib, Agg backend) atomically as PNG.

    Args:
        path: output ``.png``.
        rows: one dict per image with ``id`` (str), ``image`` (H, W, 3) uint8, ``initial``,
            ``fused``, ``gt`` (H, W) uint8 label maps, ``attention`` (H, W) float map of the
            first labelled class (or None), ``seeds`` (M, 2) float (row, col) image coordinates
            of its seed points, and ``classes`` (list of class indices).
        title: figure title.
    Raises:
        ValueError: no rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError(f"{path}: no image to show")
    fig, axes = plt.subplots(len(rows), len(COLUMNS), figsize=(3.0 * len(COLUMNS), 3.0 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        names = ", ".join(class_name(c) for c in row["classes"])
        panels = (row["image"], colourise(row["initial"]), row["image"], colourise(row["fused"]), colourise(row["gt"]))
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=9)
        attention = row.get("attention")
        if attention is not None:
            axes[r][2].imshow(attention, cmap="jet", alpha=0.55)
        seeds = np.asarray(row.get("seeds", np.zeros((0, 2))), dtype=float).reshape(-1, 2)
        if len(seeds):
            axes[r][2].scatter(seeds[:, 1], seeds[:, 0], s=18, c="white", edgecolors="black", linewidths=0.8)
        axes[r][0].set_ylabel(f"{row['id']}\n{names}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


__all__ = ["coseg_figure"]
