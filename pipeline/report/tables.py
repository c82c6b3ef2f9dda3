"""Results tables: one per (dataset, task, step), rows methods, columns old / new / all mIoU % for
each protocol (Disjoint then Overlap), as in WILSON (Cermelli et al., CVPR 2022) Tables 1-2;
rendered as Markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.report.runs import (
    METRIC_KEYS,
    MISSING,
    Run,
    class_range,
    format_cell,
    method_label,
    method_sort_key,
    protocol_sort_key,
    slug,
)


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
        return f"{slug(self.dataset)}_{slug(self.task)}_step{self.step}"

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
