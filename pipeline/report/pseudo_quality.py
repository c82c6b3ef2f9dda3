"""Pseudo-label quality table: how close the masks a weakly supervised method learns from are to
the ground truth of the step's training images (mIoU and the contour F-score of IS-CAM, paper
003), for FMWISS's co-segmentation masks (initial / seed / fused) and the CAM baselines'
pseudo-labels, side by side (cf. FMWISS Table 4, IS-CAM Tables 1-2).

Inputs are the quality JSONs of the ``coseg_quality`` and ``pseudo_labels`` rules; their place in
the experiment (dataset, task, protocol, step, method) is read from their path, the contract of
DESIGN.md: ``results/{dataset}/{task}-{protocol}/step{t}/coseg/quality/{method}.json`` and
``results/{dataset}/{task}-{protocol}/seed{s}/step{t}/pseudo/{cam}_quality.json``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pipeline.io import read_json
from pipeline.report.runs import format_cell, method_label, method_sort_key, protocol_sort_key

_COSEG = re.compile(
    r"(?P<dataset>[^/]+)/(?P<task>\d+(?:-\d+)+|coco-voc)-(?P<protocol>[a-z]+)/step(?P<step>\d+)/coseg/quality/(?P<method>[a-z0-9_]+)\.json$"
)
_PSEUDO = re.compile(
    r"(?P<dataset>[^/]+)/(?P<task>\d+(?:-\d+)+|coco-voc)-(?P<protocol>[a-z]+)/seed(?P<seed>\d+)/step(?P<step>\d+)/pseudo/(?P<method>[a-z0-9_]+)_quality\.json$"
)
#: Order and labels of the mask variants in a row group.
VARIANTS = {
    "initial": "CLIP initial mask",
    "seeds": "seed attention",
    "fused": "fused (Eq. 5)",
    "pseudo": "CAM pseudo-label",
}


def _scores(entry: dict) -> tuple[float | None, float | None]:
    return entry.get("miou"), entry.get("contour_f")


def load_quality(path: str | Path) -> list[dict]:
    """Rows ``{dataset, task, protocol, step, seed, method, masks, miou, contour_f, n_images}`` of
    one quality JSON (one row per mask variant).

    Raises:
        ValueError: a path outside the layout above, or a JSON without mIoU.
    """
    text = Path(path).as_posix()
    match = _COSEG.search(text) or _PSEUDO.search(text)
    if match is None:
        raise ValueError(
            f"{path}: not a quality file of the pipeline's layout "
            "(…/step{t}/coseg/quality/{method}.json or …/step{t}/pseudo/{cam}_quality.json)"
        )
    where = {k: v for k, v in match.groupdict().items()}
    where["step"] = int(where["step"])
    where["seed"] = int(where["seed"]) if where.get("seed") is not None else None
    data = read_json(path)
    rows = []
    if "miou" in data:  # one set of masks
        rows.append(
            {
                **where,
                "masks": "pseudo",
                "miou": data["miou"],
                "contour_f": data.get("contour_f"),
                "n_images": data.get("n_images"),
            }
        )
    container = data.get("variants", data)  # co-segmentation: one entry per mask variant
    for name in VARIANTS:
        entry = container.get(name)
        if isinstance(entry, dict) and "miou" in entry:
            rows.append(
                {
                    **where,
                    "masks": name,
                    "miou": entry["miou"],
                    "contour_f": entry.get("contour_f"),
                    "n_images": entry.get("n_images", data.get("n_images")),
                }
            )
    if not rows:
        raise ValueError(f"{path}: no 'miou' (nor variants with one) in the quality JSON")
    return rows


def quality_tables(paths: Sequence[str | Path]) -> list[dict]:
    """One table per (dataset, task, step): rows (method, masks), columns mIoU and contour F (%)
    per protocol; seeds (CAM baselines) averaged as mean ± std.

    Returns:
        ``[{"title", "stem", "header", "rows"}]`` (same shape as the ablation tables).
    """
    grouped: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        for row in load_quality(path):
            grouped[(row["dataset"], row["task"], row["step"])][(row["method"], row["masks"], row["protocol"])].append(
                row
            )
    tables = []
    for (dataset, task, step), cells in sorted(grouped.items()):
        protocols = sorted({p for _, _, p in cells}, key=protocol_sort_key)
        keys = sorted(
            {(m, v) for m, v, _ in cells}, key=lambda mv: (method_sort_key(mv[0]), list(VARIANTS).index(mv[1]))
        )
        header = ["Method", "Masks"] + [f"{p.capitalize()} {c}" for p in protocols for c in ("mIoU", "contour F")]
        rows = []
        for method, masks in keys:
            row = [method_label(method), VARIANTS[masks]]
            for p in protocols:
                members = cells.get((method, masks, p), [])
                row += [format_cell([r["miou"] for r in members]), format_cell([r["contour_f"] for r in members])]
            rows.append(row)
        tables.append(
            {
                "title": f"Pseudo-label quality on the training images, {dataset} {task}, step {step}",
                "stem": f"pseudo_quality_{dataset}_{task}_step{step}".replace("-", "_"),
                "header": header,
                "rows": rows,
            }
        )
    return tables


def _cell(values: Sequence[float], percent: bool) -> str:
    """A fraction as % (one decimal), a raw scalar to 3 significant digits; seeds as mean ± std."""
    return format_cell(values) if percent else format_cell(values, scale=1.0, spec=".3g")


def learned_tables(paths: Sequence[str | Path]) -> list[dict]:
    """What each CAM network learned, from the ``learned`` and ``parameter_drift`` entries that the
    ``pseudo_labels`` stage copies from the model's meta into its quality JSON: per (dataset,
    task, step), rows (method, quantity), one column per protocol, seeds as mean ± std.

    - ``parameter_drift``: ‖P − P₀‖ / ‖P₀‖ in % of the initial norm (VWE's codebook: it learns
      only through Eq. 4's word-frequency term, so ~0 means the word branch does not train) and
      the norms ‖P₀‖ → ‖P‖.
    - ``learned``: the objective's learned scalars as they are (IS-CAM's σ, μ).

    Quality JSONs of co-segmentation, or of models saved before the drift was recorded, have
    neither and give no row. Returns ``[{"title", "stem", "header", "rows"}]``.
    """
    cells: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    protocols: dict[tuple, set] = defaultdict(set)
    for path in paths:
        match = _PSEUDO.search(Path(path).as_posix())
        if match is None:
            continue
        where = match.groupdict()
        key = (where["dataset"], where["task"], int(where["step"]))
        data = read_json(path)
        method, protocol = where["method"], where["protocol"]
        for name, entry in sorted(data.get("parameter_drift", {}).items()):
            cells[key][(method, f"{name}: ‖P − P₀‖ / ‖P₀‖ (%)", True, protocol)].append(entry["relative_change"])
            cells[key][(method, f"{name}: ‖P₀‖", False, protocol)].append(entry["norm_initial"])
            cells[key][(method, f"{name}: ‖P‖", False, protocol)].append(entry["norm_final"])
            protocols[key].add(protocol)
        for name, value in sorted(data.get("learned", {}).items()):
            cells[key][(method, name, False, protocol)].append(float(value))
            protocols[key].add(protocol)
    tables = []
    for key in sorted(cells):
        dataset, task, step = key
        columns = sorted(protocols[key], key=protocol_sort_key)
        # methods in the report's order, each method's quantities in the order they were recorded
        quantities = sorted(
            dict.fromkeys((m, q, pct) for m, q, pct, _ in cells[key]), key=lambda r: method_sort_key(r[0])
        )
        rows = [
            [method_label(m), q, *(_cell(cells[key].get((m, q, pct, p), []), pct) for p in columns)]
            for m, q, pct in quantities
        ]
        tables.append(
            {
                "title": f"What the CAM networks learned, {dataset} {task}, step {step}",
                "stem": f"cam_learned_{dataset}_{task}_step{step}".replace("-", "_"),
                "header": ["Method", "Quantity", *(p.capitalize() for p in columns)],
                "rows": rows,
            }
        )
    return tables


__all__ = ["VARIANTS", "learned_tables", "load_quality", "quality_tables"]
