"""Evaluated runs: loading and checking ``metrics.json`` and ``history.csv``, and what the tables,
figures and ablation tables share (row order and labels from the method registry, class ranges,
cells formatted as in the papers' tables)."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.classes import BACKGROUND
from pipeline.io import read_json
from pipeline.methods import method_specs

REQUIRED_KEYS: tuple[str, ...] = (
    "dataset",
    "task",
    "protocol",
    "step",
    "num_steps",
    "method",
    "seed",
    "old_classes",
    "new_classes",
    "seen_classes",
    "per_class_iou",
    "miou_old",
    "miou_new",
    "miou_all",
    "pixel_accuracy",
    "predictions_dir",
    "image_root",
    "mask_dir",
    "val_ids",
)
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
        :func:`pipeline.metrics.miou.summarize` writes) or only the seen classes in index order.
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


# ----------------------------------------------------------------------------- order, labels, cells
def method_sort_key(method: str) -> tuple[int, str]:
    """Row order: the registry's methods by their ``order`` (:func:`pipeline.methods.method_specs`;
    step-0 rows are "base"), a variant named ``<method>_<what>`` right after its method, then the
    other methods alphabetically."""
    specs = method_specs()
    m = method.lower()
    if m in specs:
        return (specs[m].order, "")
    base = m.split("_", 1)[0]  # a variant named <method>_<what> follows its method
    if base in specs:
        return (specs[base].order, m)
    return (max((s.order for s in specs.values()), default=0) + 1, m)


def protocol_sort_key(protocol: str) -> tuple[int, str]:
    p = protocol.lower()
    return (PROTOCOL_ORDER.index(p), "") if p in PROTOCOL_ORDER else (len(PROTOCOL_ORDER), p)


def method_label(method: str) -> str:
    """The registry's label of a method (``"iscam" -> "IS-CAM"``); other names as they are."""
    spec = method_specs().get(method.lower())
    return method if spec is None else spec.label


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


def format_cell(values: Sequence[float | None], scale: float = 100.0, spec: str = ".1f") -> str:
    """Fractions of seeds -> ``"65.4"`` (one seed), ``"65.4 ± 1.2"`` (mean ± sample std, ddof=1)
    or ``"–"`` (no value); nulls are left out. ``scale`` and the format ``spec`` serve raw
    scalars too (``scale=1, spec=".3g"``: ``"5"``, ``"2.5 ± 0.1"``)."""
    vals = np.array([v for v in values if v is not None], dtype=np.float64) * scale
    if vals.size == 0:
        return MISSING
    if vals.size == 1:
        return f"{vals[0]:{spec}}"
    return f"{vals.mean():{spec}} ± {vals.std(ddof=1):{spec}}"


def slug(text) -> str:
    """A file-name-safe form of a dataset or task name (runs of other characters -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(text)).strip("_") or "x"
