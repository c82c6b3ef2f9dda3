"""Report figures, drawn on matplotlib's Agg canvas (no pyplot): per-class IoU bars and
qualitative predictions of one table, mIoU per step of one (dataset, task), learning curves."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from pipeline.data.classes import BACKGROUND, voc_palette
from pipeline.io import atomic_path
from pipeline.report.runs import Run, class_range, method_label, method_sort_key, protocol_sort_key
from pipeline.report.tables import Table


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)  # Agg canvas whatever the global matplotlib backend
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


def _series_label(row: str, protocol: str) -> str:
    return f"{method_label(row)} ({protocol})"


def plot_per_class(table: Table, path: Path) -> None:
    """Grouped bars: x = background, old and new classes (dashed separators, new classes shaded),
    one bar per method × protocol (colour = method, hatched = overlap; mean over seeds, error
    bar = sample std). Classes with no IoU (absent) get no bar."""
    first = next(iter(table.cells.values()))[0]
    names = first.class_names()
    seen = sorted(set(first.data["seen_classes"]) | {BACKGROUND})
    groups = [
        ("bg", [c for c in seen if c == BACKGROUND]),
        (f"old {class_range(table.old_classes)}", [c for c in table.old_classes if c in names and c != BACKGROUND]),
        (f"new {class_range(table.new_classes)}", [c for c in table.new_classes if c in names and c != BACKGROUND]),
    ]
    placed = {c for _, g in groups for c in g}
    groups.append(("other", [c for c in seen if c not in placed]))
    groups = [(label, g) for label, g in groups if g]
    classes = [c for _, g in groups for c in g]
    series = table.series
    x = np.arange(len(classes), dtype=float)
    width = 0.8 / max(len(series), 1)
    fig = Figure(figsize=(max(6.0, 0.45 * len(classes) * max(1, len(series)) ** 0.5 + 2), 4.5))
    ax = fig.add_subplot()
    rows = table.rows  # one colour per method, hatched bars for the overlap protocol
    colors = [f"C{rows.index(row) % 10}" for row, _ in series]
    for i, (row, protocol) in enumerate(series):
        runs = table.cells[(row, protocol)]
        values = np.array([[r.class_iou(c) for c in classes] for r in runs]) * 100.0
        with warnings.catch_warnings():  # all-NaN columns (class absent) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(values, axis=0) if values.size else np.full(len(classes), np.nan)
            err = np.nanstd(values, axis=0, ddof=1) if len(runs) > 1 else None
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            np.nan_to_num(mean),
            width,
            yerr=err,
            color=colors[i],
            hatch="//" if protocol.lower() == "overlap" else None,
            edgecolor="black",
            linewidth=0.3,
            label=_series_label(row, protocol),
            capsize=1.5,
        )
    start = 0
    for k, (label, group) in enumerate(groups):
        end = start + len(group)
        if label.startswith("new"):
            ax.axvspan(start - 0.5, end - 0.5, color="#fff3c4", zorder=0)
        if k:
            ax.axvline(start - 0.5, color="0.3", linestyle="--", linewidth=0.8)
        ax.text((start + end - 1) / 2, 102, label, ha="center", va="bottom", fontsize=8)
        start = end
    ax.set_xticks(x, [names.get(c, str(c)) for c in classes], rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(classes) - 0.5)
    ax.set_ylim(0, 110)
    ax.set_ylabel("IoU %")
    ax.set_title(f"Per-class IoU, {table.title}", pad=14)
    ax.legend(fontsize=7, ncol=min(4, max(1, len(series))), loc="upper center", bbox_to_anchor=(0.5, -0.28))
    _save(fig, path)


def _resolve(path_value) -> Path | None:
    return None if path_value in (None, "") else Path(path_value)


def _read_label_png(
    path: Path, what: str, image_id: str, source: Path, seen: Sequence[int] | None = None
) -> np.ndarray:
    """A label PNG -> RGB uint8 (H, W, 3): index images are coloured with the VOC palette.

    With ``seen``, labels of classes not seen yet are shown as background, as evaluation counts
    them (MiB's masking); void (255) keeps its colour."""
    if not path.is_file():
        raise ValueError(f"{path}: {what} of id '{image_id}' not found (run {source})")
    with Image.open(path) as img:
        if img.mode in ("RGB", "RGBA"):
            return np.asarray(img.convert("RGB"))
        labels = np.asarray(img)
    if labels.ndim != 2 or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"{path}: {what} of id '{image_id}' is not a label image (mode {img.mode})")
    if seen is not None:
        labels = np.where(np.isin(labels, [*seen, 255]), labels, 0)
    return voc_palette()[labels.astype(np.intp)]


def plot_qualitative(table: Table, path: Path, num_examples: int = 4) -> bool:
    """Rows = the first ``num_examples`` val ids common to every run; columns image (if the
    dataset has ``JPEGImages``) | ground truth | prediction of each method × protocol (lowest
    seed). Returns False (nothing written) when the runs share no val id.

    Raises:
        ValueError: an image, mask or prediction file is missing (names the file and the id).
    """
    series = table.series
    runs = [table.cells[s][0] for s in series]
    common = set(runs[0].data["val_ids"])
    for run in runs[1:]:
        common &= set(run.data["val_ids"])
    ids = [i for i in runs[0].data["val_ids"] if i in common][:num_examples]
    if not ids:
        return False
    ref = runs[0]
    image_root = _resolve(ref.data["image_root"])
    image_dir = image_root / "JPEGImages" if image_root is not None else None
    with_image = image_dir is not None and image_dir.is_dir()
    mask_dir = _resolve(ref.data["mask_dir"])
    titles = (["image"] if with_image else []) + ["ground truth"] + [_series_label(*s) for s in series]
    ncols, nrows = len(titles), len(ids)
    fig = Figure(figsize=(2.3 * ncols, 2.1 * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, image_id in enumerate(ids):
        panels = []
        if with_image:
            jpg = image_dir / f"{image_id}.jpg"
            if not jpg.is_file():
                raise ValueError(f"{jpg}: image of id '{image_id}' not found (run {ref.path})")
            with Image.open(jpg) as img:
                panels.append(np.asarray(img.convert("RGB")))
        if mask_dir is None:
            raise ValueError(f"{ref.path}: key 'mask_dir' is null")
        panels.append(
            _read_label_png(
                mask_dir / f"{image_id}.png", "ground truth", image_id, ref.path, seen=ref.data["seen_classes"]
            )
        )
        for run in runs:
            pred_dir = _resolve(run.data["predictions_dir"])
            if pred_dir is None:
                raise ValueError(f"{run.path}: key 'predictions_dir' is null")
            panels.append(_read_label_png(pred_dir / f"{image_id}.png", "prediction", image_id, run.path))
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(image_id, fontsize=8)
    fig.suptitle(f"Qualitative results, {table.title}", fontsize=10)
    _save(fig, path)
    return True


STEP_METRICS: tuple[tuple[str, str], ...] = (("all", "miou_all"), ("old", "miou_old"), ("new", "miou_new"))
STEP_LINESTYLES: dict[str, str] = {"all": "-", "old": "--", "new": ":"}
STEP_MARKERS: dict[str, str] = {"all": "o", "old": "s", "new": "^"}


def _mean_percent(runs: Sequence[Run], key: str) -> float:
    """Mean over the runs (seeds) of a fraction, in %; nulls left out; NaN when none."""
    values = [r.data[key] for r in runs if r.data[key] is not None]
    return float(np.mean(values) * 100.0) if values else math.nan


def step_series(runs: Sequence[Run]) -> dict[tuple[str, str], dict[str, list]]:
    """The values of the mIoU-per-step figure of one (dataset, task).

    Args:
        runs: runs of a single (dataset, task), any steps, protocols, methods and seeds.

    Returns:
        ``{(protocol, method): {"step": [...], "all": [...], "old": [...], "new": [...]}}``
        for every incremental method (row of a step >= 1), keys in figure order (protocols
        Disjoint then Overlap, methods in table order). ``step`` lists, increasing, the steps
        with a value: step 0 is the mean of the shared "base" runs of that protocol whose seed
        is one of the method's seeds (absent when there is none), step t >= 1 the mean over the
        seeds of the method's runs at that step. Values are mIoU % (fraction × 100; nulls left
        out of the means, NaN when every seed is null).

    Raises:
        ValueError: runs of several (dataset, task), or one run given twice (same step, row,
            protocol and seed; names both files).
    """
    tasks = {(str(r.data["dataset"]), str(r.data["task"])) for r in runs}
    if len(tasks) > 1:
        raise ValueError(f"step_series: runs of several (dataset, task): {sorted(tasks)}")
    cells: dict[tuple[str, str, int], dict[int, Run]] = defaultdict(dict)
    for run in runs:
        cell = cells[(run.protocol, run.row, run.data["step"])]
        if run.seed in cell:
            raise ValueError(
                f"{run.path} and {cell[run.seed].path}: same run ({run.row} {run.protocol} "
                f"step {run.data['step']} seed {run.seed}) given twice"
            )
        cell[run.seed] = run
    methods = sorted(
        {(p, r) for p, r, t in cells if t > 0}, key=lambda pr: (protocol_sort_key(pr[0]), method_sort_key(pr[1]))
    )
    out: dict[tuple[str, str], dict[str, list]] = {}
    for protocol, method in methods:
        steps = sorted(t for p, r, t in cells if (p, r) == (protocol, method) and t > 0)
        seeds = {s for t in steps for s in cells[(protocol, method, t)]}
        base = cells.get((protocol, "base", 0), {})
        members = [[base[s] for s in sorted(seeds) if s in base]]
        members += [list(cells[(protocol, method, t)].values()) for t in steps]
        if not members[0]:
            members = members[1:]
        else:
            steps = [0, *steps]
        series: dict[str, list] = {"step": steps}
        for name, key in STEP_METRICS:
            series[name] = [_mean_percent(group, key) for group in members]
        out[(protocol, method)] = series
    return out


def plot_steps(runs: Sequence[Run], path: Path) -> None:
    """mIoU % per step of one (dataset, task) (see :func:`step_series`): one panel per protocol,
    one colour per method, solid = all, dashed = old (base classes), dotted = new (classes of
    steps 1..t); x = steps 0..T-1 (T = ``num_steps``)."""
    series = step_series(runs)
    first = runs[0].data
    num_steps = max(max(r.data["num_steps"] for r in runs), max(r.data["step"] for r in runs) + 1)
    protocols = sorted({p for p, _ in series}, key=protocol_sort_key)
    methods = sorted({m for _, m in series}, key=method_sort_key)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    n = max(len(protocols), 1)
    fig = Figure(figsize=(max(4.5, 1.1 * num_steps + 2.5) * n, 4.2))
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    for ax, protocol in zip(axes, protocols):
        for method in methods:
            values = series.get((protocol, method))
            if values is None:
                continue
            x = np.asarray(values["step"], dtype=float)
            for name, _ in STEP_METRICS:
                y = np.asarray(values[name], dtype=float)
                ok = np.isfinite(y)
                if ok.any():
                    ax.plot(
                        x[ok],
                        y[ok],
                        color=colors[method],
                        linestyle=STEP_LINESTYLES[name],
                        marker=STEP_MARKERS[name],
                        markersize=4,
                    )
        ax.set_title(protocol.capitalize())
        ax.set_xticks(range(num_steps))
        ax.set_xlim(-0.3, num_steps - 0.7)
        ax.set_ylim(0, 100)
        ax.set_xlabel("step (0 = base)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("mIoU %")
    handles = [Line2D([], [], color=colors[m], linewidth=2, label=method_label(m)) for m in methods]
    handles += [
        Line2D(
            [], [], color="black", linestyle=STEP_LINESTYLES[name], marker=STEP_MARKERS[name], markersize=4, label=label
        )
        for name, label in (("all", "all"), ("old", "old (base classes)"), ("new", "new"))
    ]
    axes[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(f"mIoU per step, {first['dataset']} {first['task']}")
    _save(fig, path)


def plot_learning_curves(curves: Sequence[tuple[str, dict[str, np.ndarray]]], title: str, path: Path) -> None:
    """Training loss per epoch (left panel) and, when any run logged it, val mIoU % (right
    panel); one line per ``(label, history)``."""
    has_val = any("val_miou" in h and np.isfinite(h["val_miou"]).any() for _, h in curves)
    fig = Figure(figsize=(11 if has_val else 6.5, 4))
    axes = fig.subplots(1, 2 if has_val else 1, squeeze=False)[0]
    for i, (label, hist) in enumerate(curves):
        color = f"C{i % 10}"
        axes[0].plot(hist["epoch"], hist["loss"], marker=".", color=color, label=label)
        if has_val and "val_miou" in hist:
            ok = np.isfinite(hist["val_miou"])
            if ok.any():
                axes[1].plot(hist["epoch"][ok], hist["val_miou"][ok] * 100.0, marker="o", color=color, label=label)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss")
    axes[0].set_title("Training loss")
    axes[0].legend(fontsize=7)
    if has_val:
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("val mIoU %")
        axes[1].set_title("Validation mIoU")
        axes[1].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
