"""Stage ``prepare-data``: check every image/mask pair of a dataset and index class presence.

Reads the train and val id lists, checks each pair (:func:`pipeline.data.voc.index_dataset`)
and writes one JSON::

    {"root": abs root, "mask_dir": abs mask folder, "images": bool,
     "splits": {"train": [ids], "val": [ids]},
     "index": {id: {"height": int, "width": int, "classes": [int, ...]}}}

Any bad input raises :class:`pipeline.data.voc.DatasetError` and nothing is written.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.data.voc import DatasetError, index_dataset, read_ids, resolve_mask_dir

DEFAULT_TRAIN_LIST = "ImageSets/Segmentation/train_aug.txt"
DEFAULT_VAL_LIST = "ImageSets/Segmentation/val.txt"


def prepare(
    root: Path, train_list: Path, val_list: Path, mask_dir: str = "auto", images: bool = True, workers: int = 0
) -> dict:
    """Build the prepare-data document (see the module docstring) without writing it.

    Raises:
        DatasetError: a list is missing (names the list, and the root when it does not exist or
            holds the list one folder down), empty or has duplicates, an id is in both lists, or
            any pair is bad.
    """
    root = Path(root).resolve()
    lists = {
        name: path if path.is_absolute() else root / path
        for name, path in (("train", Path(train_list)), ("val", Path(val_list)))
    }
    for name, path in lists.items():
        if not path.is_file():
            raise DatasetError(
                f"{path}: {name} id list not found{_root_hint(root, path)}. Point dataset.root (and "
                f"dataset.{name}_list) at a VOC-layout folder, or fetch VOC 2012 + SBD with "
                "`snakemake --cores 2 download`"
            )
    splits = {name: read_ids(path) for name, path in lists.items()}
    for name, path in lists.items():
        if not splits[name]:
            raise DatasetError(
                f"{path}: {name} id list holds no ids; expected one image id per line (dataset.{name}_list)"
            )
    both = sorted(set(splits["train"]) & set(splits["val"]))
    if both:
        shown = ", ".join(repr(i) for i in both[:5]) + (", ..." if len(both) > 5 else "")
        raise DatasetError(
            f"id {shown} listed in both {lists['train']} and {lists['val']} ({len(both)} in all); "
            "expected disjoint train and val lists"
        )
    masks = resolve_mask_dir(root, mask_dir)
    index = index_dataset(root, splits["train"] + splits["val"], masks, images=images, workers=workers)
    return {"root": str(root), "mask_dir": str(masks), "images": images, "splits": splits, "index": index}


def _root_hint(root: Path, missing: Path) -> str:
    """Why an id list under ``root`` may be missing, for the message: the root does not exist, or
    the list is under a VOC folder one or two levels down (``root`` set to ``VOCdevkit`` or its
    parent instead of ``VOCdevkit/VOC2012``); empty when neither."""
    if not root.is_dir():
        return f" (dataset.root {root} does not exist)"
    try:
        relative = missing.relative_to(root)
    except ValueError:  # an absolute list elsewhere
        return ""
    for nested in (root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (nested / relative).is_file():
            return f" (it is under {nested}: set dataset.root: {nested})"
    return ""


def summary(doc: dict) -> str:
    """One line: images per split and, per class, images containing it (train/val)."""
    counts = {name: Counter(c for i in ids for c in doc["index"][i]["classes"]) for name, ids in doc["splits"].items()}
    classes = sorted(set(counts["train"]) | set(counts["val"]))
    per_class = " ".join(f"{c}:{counts['train'][c]}/{counts['val'][c]}" for c in classes)
    return (
        f"prepare-data: train {len(doc['splits']['train'])} images, val {len(doc['splits']['val'])} "
        f"images; images per class (train/val): {per_class}"
    )
