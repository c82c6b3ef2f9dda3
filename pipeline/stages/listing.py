"""Stage ``list``: what the pipeline knows, read from its registries (no hand-kept list).

``wilss list methods``: every registered method (:func:`pipeline.methods.method_specs`: name,
label, supervision, steps, caches read, paper and equations) and the variants of config.yaml
(``methods.<variant>.method``, with the settings they change). ``wilss list tasks``: every task of
:data:`pipeline.data.tasks.TASKS` with its classes per step. ``wilss list datasets``: the
dataset of config.yaml and of each overlay in ``config/`` (name, kind, root, task table, tasks
run), and every task table no config uses (COCO-to-VOC: the data layer only). Torch-free.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from pipeline.config import DEFAULTS_PATH, variant_changes
from pipeline.data.tasks import TASKS
from pipeline.methods import method_specs
from pipeline.workflow.coco import task_table

WHAT = ("methods", "tasks", "datasets")


def class_ranges(classes: Sequence[int]) -> str:
    """Class ids as ranges: ``[0, 1, 2, 3, 7] -> "0-3,7"`` (``"-"`` for none)."""
    values = sorted(set(classes))
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts) or "-"


def method_rows(config_path: str | Path = DEFAULTS_PATH) -> list[dict]:
    """One row per registered method, then one per variant of ``config_path`` (``methods``
    entries with a ``method`` key; skipped when the file does not exist)."""
    rows = [
        {
            "name": spec.name,
            "label": spec.label,
            "supervision": spec.supervision,
            "steps": spec.steps,
            "reads": ",".join(spec.reads) or "-",
            "paper": spec.paper or "-",
            "equations": spec.equations or "-",
            "changes": "-",
        }
        for spec in method_specs().values()
    ]
    path = Path(config_path)
    methods = (yaml.safe_load(path.read_text()) or {}).get("methods", {}) if path.is_file() else {}
    for name, settings in methods.items():
        if isinstance(settings, dict) and "method" in settings:
            changes = variant_changes(methods, name)
            rows.append(
                {
                    "name": name,
                    "label": f"variant of {settings['method']}",
                    "supervision": method_specs()[settings["method"]].supervision,
                    "steps": "incremental",
                    "reads": "(as " + settings["method"] + ")",
                    "paper": "-",
                    "equations": "-",
                    "changes": ", ".join(f"{k}={v}" for k, v in changes.items()) or "-",
                }
            )
    return rows


def task_rows() -> list[dict]:
    """One row per task of every task table: classes per step as id ranges."""
    return [
        {
            "task": task,
            "table": table,
            "steps": len(steps),
            "classes per step": " | ".join(class_ranges(step) for step in steps),
            "classes": sum(len(step) for step in steps) - 1,
        }
        for table, tasks in TASKS.items()
        for task, steps in tasks.items()
    ]


def dataset_rows(config_path: str | Path = DEFAULTS_PATH) -> list[dict]:
    """The dataset of ``config_path`` and of every overlay in ``config/`` beside it that names
    one (kind and task table as the file writes them, :func:`pipeline.workflow.coco.task_table`;
    "(inherited)" where an overlay leaves them to the overlays it extends), then each task table
    of :data:`TASKS` that no config uses (data layer only)."""
    config_path = Path(config_path)
    files = [config_path, *sorted((config_path.parent / "config").glob("*.yaml"))]
    rows = []
    for path in files:
        if not path.is_file():
            continue
        cfg = yaml.safe_load(path.read_text()) or {}
        dataset = cfg.get("dataset")
        if not isinstance(dataset, dict) or "name" not in dataset:
            continue
        tasks = (cfg.get("experiments") or {}).get("tasks")
        kind = dataset.get("kind")
        rows.append(
            {
                "name": dataset["name"],
                "kind": kind or "(inherited)",
                "root": dataset.get("root", "-"),
                "table": task_table({"dataset": {"kind": kind}}) if kind else "(inherited)",
                "tasks": ",".join(tasks) if tasks else "(inherited)",
                "config": path.name if path == config_path else f"config/{path.name}",
            }
        )
    for table, tasks in TASKS.items():
        if table not in {row["table"] for row in rows}:
            rows.append(
                {
                    "name": table,
                    "kind": table,
                    "root": "-",
                    "table": table,
                    "tasks": ",".join(tasks),
                    "config": "- (data layer only: pipeline.data." + table + ")",
                }
            )
    return rows


def render(rows: list[dict], fmt: str) -> str:
    """Rows as aligned ``text`` columns, a ``markdown`` table or ``json``."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if not rows:
        return ""
    header = list(rows[0])
    cells = [[str(row[k]) for k in header] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    fmt_row = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths]), *map(fmt_row, cells)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=WHAT, help="what to list")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument("--config", default=str(DEFAULTS_PATH), help="config.yaml whose variants and overlays to list")


def run(args: argparse.Namespace) -> None:
    rows = {
        "methods": lambda: method_rows(args.config),
        "tasks": task_rows,
        "datasets": lambda: dataset_rows(args.config),
    }[args.what]()
    print(render(rows, args.format))
