"""Where each method fails: the row-normalised confusion matrix of every run, with the class
groups (background / old / new) marked, and per (dataset, task, step) a background-shift table
(:mod:`pipeline.metrics.background_shift`: % of old-class pixels predicted as a new class, % of
old-class pixels predicted as background, % of new-class pixels predicted as background, % of
background pixels predicted as a new class), rows methods, mean ± sample std over seeds.

Both read the ``confusion_matrix`` the evaluate stage stores in every ``metrics.json`` (rows
ground truth, columns prediction, one row per seen class); runs without one are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.data.classes import BACKGROUND
from pipeline.io import atomic_path
from pipeline.metrics.background_shift import SHIFT_KEYS, background_shift, row_normalise
from pipeline.report.runs import MISSING, Run, class_range, format_cell, method_label, slug
from pipeline.report.tables import build_tables, summary_order

#: Column labels of :data:`SHIFT_KEYS` (ground truth → prediction).
SHIFT_LABELS: dict[str, str] = {
    "old_as_new": "old→new",
    "old_as_background": "old→bg",
    "new_as_background": "new→bg",
    "background_as_new": "bg→new",
}
SHIFT_NOTE = (
    "% of the ground-truth pixels of a group predicted as another group, pooled over the val pixels: "
    "old→new (old-class pixels predicted as a new class), old→bg (old-class pixels predicted as "
    "background), new→bg (new-class pixels predicted as background), bg→new (background pixels predicted "
    "as a new class); from the confusion matrices of metrics.json; several seeds: mean ± sample std."
)
_GROUP_COLOURS = {"background": "black", "old": "tab:blue", "new": "tab:red", "other": "0.45"}


def has_confusion(run: Run) -> bool:
    """Whether the run's ``metrics.json`` holds a confusion matrix."""
    return isinstance(run.data.get("confusion_matrix"), list)


def run_matrix(run: Run) -> tuple[np.ndarray, list[int]]:
    """The run's confusion matrix and the class id of each of its rows.

    The evaluate stage writes one row per seen class in class-id order (background first);
    a matrix over every class 0..C-1 is read with index = class id.

    Returns:
        ``(conf (C, C) int64, ids)``, ``ids[k]`` the class of row/column k.
    Raises:
        ValueError: not a square matrix of non-negative counts, or of a size that matches
            neither the seen classes nor an index by class id (names the file).
    """
    conf = np.asarray(run.data["confusion_matrix"])
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.dtype.kind not in "iu" or (conf < 0).any():
        raise ValueError(f"{run.path}: 'confusion_matrix' must be a square matrix of pixel counts, shape {conf.shape}")
    seen = sorted({BACKGROUND, *run.data["seen_classes"]})
    size = conf.shape[0]
    if size == len(seen):
        return conf.astype(np.int64), seen
    if size > max(seen):
        return conf.astype(np.int64), list(range(size))
    raise ValueError(
        f"{run.path}: confusion_matrix is {size}x{size}; expected one row per seen class ({len(seen)}) "
        f"or per class id 0..{max(seen)}"
    )


def _positions(ids: Sequence[int], classes: Sequence[int]) -> list[int]:
    where = {c: k for k, c in enumerate(ids)}
    return [where[c] for c in classes if c in where and c != BACKGROUND]


def run_shift(run: Run) -> dict[str, float | None]:
    """:func:`pipeline.metrics.background_shift.background_shift` of one run (fractions)."""
    conf, ids = run_matrix(run)
    return background_shift(conf, _positions(ids, run.data["old_classes"]), _positions(ids, run.data["new_classes"]))


def shift_tables(runs: Sequence[Run]) -> list[dict]:
    """One background-shift table per (dataset, task, step >= 1) with a confusion matrix.

    Returns:
        ``[{"title", "stem", "header", "rows", "records"}]`` in summary order: header ``Method``
        then ``<Protocol> old→new / old→bg / new→bg / bg→new`` per protocol, cells % (mean ±
        std over seeds, :func:`pipeline.report.runs.format_cell`); ``records``: one dict per
        (method, protocol) for the combined CSV.
    """
    tables = []
    for table in summary_order(build_tables([r for r in runs if has_confusion(r)])):
        if table.step == 0:
            continue
        header = ["Method"] + [f"{p.capitalize()} {SHIFT_LABELS[k]}" for p in table.protocols for k in SHIFT_KEYS]
        rows, records = [], []
        for row in table.rows:
            line = [method_label(row)]
            for protocol in table.protocols:
                members = table.cells.get((row, protocol), [])
                shifts = [run_shift(r) for r in members]
                cells = [format_cell([s[k] for s in shifts]) if shifts else MISSING for k in SHIFT_KEYS]
                line += cells
                if members:
                    records.append(
                        {
                            "dataset": table.dataset,
                            "task": table.task,
                            "step": table.step,
                            "protocol": protocol,
                            "method": method_label(row),
                            "seeds": len(members),
                            **{SHIFT_LABELS[k]: c for k, c in zip(SHIFT_KEYS, cells)},
                        }
                    )
            rows.append(line)
        tables.append(
            {
                "title": f"Background shift %, {table.title}",
                "stem": f"background_shift_{table.stem}",
                "header": header,
                "rows": rows,
                "records": records,
            }
        )
    return tables


#: Columns of the combined CSV (``background_shift.csv``).
RECORD_COLUMNS: tuple[str, ...] = ("dataset", "task", "step", "protocol", "method", "seeds", *SHIFT_LABELS.values())


def confusion_stem(run: Run) -> str:
    """File stem of a run's confusion figure: dataset, task, protocol, step, method, seed."""
    d = run.data
    return "_".join(
        [
            "confusion",
            slug(d["dataset"]),
            slug(d["task"]),
            slug(d["protocol"]),
            f"step{d['step']}",
            slug(run.row),
            f"seed{d['seed']}",
        ]
    )


def plot_confusion(run: Run, path: Path) -> None:
    """The row-normalised confusion matrix of one run (% of each ground-truth class's pixels per
    predicted class), classes ordered background | old | new (| other), the groups separated
    by lines and named along both axes, tick labels coloured by group, cells ≥ 10 % written."""
    conf, ids = run_matrix(run)
    old, new = set(run.data["old_classes"]), set(run.data["new_classes"])
    group_of = {
        c: "background" if c == BACKGROUND else "old" if c in old else "new" if c in new else "other" for c in ids
    }
    order = [k for g in ("background", "old", "new", "other") for k, c in enumerate(ids) if group_of[c] == g]
    percent = row_normalise(conf)[np.ix_(order, order)] * 100.0
    names = run.class_names()
    labels = [names.get(ids[k], str(ids[k])) for k in order]
    groups = [group_of[ids[k]] for k in order]
    n = len(order)
    side = max(4.0, 0.32 * n + 2.0)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="0.85")  # grey: a class without ground-truth pixels
    image = ax.imshow(np.ma.masked_invalid(percent), cmap=cmap, vmin=0.0, vmax=100.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the ground-truth class's pixels")
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    for tick_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for text, group in zip(tick_labels, groups):
            text.set_color(_GROUP_COLOURS[group])
    start = 0
    for group in ("background", "old", "new", "other"):
        count = groups.count(group)
        if not count:
            continue
        if start:
            ax.axhline(start - 0.5, color="0.2", linewidth=1.0)
            ax.axvline(start - 0.5, color="0.2", linewidth=1.0)
        members = [ids[k] for k, g in zip(order, groups) if g == group]
        label = "bg" if group == "background" else f"{group} {class_range(members)}"
        ax.text(start + (count - 1) / 2, -0.9, label, ha="center", va="bottom", fontsize=8, color=_GROUP_COLOURS[group])
        start += count
    if n <= 30:
        for i in range(n):
            for j in range(n):
                value = percent[i, j]
                if not math.isnan(value) and value >= 10.0:
                    colour = "white" if value > 60 else "black"
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=5, color=colour)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    d = run.data
    ax.set_title(
        f"{method_label(run.row)} ({d['protocol']}), {d['dataset']} {d['task']} step {d['step']}, seed {d['seed']}",
        pad=24,
        fontsize=9,
    )
    FigureCanvasAgg(fig)  # Agg canvas whatever the global matplotlib backend
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


__all__ = [
    "RECORD_COLUMNS",
    "SHIFT_LABELS",
    "SHIFT_NOTE",
    "confusion_stem",
    "has_confusion",
    "plot_confusion",
    "run_matrix",
    "run_shift",
    "shift_tables",
]
