"""Stage ``report``: result tables, per-class IoU charts, learning curves and qualitative figures.

Reads the ``metrics.json`` of evaluated runs (and optionally their ``history.csv``) and writes
under ``--outdir``, for every (dataset, task, step):

- ``table_{dataset}_{task}_step{t}.md|.csv|.tex``: rows methods, columns old / new / all mIoU %
  for each protocol (Disjoint then Overlap), as in WILSON (Cermelli et al., CVPR 2022) Tables
  1-2; mean ± sample std when several seeds;
- ``per_class_iou_{dataset}_{task}_step{t}.png``: grouped bars per seen class;
- ``qualitative_{dataset}_{task}_step{t}.png``: image | ground truth | each method's prediction;

plus ``learning_curves_{dataset}_{task}.png`` (one line per run), for every (dataset, task) whose
runs cover more than one step ``steps_{dataset}_{task}.png`` (mIoU % per step, one panel per
protocol, one colour per method whose line starts at the shared step-0 "base" run; solid all,
dashed old, dotted new; seeds averaged; values from :func:`step_series`), ``summary.md`` (all
tables, per task the final step first (the papers' table), then the intermediate steps, then
step 0; links to the figures) and ``index.json`` (every file written, path relative to
``--outdir``, with a caption). The PNGs go to ``--figures-dir`` when given (the Snakemake rule declares that folder
as a ``report()`` directory output). Figures are drawn on matplotlib's Agg canvas (no pyplot).

Usage: ``python -m pipeline report --metrics runs/*/metrics.json --histories runs/*/history.csv
--outdir results/report [--figures-dir results/report/figures] [--qualitative 4]``
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from pipeline.data.classes import BACKGROUND, voc_palette
from pipeline.io import atomic_path, read_json, write_json, write_text

REQUIRED_KEYS: tuple[str, ...] = (
    "dataset", "task", "protocol", "step", "num_steps", "method", "seed",
    "old_classes", "new_classes", "seen_classes", "per_class_iou",
    "miou_old", "miou_new", "miou_all", "pixel_accuracy",
    "predictions_dir", "image_root", "mask_dir", "val_ids",
)
# Row order of the tables (then any other method, alphabetically); step-0 rows are "base".
METHOD_ORDER: tuple[str, ...] = ("base", "ft", "joint", "mib", "cam", "vwe", "iscam", "wilson", "fmwiss")
METHOD_NAMES: dict[str, str] = {
    "base": "Base (step 0)", "ft": "FT", "joint": "Joint", "mib": "MiB", "cam": "CAM",
    "vwe": "VWE", "iscam": "IS-CAM", "wilson": "WILSON", "fmwiss": "FMWISS",
}
PROTOCOL_ORDER: tuple[str, ...] = ("disjoint", "overlap")
METRIC_KEYS: tuple[str, ...] = ("miou_old", "miou_new", "miou_all")
MISSING = "–"  # en dash, as in the papers' tables
HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "loss")


# ----------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Run:
    """One evaluated run: its ``metrics.json`` path and content."""

    path: Path
    data: dict

    @property
    def row(self) -> str:
        """Table row key: ``"base"`` at step 0, else the method."""
        return "base" if self.data["step"] == 0 else str(self.data["method"])

    @property
    def protocol(self) -> str:
        return str(self.data["protocol"])

    @property
    def seed(self) -> int:
        return self.data["seed"]

    @property
    def table_key(self) -> tuple[str, str, int]:
        return (str(self.data["dataset"]), str(self.data["task"]), self.data["step"])

    def class_names(self) -> dict[int, str]:
        """Class index -> name for the seen classes (and background), from ``per_class_iou``.

        ``per_class_iou`` lists either every class 0..C-1 in index order (what
        :func:`pipeline.eval.metrics.summarize` writes) or only the seen classes in index order.
        """
        names = list(self.data["per_class_iou"])
        seen = sorted(set(self.data["seen_classes"]))
        with_bg = sorted({BACKGROUND, *seen})
        if names and len(names) > max(with_bg):
            return {k: names[k] for k in with_bg}
        for order in (with_bg, seen):
            if len(names) == len(order):
                return dict(zip(order, names))
        raise ValueError(
            f"{self.path}: per_class_iou has {len(names)} entries, which match neither all classes "
            f"0..C-1 nor the {len(seen)} seen classes"
        )

    def class_iou(self, index: int) -> float:
        value = self.data["per_class_iou"].get(self.class_names().get(index))
        return math.nan if value is None else float(value)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_fraction(path: Path, key: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: key '{key}' must be a fraction in [0, 1] or null, got {value!r}")


def load_metrics(path: str | Path) -> Run:
    """Read and check one ``metrics.json`` (written by the ``evaluate`` stage).

    Returns:
        :class:`Run` with the parsed dict.

    Raises:
        ValueError: not valid JSON, not an object, a key of :data:`REQUIRED_KEYS` missing, or a
            value of the wrong type (mIoU values must be fractions in [0, 1] or null; step and
            seed integers; class lists integer lists; val_ids a list of strings). The message
            names the file and the key.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ValueError(f"{path}: missing key '{key}'")
    for key in ("step", "num_steps", "seed"):
        if not _is_int(data[key]):
            raise ValueError(f"{path}: key '{key}' must be an integer, got {data[key]!r}")
    for key in ("old_classes", "new_classes", "seen_classes"):
        if not isinstance(data[key], list) or not all(_is_int(c) for c in data[key]):
            raise ValueError(f"{path}: key '{key}' must be a list of class indices, got {data[key]!r}")
    for key in (*METRIC_KEYS, "pixel_accuracy"):
        _check_fraction(path, key, data[key])
    if not isinstance(data["per_class_iou"], dict):
        raise ValueError(f"{path}: key 'per_class_iou' must be an object {{name: iou}}")
    for name, value in data["per_class_iou"].items():
        _check_fraction(path, f"per_class_iou.{name}", value)
    if not isinstance(data["val_ids"], list) or not all(isinstance(i, str) for i in data["val_ids"]):
        raise ValueError(f"{path}: key 'val_ids' must be a list of image ids")
    return Run(path, data)


def read_history(path: str | Path) -> dict[str, np.ndarray]:
    """Read a training ``history.csv`` (header ``epoch,loss,lr,time_s[,val_miou,...]``).

    Returns:
        column name -> float64 array (one value per row); empty cells are NaN. Columns other
        than ``epoch``, ``loss`` and ``val_miou`` holding a non-numeric cell are left out.

    Raises:
        ValueError: a column of :data:`HISTORY_COLUMNS` missing, or a non-numeric cell in
            ``epoch``, ``loss`` or ``val_miou``; the message names the file (and the column or
            line).
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for column in HISTORY_COLUMNS:
            if column not in header:
                raise ValueError(f"{path}: missing column '{column}' (header: {','.join(header)})")
        columns: dict[str, list[float]] = {name: [] for name in header}
        for line, row in enumerate(reader, start=2):
            for name in list(columns):
                cell = (row.get(name) or "").strip()
                try:
                    columns[name].append(float(cell) if cell else math.nan)
                except ValueError:
                    if name in (*HISTORY_COLUMNS, "val_miou"):
                        raise ValueError(f"{path}: line {line}, column '{name}': not a number: {cell!r}") from None
                    del columns[name]
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}


# ----------------------------------------------------------------------------- tables
def method_sort_key(method: str) -> tuple[int, str]:
    """Row order: :data:`METHOD_ORDER` first, then the other methods alphabetically."""
    m = method.lower()
    if m in METHOD_ORDER:
        return (METHOD_ORDER.index(m), "")
    base = m.split("_", 1)[0]  # a variant named <method>_<what> follows its method
    return (METHOD_ORDER.index(base), m) if base in METHOD_ORDER else (len(METHOD_ORDER), m)


def protocol_sort_key(protocol: str) -> tuple[int, str]:
    p = protocol.lower()
    return (PROTOCOL_ORDER.index(p), "") if p in PROTOCOL_ORDER else (len(PROTOCOL_ORDER), p)


def method_label(method: str) -> str:
    return METHOD_NAMES.get(method.lower(), method)


def class_range(classes: Sequence[int]) -> str:
    """Class indices as the papers' ranges: ``[16, 17, 18, 19, 20] -> "16-20"``, ``[] -> "–"``."""
    values = sorted(set(classes))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts) if parts else MISSING


def format_cell(values: Sequence[float | None]) -> str:
    """Fractions of seeds -> ``"65.4"`` (one seed), ``"65.4 ± 1.2"`` (mean ± sample std, ddof=1)
    or ``"–"`` (no value); nulls are left out."""
    vals = np.array([v for v in values if v is not None], dtype=np.float64) * 100.0
    if vals.size == 0:
        return MISSING
    if vals.size == 1:
        return f"{vals[0]:.1f}"
    return f"{vals.mean():.1f} ± {vals.std(ddof=1):.1f}"


@dataclass
class Table:
    """One results table: a (dataset, task, step) with its runs grouped by (row, protocol)."""

    dataset: str
    task: str
    step: int
    old_classes: list[int]
    new_classes: list[int]
    cells: dict[tuple[str, str], list[Run]]

    @property
    def stem(self) -> str:
        return f"{_slug(self.dataset)}_{_slug(self.task)}_step{self.step}"

    @property
    def title(self) -> str:
        return f"{self.dataset} {self.task}, step {self.step}"

    @property
    def rows(self) -> list[str]:
        return sorted({r for r, _ in self.cells}, key=method_sort_key)

    @property
    def protocols(self) -> list[str]:
        return sorted({p for _, p in self.cells}, key=protocol_sort_key)

    @property
    def series(self) -> list[tuple[str, str]]:
        """(row, protocol) pairs present, in table order (rows, then Disjoint before Overlap)."""
        return [(r, p) for r in self.rows for p in self.protocols if (r, p) in self.cells]

    def column_labels(self) -> list[str]:
        return [class_range(self.old_classes), class_range(self.new_classes), "All"]

    def header(self) -> list[str]:
        return ["Method"] + [f"{p.capitalize()} {c}" for p in self.protocols for c in self.column_labels()]

    def body(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            line = [method_label(row)]
            for protocol in self.protocols:
                runs = self.cells.get((row, protocol), [])
                for key in METRIC_KEYS:
                    line.append(format_cell([r.data[key] for r in runs]) if runs else MISSING)
            out.append(line)
        return out

    def seeds_note(self) -> str:
        counts = sorted({len(runs) for runs in self.cells.values()})
        return (
            "mIoU %; old = mean over old object classes, new = mean over new classes, "
            "All = background and every seen class (WILSON Tables 1-2). "
            f"Seeds per cell: {', '.join(map(str, counts))}; several seeds: mean ± sample std."
        )


def build_tables(runs: Sequence[Run]) -> list[Table]:
    """Group runs into one :class:`Table` per (dataset, task, step), sorted.

    Raises:
        ValueError: two runs with the same (dataset, task, step, row, protocol, seed), or runs of
            one table that disagree on the old/new classes (both messages name the files).
    """
    grouped: dict[tuple[str, str, int], list[Run]] = defaultdict(list)
    for run in runs:
        grouped[run.table_key].append(run)
    tables = []
    for (dataset, task, step), members in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        first = members[0]
        old, new = sorted(first.data["old_classes"]), sorted(first.data["new_classes"])
        cells: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for run in members:
            if sorted(run.data["old_classes"]) != old or sorted(run.data["new_classes"]) != new:
                raise ValueError(
                    f"{run.path}: old/new classes differ from {first.path} for {dataset} {task} step {step}"
                )
            cell = cells[(run.row, run.protocol)]
            for other in cell:
                if other.seed == run.seed:
                    raise ValueError(
                        f"{run.path} and {other.path}: same run ({dataset} {task} step {step} "
                        f"{run.row} {run.protocol} seed {run.seed}) given twice"
                    )
            cell.append(run)
        for cell in cells.values():
            cell.sort(key=lambda r: r.seed)
        tables.append(Table(dataset, task, step, old, new, dict(cells)))
    return tables


def summary_order(tables: Sequence[Table]) -> list[Table]:
    """Order of the tables in ``summary.md``: per (dataset, task), sorted, the final step first
    (the highest step present: the papers' table), then the intermediate steps in increasing
    order, then step 0."""
    last: dict[tuple[str, str], int] = {}
    for t in tables:
        key = (t.dataset, t.task)
        last[key] = max(last.get(key, t.step), t.step)

    def rank(t: Table) -> tuple[str, str, int, int]:
        final = last[(t.dataset, t.task)]
        group = 0 if t.step == final else (2 if t.step == 0 else 1)
        return (t.dataset, t.task, group, t.step)

    return sorted(tables, key=rank)


def table_markdown(table: Table) -> str:
    """GitHub Markdown table (header, right-aligned numbers) followed by a note line."""
    header = table.header()
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table.body()]
    return "\n".join(lines) + "\n\n" + table.seeds_note() + "\n"


def table_csv(table: Table) -> str:
    """The same table as CSV (cells formatted as in Markdown)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.header())
    writer.writerows(table.body())
    return buf.getvalue()


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}


def _tex(text: str) -> str:
    text = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    return text.replace(" ± ", r" $\pm$ ").replace(MISSING, "--")


def table_latex(table: Table) -> str:
    """A ``tabular`` with the papers' two-level header (protocol over old / new / All)."""
    labels = table.column_labels()
    n = len(labels)
    spec = "l" + "".join(" " + "c" * n for _ in table.protocols)
    top = " & ".join(["Method"] + [rf"\multicolumn{{{n}}}{{c}}{{{_tex(p.capitalize())}}}" for p in table.protocols])
    sub = " & ".join([""] + [_tex(c) for _ in table.protocols for c in labels])
    lines = [
        f"% {table.title}: mIoU %, mean $\\pm$ sample std over seeds where several",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\hline",
        top + r" \\",
        sub + r" \\",
        r"\hline",
    ]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in table.body()]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures
def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(text)).strip("_") or "x"


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
            x - 0.4 + width * (i + 0.5), np.nan_to_num(mean), width, yerr=err,
            color=colors[i], hatch="//" if protocol.lower() == "overlap" else None,
            edgecolor="black", linewidth=0.3, label=_series_label(row, protocol), capsize=1.5,
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


def _read_label_png(path: Path, what: str, image_id: str, source: Path,
                    seen: Sequence[int] | None = None) -> np.ndarray:
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
        panels.append(_read_label_png(mask_dir / f"{image_id}.png", "ground truth", image_id, ref.path,
                                      seen=ref.data["seen_classes"]))
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
    methods = sorted({(p, r) for p, r, t in cells if t > 0},
                     key=lambda pr: (protocol_sort_key(pr[0]), method_sort_key(pr[1])))
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
                    ax.plot(x[ok], y[ok], color=colors[method], linestyle=STEP_LINESTYLES[name],
                            marker=STEP_MARKERS[name], markersize=4)
        ax.set_title(protocol.capitalize())
        ax.set_xticks(range(num_steps))
        ax.set_xlim(-0.3, num_steps - 0.7)
        ax.set_ylim(0, 100)
        ax.set_xlabel("step (0 = base)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("mIoU %")
    handles = [Line2D([], [], color=colors[m], linewidth=2, label=method_label(m)) for m in methods]
    handles += [
        Line2D([], [], color="black", linestyle=STEP_LINESTYLES[name], marker=STEP_MARKERS[name],
               markersize=4, label=label)
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


# ----------------------------------------------------------------------------- stage
def build_report(
    metrics: Sequence[str | Path],
    histories: Sequence[str | Path] = (),
    outdir: str | Path = "results/report",
    num_examples: int = 4,
    figures_dir: str | Path | None = None,
    variants: dict | None = None,
    quality: Sequence[str | Path] = (),
    examples: Sequence[str | Path] = (),
) -> list[Path]:
    """Write every table and figure (see the module docstring) and ``index.json``.

    Args:
        metrics: ``metrics.json`` files (keys :data:`REQUIRED_KEYS`; relative paths inside are
            resolved against the working directory).
        histories: ``history.csv`` files; each must sit beside the ``metrics.json`` of its run,
            which labels the curve (method, protocol, step, seed) and picks the figure
            (dataset, task).
        outdir: output folder (created) of the tables, ``summary.md`` and ``index.json``.
        num_examples: rows of the qualitative figures (0: no qualitative figure).
        figures_dir: folder of the PNG figures (default ``outdir``); ``summary.md`` links them
            and ``index.json`` lists them relative to ``outdir``.
        variants: ``{variant: {"method": base, "changes": {...}}}``: method variants, laid out
            as ablation tables (:mod:`pipeline.eval.ablation`).
        quality: pseudo-label quality JSONs (:mod:`pipeline.eval.pseudo_quality`).
        examples: figures of pseudo-labels made by other stages (co-segmentation, CAMs), copied
            into the figures folder and linked under the quality table.

    Returns:
        Paths written, ``index.json`` last.

    Raises:
        ValueError: see :func:`load_metrics`, :func:`read_history`, :func:`build_tables`,
            :func:`plot_qualitative`; a history without a ``metrics.json`` beside it.
    """
    if not metrics:
        raise ValueError("no metrics.json given")
    outdir = Path(outdir)
    figures = Path(figures_dir) if figures_dir is not None else outdir
    runs = [load_metrics(p) for p in metrics]

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path, outdir)).as_posix()

    tables = build_tables(runs)
    entries: list[tuple[Path, str]] = []
    summary = [
        "# Results", "",
        "Mean IoU (%) on the validation set; layout of WILSON Tables 1-2. "
        "Per task: the final step first, then the intermediate steps, then the base step.", "",
    ]

    for table in summary_order(tables):
        summary += [f"## {table.title}", ""]
        for ext, render in (("md", table_markdown), ("csv", table_csv), ("tex", table_latex)):
            p = outdir / f"table_{table.stem}.{ext}"
            text = render(table)
            if ext == "md":
                text = f"### mIoU %, {table.title}\n\n" + text
            write_text(p, text)
            entries.append((p, f"mIoU table ({ext}), {table.title}"))
        summary += [table_markdown(table), ""]
        p = figures / f"per_class_iou_{table.stem}.png"
        plot_per_class(table, p)
        entries.append((p, f"Per-class IoU, {table.title}"))
        summary.append(f"![Per-class IoU, {table.title}]({rel(p)})")
        p = figures / f"qualitative_{table.stem}.png"
        if num_examples > 0 and plot_qualitative(table, p, num_examples):
            entries.append((p, f"Qualitative results, {table.title}"))
            summary += ["", f"![Qualitative results, {table.title}]({rel(p)})"]
        summary.append("")

    by_task: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_task[(str(run.data["dataset"]), str(run.data["task"]))].append(run)
    multi_step = [(key, members) for key, members in sorted(by_task.items())
                  if len({r.data["step"] for r in members}) > 1]
    if multi_step:
        summary += ["## mIoU per step", ""]
    for (dataset, task), members in multi_step:
        p = figures / f"steps_{_slug(dataset)}_{_slug(task)}.png"
        plot_steps(members, p)
        entries.append((p, f"mIoU per step, {dataset} {task}"))
        summary += [f"![mIoU per step, {dataset} {task}]({rel(p)})", ""]

    curves: dict[tuple[str, str], list[tuple[tuple, str, dict]]] = defaultdict(list)
    for h in histories:
        h = Path(h)
        sidecar = h.parent / "metrics.json"
        if not sidecar.is_file():
            raise ValueError(f"{h}: no metrics.json beside it to label the learning curve")
        run = load_metrics(sidecar)
        d = run.data
        label = f"{method_label(run.row)} {d['protocol']} step{d['step']} seed{d['seed']}"
        order = (d["step"], method_sort_key(run.row), protocol_sort_key(run.protocol), run.seed)
        curves[(str(d["dataset"]), str(d["task"]))].append((order, label, read_history(h)))
    if curves:
        summary += ["## Learning curves", ""]
    for (dataset, task), items in sorted(curves.items()):
        items.sort(key=lambda item: item[0])
        p = figures / f"learning_curves_{_slug(dataset)}_{_slug(task)}.png"
        plot_learning_curves([(label, hist) for _, label, hist in items], f"Learning curves, {dataset} {task}", p)
        entries.append((p, f"Learning curves, {dataset} {task}"))
        summary += [f"![Learning curves, {dataset} {task}]({rel(p)})", ""]

    from pipeline.eval import ablation, pseudo_quality

    extra_tables = [("Ablations", ablation.ablation_tables(runs, variants or {}))]
    extra_tables.append(("Pseudo-label quality", pseudo_quality.quality_tables(quality)))
    for heading, tables_ in extra_tables:
        if tables_:
            summary += [f"## {heading}", ""]
        for table in tables_:
            p = outdir / f"{table['stem']}.md"
            text = ablation.markdown(table)
            write_text(p, f"### {table['title']}\n\n{text}")
            with atomic_path(outdir / f"{table['stem']}.csv") as tmp:
                with open(tmp, "w", newline="") as f:
                    csv.writer(f).writerows([table["header"], *table["rows"]])
            entries += [(p, table["title"]), (outdir / f"{table['stem']}.csv", table["title"] + " (csv)")]
            summary += [f"### {table['title']}", "", text]
    if examples:
        summary += ["### Pseudo-label examples", ""]
    for source in examples:
        source = Path(source)
        parts = source.parts
        # …/{task}-{protocol}/[seed{s}/]step{t}/{pseudo|coseg/quality}/{name}_examples.png → a unique name
        start = next((i for i, part in enumerate(parts) if re.fullmatch(r"\d+(-\d+)+-[a-z]+", part)), 0)
        p = figures / ("examples_" + _slug("_".join(parts[start:]).replace(".png", "")) + ".png")
        with atomic_path(p) as tmp:
            tmp.write_bytes(source.read_bytes())
        caption = "Pseudo-labels, " + " ".join(parts[start:]).replace("_examples.png", "")
        entries.append((p, caption))
        summary += [f"![{caption}]({rel(p)})", ""]

    p = outdir / "summary.md"
    write_text(p, "\n".join(summary).rstrip() + "\n")
    entries.append((p, "All tables and figures"))
    index = outdir / "index.json"
    write_json(index, {"files": [{"path": rel(p), "caption": caption} for p, caption in entries]})
    return [p for p, _ in entries] + [index]




