"""Incremental tasks, the disjoint/overlap image filters and the targets of each step.

A *task* splits the object classes of a dataset into learning *steps*: step 0 learns the *base*
classes (plus background 0) with pixel labels, every later step adds *new* classes. At step t the
*old* classes are the object classes learned before t, the *seen* classes are background, old and
new, the *future* classes those introduced after t.

Sources: the VOC tasks and the two image filters (protocols) are those of MiB (Cermelli et al.,
CVPR 2020, ``tasks.py`` and ``dataset/utils.py:filter_images``), reused unchanged by WILSON
(Cermelli et al., CVPR 2022, Sec. 4.1); the image-level labels are WILSON Sec. 3.1 (new classes
present) and Sec. 3.2 / Table 5 ("relaxed": every seen class present).

Class indices follow :mod:`pipeline.data.classes`: 0 background, 1..20 VOC objects, 255 void.
COCO-to-VOC (WILSON Sec. 4.1, Table 3; table ``"coco"``, task ``"coco-voc"``) uses COCO category
ids (:mod:`pipeline.data.coco_classes`): 0 background, the 80 ids in use (1..90, the 11 unused
ids are not classes), 255 void; its step 1 reads VOC masks relabelled to COCO ids. The DAG trains
it in table ``"coco80"``: the same task in the paper's numbering 1..80 (class i = channel i,
:mod:`pipeline.data.coco_voc`); :func:`class_name_in` names the classes of every table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from pipeline.data.classes import BACKGROUND, NUM_OBJECT_CLASSES, VOC_CLASSES, VOID
from pipeline.data.coco_classes import COCO_IDS, COCO_MAX_ID, COCO_NON_VOC_IDS, PAPER_ORDER, coco_class_name

PROTOCOLS: tuple[str, ...] = ("disjoint", "overlap")

# Highest object class id (background excluded) of each task table: for VOC the number of object
# classes (ids 1..20); for COCO the highest COCO category id in use (90), of which 80 are classes
# (CLASS_IDS). Every table's ids fit the (256,) uint8 lookup tables below, 255 being void.
NUM_CLASSES: dict[str, int] = {"voc": NUM_OBJECT_CLASSES, "coco": COCO_MAX_ID, "coco80": len(PAPER_ORDER)}

# The object class ids of each task table (background 0 and void 255 excluded), ascending.
CLASS_IDS: dict[str, tuple[int, ...]] = {
    "voc": tuple(range(1, NUM_OBJECT_CLASSES + 1)),
    "coco": COCO_IDS,
    "coco80": tuple(range(1, len(PAPER_ORDER) + 1)),
}


def _range(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


# Classes introduced at each step, per dataset; step 0 includes background 0. Standard VOC index
# order (MiB tasks.py). Written out literally; tests/test_tasks.py checks every VOC row against the
# generic naming rule of :func:`build_task`. COCO-to-VOC (WILSON Sec. 4.1; the authors'
# tasks['coco-voc']['voc']) in COCO ids: step 0 background + the 60 COCO classes not in VOC, step 1
# the 20 VOC classes; tests/test_coco.py checks it against pipeline.data.coco_classes.
# fmt: off
_COCO_VOC_STEP0 = (0, 8, 10, 11, 13, 14, 15, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
                   42, 43, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 65, 70, 73, 74, 75, 76,
                   77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
_COCO_VOC_STEP1 = (1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72)
# fmt: on
TASKS: dict[str, dict[str, list[list[int]]]] = {
    "voc": {
        "19-1": [_range(0, 19), [20]],
        "15-5": [_range(0, 15), _range(16, 20)],
        "15-1": [_range(0, 15), [16], [17], [18], [19], [20]],
        "10-10": [_range(0, 10), _range(11, 20)],
        "10-5-5": [_range(0, 10), _range(11, 15), _range(16, 20)],
        "10-2": [_range(0, 10), [11, 12], [13, 14], [15, 16], [17, 18], [19, 20]],
        "2-2": [[0, 1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16], [17, 18], [19, 20]],
    },
    "coco": {"coco-voc": [list(_COCO_VOC_STEP0), list(_COCO_VOC_STEP1)]},
    # COCO-to-VOC as the DAG trains it (table "coco80"): the same two steps in the paper's class
    # numbering 1..80 (coco_classes.PAPER_ORDER: class i is COCO id PAPER_ORDER[i - 1]), so that
    # class i is the model's channel i, as for VOC; the authors' channel order (their task table's
    # order) is exactly this one. pipeline.data.coco_voc writes label maps in this numbering.
    "coco80": {"coco-voc": [_range(0, len(COCO_NON_VOC_IDS)), _range(len(COCO_NON_VOC_IDS) + 1, len(PAPER_ORDER))]},
}

_TASK_NAME = re.compile(r"^[0-9]+(-[0-9]+)+$")


def build_task(task: str, num_classes: int = NUM_OBJECT_CLASSES) -> list[list[int]]:
    """Build the steps of a task from its name, with the classes in index order (MiB naming).

    The first number is the number of base classes (learned at step 0 together with background 0),
    the following ones the number of classes added at each later step. If the numbers add up to
    ``num_classes`` they are used as written ("15-5", "10-5-5", "19-1"); a single increment that
    does not reach ``num_classes`` is repeated until it does ("15-1" = 15 then five steps of 1,
    "10-2", "2-2").

    Args:
        task: name such as ``"15-5"``, ``"10-5-5"``, ``"15-1"``.
        num_classes: number of object classes of the dataset (20 for VOC), classes 1..num_classes.
    Returns:
        list of steps, each a sorted list of class indices; step 0 starts with 0.
    Raises:
        ValueError: malformed name, a zero count, counts exceeding ``num_classes``, or counts that
            neither add up to ``num_classes`` nor can be repeated to reach it exactly.
    """
    if not isinstance(task, str) or not _TASK_NAME.match(task):
        raise ValueError(
            f"task {task!r}: expected a name like '15-5' or '10-5-5' (base classes, "
            "then the classes added at each step)"
        )
    base, *increments = (int(part) for part in task.split("-"))
    if base == 0 or 0 in increments:
        raise ValueError(f"task {task!r}: every step must add at least one class")
    remaining = num_classes - base
    if base + sum(increments) == num_classes:
        pass
    elif len(increments) == 1 and remaining > 0 and remaining % increments[0] == 0:
        increments = increments * (remaining // increments[0])
    else:
        raise ValueError(
            f"task {task!r}: the steps must cover the {num_classes} object classes "
            f"exactly (base {base}, increments {increments})"
        )
    steps = [list(range(0, base + 1))]
    first = base + 1
    for size in increments:
        steps.append(list(range(first, first + size)))
        first += size
    return steps


def _task_table(task: str, dataset: str) -> list[list[int]]:
    if dataset not in TASKS:
        raise ValueError(f"dataset {dataset!r}: no task table; valid datasets: {sorted(TASKS)}")
    table = TASKS[dataset]
    if task not in table:
        raise ValueError(
            f"unknown task {task!r} for dataset {dataset!r}; valid tasks: "
            f"{', '.join(table)} (add a row to pipeline.data.tasks.TASKS, "
            "e.g. with build_task)"
        )
    return table[task]


def task_steps(task: str, dataset: str = "voc") -> list[list[int]]:
    """Classes introduced at each step of ``task`` (MiB tasks.py; WILSON Sec. 4.1).

    Args:
        task: a task of ``TASKS[dataset]``: "15-5", "15-1", "10-10", "10-5-5", "10-2", "19-1", "2-2"
            (``"voc"``); "coco-voc" (``"coco"``, classes in COCO ids; ``"coco80"``, the paper's 1..80).
        dataset: key of the task table ("voc", "coco" or "coco80").
    Returns:
        list (one entry per step) of sorted class-index lists; step 0 includes background 0.
        A fresh copy: mutating it does not change the table.
    Raises:
        ValueError: unknown dataset or task (the message lists the valid ones).
    """
    return [list(step) for step in _task_table(task, dataset)]


def num_steps(task: str, dataset: str = "voc") -> int:
    """Number of steps of ``task``, step 0 included (e.g. 2 for "15-5", 6 for "15-1").

    Raises:
        ValueError: unknown dataset or task.
    """
    return len(_task_table(task, dataset))


def _check_step(task: str, step: int, dataset: str) -> list[list[int]]:
    steps = _task_table(task, dataset)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < len(steps):
        raise ValueError(f"task {task!r}: step {step!r} out of range; valid steps: 0..{len(steps) - 1}")
    return steps


def seen_classes(task: str, step: int, dataset: str = "voc") -> list[int]:
    """Classes learned up to and including ``step``: background 0, old and new classes.

    Returns:
        sorted list of class indices, starting with 0.
    Raises:
        ValueError: unknown task, or ``step`` not in 0..num_steps-1.
    """
    steps = _check_step(task, step, dataset)
    return sorted(c for s in steps[: step + 1] for c in s)


def new_classes(task: str, step: int, dataset: str = "voc") -> list[int]:
    """Object classes introduced at ``step`` (background excluded; step 0: the base classes).

    Returns:
        sorted list of class indices in 1..num_classes.
    Raises:
        ValueError: unknown task, or ``step`` not in 0..num_steps-1.
    """
    steps = _check_step(task, step, dataset)
    return sorted(c for c in steps[step] if c != BACKGROUND)


def old_classes(task: str, step: int, dataset: str = "voc") -> list[int]:
    """Object classes learned before ``step`` (background excluded; empty at step 0).

    Returns:
        sorted list of class indices in 1..num_classes.
    Raises:
        ValueError: unknown task, or ``step`` not in 0..num_steps-1.
    """
    steps = _check_step(task, step, dataset)
    return sorted(c for s in steps[:step] for c in s if c != BACKGROUND)


def future_classes(task: str, step: int, dataset: str = "voc") -> list[int]:
    """Object classes introduced after ``step`` (empty at the last step).

    Returns:
        sorted list of class indices in 1..num_classes.
    Raises:
        ValueError: unknown task, or ``step`` not in 0..num_steps-1.
    """
    steps = _check_step(task, step, dataset)
    return sorted(c for s in steps[step + 1 :] for c in s)


def entry_classes(image_id: str, entry: object) -> list[int]:
    """Class indices of one index entry.

    Args:
        image_id: the entry's id (named in errors).
        entry: ``{"classes": [...], ...}`` (prepare-data index) or a plain list of class indices.
    Returns:
        the classes as Python ints, in the entry's order.
    Raises:
        ValueError: no ``classes`` key, not a list, or a non-integer class (names the id).
    """
    if isinstance(entry, Mapping):
        if "classes" not in entry:
            raise ValueError(
                f"index entry {image_id!r}: no 'classes' key (expected {{'classes': [...]}} or a list of class indices)"
            )
        entry = entry["classes"]
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable):
        raise ValueError(f"index entry {image_id!r}: expected a list of class indices, got {type(entry).__name__}")
    classes = list(entry)
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ValueError(f"index entry {image_id!r}: class {c!r} is not an integer")
    return [int(c) for c in classes]


def filter_ids(index: Mapping[str, object], task: str, step: int, protocol: str, dataset: str = "voc") -> list[str]:
    """Ids of the training images of ``step`` under ``protocol`` (MiB ``filter_images``).

    Let ``labels`` be the classes introduced at ``step`` without background. MiB's filters:

    - ``overlap``: keep an image iff it contains at least one class of ``labels``; old and future
      classes may be present too (they are background in the step's targets).
    - ``disjoint``: keep it iff it contains at least one class of ``labels`` *and* every class it
      contains is a seen class (0 and 255 allowed), i.e. no future class.

    Args:
        index: ``{id: {"classes": [...], ...}}`` (as written by prepare-data) or ``{id: [...]}``;
            classes are the indices present in the image's mask (0 and 255 may be included,
            they never matter).
        task, step, dataset: as in :func:`task_steps`; step in 0..num_steps-1.
        protocol: ``"disjoint"`` or ``"overlap"``.
    Returns:
        the kept ids, in the order of ``index``.
    Raises:
        ValueError: unknown task/step/protocol; an index entry without classes, with a
            non-integer class or with a class outside the dataset (message names the id).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    labels = set(new_classes(task, step, dataset))
    seen = set(seen_classes(task, step, dataset)) | {VOID}
    valid = {BACKGROUND, *CLASS_IDS[dataset], VOID}
    kept = []
    for image_id, entry in index.items():
        present = set(entry_classes(image_id, entry))
        unknown = present - valid
        if unknown:
            raise ValueError(
                f"index entry {image_id!r}: classes {sorted(unknown)} are not classes "
                f"of dataset {dataset!r} (expected {_valid_ids_text(dataset)})"
            )
        if not present & labels:
            continue
        if protocol == "disjoint" and not present <= seen:
            continue
        kept.append(image_id)
    return kept


def image_labels(
    classes_present: Iterable[int], task: str, step: int, relaxed: bool = False, dataset: str = "voc"
) -> list[int]:
    """Image-level labels of one training image at ``step`` (WILSON Sec. 3.1 / Table 5).

    Standard WILSS setting: the labels are the *new* classes present in the image (old classes
    and background are not annotated). ``relaxed`` (WILSON Sec. 3.2, "relaxed setting", Table 5):
    every *seen* object class present (old and new). Future classes are never labels. At step 0
    both are the base classes present.

    Args:
        classes_present: class indices present in the image's mask (0, 255 and unseen classes
            are ignored).
        task, step, dataset: as in :func:`task_steps`.
        relaxed: label old classes too.
    Returns:
        sorted list of object class indices (may be empty for an image without new classes).
    Raises:
        ValueError: unknown task or step out of range.
    """
    wanted = seen_classes(task, step, dataset) if relaxed else new_classes(task, step, dataset)
    wanted = set(wanted) - {BACKGROUND}
    return sorted(wanted & {int(c) for c in classes_present})


def class_name_in(table: str, c: int) -> str:
    """Name of class ``c`` of task table ``table``: VOC's names for ``voc`` (the index itself
    beyond 20), COCO's for ``coco`` (COCO ids) and ``coco80`` (the paper's 1..80 numbering:
    COCO id ``PAPER_ORDER[c - 1]``); ``"background"`` for 0 and ``"void"`` for 255.

    Raises:
        ValueError: an unknown table.
    """
    c = int(c)
    if table not in TASKS:
        raise ValueError(f"task table {table!r}: expected one of {sorted(TASKS)}")
    if c == VOID:
        return "void"
    if table == "voc":
        return VOC_CLASSES[c] if 0 <= c < len(VOC_CLASSES) else str(c)
    if table == "coco80":
        return coco_class_name(PAPER_ORDER[c - 1]) if 1 <= c <= len(PAPER_ORDER) else coco_class_name(c)
    return coco_class_name(c)


def _valid_ids_text(dataset: str) -> str:
    """The class ids of a table in words, for error messages."""
    ids = CLASS_IDS[dataset]
    if ids == tuple(range(1, NUM_CLASSES[dataset] + 1)):
        return f"0..{NUM_CLASSES[dataset]} or {VOID}"
    return f"0, one of the {len(ids)} class ids {ids[0]}..{ids[-1]} or {VOID}"


def _lut(keep: Iterable[int], dataset: str) -> np.ndarray:
    lut = np.full(256, VOID, dtype=np.uint8)
    lut[BACKGROUND] = BACKGROUND
    lut[list(CLASS_IDS[dataset])] = BACKGROUND
    for c in keep:
        lut[c] = c
    return lut


def pixel_target_lut(task: str, step: int, learned: str = "current", dataset: str = "voc") -> np.ndarray:
    """Lookup table from ground-truth label maps to the training target of a pixel-supervised step.

    ``target = lut[mask]``. Classes not learned at ``step`` become background 0 (MiB's training
    target; at step 0 the base classes), 255 stays 255.

    Args:
        task, step, dataset: as in :func:`task_steps`.
        learned: ``"current"`` keeps only the classes of this step (fine-tuning, MiB, step 0);
            ``"seen"`` keeps every seen class (Joint training on the step's images).
    Returns:
        (256,) uint8 array; entry k is the target of label k. Values that are not class ids of the
        table and not 255 (above the class range, or COCO's unused ids; never produced by a valid
        mask) map to 255 so they are ignored.
    Raises:
        ValueError: unknown task, step out of range, or ``learned`` not "current"/"seen".
    """
    if learned == "current":
        keep = new_classes(task, step, dataset)
    elif learned == "seen":
        keep = seen_classes(task, step, dataset)
    else:
        raise ValueError(f"learned={learned!r}: expected 'current' or 'seen'")
    return _lut(keep, dataset)


def eval_target_lut(task: str, step: int, dataset: str = "voc") -> np.ndarray:
    """Lookup table for evaluating after ``step``: classes not yet seen become background 0.

    MiB's masking of the validation set: a model that has seen classes C_0..C_t is evaluated with
    every future class relabelled background; 255 stays 255 (ignored).

    Returns:
        (256,) uint8 array, ``target = lut[mask]``; values that are not class ids of the table
        (above the class range, COCO's unused ids) map to 255.
    Raises:
        ValueError: unknown task or step out of range.
    """
    return _lut(seen_classes(task, step, dataset), dataset)


def joint_ids(index: Mapping[str, object], task: str, step: int, protocol: str, dataset: str = "voc") -> list[str]:
    """Training images of the ``joint`` upper bound at ``step``: every image holding a class seen
    so far (steps 0..step), with disjoint also dropping images that hold a future class.

    Args:
        index: {id: {"classes": [...]}} or {id: [...]}, class presence per training image.
    Returns:
        Ids in index order.
    Raises:
        ValueError: unknown task, step or protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    seen = set(seen_classes(task, step, dataset)) - {0}
    future = set(future_classes(task, step, dataset))
    keep = []
    for image_id, entry in index.items():
        classes = set(entry_classes(image_id, entry))
        if classes & seen and (protocol == "overlap" or not classes & future):
            keep.append(image_id)
    return keep
