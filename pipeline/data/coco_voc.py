"""COCO-to-VOC as one dataset of the pipeline: COCO and VOC label maps assembled into one VOC-layout
root in the paper's class numbering, its prepare-data document, and a generated fixture of both.

The scenario (WILSON Sec. 4.1 and Table 3; FMWISS Sec. 4.1): step 0 learns background and the 60
COCO classes without a VOC counterpart, with pixel labels, on the COCO train2017 images that hold
no VOC-class pixel ("removing all the images containing at least one pixel of the latter"); step 1
learns the 20 VOC classes from the VOC ``train_aug`` images (image-level labels for the weak
methods); every step is evaluated on COCO val2017 (classes 1-60 / 61-80 / all) and VOC val (the 20
VOC classes, 61-80).

Class ids are COCO category ids in the files and in the COCO index (:mod:`pipeline.data.coco`);
the DAG trains in the paper's numbering 1..80 (:data:`pipeline.data.coco_classes.PAPER_ORDER`,
task table ``coco80`` of :mod:`pipeline.data.tasks`): class i is the model's channel i, which is
the authors' channel order (their ``tasks['coco-voc']`` order), so every method, the evaluation
and the report work on it as on VOC. :func:`assemble` writes, once and resumably::

    <out>/JPEGImages/<id>.jpg                 symbolic links to the COCO and VOC images
    <out>/SegmentationClassAug/<id>.png       label maps in the paper's numbering: 0 background,
                                              1..60 the non-VOC COCO classes, 61..80 the VOC
                                              classes, 255 void (8-bit grey PNG)
    <out>/SegmentationClassAug/label_space.json   {"num_classes": 80, ...}: read by
                                              pipeline.data.voc.load_mask, so every reader of
                                              the folder accepts 0..80
    <out>/ImageSets/Segmentation/train.txt    COCO step-0 pool (no VOC pixel) + VOC train_aug
    <out>/ImageSets/Segmentation/val.txt      COCO val2017 (the default evaluation)
    <out>/ImageSets/Segmentation/val_voc.txt  VOC val (the second evaluation)
    <out>/ASSEMBLY.json                       marker: assembly version, label table digest

Step 1 draws from VOC only because the COCO images of the training list hold no VOC class: the
protocol filters of :func:`pipeline.data.tasks.filter_ids` then keep the COCO images at step 0 and
the VOC images at step 1, and ``joint`` trains at step 1 on both (the authors' data). Every map and
link is written under a temporary name and renamed; an existing one is kept, so a killed run
resumes. Bad input raises :class:`pipeline.data.voc.DatasetError` naming the id and the file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data import coco
from pipeline.data.coco_classes import PAPER_ORDER, coco_to_paper_lut, voc_to_paper_lut
from pipeline.data.parallel import index_in_order
from pipeline.data.synthetic import generate
from pipeline.data.voc import (
    IMAGE_DIR,
    LABEL_SPACE_FILE,
    DatasetError,
    _image_size,
    load_mask,
    read_ids,
    resolve_mask_dir,
)
from pipeline.io import atomic_path, read_json, write_json, write_text

#: The task table the assembled label maps are numbered for (:mod:`pipeline.data.tasks`).
TASK_TABLE = "coco80"
NUM_CLASSES = len(PAPER_ORDER)  # 80
MASK_DIR = "SegmentationClassAug"
LIST_DIR = "ImageSets/Segmentation"
#: The id lists of the assembled root, relative to it (prepare-data split name -> file).
LISTS: dict[str, str] = {
    "train": f"{LIST_DIR}/train.txt",
    "val": f"{LIST_DIR}/val.txt",
    "val_voc": f"{LIST_DIR}/val_voc.txt",
}
MARKER = "ASSEMBLY.json"
#: Version of :func:`assemble`'s output (label rule, layout); a root of another version is refused.
ASSEMBLY_VERSION = 1
SOURCES = ("coco", "voc")

_COCO_LUT = coco_to_paper_lut()
_VOC_LUT = voc_to_paper_lut()


def lut_digest() -> str:
    """sha256 of the two lookup tables (COCO ids -> paper numbering, VOC -> paper numbering):
    recorded in the marker, so a changed class table never mixes with maps written by the old one."""
    return hashlib.sha256(_COCO_LUT.tobytes() + _VOC_LUT.tobytes()).hexdigest()


def label_space() -> dict:
    """The ``label_space.json`` of the assembled mask folder."""
    return {
        "num_classes": NUM_CLASSES,
        "task_table": TASK_TABLE,
        "numbering": "paper 1..80: class i is COCO id PAPER_ORDER[i - 1] (pipeline.data.coco_classes)",
        "lut_sha256": lut_digest(),
    }


def _classes(labels: np.ndarray) -> list[int]:
    counts = np.bincount(labels.ravel(), minlength=256)
    return [int(c) for c in np.flatnonzero(counts[1 : NUM_CLASSES + 1]) + 1]


def _link(target: Path, path: Path) -> None:
    """A symbolic link ``path`` -> ``target`` (absolute), made under a temporary name and renamed."""
    if path.is_symlink() or path.exists():
        return
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _assemble_one(
    item: tuple[str, str, str],
    coco_roots: dict[str, Path],
    coco_labels: Path,
    voc_root: Path,
    voc_masks: Path,
    out: Path,
    images: bool,
) -> dict:
    """Write the paper-numbered map and the image link of one id; return its index entry."""
    image_id, source, split = item
    if source == "coco":
        src_mask = coco.label_dir(coco_roots[split], split, coco_labels) / f"{image_id}.png"
        src_image = coco.image_path(coco_roots[split], split, image_id)
        labels = _COCO_LUT[coco.load_coco_label(src_mask, image_id)]
    else:
        src_mask = voc_masks / f"{image_id}.png"
        src_image = voc_root / IMAGE_DIR / f"{image_id}.jpg"
        labels = _VOC_LUT[load_mask(src_mask, 20, image_id)]
    height, width = labels.shape
    if images:
        size = _image_size(src_image, image_id)
        if size != (height, width):
            raise DatasetError(
                f"id {image_id!r}: image {src_image} is {size[1]}x{size[0]} (WxH) but label map {src_mask} is "
                f"{width}x{height}; expected the same size"
            )
    dst = out / MASK_DIR / f"{image_id}.png"
    if not dst.exists():  # complete: written by an atomic rename
        with atomic_path(dst) as tmp:
            Image.fromarray(np.ascontiguousarray(labels)).save(tmp, format="PNG")
    if src_image.exists():
        _link(src_image.resolve(), out / IMAGE_DIR / f"{image_id}.jpg")
    elif images:
        raise DatasetError(f"id {image_id!r}, file {src_image}: image not found")
    return {"id": image_id, "height": int(height), "width": int(width), "classes": _classes(labels), "source": source}


def _check_marker(out: Path, sources: dict) -> None:
    marker = out / MARKER
    expected = {"version": ASSEMBLY_VERSION, "lut_sha256": lut_digest()}
    if marker.exists():
        found = read_json(marker)
        stored = {k: found.get(k) for k in expected} if isinstance(found, dict) else None
        if stored != expected:
            raise DatasetError(
                f"{marker}: assembled by version/label table {stored}, this is {expected}; delete {out} to "
                "assemble again"
            )
        return
    write_json(marker, {**expected, "sources": sources})


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    return dup


def assemble(
    out: str | os.PathLike,
    coco_root: str | os.PathLike,
    coco_index: Mapping[str, Mapping[str, dict]],
    voc_root: str | os.PathLike,
    voc_train: Sequence[str],
    voc_val: Sequence[str],
    coco_label_root: str | os.PathLike | None = None,
    voc_mask_dir: str = "auto",
    images: bool = True,
    workers: int = 0,
    progress: bool = True,
    coco_val_root: str | os.PathLike | None = None,
) -> dict:
    """Assemble the COCO-to-VOC root (module docstring) and return its prepare-data document.

    Args:
        out: the assembled root (created).
        coco_root: COCO root (images ``<root>/{train,val}2017/<id>.jpg``).
        coco_index: ``{"train": index, "val": index}``, the COCO-id class-presence indices of
            :func:`pipeline.data.coco.index_coco`; the step-0 pool is
            :func:`pipeline.data.coco.voc_pixel_free` of the train index, the COCO evaluation
            every val id.
        voc_root: VOC-layout root (VOC 2012 + SBD); ``voc_train``/``voc_val``: its ``train_aug``
            and ``val`` ids; ``voc_mask_dir``: as :func:`pipeline.data.voc.resolve_mask_dir`.
        coco_label_root: where the converted COCO-id maps are (:func:`pipeline.data.coco.label_dir`).
        images: check that every image exists and has its map's size (else only link those there).
        workers: 0 in this process, >0 a ``multiprocessing`` pool.
        progress: tqdm bar (stderr).
        coco_val_root: the COCO root of val2017 when it is not ``coco_root`` (e.g. the real
            images of ``../shared/coco-mini`` beside a generated train2017).
    Returns:
        ``{"root", "mask_dir", "images", "task_table": "coco80", "splits": {"train", "val",
        "val_voc"}, "index": {id: {"height", "width", "classes" (paper numbering), "source"}},
        "sources": {...}, "counts": {...}}`` (what :mod:`pipeline.data.prepare` writes, plus the
        second evaluation set and the sources).
    Raises:
        DatasetError: an empty source list, an id in two sources or twice in one, a COCO index
            without ``train``/``val``, a marker of another assembly version, or the first bad file.
    """
    out = Path(out).resolve()
    coco_root, voc_root = Path(coco_root).resolve(), Path(voc_root).resolve()
    coco_roots = {"train": coco_root, "val": Path(coco_val_root).resolve() if coco_val_root else coco_root}
    coco_labels = Path(coco_label_root).resolve() if coco_label_root is not None else None
    for split in ("train", "val"):
        if split not in coco_index:
            raise DatasetError(f"COCO index: no {split!r} split; expected the indices of train2017 and val2017")
    step0 = coco.voc_pixel_free(coco_index["train"])
    coco_val = list(coco_index["val"])
    groups = {
        "COCO train2017 without a VOC pixel": step0,
        "COCO val2017": coco_val,
        "VOC train_aug": list(voc_train),
        "VOC val": list(voc_val),
    }
    for what, ids in groups.items():
        if not ids:
            raise DatasetError(f"COCO-to-VOC: {what} holds no image; expected at least one (check the sources)")
    items = (
        [(i, "coco", "train") for i in step0]
        + [(i, "coco", "val") for i in coco_val]
        + [(i, "voc", "train") for i in voc_train]
        + [(i, "voc", "val") for i in voc_val]
    )
    dup = _duplicates([i for i, _, _ in items])
    if dup:
        raise DatasetError(
            f"COCO-to-VOC: id(s) {dup[:5]} appear in two sources or twice in one ({len(dup)} in all); expected "
            "unique ids (COCO's 12-digit stems and VOC's <year>_<n> never collide)"
        )
    voc_masks = resolve_mask_dir(voc_root, voc_mask_dir)
    sources = {
        "coco": {
            "root_train": str(coco_roots["train"]),
            "root_val": str(coco_roots["val"]),
            "label_dir_train": str(coco.label_dir(coco_roots["train"], "train", coco_labels)),
            "label_dir_val": str(coco.label_dir(coco_roots["val"], "val", coco_labels)),
        },
        "voc": {"root": str(voc_root), "mask_dir": str(voc_masks)},
    }
    _check_marker(out, sources)
    (out / MASK_DIR).mkdir(parents=True, exist_ok=True)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    write_json(out / MASK_DIR / LABEL_SPACE_FILE, label_space())
    one = functools.partial(
        _assemble_one,
        coco_roots=coco_roots,
        coco_labels=coco_labels,
        voc_root=voc_root,
        voc_masks=voc_masks,
        out=out,
        images=images,
    )
    index = index_in_order(one, items, workers, "assemble coco-voc", progress)
    splits = {"train": step0 + list(voc_train), "val": coco_val, "val_voc": list(voc_val)}
    for name, ids in splits.items():
        write_text(out / LISTS[name], "".join(f"{i}\n" for i in ids))
    return {
        "root": str(out),
        "mask_dir": str(out / MASK_DIR),
        "images": bool(images),
        "task_table": TASK_TABLE,
        "splits": splits,
        "index": index,
        "sources": sources,
        "counts": {
            "coco_train_indexed": len(coco_index["train"]),
            "coco_train_voc_free": len(step0),
            "coco_val": len(coco_val),
            "voc_train": len(voc_train),
            "voc_val": len(voc_val),
        },
    }


def summary(doc: Mapping) -> str:
    """One line: the images of each source and split, and how many hold a class of each step."""
    c = doc["counts"]
    index = doc["index"]
    step0 = sum(1 for i in doc["splits"]["train"] if any(1 <= k <= 60 for k in index[i]["classes"]))
    step1 = sum(1 for i in doc["splits"]["train"] if any(k > 60 for k in index[i]["classes"]))
    return (
        f"coco-voc: COCO train {c['coco_train_indexed']} indexed, {c['coco_train_voc_free']} without a VOC pixel "
        f"({step0} of the training list hold a class 1-60), VOC train_aug {c['voc_train']} ({step1} hold a class "
        f"61-80); evaluation: COCO val {c['coco_val']}, VOC val {c['voc_val']}"
    )


# --------------------------------------------------------------------------------------------
# generated fixture: a COCO-layout part and a VOC-layout part


def write_fixture(
    coco_root: str | os.PathLike,
    voc_root: str | os.PathLike,
    n_coco_train: int = 120,
    n_coco_val: int = 24,
    n_voc_train: int = 48,
    n_voc_val: int = 24,
    coco_size: tuple[int, int] = (48, 64),
    voc_size: int = 48,
    seed: int = 0,
    workers: int = 0,
) -> dict:
    """A small COCO-to-VOC dataset: a COCO 2017 + COCO-Stuff layout under ``coco_root``
    (:func:`pipeline.data.coco.write_coco_fixture`: images, stuffthingmaps, instances JSON; every
    second image without a VOC class) and a VOC layout under ``voc_root``
    (:func:`pipeline.data.synthetic.generate`: ``train_aug.txt``, ``val.txt``, VOC masks).

    Returns:
        ``{"coco": {"train2017": [ids], "val2017": [ids]}, "voc": {"train": n, "val": n}}``
        (also written to ``<coco_root>/FIXTURE.json``, last).
    Raises:
        ValueError: counts below 1 (or the VOC generator's bounds: size >= 32).
    """
    if min(n_coco_train, n_coco_val, n_voc_train, n_voc_val) < 1:
        raise ValueError("write_fixture: every count must be >= 1")
    ids = coco.write_coco_fixture(
        coco_root,
        n_coco_train,
        n_coco_val,
        tuple(coco_size),
        seed,
        images=True,
        instances=True,
        voc_free_every=2,
        workers=workers,
    )
    generate(voc_root, n_voc_train, n_voc_val, voc_size, seed, workers, n_train_inst=0, n_val_inst=0)
    result = {"coco": ids, "voc": {"train": n_voc_train, "val": n_voc_val}}
    write_json(Path(coco_root) / "FIXTURE.json", result)
    return result


def read_voc_lists(voc_root: str | os.PathLike, train_list: str, val_list: str) -> tuple[list[str], list[str]]:
    """The VOC ids of step 1 and of the VOC evaluation (lists relative to ``voc_root`` unless absolute).

    Raises:
        DatasetError: a list is missing (names it and how to get VOC).
    """
    out = []
    for name, rel in (("train", train_list), ("val", val_list)):
        path = Path(rel) if Path(rel).is_absolute() else Path(voc_root) / rel
        if not path.is_file():
            raise DatasetError(
                f"{path}: VOC {name} id list not found; point dataset.root at VOC 2012 + SBD (VOC layout) or "
                "run `snakemake --cores 2 download`"
            )
        out.append(read_ids(path))
    return out[0], out[1]


__all__ = [
    "ASSEMBLY_VERSION",
    "LISTS",
    "MASK_DIR",
    "NUM_CLASSES",
    "TASK_TABLE",
    "assemble",
    "label_space",
    "lut_digest",
    "read_voc_lists",
    "summary",
    "write_fixture",
]
