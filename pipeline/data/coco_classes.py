"""COCO category ids and names, and the one COCO <-> VOC class-id table (COCO-to-VOC).

COCO 2017 numbers its 80 thing categories with ids in 1..90 (the 91 ids of the COCO paper's
category list, 11 of which were never annotated: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91).
The COCO-to-VOC task (WILSON Sec. 4.1, Table 3; FMWISS Sec. 4.1) keeps these ids as class ids:
0 background, a COCO id for each object class, 255 void, exactly as the authors' code does
(its ``tasks['coco-voc']`` table and its VOC relabelling ``coco_map``). Step 0 learns the 60
COCO classes without a VOC counterpart, step 1 the 20 VOC classes, read from VOC images whose
masks are relabelled with :data:`VOC_TO_COCO` (:func:`voc_to_coco_lut`).

Everything here is torch-free (``pipeline.data.tasks`` builds its tables from it).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.data.classes import BACKGROUND, NUM_OBJECT_CLASSES, VOC_CLASSES, VOID

#: The 80 COCO 2017 thing categories: id -> name, as in ``categories`` of ``instances_*2017.json``
#: (what ``pycocotools.coco.COCO(...).cats`` holds), in id order.
# fmt: off
COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}
# fmt: on

#: The 80 COCO ids in use, ascending.
COCO_IDS: tuple[int, ...] = tuple(COCO_CATEGORIES)

#: Highest COCO category id in use (toothbrush).
COCO_MAX_ID = max(COCO_IDS)  # 90

#: Ids of COCO-Stuff's 91-entry thing list that have no annotation in COCO 2014/2017 (street sign,
#: hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush); ignored
#: (void) wherever a label map holds them.
COCO_UNUSED_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

#: VOC class index (1..20, :data:`pipeline.data.classes.VOC_CLASSES` order) -> COCO id; the
#: authors' ``coco_map`` (0 and 255 are unchanged, :func:`voc_to_coco_lut`).
VOC_TO_COCO: dict[int, int] = {
    1: 5,  # aeroplane -> airplane
    2: 2,  # bicycle
    3: 16,  # bird
    4: 9,  # boat
    5: 44,  # bottle
    6: 6,  # bus
    7: 3,  # car
    8: 17,  # cat
    9: 62,  # chair
    10: 21,  # cow
    11: 67,  # diningtable -> dining table
    12: 18,  # dog
    13: 19,  # horse
    14: 4,  # motorbike -> motorcycle
    15: 1,  # person
    16: 64,  # pottedplant -> potted plant
    17: 20,  # sheep
    18: 63,  # sofa -> couch
    19: 7,  # train
    20: 72,  # tvmonitor -> tv
}

#: COCO id -> VOC class index, the inverse of :data:`VOC_TO_COCO` (20 entries).
COCO_TO_VOC: dict[int, int] = {coco: voc for voc, coco in VOC_TO_COCO.items()}

#: COCO ids of the 20 VOC classes, ascending (the step-1 classes of ``coco-voc``).
VOC_COCO_IDS: tuple[int, ...] = tuple(sorted(COCO_TO_VOC))

#: The 60 COCO ids without a VOC class, ascending (the step-0 classes of ``coco-voc``).
COCO_NON_VOC_IDS: tuple[int, ...] = tuple(c for c in COCO_IDS if c not in COCO_TO_VOC)

#: The paper's class numbering 1..80 of Table 3 (WILSON and FMWISS): ``PAPER_ORDER[i - 1]`` is the
#: COCO id of class i; 1-60 the step-0 classes, 61-80 the VOC classes, each in COCO-id order
#: (the order of the authors' task table, hence of the classifier's channels after background).
PAPER_ORDER: tuple[int, ...] = COCO_NON_VOC_IDS + VOC_COCO_IDS


def coco_class_name(coco_id: int) -> str:
    """COCO name of a class id: ``"background"`` for 0, ``"void"`` for 255, the category name for
    an id in use, ``"unused-<id>"`` for one of :data:`COCO_UNUSED_IDS`, ``str(id)`` otherwise."""
    if coco_id == BACKGROUND:
        return "background"
    if coco_id == VOID:
        return "void"
    if coco_id in COCO_CATEGORIES:
        return COCO_CATEGORIES[coco_id]
    return f"unused-{coco_id}" if coco_id in COCO_UNUSED_IDS else str(coco_id)


def paper_index(coco_id: int) -> int:
    """The paper's class number (1..80, :data:`PAPER_ORDER`) of a COCO id in use.

    Raises:
        ValueError: ``coco_id`` is not one of the 80 ids in use.
    """
    try:
        return PAPER_ORDER.index(int(coco_id)) + 1
    except ValueError:
        raise ValueError(f"COCO id {coco_id!r}: not one of the 80 COCO category ids in use") from None


def voc_to_coco_lut() -> np.ndarray:
    """Lookup table VOC label map -> COCO-id label map: ``coco_mask = lut[voc_mask]``.

    Returns:
        (256,) uint8 array: 0 -> 0, VOC class k (1..20) -> :data:`VOC_TO_COCO` [k], 255 -> 255;
        any other value (never in a valid VOC mask) -> 255, ignored.
    """
    lut = np.full(256, VOID, dtype=np.uint8)
    lut[BACKGROUND] = BACKGROUND
    for voc, coco in VOC_TO_COCO.items():
        lut[voc] = coco
    return lut


def coco_to_voc_lut() -> np.ndarray:
    """Lookup table COCO-id label map -> VOC label map: ``voc_mask = lut[coco_mask]``.

    Returns:
        (256,) uint8 array: 0 -> 0, the COCO id of a VOC class -> its VOC index (1..20), every
        other COCO id in use -> 0 (VOC labels those objects background), 255 and the unused or
        out-of-range ids -> 255.
    """
    lut = np.full(256, VOID, dtype=np.uint8)
    lut[BACKGROUND] = BACKGROUND
    lut[list(COCO_IDS)] = BACKGROUND
    for coco, voc in COCO_TO_VOC.items():
        lut[coco] = voc
    return lut


def coco_to_paper_lut() -> np.ndarray:
    """Lookup table COCO-id label map -> label map in the paper's numbering 1..80
    (:data:`PAPER_ORDER`; task table ``coco80``): ``paper_mask = lut[coco_mask]``.

    Returns:
        (256,) uint8 array: 0 -> 0, COCO id ``PAPER_ORDER[i - 1]`` -> i (1..60 the non-VOC
        classes, 61..80 the VOC classes), 255 and every id not in use -> 255 (ignored).
    """
    lut = np.full(256, VOID, dtype=np.uint8)
    lut[BACKGROUND] = BACKGROUND
    for i, coco in enumerate(PAPER_ORDER, start=1):
        lut[coco] = i
    return lut


def voc_to_paper_lut() -> np.ndarray:
    """Lookup table VOC label map -> label map in the paper's numbering (61..80 for the VOC
    classes): :func:`coco_to_paper_lut` after :func:`voc_to_coco_lut`.

    Returns:
        (256,) uint8 array: 0 -> 0, VOC class k -> ``paper_index(VOC_TO_COCO[k])``, 255 and any
        other value -> 255.
    """
    return coco_to_paper_lut()[voc_to_coco_lut()]


def voc_index_as_coco(index: Mapping[str, object]) -> dict[str, dict]:
    """A VOC class-presence index (prepare-data ``index`` or ``{id: [classes]}``) in COCO ids.

    Args:
        index: ``{id: {"classes": [VOC indices], ...}}`` or ``{id: [VOC indices]}``.
    Returns:
        ``{id: {**entry, "classes": sorted COCO ids}}`` in the order of ``index`` (0 and 255 are
        kept if listed).
    Raises:
        ValueError: an entry without classes, or a class outside 0..20 and 255 (names the id).
    """
    out: dict[str, dict] = {}
    for image_id, entry in index.items():
        extra = dict(entry) if isinstance(entry, Mapping) else {}
        classes = extra.get("classes") if isinstance(entry, Mapping) else entry
        if classes is None or isinstance(classes, (str, bytes)):
            raise ValueError(f"index entry {image_id!r}: expected a list of VOC class indices")
        mapped = []
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise ValueError(f"index entry {image_id!r}: class {c!r} is not an integer")
            if c in (BACKGROUND, VOID):
                mapped.append(int(c))
            elif 1 <= c <= NUM_OBJECT_CLASSES:
                mapped.append(VOC_TO_COCO[int(c)])
            else:
                raise ValueError(
                    f"index entry {image_id!r}: class {c!r} is not a VOC class index "
                    f"(expected 0..{NUM_OBJECT_CLASSES} or {VOID})"
                )
        out[image_id] = {**extra, "classes": sorted(mapped)}
    return out


def voc_name_of_coco(coco_id: int) -> str:
    """The VOC name of a COCO id of a VOC class (``63`` -> ``"sofa"``).

    Raises:
        ValueError: ``coco_id`` is not the COCO id of a VOC class.
    """
    if coco_id not in COCO_TO_VOC:
        raise ValueError(f"COCO id {coco_id!r}: not a VOC class; VOC classes have COCO ids {list(VOC_COCO_IDS)}")
    return VOC_CLASSES[COCO_TO_VOC[coco_id]]


__all__ = [
    "COCO_CATEGORIES",
    "COCO_IDS",
    "COCO_MAX_ID",
    "COCO_NON_VOC_IDS",
    "COCO_TO_VOC",
    "COCO_UNUSED_IDS",
    "PAPER_ORDER",
    "VOC_COCO_IDS",
    "VOC_TO_COCO",
    "coco_class_name",
    "coco_to_paper_lut",
    "coco_to_voc_lut",
    "paper_index",
    "voc_index_as_coco",
    "voc_name_of_coco",
    "voc_to_coco_lut",
    "voc_to_paper_lut",
]
