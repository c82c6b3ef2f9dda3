"""Stage ``splits``: the training ids and image-level labels of every step of an incremental task.

For one task (e.g. VOC 15-5) and one protocol (disjoint/overlap) this writes
``<outdir>/step{t}.json`` for every step t (ids kept by MiB's filter, and their image-level labels,
WILSON Sec. 3.1; ``--relaxed``: labels of every seen class, WILSON Table 5), plus
``<outdir>/summary.json`` and ``<outdir>/summary.csv`` (images per step and per class).

Class presence comes either from the index written by ``prepare-data`` (``--index``) or is read
from the label maps (``--labels-root`` + ``--train-list``, e.g. the VOC+SBD ``SegmentationClassAug``
maps without images). All files are written atomically and together: if anything fails, no file
of this run is left that looks finished.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence

from pipeline.data import tasks
from pipeline.data.classes import VOC_CLASSES
from pipeline.io import read_json


def build_splits(
    index: Mapping[str, object],
    task: str,
    protocol: str,
    relaxed: bool = False,
    *,
    dataset: str = "voc",
    task_table: str = "voc",
) -> list[dict]:
    """Training ids and image-level labels of every step (MiB filters; WILSON Sec. 3.1, Table 5).

    Args:
        index: ``{id: {"classes": [...], ...}}`` or ``{id: [...]}``, the classes present in each
            training image's mask (see :func:`pipeline.data.tasks.filter_ids`); order is kept.
        task: a task of ``tasks.TASKS[task_table]`` ("15-5", "10-10", ...).
        protocol: ``"disjoint"`` or ``"overlap"``.
        relaxed: image-level labels of every seen object class present instead of only the new
            ones (WILSON's relaxed setting, Table 5).
        dataset: dataset name recorded in each step (e.g. "voc", "demo").
        task_table: key of the task table in :data:`pipeline.data.tasks.TASKS`.
    Returns:
        one dict per step t = 0..T-1: ``{"dataset", "task_table", "task", "protocol", "step",
        "new_classes", "old_classes", "seen_classes", "relaxed", "ids": [...],
        "labels": {id: [classes]}}``. At step 0 the labels are the base classes present (step 0
        trains with pixel labels; the image labels are recorded for completeness).
    Raises:
        ValueError: unknown task/protocol, a bad index entry (names the id), or a step that keeps
            no image (names the task, protocol and step).
    """
    splits = []
    for step in range(tasks.num_steps(task, task_table)):
        ids = tasks.filter_ids(index, task, step, protocol, task_table)
        if not ids:
            raise ValueError(
                f"task {task!r}, protocol {protocol!r}, step {step}: no training image "
                f"contains a class of this step ({tasks.new_classes(task, step, task_table)}) "
                f"among the {len(index)} indexed images; expected at least one"
            )
        labels = {
            image_id: tasks.image_labels(
                tasks.entry_classes(image_id, index[image_id]), task, step, relaxed, task_table
            )
            for image_id in ids
        }
        splits.append(
            {
                "dataset": dataset,
                "task_table": task_table,
                "task": task,
                "protocol": protocol,
                "step": step,
                "new_classes": tasks.new_classes(task, step, task_table),
                "old_classes": tasks.old_classes(task, step, task_table),
                "seen_classes": tasks.seen_classes(task, step, task_table),
                "relaxed": bool(relaxed),
                "ids": ids,
                "labels": labels,
            }
        )
    return splits


def summarize_splits(steps: Sequence[Mapping], index: Mapping[str, object] | None = None) -> dict:
    """Number of images per step and, per class, the number of the step's images containing it.

    Args:
        steps: the output of :func:`build_splits` (or the loaded ``step{t}.json`` files).
        index: the class-presence index the splits were built from. With it, every seen object
            class of a step is counted from the ground-truth presence (old classes included).
            Without it, the counts come from the step's image-level labels, so only the labelled
            classes are counted (the new ones; every seen one if the splits are relaxed).
    Returns:
        ``{"dataset", "task_table", "task", "protocol", "relaxed", "steps": [{"step", "images",
        "new_classes", "old_classes", "class_images": {str(class): count}}]}``.
    Raises:
        ValueError: ``steps`` is empty, or an id of a step is missing from ``index``.
    """
    if not steps:
        raise ValueError("summarize_splits: no steps given")
    first = steps[0]
    summary = {key: first[key] for key in ("dataset", "task_table", "task", "protocol", "relaxed")}
    summary["steps"] = []
    for split in steps:
        if index is None:
            counted = sorted({c for labels in split["labels"].values() for c in labels} | set(split["new_classes"]))
            present = {i: set(split["labels"][i]) for i in split["ids"]}
        else:
            counted = [c for c in split["seen_classes"] if c != 0]
            missing = [i for i in split["ids"] if i not in index]
            if missing:
                raise ValueError(
                    f"task {split['task']!r}, step {split['step']}: ids {missing[:5]} are not in the index"
                )
            present = {i: set(tasks.entry_classes(i, index[i])) for i in split["ids"]}
        counts = {str(c): sum(c in classes for classes in present.values()) for c in counted}
        summary["steps"].append(
            {
                "step": split["step"],
                "images": len(split["ids"]),
                "new_classes": list(split["new_classes"]),
                "old_classes": list(split["old_classes"]),
                "class_images": counts,
            }
        )
    return summary


def _class_names(task_table: str) -> list[str]:
    """Column names of the object classes 1..N of a task table."""
    if task_table == "voc":
        return list(VOC_CLASSES[1:])
    return [str(c) for c in range(1, tasks.NUM_CLASSES[task_table] + 1)]


def summary_csv(summary: Mapping) -> str:
    """CSV text of a summary: columns ``step, images`` then one per object class (its name);
    a class not counted at a step (not yet seen) has an empty cell."""
    names = _class_names(summary["task_table"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "images", *names])
    for row in summary["steps"]:
        counts = row["class_images"]
        writer.writerow([row["step"], row["images"], *(counts.get(str(c), "") for c in range(1, len(names) + 1))])
    return out.getvalue()


def load_index(path: str | os.PathLike, split: str = "train") -> dict[str, dict]:
    """The class-presence index of one split from the JSON written by ``prepare-data``.

    Args:
        path: JSON ``{"splits": {"train": [ids], "val": [ids]}, "index": {id: {"classes": [...]}}}``.
        split: which id list to use.
    Returns:
        ``{id: entry}`` in the order of the split's id list.
    Raises:
        ValueError: invalid JSON, missing keys, a split without ids, or ids of the split missing
            from the index (names the file and the ids).
    """
    data = read_json(path)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("splits"), dict)
        or not isinstance(data.get("index"), dict)
    ):
        raise ValueError(f"{path}: expected a prepare-data index JSON with keys 'splits' and 'index'")
    if split not in data["splits"]:
        raise ValueError(f"{path}: no split {split!r}; splits present: {sorted(data['splits'])}")
    ids = data["splits"][split]
    if not ids:
        raise ValueError(
            f"{path}: split {split!r} lists no ids; expected the ids of a non-empty {split} list "
            "(re-run prepare-data on the dataset's lists)"
        )
    missing = [i for i in ids if i not in data["index"]]
    if missing:
        raise ValueError(f"{path}: {len(missing)} ids of split {split!r} have no index entry, e.g. {missing[:5]}")
    return {i: data["index"][i] for i in ids}
