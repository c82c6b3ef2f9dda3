"""Ablation tables: a method beside its variants (``methods.<variant>.method``), one column per
setting a variant changes, as in FMWISS Tables 3-6 (seeds N, fusion, λ, copy-paste, SSL model).

A variant is any entry of the config's ``methods`` with a ``method: <base>`` key; the Snakemake
report rule passes ``{variant: {"method": base, "changes": {dotted key: value}}}`` (from
:func:`pipeline.config.variant_changes`) and this module lays the evaluated runs of
the final step of each task out in one table per (dataset, task, base method).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from pipeline.report.runs import (
    METRIC_KEYS,
    MISSING,
    Run,
    class_range,
    format_cell,
    method_label,
    protocol_sort_key,
)


def _value(value) -> str:
    """A changed setting as the user wrote it in YAML (``null`` for None: "–" reads as missing)."""
    return "null" if value is None else str(value)


def ablation_tables(runs: Sequence[Run], variants: Mapping[str, Mapping]) -> list[dict]:
    """One table per (dataset, task, base method) with at least one variant evaluated.

    Args:
        runs: evaluated runs (any steps; the last step of each task is used).
        variants: ``{variant: {"method": base, "changes": {key: value}}}``.
    Returns:
        ``[{"title", "stem", "header": [...], "rows": [[...], ...]}]``: rows = the base method
        (its own settings shown as "default") then each variant; columns = every changed key, then
        old / new / all mIoU % per protocol (mean ± std over seeds).
    """
    last: dict[tuple[str, str], int] = defaultdict(int)
    for run in runs:
        key = (str(run.data["dataset"]), str(run.data["task"]))
        last[key] = max(last[key], run.data["step"])
    cells: dict[tuple[str, str, str], dict[tuple[str, str], list[Run]]] = defaultdict(lambda: defaultdict(list))
    classes: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for run in runs:
        dataset, task = str(run.data["dataset"]), str(run.data["task"])
        if run.data["step"] != last[(dataset, task)] or run.data["step"] == 0:
            continue
        method = str(run.data["method"])
        base = variants[method]["method"] if method in variants else method
        cells[(dataset, task, base)][(method, run.protocol)].append(run)
        classes[(dataset, task)] = (run.data["old_classes"], run.data["new_classes"])
    tables = []
    for (dataset, task, base), grid in sorted(cells.items()):
        members = sorted({m for m, _ in grid}, key=lambda m: (m != base, m))
        if not any(m in variants for m in members):
            continue
        keys = sorted({k for m in members if m in variants for k in variants[m]["changes"]})
        protocols = sorted({p for _, p in grid}, key=protocol_sort_key)
        old, new = classes[(dataset, task)]
        labels = [class_range(old), class_range(new), "All"]
        header = ["Method", *keys] + [f"{p.capitalize()} {c}" for p in protocols for c in labels]
        rows = []
        for m in members:
            changes = variants.get(m, {}).get("changes", {})
            row = [method_label(m)] + [_value(changes[k]) if k in changes else "default" for k in keys]
            for p in protocols:
                runs_ = grid.get((m, p), [])
                row += [format_cell([r.data[k] for r in runs_]) if runs_ else MISSING for k in METRIC_KEYS]
            rows.append(row)
        step = last[(dataset, task)]
        tables.append(
            {
                "title": f"Ablation of {method_label(base)}, {dataset} {task}, step {step}",
                "stem": f"ablation_{base}_{dataset}_{task}_step{step}".replace("-", "_"),
                "header": header,
                "rows": rows,
            }
        )
    return tables


def markdown(table: dict) -> str:
    """A table of :func:`ablation_tables` as GitHub markdown."""
    lines = ["| " + " | ".join(table["header"]) + " |", "|" + " --- |" * len(table["header"])]
    lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"


__all__ = ["ablation_tables", "markdown"]
