"""The run matrix of the config and the files `snakemake` builds by default.

``config["experiments"]`` sets the matrix: every task x protocol x seed trains the step-0 model
(method ``base``), then every method of ``experiments.methods`` at every step t >= 1 of the task.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.data.tasks import num_steps
from pipeline.workflow.coco import RUN_EVAL2_METRICS, is_coco_voc, task_table
from pipeline.workflow.methods import spec_of
from pipeline.workflow.paths import (
    COSEG_QUALITY_JSON,
    PSEUDO_QUALITY,
    REPORT_SUMMARY,
    RUN_HISTORY,
    RUN_METRICS,
    SPLIT_SUMMARY,
)

Run = tuple[str, str, int, int, str]


def runs(config: Mapping[str, Any]) -> Iterator[Run]:
    """``(task, protocol, seed, step, method)`` of every model the matrix trains: per task,
    protocol and seed the step-0 base model, then every method at every step t >= 1 (tasks of
    the config's task table, :func:`pipeline.workflow.coco.task_table`)."""
    exp = config["experiments"]
    table = task_table(config)
    for task in exp["tasks"]:
        for protocol in exp["protocols"]:
            for seed in exp["seeds"]:
                yield task, protocol, seed, 0, "base"
                for method in exp["methods"]:
                    for step in range(1, num_steps(task, table)):
                        yield task, protocol, seed, step, method


def _run_file(pattern: str, config: Mapping[str, Any], run: Run) -> str:
    task, protocol, seed, step, method = run
    return pattern.format(
        dataset=config["dataset"]["name"], task=task, protocol=protocol, seed=seed, step=step, method=method
    )


def evaluated_runs(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(metrics.json, history.csv)`` of every run the report shows, in :func:`runs` order."""
    return [(_run_file(RUN_METRICS, config, run), _run_file(RUN_HISTORY, config, run)) for run in runs(config)]


def second_eval_metrics(config: Mapping[str, Any]) -> list[str]:
    """COCO-to-VOC: the metrics.json of every run of :func:`runs` on the second evaluation set
    (VOC val, :data:`pipeline.workflow.coco.RUN_EVAL2_METRICS`), in :func:`runs` order; empty
    for every other dataset."""
    if not is_coco_voc(config):
        return []
    return [_run_file(RUN_EVAL2_METRICS, config, run) for run in runs(config)]


def quality_files(config: Mapping[str, Any]) -> list[str]:
    """Pseudo-label quality JSONs of the matrix, sorted: at every step t >= 1, one per method
    reading a co-segmentation cache (its masks as read) and one per CAM network some method reads
    pseudo-labels of (they feed the report's pseudo-label table)."""
    dataset = config["dataset"]["name"]
    files = set()
    for task, protocol, seed, step, method in runs(config):
        if step == 0:
            continue
        spec = spec_of(config, method)
        wc = dict(dataset=dataset, task=task, protocol=protocol, seed=seed, step=step)
        if "coseg" in spec.reads:
            files.add(COSEG_QUALITY_JSON.format(method=method, **wc))
        if "pseudo" in spec.reads:
            files.add(PSEUDO_QUALITY.format(cam=spec.cam_network, **wc))
    return sorted(files)


def quality_figures(config: Mapping[str, Any]) -> list[str]:
    """The example figure (``*_examples.png``) next to each file of :func:`quality_files`, in its
    order."""
    return [
        q.replace("_quality.json", "_examples.png").replace(".json", "_examples.png") for q in quality_files(config)
    ]


def all_targets(config: Mapping[str, Any]) -> list[str]:
    """Everything `snakemake` builds by default: the split summaries, the metrics of every run, the
    pseudo-label quality files and the report."""
    exp = config["experiments"]
    targets = [
        SPLIT_SUMMARY.format(dataset=config["dataset"]["name"], task=t, protocol=p)
        for t in exp["tasks"]
        for p in exp["protocols"]
    ]
    targets += [_run_file(RUN_METRICS, config, run) for run in runs(config)]
    targets += second_eval_metrics(config)
    targets += quality_files(config)
    targets.append(REPORT_SUMMARY)
    return targets


__all__ = ["Run", "all_targets", "evaluated_runs", "quality_figures", "quality_files", "runs", "second_eval_metrics"]
