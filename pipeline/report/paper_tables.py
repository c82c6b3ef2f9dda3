"""The papers' remaining experiments, each in its paper's table layout (the final step of every
task; rows grouped by method, columns old / new / All mIoU % per protocol, mean ± sample std over
seeds as every table of the report, :func:`pipeline.report.runs.format_cell`):

- **relaxed labels**, WILSON (Cermelli et al., CVPR 2022) Table 5: image labels of every seen
  class present at step t instead of the new ones (Sec. 3.2); column "Image labels";
- **pixel vs image labels**, FMWISS (Yu et al., CVPR 2023) Table 9: WILSON trained with pixel
  labels (``pixel_labels``, :class:`pipeline.methods.wilson.method.Wilson`) beside the
  image-label methods; column "Sup" (I, P (all classes) = the table's "P", P (new classes));
- **fewer training data**, FMWISS Table 10: a fraction of the step's images
  (:mod:`pipeline.data.subsets`); column "Train Data".

A run belongs to an experiment's table when its method changes the experiment's settings (a
*copy*, e.g. ``wilson_relaxed: {method: wilson, relaxed_labels: true}``); it is shown under its
*reference*: the method of the matrix with the same base and the same other changes (``wilson``
for ``wilson_relaxed``, ``fmwiss_oracle`` for ``{method: fmwiss, coseg: {source: oracle},
data_fraction: 0.3}``), whose row comes first. Tables 9 and 10 also list, as the papers do, every
other image-label method of the matrix that changes none of these settings (FMWISS's row in
Table 9, WILSON's 100 % row in Table 10). No copy evaluated: no table.

``settings`` (the report rule's ``--settings``, :func:`pipeline.workflow.methods.report_settings`)
gives, per method, ``{"method": base, "changes": {dotted key: value}, "relaxed_labels",
"data_fraction", "data_fraction_seed", "pixel_labels"}``; a method missing from it is a plain
method with the defaults (standard labels, every image, image labels).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.methods import method_specs
from pipeline.report.runs import (
    METRIC_KEYS,
    MISSING,
    Run,
    class_range,
    format_cell,
    method_label,
    method_sort_key,
    protocol_sort_key,
)

#: The defaults of a method missing from ``settings``.
DEFAULTS: dict[str, Any] = {
    "relaxed_labels": False,
    "data_fraction": 1.0,
    "data_fraction_seed": None,
    "pixel_labels": None,
}
PIXEL_LABELS = {None: "I", "new": "P (new classes)", "seen": "P (all classes)"}


def _fraction(s: Mapping[str, Any]) -> str:
    text = f"{100 * float(s['data_fraction']):g}%"
    seed = s.get("data_fraction_seed")
    return text if seed is None or float(s["data_fraction"]) == 1.0 else f"{text} (subset seed {seed})"


@dataclass(frozen=True)
class Experiment:
    """One of the papers' experiments: the settings it varies and how its table shows them.

    Attributes:
        name: the stem's part (``relaxed``, ``supervision``, ``data_fraction``).
        title: the table's title before ", {dataset} {task}, step {t}".
        keys: the setting keys (dotted, as in ``changes``) a copy changes.
        column: the header of the settings column.
        value: the cell of that column from a method's settings.
        order: the order of the rows of one group (reference first regardless).
        references: also list the plain image-label methods of the matrix.
    """

    name: str
    title: str
    keys: tuple[str, ...]
    column: str
    value: Callable[[Mapping[str, Any]], str]
    order: Callable[[Mapping[str, Any]], Any]
    references: bool


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "relaxed",
        "Relaxed image labels (WILSON Table 5: labels of every seen class at step t)",
        ("relaxed_labels",),
        "Image labels",
        lambda s: "all seen classes" if s["relaxed_labels"] else "new classes",
        lambda s: bool(s["relaxed_labels"]),
        False,
    ),
    Experiment(
        "supervision",
        "Pixel vs image labels (FMWISS Table 9: P = pixel labels, I = image labels)",
        ("pixel_labels",),
        "Sup",
        lambda s: PIXEL_LABELS.get(s.get("pixel_labels"), str(s.get("pixel_labels"))),
        lambda s: list(PIXEL_LABELS).index(s.get("pixel_labels")) if s.get("pixel_labels") in PIXEL_LABELS else 9,
        True,
    ),
    Experiment(
        "data_fraction",
        "Fewer training data (FMWISS Table 10: a seeded fraction of the step's images)",
        ("data_fraction", "data_fraction_seed"),
        "Train Data",
        _fraction,
        lambda s: (-float(s["data_fraction"]), s.get("data_fraction_seed") or 0),
        True,
    ),
)
#: Every key some experiment varies: a method changing none of them is "plain".
PAPER_KEYS: frozenset[str] = frozenset(k for e in EXPERIMENTS for k in e.keys)


def _settings_of(settings: Mapping[str, Mapping], method: str) -> dict[str, Any]:
    entry = settings.get(method)
    if entry is None:
        return {"method": method, "changes": {}, **DEFAULTS}
    return {**DEFAULTS, "changes": {}, **entry}


def _others(s: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The changes of a method outside ``keys``."""
    return {k: v for k, v in s["changes"].items() if k not in keys}


def _supervision(base: str) -> str | None:
    spec = method_specs().get(base)
    return None if spec is None else spec.supervision


def _groups(
    methods: Sequence[str], settings: Mapping[str, Mapping], experiment: Experiment
) -> list[tuple[str | None, list[str]]]:
    """The row groups of one experiment's table, in table order: ``(reference, copies)``, the
    reference None for copies whose reference is not among ``methods``."""
    info = {m: _settings_of(settings, m) for m in methods}
    copies = [m for m in methods if any(k in info[m]["changes"] for k in experiment.keys)]
    if not copies:
        return []
    groups: dict[str, tuple[str | None, list[str]]] = {}
    for copy in copies:
        others = _others(info[copy], experiment.keys)
        reference = next(
            (
                m
                for m in methods
                if m not in copies and info[m]["method"] == info[copy]["method"] and info[m]["changes"] == others
            ),
            None,
        )
        lead = reference if reference is not None else copy
        groups.setdefault(lead, (reference, []))[1].append(copy)
    if experiment.references:
        for m in methods:
            plain = not any(k in info[m]["changes"] for k in PAPER_KEYS)
            if plain and m not in groups and _supervision(info[m]["method"]) == "image":
                groups[m] = (m, [])
    order = lambda m: (experiment.order(info[m]), method_sort_key(m))  # noqa: E731
    return [(groups[lead][0], sorted(groups[lead][1], key=order)) for lead in sorted(groups, key=method_sort_key)]


def _label(method: str, reference: str | None, settings: Mapping[str, Mapping], experiment: Experiment) -> str:
    """A row's method label: its reference's; for a copy without one, its base's label when it
    changes nothing else, else its own name."""
    if reference is not None:
        return method_label(reference)
    info = _settings_of(settings, method)
    return method_label(info["method"]) if not _others(info, experiment.keys) else method


def paper_tables(runs: Sequence[Run], settings: Mapping[str, Mapping]) -> list[dict]:
    """The tables of :data:`EXPERIMENTS` with at least one copy evaluated, per (dataset, task), at
    the task's final step.

    Args:
        runs: evaluated runs (any steps; step 0 and intermediate steps are left out).
        settings: ``{method: {"method", "changes", "relaxed_labels", "data_fraction",
            "data_fraction_seed", "pixel_labels"}}`` (module docstring).
    Returns:
        ``[{"title", "stem", "header", "rows"}]`` (the shape of the ablation tables): header
        ``Method``, the experiment's column, then ``{Protocol} {old range}``, ``{new range}``,
        ``All`` per protocol; cells mIoU % (mean ± sample std over seeds, "–" where no run).
    """
    last: dict[tuple[str, str], int] = defaultdict(int)
    for run in runs:
        key = (str(run.data["dataset"]), str(run.data["task"]))
        last[key] = max(last[key], run.data["step"])
    grid: dict[tuple[str, str], dict[tuple[str, str], list[Run]]] = defaultdict(lambda: defaultdict(list))
    classes: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for run in runs:
        key = (str(run.data["dataset"]), str(run.data["task"]))
        if run.data["step"] == 0 or run.data["step"] != last[key]:
            continue
        grid[key][(str(run.data["method"]), run.protocol)].append(run)
        classes[key] = (run.data["old_classes"], run.data["new_classes"])
    tables = []
    for (dataset, task), cells in sorted(grid.items()):
        methods = sorted({m for m, _ in cells}, key=method_sort_key)
        protocols = sorted({p for _, p in cells}, key=protocol_sort_key)
        old, new = classes[(dataset, task)]
        labels = [class_range(old), class_range(new), "All"]
        step = last[(dataset, task)]
        for experiment in EXPERIMENTS:
            groups = _groups(methods, settings, experiment)
            if not groups:
                continue
            header = ["Method", experiment.column] + [f"{p.capitalize()} {c}" for p in protocols for c in labels]
            rows = []
            for reference, copies in groups:
                for method in ([reference] if reference is not None else []) + copies:
                    row = [
                        _label(method, reference, settings, experiment),
                        experiment.value(_settings_of(settings, method)),
                    ]
                    for p in protocols:
                        members = sorted(cells.get((method, p), []), key=lambda r: r.seed)
                        row += [format_cell([r.data[k] for r in members]) if members else MISSING for k in METRIC_KEYS]
                    rows.append(row)
            tables.append(
                {
                    "title": f"{experiment.title}, {dataset} {task}, step {step}",
                    "stem": f"paper_{experiment.name}_{dataset}_{task}_step{step}".replace("-", "_"),
                    "header": header,
                    "rows": rows,
                }
            )
    return tables


__all__ = ["DEFAULTS", "EXPERIMENTS", "PAPER_KEYS", "PIXEL_LABELS", "Experiment", "paper_tables"]
