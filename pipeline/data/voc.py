"""PASCAL VOC-style segmentation dataset on disk: id lists, images, masks, checks and index.

Layout of a dataset root: ``JPEGImages/<id>.jpg`` and masks in ``SegmentationClassAug/<id>.png``
or ``SegmentationClass/<id>.png`` (PNG mode ``P`` with the VOC palette, or ``L``; values are
0 background, 1..20 objects, 255 void). Every bad input raises :class:`DatasetError`, whose
message names the image id and the file and says what was expected.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.data.classes import NUM_OBJECT_CLASSES, VOID
from pipeline.data.parallel import index_in_order

IMAGE_DIR = "JPEGImages"
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")
#: A mask folder's label space: ``{"num_classes": N, "task_table": ...}`` in this file beside the
#: masks (the COCO-to-VOC assembly, :mod:`pipeline.data.coco_voc`, writes 80 classes); read by
#: :func:`folder_num_classes`. A folder without it holds VOC's 20 classes.
LABEL_SPACE_FILE = "label_space.json"


class DatasetError(ValueError):
    """Bad dataset input: a missing, unreadable or inconsistent file or id list.

    The message names the image id (where there is one) and the file path, and says what was
    expected.
    """


def _where(path: str | os.PathLike, image_id: str | None) -> str:
    return f"{path}" if image_id is None else f"id {image_id!r}, file {path}"


def read_ids(path: str | os.PathLike) -> list[str]:
    """Read an id list: one id per line, surrounding whitespace stripped, blank lines skipped.

    Returns:
        The ids in file order.
    Raises:
        DatasetError: the file is missing or unreadable, or an id occurs twice (names the id,
            the file and both line numbers).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read id list ({err.strerror or err})") from err
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if image_id in first_line:
            raise DatasetError(
                f"id {image_id!r}, file {path}: duplicated id (lines {first_line[image_id]} and "
                f"{number}); expected each id once"
            )
        first_line[image_id] = number
        ids.append(image_id)
    return ids


def resolve_mask_dir(root: str | os.PathLike, mask_dir: str | os.PathLike = "auto") -> Path:
    """The mask folder of a dataset root.

    Args:
        root: dataset root.
        mask_dir: ``"auto"`` picks ``SegmentationClassAug`` if it exists under ``root``, else
            ``SegmentationClass``; any other value is a folder name (or path) under ``root``.
    Returns:
        ``root / <folder>``.
    Raises:
        DatasetError: the folder does not exist (names the path).
    """
    return resolve_folder(root, mask_dir, MASK_DIRS, "mask")


def resolve_folder(root: str | os.PathLike, name: str, candidates: tuple[str, ...], what: str) -> Path:
    """``root / name``, or with ``name == "auto"`` the first of ``candidates`` that exists (else
    the second, for the message).

    Raises:
        DatasetError: the folder does not exist (names the path and ``what`` it holds).
    """
    root = Path(root)
    if name == "auto":
        path = next((root / c for c in candidates if (root / c).is_dir()), root / candidates[1])
        expected = " or ".join(str(root / c) for c in candidates)
    else:
        path = root / name
        expected = str(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found; expected a folder {expected}")
    return path


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated files even if some caller set ``LOAD_TRUNCATED_IMAGES``."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open(path: Path, image_id: str | None, what: str) -> Image.Image:
    """``Image.open`` with every failure turned into a DatasetError (the image is not decoded)."""
    try:
        return Image.open(path)
    except FileNotFoundError as err:
        raise DatasetError(f"{_where(path, image_id)}: {what} not found") from err
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"{_where(path, image_id)}: cannot read {what} ({err})") from err


def _decode(image: Image.Image, path: Path, image_id: str | None, what: str) -> None:
    """Fully decode ``image`` (PIL opens lazily), raising DatasetError on truncated/corrupt data."""
    try:
        with _strict_truncation():
            image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"{_where(path, image_id)}: corrupt or truncated {what} ({err}); expected a complete file"
        ) from err


def load_image(path: str | os.PathLike, image_id: str | None = None) -> np.ndarray:
    """Load an image as RGB (grayscale, palette and CMYK files are converted; PIL).

    Args:
        path: image file (JPEG in VOC).
        image_id: named in error messages (optional).
    Returns:
        (H, W, 3) uint8 array (writable), values 0..255.
    Raises:
        DatasetError: missing, unreadable, truncated or corrupt file.
    """
    path = Path(path)
    with _open(path, image_id, "image") as image:
        _decode(image, path, image_id, "image")
        return np.array(image.convert("RGB"))  # a writable copy (np.asarray of PIL is read-only)


def _image_size(path: Path, image_id: str | None) -> tuple[int, int]:
    """(height, width) of an image after checking that it decodes completely.

    JPEGs are decoded at reduced scale (``Image.draft``, DCT scaling): every byte of the entropy
    coded data is still read, so truncation and corruption are found, at a fraction of the cost.
    """
    with _open(path, image_id, "image") as image:
        width, height = image.size
        if image.format == "JPEG":
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        _decode(image, path, image_id, "image")
    return height, width


def check_mask_values(
    mask: np.ndarray, path: str | os.PathLike, image_id: str | None = None, num_classes: int = NUM_OBJECT_CLASSES
) -> np.ndarray:
    """Check that a label map holds only 0..num_classes and 255.

    Args:
        mask: (H, W) uint8 label map; ``path`` and ``image_id`` are named in the error.
    Returns:
        (256,) int64 histogram of the values.
    Raises:
        DatasetError: naming the offending values and the allowed set.
    """
    counts = np.bincount(mask.ravel(), minlength=256)
    allowed = np.zeros(256, dtype=bool)
    allowed[: num_classes + 1] = True
    allowed[VOID] = True
    bad = np.flatnonzero((counts > 0) & ~allowed)
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DatasetError(
            f"{_where(path, image_id)}: mask has invalid value(s) {shown}; "
            f"expected values in 0..{num_classes} or {VOID}"
        )
    return counts


@functools.lru_cache(maxsize=256)
def folder_num_classes(folder: str | os.PathLike) -> int:
    """Number of object classes of the masks in ``folder``: ``num_classes`` of its
    :data:`LABEL_SPACE_FILE` when it has one, else VOC's 20 (cached per folder and process).

    Raises:
        DatasetError: the file is not JSON or its ``num_classes`` is not an integer in 1..254
            (names the file).
    """
    marker = Path(folder) / LABEL_SPACE_FILE
    if not marker.is_file():
        return NUM_OBJECT_CLASSES
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("num_classes")
    except (OSError, ValueError, AttributeError) as err:
        raise DatasetError(f'{marker}: cannot read the label space ({err}); expected {{"num_classes": N}}') from err
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < VOID:
        raise DatasetError(f"{marker}: num_classes {value!r}; expected an integer in 1..{VOID - 1}")
    return value


def load_mask(path: str | os.PathLike, num_classes: int | None = None, image_id: str | None = None) -> np.ndarray:
    """Load a label map (PNG mode ``P``: the palette indices, not the colours; or mode ``L``; PIL).

    Args:
        path: mask file.
        num_classes: number of object classes; allowed values are 0..num_classes and 255.
            None (default): the folder's (:func:`folder_num_classes`: 20, or what its
            ``label_space.json`` says, e.g. 80 for the COCO-to-VOC label maps).
        image_id: named in error messages (optional).
    Returns:
        (H, W) uint8 array (writable) of class indices.
    Raises:
        DatasetError: missing, unreadable or truncated file, a mode other than P or L, or a
            value outside 0..num_classes ∪ {255} (names the offending values).
    """
    path = Path(path)
    if num_classes is None:
        num_classes = folder_num_classes(str(path.parent))
    with _open(path, image_id, "mask") as image:
        if image.mode not in ("P", "L"):
            raise DatasetError(
                f"{_where(path, image_id)}: mask has PIL mode {image.mode}; expected an index PNG "
                "(mode P with the VOC palette, or mode L)"
            )
        _decode(image, path, image_id, "mask")
        mask = np.array(image, dtype=np.uint8)  # writable
    check_mask_values(mask, path, image_id, num_classes)
    return mask


def check_pair(
    root: str | os.PathLike,
    image_id: str,
    mask_dir: str | os.PathLike,
    images: bool = True,
    num_classes: int = NUM_OBJECT_CLASSES,
) -> dict:
    """Check one image/mask pair and report its size and the object classes it contains.

    Args:
        root: dataset root (images are read from ``root/JPEGImages/<id>.jpg``).
        image_id: the id.
        mask_dir: mask folder, absolute or relative to ``root``, or ``"auto"``
            (:func:`resolve_mask_dir`).
        images: if False only the mask is read (label-only datasets).
        num_classes: number of object classes (allowed mask values 0..num_classes, 255).
    Returns:
        ``{"id": str, "height": int, "width": int, "classes": sorted list[int]}`` with classes
        the values present in the mask, 0 and 255 excluded.
    Raises:
        DatasetError: a file is missing, unreadable or corrupt, the mask has invalid values, or
            image and mask sizes differ (names both sizes).
    """
    root = Path(root)
    masks = resolve_mask_dir(root, "auto") if mask_dir == "auto" else root / mask_dir
    mask_path = masks / f"{image_id}.png"
    mask = load_mask(mask_path, num_classes, image_id)
    height, width = mask.shape
    if images:
        image_path = root / IMAGE_DIR / f"{image_id}.jpg"
        image_size = _image_size(image_path, image_id)
        if image_size != (height, width):
            raise DatasetError(
                f"id {image_id!r}: image {image_path} is {image_size[1]}x{image_size[0]} (WxH) but "
                f"mask {mask_path} is {width}x{height}; expected the same size"
            )
    counts = np.bincount(mask.ravel(), minlength=256)  # values already checked by load_mask
    classes = [int(c) for c in np.flatnonzero(counts[1 : num_classes + 1]) + 1]
    return {"id": image_id, "height": int(height), "width": int(width), "classes": classes}


def index_dataset(
    root: str | os.PathLike,
    ids: list[str],
    mask_dir: str | os.PathLike = "auto",
    images: bool = True,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, dict]:
    """Check every pair (:func:`check_pair`) and index size and class presence per id.

    Args:
        root: dataset root.
        ids: ids to index.
        mask_dir: ``"auto"``, a folder name under ``root`` or a path (:func:`resolve_mask_dir`).
        images: if False only masks are read.
        workers: 0 checks in this process; >0 uses a ``multiprocessing`` pool of that many
            processes (chunked ``imap``, results in ``ids`` order).
        progress: show a tqdm progress bar (stderr).
    Returns:
        ``{id: {"height": int, "width": int, "classes": list[int]}}`` in ``ids`` order.
    Raises:
        DatasetError: the mask folder is missing, or the first bad pair in ``ids`` order.
    """
    root = Path(root)
    masks = resolve_mask_dir(root, mask_dir)
    check = functools.partial(check_pair, root, mask_dir=masks, images=images)
    return index_in_order(check, ids, workers, f"index {root.name}", progress)


class VOCSegmentation(torch.utils.data.Dataset):
    """Image/mask pairs of a VOC-layout dataset root (as ``torchvision.datasets.VOCSegmentation``,
    but with masks as index arrays and an explicit id list).

    ``dataset[i]`` is ``{"id": str, "image": (H, W, 3) uint8 RGB, "mask": (H, W) uint8}``, passed
    through ``transform(sample)`` when given. Raises :class:`DatasetError` for a missing mask
    folder (at construction) or a bad pair (when the item is read).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ids: list[str],
        mask_dir: str = "auto",
        transform: Callable[[dict], object] | None = None,
    ) -> None:
        self.root = Path(root)
        self.ids = list(ids)
        self.mask_dir = resolve_mask_dir(self.root, mask_dir)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        image_path = self.root / IMAGE_DIR / f"{image_id}.jpg"
        mask_path = self.mask_dir / f"{image_id}.png"
        image = load_image(image_path, image_id)
        mask = load_mask(mask_path, image_id=image_id)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"id {image_id!r}: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) "
                f"but mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}; expected the same size"
            )
        sample = {"id": image_id, "image": image, "mask": mask}
        return self.transform(sample) if self.transform is not None else sample
