"""COCO-to-VOC in the layout of WILSON (Cermelli et al., CVPR 2022) Table 3 and FMWISS (Yu et al.,
CVPR 2023) Table 3: one row per method at the task's last step, columns ``Sup`` (Pixel / Image),
COCO mIoU % over the base classes, the new classes and all, and VOC mIoU % over the new classes::

    | Method | Sup | COCO 1-60 | COCO 61-80 | COCO All | VOC 61-80 |

The COCO columns are the run's own evaluation (``metrics.json``: COCO val2017, *old* / *new* /
*all* as every table of the report); the VOC column is ``miou_new`` of the same run evaluated on
VOC val (the ``evaluate_second`` rule's ``val_voc/metrics.json``, matched by dataset, task,
protocol, step, method and seed). Class ranges come from the runs (the paper's numbering of task
table ``coco80``: 1-60 the COCO classes of step 0, 61-80 the VOC classes). Several seeds give mean
± sample std (:func:`pipeline.report.runs.format_cell`); a run without its VOC evaluation shows "–".
Runs of other task tables are not shown here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pipeline.methods import method_specs
from pipeline.report.runs import MISSING, Run, class_range, format_cell, method_label, method_sort_key, slug

#: The task table whose runs this table shows (:mod:`pipeline.data.tasks`).
TABLE = "coco80"
SUPERVISION = {"pixel": "Pixel", "image": "Image"}


def _key(run: Run) -> tuple:
    d = run.data
    return (str(d["dataset"]), str(d["task"]), str(d["protocol"]), int(d["step"]), str(d["method"]), int(d["seed"]))


def supervision(method: str) -> str:
    """``Pixel`` or ``Image`` from the method's spec (a variant ``<method>_<what>``: its method's);
    ``–`` for a name the registry does not know."""
    specs = method_specs()
    spec = specs.get(method) or specs.get(method.split("_", 1)[0])
    return SUPERVISION.get(spec.supervision, spec.supervision) if spec is not None else MISSING


def coco_voc_tables(runs: Sequence[Run], second: Sequence[Run]) -> list[dict]:
    """Table 3 of every (dataset, task, protocol) of task table ``coco80`` (module docstring).

    Args:
        runs: the evaluated runs (COCO val), as the report loads them.
        second: the same runs evaluated on VOC val (``val_split: val_voc``).
    Returns:
        ``[{"title", "stem", "header", "rows"}]`` (the report's extra-table format), one per
        (dataset, task, protocol), ordered by them; rows ordered as the report's tables.
    Raises:
        ValueError: a VOC-val run without a COCO-val run of the same key (names its file), or
            two of either for one key (a duplicated run).
    """
    mine = [r for r in runs if r.data.get("task_table") == TABLE]
    coco = {}
    for run in mine:
        if _key(run) in coco:
            raise ValueError(f"{run.path}: a second evaluation of {_key(run)} (also {coco[_key(run)].path})")
        coco[_key(run)] = run
    voc = {}
    for run in second:
        if _key(run) not in coco:
            raise ValueError(f"{run.path}: VOC-val evaluation of {_key(run)} without its COCO-val run in the report")
        if _key(run) in voc:
            raise ValueError(f"{run.path}: a second VOC-val evaluation of {_key(run)} (also {voc[_key(run)].path})")
        voc[_key(run)] = run
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in mine:
        groups[_key(run)[:3]].append(run)
    tables = []
    for (dataset, task, protocol), members in sorted(groups.items()):
        last = max(int(r.data["step"]) for r in members)
        final = [r for r in members if int(r.data["step"]) == last and last > 0]
        if not final:
            continue
        old, new = final[0].data["old_classes"], final[0].data["new_classes"]
        header = [
            "Method",
            "Sup",
            f"COCO {class_range(old)}",
            f"COCO {class_range(new)}",
            "COCO All",
            f"VOC {class_range(new)}",
        ]
        by_method: dict[str, list[Run]] = defaultdict(list)
        for run in final:
            by_method[str(run.data["method"])].append(run)
        rows = []
        for method in sorted(by_method, key=method_sort_key):
            seeds = sorted(by_method[method], key=lambda r: r.seed)
            seconds = [voc.get(_key(r)) for r in seeds]
            rows.append(
                [
                    method_label(method),
                    supervision(method),
                    format_cell([r.data["miou_old"] for r in seeds]),
                    format_cell([r.data["miou_new"] for r in seeds]),
                    format_cell([r.data["miou_all"] for r in seeds]),
                    format_cell([s.data["miou_new"] for s in seconds if s is not None]),
                ]
            )
        tables.append(
            {
                "title": f"COCO-to-VOC (WILSON / FMWISS Table 3), {dataset} {task} {protocol}, step {last}: mIoU %",
                "stem": f"table3_{slug(dataset)}_{slug(task)}_{slug(protocol)}",
                "header": header,
                "rows": rows,
            }
        )
    return tables


__all__ = ["TABLE", "coco_voc_tables", "supervision"]
