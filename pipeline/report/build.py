"""The report: result tables, per-class IoU charts, learning curves and qualitative figures.

Reads the ``metrics.json`` of evaluated runs (and optionally their ``history.csv``) and writes
under ``outdir``, for every (dataset, task, step):

- ``table_{dataset}_{task}_step{t}.md|.csv|.tex``: rows methods, columns old / new / all mIoU %
  for each protocol (Disjoint then Overlap), as in WILSON (Cermelli et al., CVPR 2022) Tables
  1-2; mean ± sample std when several seeds;
- ``per_class_iou_{dataset}_{task}_step{t}.png``: grouped bars per seen class;
- ``qualitative_{dataset}_{task}_step{t}.png``: image | ground truth | each method's prediction;

plus ``learning_curves_{dataset}_{task}.png`` (one line per run), for every (dataset, task) whose
runs cover more than one step ``steps_{dataset}_{task}.png`` (mIoU % per step, one panel per
protocol, one colour per method whose line starts at the shared step-0 "base" run; solid all,
dashed old, dotted new; seeds averaged; values from :func:`pipeline.report.figures.step_series`),
the ablation and pseudo-label quality tables and those of the papers' remaining experiments
(``paper_*``, :mod:`pipeline.report.paper_tables`; ``.md`` and ``.csv``), ``summary.md`` (all
tables, per task the final step first (the papers' table), then the intermediate steps, then
step 0; links to the figures) and ``index.json`` (every file written, path relative to
``outdir``, with a caption). The PNGs go to ``figures_dir`` when given (the Snakemake rule declares
that folder as a ``report()`` directory output). The stage entry point is :mod:`pipeline.stages.report`.

Where each method fails (:mod:`pipeline.report.confusion`): ``confusion_{dataset}_{task}_{protocol}_step{t}_{method}_seed{s}.png``
(the row-normalised confusion matrix of every run holding one, background / old / new marked),
``background_shift_{dataset}_{task}_step{t}.md|.csv`` per step >= 1 and ``background_shift.csv``
(every table's rows; always written).
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.io import atomic_path, write_json, write_text
from pipeline.report import ablation, confusion, pseudo_quality  # confusion: issue 18
from pipeline.report.coco_voc import coco_voc_tables  # issue 15: COCO-to-VOC, WILSON / FMWISS Table 3
from pipeline.report.figures import plot_learning_curves, plot_per_class, plot_qualitative, plot_steps
from pipeline.report.paper_tables import paper_tables
from pipeline.report.runs import Run, load_metrics, method_label, method_sort_key, protocol_sort_key, read_history, slug
from pipeline.report.tables import Table, build_tables, summary_order, table_csv, table_latex, table_markdown

SUMMARY_INTRO: tuple[str, ...] = (
    "# Results",
    "",
    "Mean IoU (%) on the validation set; layout of WILSON Tables 1-2. "
    "Per task: the final step first, then the intermediate steps, then the base step.",
    "",
)


@dataclass
class _Report:
    """What has been written so far: files with their captions (``index.json`` order) and the
    lines of ``summary.md``."""

    outdir: Path
    figures: Path
    entries: list[tuple[Path, str]] = field(default_factory=list)
    summary: list[str] = field(default_factory=lambda: list(SUMMARY_INTRO))

    def rel(self, path: Path) -> str:
        """``path`` relative to ``outdir``, with forward slashes (the links and the index)."""
        return Path(os.path.relpath(path, self.outdir)).as_posix()

    def add(self, path: Path, caption: str) -> None:
        self.entries.append((path, caption))

    def image(self, path: Path, caption: str) -> str:
        """A Markdown image link to ``path`` (the summary's figures)."""
        return f"![{caption}]({self.rel(path)})"


# ----------------------------------------------------------------------------- tables
def _write_table(report: _Report, table: Table) -> None:
    """``table_{stem}.md|.csv|.tex`` of one results table."""
    for ext, render in (("md", table_markdown), ("csv", table_csv), ("tex", table_latex)):
        p = report.outdir / f"table_{table.stem}.{ext}"
        text = render(table)
        if ext == "md":
            text = f"### mIoU %, {table.title}\n\n" + text
        write_text(p, text)
        report.add(p, f"mIoU table ({ext}), {table.title}")


def _write_extra_tables(report: _Report, heading: str, tables: Sequence[dict]) -> None:
    """Ablation or pseudo-label quality tables (``{"title", "stem", "header", "rows"}``): ``.md``
    and ``.csv`` each, and a section of the summary."""
    if tables:
        report.summary += [f"## {heading}", ""]
    for table in tables:
        p = report.outdir / f"{table['stem']}.md"
        text = ablation.markdown(table)
        write_text(p, f"### {table['title']}\n\n{text}")
        with atomic_path(report.outdir / f"{table['stem']}.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([table["header"], *table["rows"]])
        report.entries += [(p, table["title"]), (report.outdir / f"{table['stem']}.csv", table["title"] + " (csv)")]
        report.summary += [f"### {table['title']}", "", text]


# ----------------------------------------------------------------------------- figures
def _table_figures(report: _Report, table: Table, num_examples: int) -> None:
    """Per-class IoU bars and (``num_examples`` > 0, val ids shared) qualitative figure of one table."""
    p = report.figures / f"per_class_iou_{table.stem}.png"
    plot_per_class(table, p)
    report.add(p, f"Per-class IoU, {table.title}")
    report.summary.append(report.image(p, f"Per-class IoU, {table.title}"))
    p = report.figures / f"qualitative_{table.stem}.png"
    if num_examples > 0 and plot_qualitative(table, p, num_examples):
        report.add(p, f"Qualitative results, {table.title}")
        report.summary += ["", report.image(p, f"Qualitative results, {table.title}")]


def _step_figures(report: _Report, runs: Sequence[Run]) -> None:
    """``steps_{dataset}_{task}.png`` for every (dataset, task) whose runs cover several steps."""
    by_task: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_task[(str(run.data["dataset"]), str(run.data["task"]))].append(run)
    multi_step = [
        (key, members) for key, members in sorted(by_task.items()) if len({r.data["step"] for r in members}) > 1
    ]
    if multi_step:
        report.summary += ["## mIoU per step", ""]
    for (dataset, task), members in multi_step:
        p = report.figures / f"steps_{slug(dataset)}_{slug(task)}.png"
        plot_steps(members, p)
        report.add(p, f"mIoU per step, {dataset} {task}")
        report.summary += [report.image(p, f"mIoU per step, {dataset} {task}"), ""]


def _learning_curve_figures(report: _Report, histories: Sequence[str | Path]) -> None:
    """``learning_curves_{dataset}_{task}.png``: one line per history, labelled (and ordered by
    step, method, protocol, seed) from the ``metrics.json`` beside it.

    Raises:
        ValueError: a history without a ``metrics.json`` beside it; see :func:`read_history`.
    """
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
        report.summary += ["## Learning curves", ""]
    for (dataset, task), items in sorted(curves.items()):
        items.sort(key=lambda item: item[0])
        p = report.figures / f"learning_curves_{slug(dataset)}_{slug(task)}.png"
        plot_learning_curves([(label, hist) for _, label, hist in items], f"Learning curves, {dataset} {task}", p)
        report.add(p, f"Learning curves, {dataset} {task}")
        report.summary += [report.image(p, f"Learning curves, {dataset} {task}"), ""]


def _example_figures(report: _Report, examples: Sequence[str | Path]) -> None:
    """Copy the pseudo-label figures of other stages into the figures folder, under unique names."""
    if examples:
        report.summary += ["### Pseudo-label examples", ""]
    for source in examples:
        source = Path(source)
        parts = source.parts
        # …/{task}-{protocol}/[seed{s}/]step{t}/{pseudo|coseg/quality}/{name}_examples.png → a unique name
        start = next((i for i, part in enumerate(parts) if re.fullmatch(r"\d+(-\d+)+-[a-z]+", part)), 0)
        p = report.figures / ("examples_" + slug("_".join(parts[start:]).replace(".png", "")) + ".png")
        with atomic_path(p) as tmp:
            tmp.write_bytes(source.read_bytes())
        caption = "Pseudo-labels, " + " ".join(parts[start:]).replace("_examples.png", "")
        report.add(p, caption)
        report.summary += [report.image(p, caption), ""]


# ----------------------------------------------------------------------------- confusion, background shift (issue 18)
def _confusion_section(report: _Report, runs: Sequence[Run]) -> None:
    """Background-shift tables (``background_shift_{stem}.md|.csv`` per step >= 1, and every
    method of every table in ``background_shift.csv``, always written: the Snakemake report's
    table) and one row-normalised confusion figure per run with a confusion matrix
    (:mod:`pipeline.report.confusion`)."""
    tables = confusion.shift_tables(runs)
    with atomic_path(report.outdir / "background_shift.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=confusion.RECORD_COLUMNS)
            writer.writeheader()
            writer.writerows(record for table in tables for record in table["records"])
    report.add(report.outdir / "background_shift.csv", "Background shift %, every method and step (csv)")
    with_matrix = [r for r in runs if confusion.has_confusion(r)]
    if not with_matrix:
        return
    report.summary += ["## Confusion and background shift", "", confusion.SHIFT_NOTE, ""]
    for table in tables:
        text = ablation.markdown(table)
        p = report.outdir / f"{table['stem']}.md"
        write_text(p, f"### {table['title']}\n\n{confusion.SHIFT_NOTE}\n\n{text}")
        with atomic_path(report.outdir / f"{table['stem']}.csv") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([table["header"], *table["rows"]])
        report.entries += [(p, table["title"]), (report.outdir / f"{table['stem']}.csv", table["title"] + " (csv)")]
        report.summary += [f"### {table['title']}", "", text]
    report.summary += ["### Row-normalised confusion matrices", ""]
    ordered = [r for t in summary_order(build_tables(with_matrix)) for key in t.series for r in t.cells[key]]
    for run in ordered:
        d = run.data
        p = report.figures / f"{confusion.confusion_stem(run)}.png"
        confusion.plot_confusion(run, p)
        caption = (
            f"Confusion (row-normalised), {method_label(run.row)} {d['protocol']}, "
            f"{d['dataset']} {d['task']} step {d['step']}, seed {d['seed']}"
        )
        report.add(p, caption)
        report.summary += [report.image(p, caption), ""]


# ----------------------------------------------------------------------------- summary
def _write_summary_and_index(report: _Report) -> list[Path]:
    """``summary.md`` then ``index.json`` (every file written, ``summary.md`` included).

    Returns:
        Paths written, ``index.json`` last.
    """
    p = report.outdir / "summary.md"
    write_text(p, "\n".join(report.summary).rstrip() + "\n")
    report.add(p, "All tables and figures")
    index = report.outdir / "index.json"
    write_json(index, {"files": [{"path": report.rel(p), "caption": caption} for p, caption in report.entries]})
    return [p for p, _ in report.entries] + [index]


def build_report(
    metrics: Sequence[str | Path],
    histories: Sequence[str | Path] = (),
    outdir: str | Path = "results/report",
    num_examples: int = 4,
    figures_dir: str | Path | None = None,
    variants: dict | None = None,
    quality: Sequence[str | Path] = (),
    examples: Sequence[str | Path] = (),
    settings: dict | None = None,
    second_eval: Sequence[str | Path] = (),
) -> list[Path]:
    """Write every table and figure (see the module docstring) and ``index.json``.

    Args:
        metrics: ``metrics.json`` files (keys :data:`pipeline.report.runs.REQUIRED_KEYS`; relative
            paths inside are resolved against the working directory).
        histories: ``history.csv`` files; each must sit beside the ``metrics.json`` of its run,
            which labels the curve (method, protocol, step, seed) and picks the figure
            (dataset, task).
        outdir: output folder (created) of the tables, ``summary.md`` and ``index.json``.
        num_examples: rows of the qualitative figures (0: no qualitative figure).
        figures_dir: folder of the PNG figures (default ``outdir``); ``summary.md`` links them
            and ``index.json`` lists them relative to ``outdir``.
        variants: ``{variant: {"method": base, "changes": {...}}}``: method variants, laid out
            as ablation tables (:mod:`pipeline.report.ablation`).
        quality: pseudo-label quality JSONs (:mod:`pipeline.report.pseudo_quality`).
        examples: figures of pseudo-labels made by other stages (co-segmentation, CAMs), copied
            into the figures folder and linked under the quality table.
        settings: ``{method: {"method", "changes", "relaxed_labels", "data_fraction", ...}}``:
            the tables of the papers' remaining experiments (:mod:`pipeline.report.paper_tables`).
        second_eval: ``metrics.json`` of the runs on a second evaluation set (COCO-to-VOC: VOC
            val), for Table 3's VOC column (:mod:`pipeline.report.coco_voc`).

    Returns:
        Paths written, ``index.json`` last.

    Raises:
        ValueError: see :func:`load_metrics`, :func:`read_history`, :func:`build_tables`,
            :func:`plot_qualitative`; a history without a ``metrics.json`` beside it.
    """
    if not metrics:
        raise ValueError("no metrics.json given")
    outdir = Path(outdir)
    report = _Report(outdir, Path(figures_dir) if figures_dir is not None else outdir)
    runs = [load_metrics(p) for p in metrics]
    for table in summary_order(build_tables(runs)):
        report.summary += [f"## {table.title}", ""]
        _write_table(report, table)
        report.summary += [table_markdown(table), ""]
        _table_figures(report, table, num_examples)
        report.summary.append("")
    # issue 15: COCO-to-VOC in WILSON / FMWISS Table 3's layout (COCO and VOC columns)
    _write_extra_tables(report, "COCO-to-VOC", coco_voc_tables(runs, [load_metrics(p) for p in second_eval]))
    _step_figures(report, runs)
    _learning_curve_figures(report, histories)
    extra_tables = [
        ("Ablations", ablation.ablation_tables(runs, variants or {})),
        ("Pseudo-label quality", pseudo_quality.quality_tables(quality)),
    ]
    for heading, tables in extra_tables:
        _write_extra_tables(report, heading, tables)
    _example_figures(report, examples)
    _write_extra_tables(report, "What the CAM networks learned", pseudo_quality.learned_tables(quality))
    # WILSON Table 5 (relaxed labels), FMWISS Tables 9 (pixel vs image labels) and 10 (data fraction)
    _write_extra_tables(report, "The papers' remaining experiments", paper_tables(runs, settings or {}))
    _confusion_section(report, runs)  # issue 18
    return _write_summary_and_index(report)
