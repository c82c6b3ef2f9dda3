"""COCO 2017 + COCO-Stuff on disk: images, stuffthingmaps, their conversion to COCO-id label maps,
checks, the class-presence index, instance annotations, datasets, and a generated fixture.

Layout of a COCO root (what the official zips unpack to; ``<id>`` is the 12-digit file stem)::

    <root>/train2017/<id>.jpg, <root>/val2017/<id>.jpg                  images (118,287 / 5,000)
    <root>/stuffthingmaps_trainval2017/{train2017,val2017}/<id>.png     COCO-Stuff 164k label maps
    <root>/annotations/instances_{train2017,val2017}.json               COCO instances (optional)

COCO-Stuff's ``stuffthingmaps`` are 8-bit single-channel PNGs holding the COCO-Stuff class index
k: things 0..90 (COCO category id k + 1), stuff 91..181, 255 unlabeled. The pipeline trains on
COCO-id label maps (WILSON Sec. 4.1 "the annotation of [COCO-Stuff]"; the authors' conversion
script): thing k -> COCO id k + 1, stuff -> 0 background, 255 -> 255 void; the 11 unused thing ids
(:data:`pipeline.data.coco_classes.COCO_UNUSED_IDS`, never present in the real maps) -> 255.
:func:`convert_stuffthingmaps` writes them, resumably and atomically, to
``<label_root>/{train2017,val2017}/<id>.png`` (default ``<root>/labels_coco``; any writable folder
when the dataset is read-only) with a ``converter.json`` marker naming :data:`CONVERTER_VERSION`.

Every bad input raises :class:`pipeline.data.voc.DatasetError`, whose message names the image id
and the file (and the JSON key for an annotation file) and says what was expected. Samples are the
VOC ones: ``{"id": str, "image": (H, W, 3) uint8 RGB, "mask": (H, W) uint8 COCO ids}``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from tqdm import tqdm

from pipeline.data.classes import BACKGROUND, VOID
from pipeline.data.coco_classes import (
    COCO_CATEGORIES,
    COCO_IDS,
    COCO_NON_VOC_IDS,
    VOC_COCO_IDS,
    voc_to_coco_lut,
)
from pipeline.data.parallel import index_in_order
from pipeline.data.voc import DatasetError, VOCSegmentation, _decode, _image_size, _open, load_image
from pipeline.io import atomic_path, read_json, write_json, write_text

#: Split name -> folder name of COCO 2017.
SPLITS: dict[str, str] = {"train": "train2017", "val": "val2017"}
STUFFTHING_DIR = "stuffthingmaps_trainval2017"
LABEL_DIR = "labels_coco"
ANNOTATION_DIR = "annotations"
MARKER = "converter.json"

#: Version of the stuffthingmap -> COCO-id conversion (:func:`stuffthing_lut`); recorded in each
#: converted folder's marker and in every index cache, so a changed rule never mixes with old files.
CONVERTER_VERSION = 1
#: Version of the index cache's content (:func:`index_coco`).
INDEX_VERSION = 1

THING_LAST = 90  # COCO-Stuff indices 0..90 are things (COCO id = index + 1), 91..181 stuff
STUFF_LAST = 181


# --------------------------------------------------------------------------------------------
# paths and ids


def split_folder(split: str) -> str:
    """COCO 2017 folder of a split: ``"train"`` or ``"train2017"`` -> ``"train2017"`` (same for val).

    Raises:
        ValueError: an unknown split.
    """
    if split in SPLITS:
        return SPLITS[split]
    if split in SPLITS.values():
        return split
    raise ValueError(f"split {split!r}: expected one of {sorted(SPLITS)} (or {sorted(SPLITS.values())})")


def image_path(root: str | os.PathLike, split: str, image_id: str) -> Path:
    """``<root>/<split>2017/<id>.jpg``."""
    return Path(root) / split_folder(split) / f"{image_id}.jpg"


def stuffthing_path(root: str | os.PathLike, split: str, image_id: str) -> Path:
    """``<root>/stuffthingmaps_trainval2017/<split>2017/<id>.png`` (COCO-Stuff's label map)."""
    return Path(root) / STUFFTHING_DIR / split_folder(split) / f"{image_id}.png"


def label_dir(root: str | os.PathLike, split: str, label_root: str | os.PathLike | None = None) -> Path:
    """Folder of the converted COCO-id label maps: ``<label_root or root/labels_coco>/<split>2017``."""
    base = Path(label_root) if label_root is not None else Path(root) / LABEL_DIR
    return base / split_folder(split)


def coco_id_of(image_id: str | int) -> int:
    """The COCO image id (int) of a file stem (``"000000000139"`` -> 139) or of an int.

    Raises:
        DatasetError: the stem is not a decimal number.
    """
    if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
        return int(image_id)
    if not isinstance(image_id, str) or not image_id.isdigit():
        raise DatasetError(f"id {image_id!r}: not a COCO image id (expected a 12-digit file stem)")
    return int(image_id)


def file_stem(coco_image_id: int) -> str:
    """The 12-digit file stem of a COCO image id (139 -> ``"000000000139"``)."""
    return f"{int(coco_image_id):012d}"


def list_ids(folder: str | os.PathLike, suffix: str = ".png") -> list[str]:
    """Sorted ids (file stems) of the files ``*<suffix>`` in ``folder``; temporary files of an
    interrupted atomic write (``<stem>.tmp-<pid><suffix>``) are skipped.

    Raises:
        DatasetError: ``folder`` does not exist (names it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found; expected a folder of <id>{suffix} files")
    return sorted(
        entry.name[: -len(suffix)]
        for entry in os.scandir(folder)
        if entry.name.endswith(suffix) and ".tmp-" not in entry.name and entry.is_file()
    )


# --------------------------------------------------------------------------------------------
# label maps: COCO-Stuff stuffthingmaps and COCO-id maps


def stuffthing_lut() -> np.ndarray:
    """Lookup table COCO-Stuff stuffthingmap -> COCO-id label map: ``labels = lut[stuffthing]``.

    Returns:
        (256,) uint8 array: thing k (0..90) -> COCO id k + 1 if that id is in use, else 255 (the
        11 unused ids are ignored); stuff 91..181 -> 0 background; 255 unlabeled -> 255; every
        other value (182..254, rejected by :func:`load_stuffthingmap`) -> 255.
    """
    lut = np.full(256, VOID, dtype=np.uint8)
    lut[THING_LAST + 1 : STUFF_LAST + 1] = BACKGROUND
    for coco_id in COCO_IDS:
        lut[coco_id - 1] = coco_id
    return lut


_STUFFTHING_LUT = stuffthing_lut()
_COCO_VALUES = np.zeros(256, dtype=bool)
_COCO_VALUES[[BACKGROUND, *COCO_IDS, VOID]] = True
_STUFFTHING_VALUES = np.zeros(256, dtype=bool)
_STUFFTHING_VALUES[: STUFF_LAST + 1] = True
_STUFFTHING_VALUES[VOID] = True


def _where(path: str | os.PathLike, image_id: str | None) -> str:
    return f"{path}" if image_id is None else f"id {image_id!r}, file {path}"


def _read_index_png(path: Path, image_id: str | None, what: str) -> Image.Image:
    """Open and decode a single-channel index PNG (mode L, or P: the indices), or raise."""
    image = _open(path, image_id, what)
    if image.mode not in ("L", "P"):
        image.close()
        raise DatasetError(
            f"{_where(path, image_id)}: {what} has PIL mode {image.mode}; expected an 8-bit "
            "single-channel PNG (mode L, or P read as indices)"
        )
    _decode(image, path, image_id, what)
    return image


def _check_values(counts: np.ndarray, allowed: np.ndarray, path: Path, image_id: str | None, expected: str) -> None:
    bad = np.flatnonzero((counts > 0) & ~allowed)
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DatasetError(f"{_where(path, image_id)}: label map has invalid value(s) {shown}; expected {expected}")


_STUFFTHING_EXPECTED = f"COCO-Stuff indices 0..{STUFF_LAST} or {VOID}"
_COCO_EXPECTED = f"0, a COCO category id in use ({COCO_IDS[0]}..{COCO_IDS[-1]}, not the unused ones) or {VOID}"


def load_stuffthingmap(path: str | os.PathLike, image_id: str | None = None) -> np.ndarray:
    """Load a COCO-Stuff ``stuffthingmaps`` PNG.

    Args:
        path: the PNG (8-bit, single channel).
        image_id: named in errors.
    Returns:
        (H, W) uint8 array (writable) of COCO-Stuff indices: 0..90 things, 91..181 stuff, 255.
    Raises:
        DatasetError: missing, unreadable, truncated or not single-channel file, or a value in
            182..254 (names the values).
    """
    path = Path(path)
    with _read_index_png(path, image_id, "stuffthingmap") as image:
        array = np.array(image, dtype=np.uint8)
    _check_values(np.bincount(array.ravel(), minlength=256), _STUFFTHING_VALUES, path, image_id, _STUFFTHING_EXPECTED)
    return array


def stuffthing_to_coco(stuffthing: np.ndarray) -> np.ndarray:
    """Convert a stuffthingmap to a COCO-id label map (:func:`stuffthing_lut`).

    Args:
        stuffthing: (H, W) uint8 COCO-Stuff indices.
    Returns:
        (H, W) uint8: 0 background (stuff), COCO ids 1..90 (things in use), 255 void.
    """
    return _STUFFTHING_LUT[np.asarray(stuffthing, dtype=np.uint8)]


def check_coco_label_values(mask: np.ndarray, path: str | os.PathLike, image_id: str | None = None) -> np.ndarray:
    """Check that a COCO-id label map holds only 0, COCO ids in use and 255.

    Args:
        mask: (H, W) uint8; ``path`` and ``image_id`` are named in the error.
    Returns:
        (256,) int64 histogram of the values.
    Raises:
        DatasetError: naming the offending values (an unused id such as 12, or above 90).
    """
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)
    _check_values(counts, _COCO_VALUES, Path(path), image_id, _COCO_EXPECTED)
    return counts


def load_coco_label(path: str | os.PathLike, image_id: str | None = None) -> np.ndarray:
    """Load a converted COCO-id label map (:func:`convert_stuffthingmap`'s output).

    Returns:
        (H, W) uint8 array (writable): 0 background, COCO ids in use, 255 void.
    Raises:
        DatasetError: missing, unreadable, truncated or not single-channel file, or a value that
            is not 0, a COCO id in use or 255.
    """
    path = Path(path)
    with _read_index_png(path, image_id, "COCO label map") as image:
        mask = np.array(image, dtype=np.uint8)
    check_coco_label_values(mask, path, image_id)
    return mask


def _classes_of(counts: np.ndarray) -> list[int]:
    """Object classes (COCO ids) present in a histogram of a COCO-id label map."""
    return [int(c) for c in np.flatnonzero(counts[1:VOID]) + 1]


def _save_label(mask: np.ndarray, path: Path) -> None:
    """Write an (H, W) uint8 map as an 8-bit grey PNG, atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(tmp, format="PNG")


def convert_stuffthingmap(src: str | os.PathLike, dst: str | os.PathLike, image_id: str | None = None) -> dict:
    """Convert one stuffthingmap PNG to a COCO-id label map PNG (written atomically).

    Args:
        src: COCO-Stuff PNG (:func:`load_stuffthingmap`).
        dst: output PNG (8-bit grey); its folder is created.
        image_id: named in errors.
    Returns:
        ``{"id", "height", "width", "classes"}``: the size and the COCO ids present (sorted; 0 and
        255 excluded).
    Raises:
        DatasetError: a bad source file (:func:`load_stuffthingmap`).
    """
    labels = stuffthing_to_coco(load_stuffthingmap(src, image_id))
    _save_label(labels, Path(dst))
    counts = np.bincount(labels.ravel(), minlength=256)
    return {
        "id": image_id,
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "classes": _classes_of(counts),
    }


def _convert_one(image_id: str, src_dir: Path, dst_dir: Path) -> bool:
    """Convert ``image_id`` unless its output exists (True if converted)."""
    dst = dst_dir / f"{image_id}.png"
    if dst.exists():  # complete: outputs appear only by an atomic rename
        return False
    convert_stuffthingmap(src_dir / f"{image_id}.png", dst, image_id)
    return True


def _marker(src_dir: Path) -> dict:
    return {"converter": "stuffthingmap-to-coco-id", "converter_version": CONVERTER_VERSION, "source": str(src_dir)}


def convert_stuffthingmaps(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    ids: Sequence[str] | None = None,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Convert a folder of stuffthingmaps to COCO-id label maps; resumable and atomic.

    Outputs that exist are skipped (each is written to a temporary name and renamed, so an
    existing ``<id>.png`` is complete); a killed run resumes where it stopped. ``dst_dir`` holds a
    ``converter.json`` marker with :data:`CONVERTER_VERSION`; a folder written by another version
    is refused rather than mixed.

    Args:
        src_dir: folder of COCO-Stuff ``<id>.png`` (e.g. ``<root>/stuffthingmaps_trainval2017/val2017``).
        dst_dir: output folder (created), e.g. :func:`label_dir`.
        ids: ids to convert (default: every ``<id>.png`` of ``src_dir``).
        workers: 0 converts in this process; >0 uses a ``multiprocessing`` pool of that many.
        progress: show a tqdm bar (stderr).
    Returns:
        ``{"total": n ids, "converted": n written now, "skipped": n already there}``.
    Raises:
        DatasetError: ``src_dir`` missing, a marker of another converter version (names the
            marker, both versions and the remedy), or the first bad source map.
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.is_dir():
        raise DatasetError(f"{src_dir}: stuffthingmaps folder not found; expected COCO-Stuff's <id>.png maps there")
    ids = list_ids(src_dir) if ids is None else list(ids)
    marker = dst_dir / MARKER
    if marker.exists():
        found = read_json(marker)
        version = found.get("converter_version") if isinstance(found, dict) else None
        if version != CONVERTER_VERSION:
            raise DatasetError(
                f"{marker}: label maps converted by converter version {version!r}, this is version "
                f"{CONVERTER_VERSION}; delete {dst_dir} to convert again"
            )
    else:
        write_json(marker, _marker(src_dir))
    convert = functools.partial(_convert_one, src_dir=src_dir, dst_dir=dst_dir)
    converted = 0
    bar = tqdm(total=len(ids), desc=f"convert {src_dir.name}", unit="img", disable=not progress, mininterval=1.0)
    with bar, contextlib.ExitStack() as stack:
        if workers > 0 and len(ids) > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            results = pool.imap_unordered(convert, ids, chunksize=max(1, min(64, len(ids) // (8 * workers))))
        else:
            results = map(convert, ids)
        for done in results:
            converted += bool(done)
            bar.update()
    return {"total": len(ids), "converted": converted, "skipped": len(ids) - converted}


# --------------------------------------------------------------------------------------------
# checks and the class-presence index


def label_entry(path: str | os.PathLike, image_id: str) -> dict:
    """Size and class presence of one COCO-id label map (PIL's histogram; values checked).

    Returns:
        ``{"id", "height", "width", "classes"}`` (classes: sorted COCO ids, 0 and 255 excluded).
    Raises:
        DatasetError: bad file or values (:func:`load_coco_label`).
    """
    path = Path(path)
    with _read_index_png(path, image_id, "COCO label map") as image:
        width, height = image.size
        counts = np.asarray(image.histogram()[:256], dtype=np.int64)  # mode L/P: 256 bins, in C
    _check_values(counts, _COCO_VALUES, path, image_id, _COCO_EXPECTED)
    return {"id": image_id, "height": int(height), "width": int(width), "classes": _classes_of(counts)}


def check_coco_pair(
    root: str | os.PathLike,
    split: str,
    image_id: str,
    label_root: str | os.PathLike | None = None,
    images: bool = True,
) -> dict:
    """Check one image / COCO-id label map pair and report its size and classes.

    Args:
        root: COCO root (images in ``<root>/<split>2017/<id>.jpg``).
        split: ``"train"``/``"val"`` (or ``"train2017"``/``"val2017"``).
        image_id: 12-digit file stem.
        label_root: where the converted maps are (:func:`label_dir`).
        images: if False only the label map is read.
    Returns:
        ``{"id", "height", "width", "classes"}`` as :func:`label_entry`.
    Raises:
        DatasetError: a missing/corrupt file, bad values, or image and map sizes that differ
            (names both files and sizes).
    """
    label_path = label_dir(root, split, label_root) / f"{image_id}.png"
    entry = label_entry(label_path, image_id)
    if images:
        path = image_path(root, split, image_id)
        size = _image_size(path, image_id)
        if size != (entry["height"], entry["width"]):
            raise DatasetError(
                f"id {image_id!r}: image {path} is {size[1]}x{size[0]} (WxH) but label map {label_path} is "
                f"{entry['width']}x{entry['height']}; expected the same size"
            )
    return entry


def _index_one(image_id: str, root: Path, split: str, label_root: Path | None, images: bool) -> dict:
    return check_coco_pair(root, split, image_id, label_root, images)


def files_digest(paths: Iterable[Path], image_ids: Iterable[str]) -> str:
    """sha256 of the sorted ``name<TAB>size`` lines of some files (a cheap fingerprint: a stat each).

    Raises:
        DatasetError: a file is missing (names the id and the file).
    """
    lines = []
    for path, image_id in zip(paths, image_ids):
        try:
            lines.append(f"{path.name}\t{path.stat().st_size}\n")
        except FileNotFoundError as err:
            raise DatasetError(f"{_where(path, image_id)}: not found") from err
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def index_provenance(
    root: str | os.PathLike,
    split: str,
    ids: Sequence[str],
    label_root: str | os.PathLike | None = None,
    images: bool = False,
) -> dict:
    """What an index cache depends on: versions, split, folder, and a digest of the file list.

    Returns:
        ``{"kind", "converter_version", "index_version", "split", "label_dir", "images", "files",
        "files_sha256"}`` (the digest covers the label maps, and the images when ``images``).
    Raises:
        DatasetError: a listed file is missing.
    """
    folder = label_dir(root, split, label_root)
    paths = [folder / f"{i}.png" for i in ids]
    names = list(ids)
    if images:
        paths += [image_path(root, split, i) for i in ids]
        names += list(ids)
    return {
        "kind": "coco-class-presence",
        "converter_version": CONVERTER_VERSION,
        "index_version": INDEX_VERSION,
        "split": split_folder(split),
        "label_dir": str(folder.resolve()),
        "images": bool(images),
        "files": len(ids),
        "files_sha256": files_digest(paths, names),
    }


def index_coco(
    root: str | os.PathLike,
    split: str,
    ids: Sequence[str] | None = None,
    label_root: str | os.PathLike | None = None,
    images: bool = False,
    workers: int = 0,
    progress: bool = True,
    cache: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Class presence (and size) of every COCO-id label map of a split, checked; cached.

    Each map is read once (PIL histogram, values checked), in parallel with ``workers``. With
    ``cache``, the result is stored as JSON ``{"provenance": ..., "index": ...}``
    (:func:`index_provenance`: converter and index versions, split, folder, file-list digest); a
    cache whose provenance equals the current one is returned without reading a map, any other is
    recomputed and replaced.

    Args:
        root: COCO root; ``split``: "train"/"val"; ``label_root``: see :func:`label_dir`.
        ids: ids to index (default: every ``<id>.png`` of the label folder, sorted).
        images: also check that each image decodes and has the map's size.
        workers: 0 in this process; >0 a ``multiprocessing`` pool (chunked ``imap``, ``ids`` order).
        progress: tqdm bar (stderr).
        cache: JSON path of the cache (written atomically), or None.
    Returns:
        ``{id: {"height": int, "width": int, "classes": [COCO ids]}}`` in ``ids`` order.
    Raises:
        DatasetError: the label folder is missing, or the first bad file in ``ids`` order.
    """
    root = Path(root)
    folder = label_dir(root, split, label_root)
    ids = list_ids(folder) if ids is None else list(ids)
    provenance = None
    if cache is not None:
        provenance = index_provenance(root, split, ids, label_root, images)
        cache = Path(cache)
        if cache.is_file():
            try:
                stored = json.loads(cache.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                stored = None  # unreadable: rebuilt below
            if isinstance(stored, dict) and stored.get("provenance") == provenance:
                return {i: stored["index"][i] for i in ids}
    index_one = functools.partial(
        _index_one,
        root=root,
        split=split,
        label_root=Path(label_root) if label_root is not None else None,
        images=images,
    )
    index = index_in_order(index_one, ids, workers, f"index {folder.name}", progress)
    if cache is not None:
        text = json.dumps({"provenance": provenance, "index": index}, separators=(",", ":"))
        write_text(cache, text + "\n")
    return index


def voc_pixel_free(index: dict[str, object]) -> list[str]:
    """Ids whose label map holds no pixel of a VOC class (COCO ids), in index order: the images
    step 0 of COCO-to-VOC may use (WILSON Sec. 4.1, "removing all the images containing at least
    one pixel of the latter")."""
    voc = set(VOC_COCO_IDS)
    out = []
    for image_id, entry in index.items():
        classes = entry["classes"] if isinstance(entry, dict) else entry
        if not voc & set(classes):
            out.append(image_id)
    return out


# --------------------------------------------------------------------------------------------
# datasets


class COCOSegmentation(torch.utils.data.Dataset):
    """Images and COCO-id label maps of one COCO split.

    ``dataset[i]`` is ``{"id": str, "image": (H, W, 3) uint8 RGB, "mask": (H, W) uint8 COCO ids
    (0 background, 255 void)}``, passed through ``transform(sample)`` when given.

    Raises:
        DatasetError: the label folder is missing (at construction) or a bad pair (when read).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        ids: Sequence[str] | None = None,
        label_root: str | os.PathLike | None = None,
        transform: Callable[[dict], object] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split_folder(split)
        self.label_dir = label_dir(self.root, split, label_root)
        self.ids = list_ids(self.label_dir) if ids is None else list(ids)
        if not self.label_dir.is_dir():
            raise DatasetError(f"{self.label_dir}: COCO label folder not found (convert_stuffthingmaps writes it)")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        path = image_path(self.root, self.split, image_id)
        mask_path = self.label_dir / f"{image_id}.png"
        image = load_image(path, image_id)
        mask = load_coco_label(mask_path, image_id)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"id {image_id!r}: image {path} is {image.shape[1]}x{image.shape[0]} (WxH) but label map "
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}; expected the same size"
            )
        sample = {"id": image_id, "image": image, "mask": mask}
        return self.transform(sample) if self.transform is not None else sample


class _VOCMaskToCOCO:
    """Sample transform: relabel ``mask`` from VOC indices to COCO ids, then run ``inner``."""

    def __init__(self, inner: Callable[[dict], object] | None):
        self.inner = inner
        self.lut = voc_to_coco_lut()

    def __call__(self, sample: dict):
        sample = {**sample, "mask": self.lut[sample["mask"]]}
        return self.inner(sample) if self.inner is not None else sample


class VOCAsCOCO(VOCSegmentation):
    """A VOC-layout dataset read with COCO ids: COCO-to-VOC's step 1 (VOC train_aug, 10,582
    images) and its VOC evaluation (val, 1,449).

    Samples are :class:`pipeline.data.voc.VOCSegmentation`'s with ``mask`` relabelled by
    :func:`pipeline.data.coco_classes.voc_to_coco_lut` (VOC k -> COCO id, 0 and 255 unchanged)
    before ``transform``. Use :func:`pipeline.data.coco_classes.voc_index_as_coco` for its index.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ids: list[str],
        mask_dir: str = "auto",
        transform: Callable[[dict], object] | None = None,
    ) -> None:
        super().__init__(root, ids, mask_dir, transform=_VOCMaskToCOCO(transform))


# --------------------------------------------------------------------------------------------
# instance annotations (pycocotools)

CROWD_MODES = ("void", "ignore", "label")
ORDERS = ("annotation", "area")


class Instances:
    """A COCO ``instances_*.json`` read through ``pycocotools.coco.COCO`` (its stdout chatter
    silenced), checked, with errors naming the file, the image id and the key.

    Attributes:
        path: the JSON file; ``coco``: the ``pycocotools.coco.COCO`` object.
    Raises (constructor):
        DatasetError: missing or invalid JSON, a missing top-level key (``images``,
            ``annotations``, ``categories``), an annotation without ``image_id`` /
            ``category_id`` / ``segmentation``, an annotation of an unknown image, or a category
            id or name that is not COCO 2017's.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise DatasetError(f"{self.path}: instances file not found") from err
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{self.path}: cannot read instances JSON ({err})") from err
        if not isinstance(data, dict):
            raise DatasetError(f"{self.path}: expected a JSON object with images, annotations, categories")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(f"{self.path}: key {key!r} missing or not a list")
        for cat in data["categories"]:
            if COCO_CATEGORIES.get(cat.get("id")) != cat.get("name"):
                raise DatasetError(
                    f"{self.path}: categories entry {cat.get('id')!r} ({cat.get('name')!r}) is not a COCO 2017 "
                    "category (pipeline.data.coco_classes.COCO_CATEGORIES)"
                )
        image_ids = set()
        for n, img in enumerate(data["images"]):
            for key in ("id", "height", "width"):
                if key not in img:
                    raise DatasetError(f"{self.path}: images[{n}] has no key {key!r}")
            image_ids.add(img["id"])
        for n, ann in enumerate(data["annotations"]):
            for key in ("image_id", "category_id", "segmentation"):
                if key not in ann:
                    raise DatasetError(f"{self.path}: annotations[{n}] (id {ann.get('id')!r}) has no key {key!r}")
            if ann["image_id"] not in image_ids:
                raise DatasetError(
                    f"{self.path}: annotations[{n}] (id {ann.get('id')!r}): image_id {ann['image_id']!r} is not "
                    "in 'images'"
                )
            if ann["category_id"] not in COCO_CATEGORIES:
                raise DatasetError(
                    f"id {file_stem(ann['image_id'])!r}, file {self.path}: annotations[{n}] (id {ann.get('id')!r}) "
                    f"has category_id {ann['category_id']!r}; expected a COCO category id in use"
                )
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

    def image_ids(self) -> list[str]:
        """12-digit file stems of the images listed, sorted."""
        return sorted(file_stem(i) for i in self.coco.imgs)

    def _image(self, image_id: str | int) -> dict:
        number = coco_id_of(image_id)
        if number not in self.coco.imgs:
            raise DatasetError(f"id {file_stem(number)!r}, file {self.path}: image not in 'images'")
        return self.coco.imgs[number]

    def annotations(self, image_id: str | int) -> list[dict]:
        """The image's annotations, in file order (pycocotools' ``getAnnIds`` order)."""
        number = self._image(image_id)["id"]
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=number, iscrowd=None))

    def instance_masks(self, image_id: str | int) -> list[tuple[dict, np.ndarray]]:
        """``(annotation, (H, W) bool mask)`` per annotation (polygons and RLE via pycocotools).

        Raises:
            DatasetError: a segmentation pycocotools cannot decode (names the annotation id).
        """
        out = []
        for ann in self.annotations(image_id):
            try:
                with warnings.catch_warnings():  # pycocotools 2.0.11 under numpy 2: a harmless copy= notice
                    warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
                    mask = self.coco.annToMask(ann).astype(bool)
            except Exception as err:  # pycocotools raises bare TypeError/ValueError/IndexError
                raise DatasetError(
                    f"id {file_stem(ann['image_id'])!r}, file {self.path}: annotation {ann.get('id')!r} "
                    f"key 'segmentation' cannot be decoded ({err})"
                ) from err
            out.append((ann, mask))
        return out

    def label_map(self, image_id: str | int, crowd: str = "void", order: str = "annotation") -> np.ndarray:
        """Rasterise a COCO-id label map from the instance annotations of one image.

        Non-crowd instances are painted in ``order`` (later ones over earlier ones):
        ``"annotation"`` is the file order, as COCO-Stuff's ``cocoSegmentationToSegmentationMap``
        (cocostuffapi) paints them; ``"area"`` paints the largest first. Crowd regions
        (``iscrowd``) are, by ``crowd``: ``"void"`` 255 where no instance covers them (what the
        stuffthingmaps hold there), ``"ignore"`` left background, ``"label"`` their category.

        Args:
            image_id: file stem or COCO image id.
        Returns:
            (H, W) uint8: 0 background (incl. stuff), COCO ids, 255 crowd-only pixels ("void").
        Raises:
            DatasetError: unknown image, a segmentation that cannot be decoded.
            ValueError: unknown ``crowd`` or ``order``.
        """
        if crowd not in CROWD_MODES:
            raise ValueError(f"crowd={crowd!r}: expected one of {CROWD_MODES}")
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: expected one of {ORDERS}")
        info = self._image(image_id)
        labels = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        masks = self.instance_masks(image_id)
        for ann, mask in masks:
            if ann.get("iscrowd") and crowd != "ignore":
                labels[mask] = VOID if crowd == "void" else ann["category_id"]
        things = [(ann, mask) for ann, mask in masks if not ann.get("iscrowd")]
        if order == "area":
            things.sort(key=lambda item: -float(item[0].get("area", item[1].sum())))
        for ann, mask in things:
            labels[mask] = ann["category_id"]
        return labels


def thing_agreement(raster: np.ndarray, reference: np.ndarray) -> dict:
    """Agreement of a rasterised COCO-id map with a reference map (e.g. a converted stuffthingmap)
    on the thing pixels.

    Args:
        raster, reference: (H, W) uint8 COCO-id maps of one image.
    Returns:
        ``{"thing_pixels": reference thing pixels (ids 1..90), "agreement": fraction of them with
        the same id in ``raster``, "coverage": fraction of them that ``raster`` labels as a thing,
        "raster_thing_pixels", "raster_agreement": fraction of ``raster``'s thing pixels with the
        same id in ``reference``}`` (fractions are None over no pixel).
    Raises:
        ValueError: the shapes differ.
    """
    if raster.shape != reference.shape:
        raise ValueError(f"raster {raster.shape} and reference {reference.shape}: expected the same shape")
    ref_thing = (reference >= 1) & (reference < VOID)
    ras_thing = (raster >= 1) & (raster < VOID)
    same = raster == reference

    def frac(num: np.ndarray, den: np.ndarray) -> float | None:
        n = int(den.sum())
        return float(num[den].sum()) / n if n else None

    return {
        "thing_pixels": int(ref_thing.sum()),
        "agreement": frac(same, ref_thing),
        "coverage": frac(ras_thing, ref_thing),
        "raster_thing_pixels": int(ras_thing.sum()),
        "raster_agreement": frac(same, ras_thing),
    }


# --------------------------------------------------------------------------------------------
# generated fixture in the COCO layout

_STUFF_RANGE = (THING_LAST + 1, STUFF_LAST)  # COCO-Stuff stuff indices 91..181


def make_fixture_sample(seed: int, index: int, size: tuple[int, int], voc_free: bool) -> tuple[np.ndarray, list[dict]]:
    """One generated stuffthingmap and its objects (axis-aligned boxes), drawn from the generator
    seeded with ``(seed, index)``.

    The map has 2-4 vertical stuff bands (COCO-Stuff indices 91..181), sometimes a crowd box
    (255 where no object covers it) and 1-4 object boxes of COCO ids, painted in order (later
    over earlier); ``voc_free`` draws only non-VOC classes.

    Returns:
        ``(stuffthing (H, W) uint8, objects)`` with objects ``{"category_id", "box": (x0, y0, x1,
        y1) (pixels x0..x1-1, y0..y1-1), "iscrowd"}`` in painting order (the crowd box first).
    """
    height, width = size
    rng = np.random.default_rng([seed, index])
    stuffthing = np.empty((height, width), dtype=np.uint8)
    cuts = np.sort(rng.choice(np.arange(1, width), size=int(rng.integers(1, 4)), replace=False))
    for start, stop in zip([0, *cuts], [*cuts, width]):
        stuffthing[:, start:stop] = rng.integers(_STUFF_RANGE[0], _STUFF_RANGE[1] + 1)
    pool = COCO_NON_VOC_IDS if voc_free else COCO_IDS
    objects = []

    def box() -> tuple[int, int, int, int]:
        h = int(rng.integers(max(2, height // 8), max(3, height // 2)))
        w = int(rng.integers(max(2, width // 8), max(3, width // 2)))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        return x0, y0, x0 + w, y0 + h

    if rng.random() < 0.3:
        objects.append({"category_id": int(rng.choice(pool)), "box": box(), "iscrowd": 1})
    for _ in range(int(rng.integers(1, 5))):
        objects.append({"category_id": int(rng.choice(pool)), "box": box(), "iscrowd": 0})
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        stuffthing[y0:y1, x0:x1] = VOID if obj["iscrowd"] else obj["category_id"] - 1
    return stuffthing, objects


def _fixture_image(stuffthing: np.ndarray, index: int, seed: int) -> np.ndarray:
    """An RGB image whose colours follow the map (a per-index colour table plus noise)."""
    rng = np.random.default_rng([seed, index, 1])
    table = np.random.default_rng(seed).integers(0, 256, size=(256, 3), dtype=np.uint8)
    noise = rng.integers(-12, 13, size=(*stuffthing.shape, 3))
    return np.clip(table[stuffthing].astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _write_fixture_sample(
    index: int,
    root: Path,
    folder: str,
    first_id: int,
    size: tuple[int, int],
    seed: int,
    images: bool,
    voc_free_every: int,
) -> dict:
    voc_free = voc_free_every > 0 and index % voc_free_every == 0
    stuffthing, objects = make_fixture_sample(seed, index, size, voc_free)
    stem = file_stem(first_id + index)
    _save_label(stuffthing, root / STUFFTHING_DIR / folder / f"{stem}.png")
    if images:
        with atomic_path(root / folder / f"{stem}.jpg") as tmp:
            Image.fromarray(_fixture_image(stuffthing, index, seed)).save(tmp, format="JPEG", quality=90)
    return {"index": index, "stem": stem, "objects": objects}


def _annotation(ann_id: int, image_id: int, obj: dict, size: tuple[int, int]) -> dict:
    x0, y0, x1, y1 = obj["box"]
    if obj["iscrowd"]:  # crowd regions are RLE in COCO
        mask = np.zeros(size, dtype=np.uint8, order="F")
        mask[y0:y1, x0:x1] = 1
        rle = mask_utils.encode(mask)
        segmentation = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    else:  # a polygon with corners (x0, y0)..(x1, y1) covers pixels x0..x1-1, y0..y1-1
        segmentation = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_id"],
        "segmentation": segmentation,
        "area": float((x1 - x0) * (y1 - y0)),
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "iscrowd": int(obj["iscrowd"]),
    }


def write_coco_fixture(
    root: str | os.PathLike,
    n_train: int = 8,
    n_val: int = 6,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
    images: bool = True,
    instances: bool = True,
    voc_free_every: int = 3,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, list[str]]:
    """Write a generated dataset in the COCO 2017 + COCO-Stuff layout (module docstring).

    Per split: ``<split>2017/<id>.jpg`` (if ``images``), ``stuffthingmaps_trainval2017/<split>2017/
    <id>.png`` (:func:`make_fixture_sample`) and ``annotations/instances_<split>2017.json`` (if
    ``instances``: one polygon per object box, an RLE per crowd box, the 80 COCO categories), whose
    rasterisation in annotation order with crowd as void (:meth:`Instances.label_map`) equals the
    converted map exactly. Every ``voc_free_every``-th image holds no VOC class. Ids: train
    ``000000000001``.., val ``000001000001``... Same seed, same files whatever ``workers``.

    Returns:
        ``{"train2017": [ids], "val2017": [ids]}``.
    """
    root = Path(root)
    result: dict[str, list[str]] = {}
    for folder, count, first in (("train2017", n_train, 1), ("val2017", n_val, 1_000_001)):
        write = functools.partial(
            _write_fixture_sample,
            root=root,
            folder=folder,
            first_id=first,
            size=tuple(size),
            seed=seed + (0 if folder == "train2017" else 7919),
            images=images,
            voc_free_every=voc_free_every,
        )
        (root / STUFFTHING_DIR / folder).mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=count, desc=f"fixture {folder}", unit="img", disable=not progress, mininterval=1.0)
        with bar, contextlib.ExitStack() as stack:
            if workers > 0 and count > 1:
                pool = stack.enter_context(multiprocessing.Pool(workers))
                results = pool.imap(write, range(count), chunksize=max(1, min(64, count // (8 * workers))))
            else:
                results = map(write, range(count))
            samples = []
            for sample in results:
                samples.append(sample)
                bar.update()
        result[folder] = [s["stem"] for s in samples]
        if instances:
            height, width = size
            doc = {
                "info": {"description": "generated COCO-layout fixture (pipeline.data.coco)"},
                "licenses": [],
                "images": [
                    {"id": int(s["stem"]), "file_name": f"{s['stem']}.jpg", "height": height, "width": width}
                    for s in samples
                ],
                "annotations": [],
                "categories": [{"id": i, "name": n, "supercategory": ""} for i, n in COCO_CATEGORIES.items()],
            }
            for s in samples:
                for obj in s["objects"]:
                    doc["annotations"].append(
                        _annotation(len(doc["annotations"]) + 1, int(s["stem"]), obj, (height, width))
                    )
            write_json(root / ANNOTATION_DIR / f"instances_{folder}.json", doc)
    return result


__all__ = [
    "COCOSegmentation",
    "CONVERTER_VERSION",
    "DatasetError",
    "Instances",
    "VOCAsCOCO",
    "check_coco_label_values",
    "check_coco_pair",
    "convert_stuffthingmap",
    "convert_stuffthingmaps",
    "index_coco",
    "index_provenance",
    "label_dir",
    "list_ids",
    "load_coco_label",
    "load_stuffthingmap",
    "stuffthing_lut",
    "stuffthing_to_coco",
    "thing_agreement",
    "voc_pixel_free",
    "write_coco_fixture",
]
