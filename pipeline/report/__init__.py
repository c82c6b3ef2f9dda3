"""The ``report`` stage's library: results tables, figures, ablation and pseudo-label quality
tables, and :func:`build_report`, which writes them all with ``summary.md`` and ``index.json``.

Modules, each importing only those before it: :mod:`~pipeline.report.runs` (loading runs, row
order and labels from the method registry, cell format), :mod:`~pipeline.report.tables`,
:mod:`~pipeline.report.figures`, :mod:`~pipeline.report.ablation`,
:mod:`~pipeline.report.pseudo_quality`, :mod:`~pipeline.report.paper_tables`,
:mod:`~pipeline.report.build`. No torch is imported.
The stage entry point is :mod:`pipeline.stages.report`.
"""

from __future__ import annotations

from pipeline.report.ablation import ablation_tables
from pipeline.report.build import build_report
from pipeline.report.figures import plot_learning_curves, plot_per_class, plot_qualitative, plot_steps, step_series
from pipeline.report.pseudo_quality import load_quality, quality_tables
from pipeline.report.runs import (
    HISTORY_COLUMNS,
    METRIC_KEYS,
    MISSING,
    PROTOCOL_ORDER,
    REQUIRED_KEYS,
    Run,
    class_range,
    format_cell,
    load_metrics,
    method_label,
    method_sort_key,
    protocol_sort_key,
    read_history,
)
from pipeline.report.tables import Table, build_tables, summary_order, table_csv, table_latex, table_markdown

__all__ = [
    "HISTORY_COLUMNS",
    "METRIC_KEYS",
    "MISSING",
    "PROTOCOL_ORDER",
    "REQUIRED_KEYS",
    "Run",
    "Table",
    "ablation_tables",
    "build_report",
    "build_tables",
    "class_range",
    "format_cell",
    "load_metrics",
    "load_quality",
    "method_label",
    "method_sort_key",
    "plot_learning_curves",
    "plot_per_class",
    "plot_qualitative",
    "plot_steps",
    "protocol_sort_key",
    "quality_tables",
    "read_history",
    "step_series",
    "summary_order",
    "table_csv",
    "table_latex",
    "table_markdown",
]
