"""Instance annotations on disk: VOC ``SegmentationObject`` PNGs, SBD ``inst/*.mat``, COCO polygons.

An *instance map* is an ``(H, W)`` uint8 array of instance ids: 0 background, 1..254 one object
each (VOC numbers them in the order of the ``<object>`` entries of the XML), 255 void (the VOC
boundary band). It always comes with the *class map* of the same image (``SegmentationClass``/
``SegmentationClassAug``, :mod:`pipeline.data.voc`), and the pair is checked as one:

- the two maps have the same size;
- each instance id lies in exactly one object class (its pixels read 1..num_classes in the class
  map, void class pixels under it are allowed, background is not);
- every object pixel of the class map belongs to some instance (``cover=True``, the default: VOC,
  SBD and the generated demo set all hold this; the union of a class's instances is then exactly
  its pixels in the class map, void excepted).

Every failure raises :class:`pipeline.data.voc.DatasetError` naming the image id, the instance id
(where there is one) and the file(s).

Folders under a dataset root: ``SegmentationObjectAug/`` (VOC train + SBD, converted with
:func:`convert_sbd_instances`, the layout of the CL4WSIS code) or ``SegmentationObject/`` (VOC 2012
itself; the generated demo set). ``"auto"`` picks the Aug folder when it exists, as for class maps.

Incremental filters: the CL4WSIS paper (Sec. 4.1) states them on instances -- *disjoint*: an
image is used at step t if all its instances are of previous or current classes; *overlap*: if
it holds at least one instance of a current class. Because the class set of an image equals the
class set of its instances (the ``cover`` check above), these are MiB's class filters of
:func:`pipeline.data.tasks.filter_ids` unchanged, except for one point of wording: the paper's
disjoint sentence does not ask for a current-class instance, while the authors' code
(``check_if_insert`` in their ``dataset/voc.py``) and MiB both do. :func:`filter_instance_ids`
follows the code (and MiB): at least one current-class instance in both protocols.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.classes import BACKGROUND, NUM_OBJECT_CLASSES, VOID, voc_palette
from pipeline.data.parallel import index_in_order
from pipeline.data.tasks import filter_ids
from pipeline.data.voc import (
    IMAGE_DIR,
    DatasetError,
    _decode,
    _image_size,
    _open,
    _where,
    load_mask,
    resolve_folder,
    resolve_mask_dir,
)
from pipeline.io import atomic_path

INSTANCE_DIRS = ("SegmentationObjectAug", "SegmentationObject")
MAX_INSTANCES = 254  # ids 1..254 fit a uint8 map beside 0 (background) and 255 (void)


@dataclass(frozen=True)
class Instance:
    """One object of an image.

    ``bbox`` is ``(x0, y0, x1, y1)`` in 0-based pixel indices with ``x1``/``y1`` exclusive (the
    box covering the instance's pixels: width ``x1 - x0``); ``area`` counts its pixels (void
    excluded).
    """

    id: int
    cls: int
    area: int
    bbox: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        """JSON form: ``{"id", "class", "area", "bbox": [x0, y0, x1, y1]}``."""
        return {"id": self.id, "class": self.cls, "area": self.area, "bbox": list(self.bbox)}


def resolve_instance_dir(root: str | os.PathLike, instance_dir: str | os.PathLike = "auto") -> Path:
    """The instance folder of a dataset root (``"auto"``: ``SegmentationObjectAug`` if it exists,
    else ``SegmentationObject``; any other value is a folder under ``root``, or a path).

    Raises:
        DatasetError: the folder does not exist (names the path).
    """
    return resolve_folder(root, instance_dir, INSTANCE_DIRS, "instance")


def load_instance_map(path: str | os.PathLike, image_id: str | None = None) -> np.ndarray:
    """Load an instance map (PNG mode ``P``, the palette indices, as VOC writes them; or mode ``L``).

    Returns:
        (H, W) uint8 array (writable): 0 background, 1..254 instance ids, 255 void.
    Raises:
        DatasetError: missing, unreadable or truncated file, or a mode other than P or L.
    """
    path = Path(path)
    with _open(path, image_id, "instance map") as image:
        if image.mode not in ("P", "L"):
            raise DatasetError(
                f"{_where(path, image_id)}: instance map has PIL mode {image.mode}; expected an index "
                "PNG (mode P with the VOC palette, or mode L) holding instance ids"
            )
        _decode(image, path, image_id, "instance map")
        return np.array(image, dtype=np.uint8)


def save_instance_map(instance_map: np.ndarray, path: str | os.PathLike) -> None:
    """Write an instance map as VOC does: mode ``P`` PNG with the VOC palette, atomically."""
    png = Image.fromarray(np.asarray(instance_map, dtype=np.uint8))
    png.putpalette(voc_palette().tobytes())
    with atomic_path(Path(path)) as tmp:
        png.save(tmp, format="PNG")


def _files(instance_path, class_path) -> str:
    return f"instance map {instance_path}, class map {class_path}"


def instance_classes(
    instance_map: np.ndarray,
    class_map: np.ndarray,
    image_id: str | None = None,
    instance_path: str | os.PathLike | None = None,
    class_path: str | os.PathLike | None = None,
    num_classes: int = NUM_OBJECT_CLASSES,
    cover: bool = True,
) -> dict[int, int]:
    """Check an instance map against its class map and give each instance its class.

    Args:
        instance_map: (H, W) uint8 instance ids (0 background, 255 void).
        class_map: (H, W) uint8 class indices (0 background, 1..num_classes, 255 void).
        image_id, instance_path, class_path: named in error messages.
        num_classes: number of object classes.
        cover: also require every object pixel of the class map to lie in an instance.
    Returns:
        ``{instance id: class}`` for every id present, in increasing id order.
    Raises:
        DatasetError: sizes differ; an instance covers background, more than one class, or only
            void; class-map object pixels outside every instance (``cover``). The message names
            the image id, the instance id or class, and both files.
    """
    where = f"id {image_id!r}, {_files(instance_path, class_path)}"
    if instance_map.shape != class_map.shape:
        h, w = instance_map.shape[:2]
        ch, cw = class_map.shape[:2]
        raise DatasetError(f"{where}: instance map is {w}x{h} (WxH) but class map is {cw}x{ch}; expected the same size")
    # joint histogram instance id x class, one bincount
    joint = np.bincount(
        instance_map.astype(np.int64).ravel() * 256 + class_map.astype(np.int64).ravel(), minlength=256 * 256
    ).reshape(256, 256)
    classes: dict[int, int] = {}
    for k in np.flatnonzero(joint[1:VOID].sum(1)) + 1:
        row = joint[k]
        if row[BACKGROUND]:
            raise DatasetError(
                f"{where}: instance {k} has {row[BACKGROUND]} pixel(s) of background (class 0) in the class "
                "map; expected every pixel of an instance to be of its object class"
            )
        present = [int(c) for c in np.flatnonzero(row[1:VOID]) + 1]
        bad = [c for c in present if c > num_classes]
        if bad:
            raise DatasetError(f"{where}: instance {k} lies on class value(s) {bad}; expected classes 1..{num_classes}")
        if len(present) != 1:
            counts = ", ".join(f"class {c}: {row[c]} px" for c in present) or f"only void: {row[VOID]} px"
            raise DatasetError(f"{where}: instance {k} spans {counts}; expected exactly one object class")
        classes[int(k)] = present[0]
    if cover:
        uncovered = joint[[BACKGROUND, VOID], 1 : num_classes + 1].sum(0)
        if uncovered.any():
            c = int(np.flatnonzero(uncovered)[0]) + 1
            raise DatasetError(
                f"{where}: {uncovered[c - 1]} pixel(s) of class {c} in the class map lie in no instance "
                "(instance id 0 or 255 there); expected every object pixel to belong to an instance"
            )
    return classes


def list_instances(instance_map: np.ndarray, classes: Mapping[int, int]) -> list[Instance]:
    """The instances of one image: id, class (from :func:`instance_classes`), area and box.

    Returns:
        :class:`Instance` per id of ``classes`` that has pixels, in id order.
    """
    out = []
    for k, c in sorted(classes.items()):
        ys, xs = np.nonzero(instance_map == k)
        if ys.size == 0:
            continue
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        out.append(Instance(int(k), int(c), int(ys.size), box))
    return out


def instance_masks(instance_map: np.ndarray, instances: Sequence[Instance]) -> tuple[np.ndarray, np.ndarray]:
    """Binary masks and labels of ``instances`` (the ground truth of the instance AP).

    Returns:
        masks (K, H, W) bool (void pixels are in no mask), labels (K,) int64 classes.
    """
    ids = np.array([i.id for i in instances], dtype=np.uint8)
    masks = instance_map[None] == ids[:, None, None] if ids.size else np.zeros((0, *instance_map.shape), bool)
    return masks, np.array([i.cls for i in instances], dtype=np.int64)


def check_instance_pair(
    root: str | os.PathLike,
    image_id: str,
    mask_dir: str | os.PathLike = "auto",
    instance_dir: str | os.PathLike = "auto",
    images: bool = False,
    num_classes: int = NUM_OBJECT_CLASSES,
    cover: bool = True,
) -> dict:
    """Check one image's instance map against its class map (and image size, ``images=True``).

    Args:
        root: dataset root; ``mask_dir``/``instance_dir``: ``"auto"``, a folder under ``root`` or
            a path (:func:`pipeline.data.voc.resolve_mask_dir`, :func:`resolve_instance_dir`).
    Returns:
        ``{"id", "height", "width", "classes": sorted object classes, "instances": [Instance.to_dict()]}``.
    Raises:
        DatasetError: a missing/bad file or any failed check of :func:`instance_classes`.
    """
    root = Path(root)
    masks = resolve_mask_dir(root, "auto") if mask_dir == "auto" else root / mask_dir
    objects = resolve_instance_dir(root, "auto") if instance_dir == "auto" else root / instance_dir
    class_path = masks / f"{image_id}.png"
    instance_path = objects / f"{image_id}.png"
    class_map = load_mask(class_path, num_classes, image_id)
    instance_map = load_instance_map(instance_path, image_id)
    classes = instance_classes(instance_map, class_map, image_id, instance_path, class_path, num_classes, cover)
    height, width = class_map.shape
    if images:
        image_path = root / IMAGE_DIR / f"{image_id}.jpg"
        h, w = _image_size(image_path, image_id)
        if (h, w) != (height, width):
            raise DatasetError(
                f"id {image_id!r}: image {image_path} is {w}x{h} (WxH) but instance map {instance_path} is "
                f"{width}x{height}; expected the same size"
            )
    instances = list_instances(instance_map, classes)
    return {
        "id": image_id,
        "height": int(height),
        "width": int(width),
        "classes": sorted({i.cls for i in instances}),
        "instances": [i.to_dict() for i in instances],
    }


def index_instances(
    root: str | os.PathLike,
    ids: Sequence[str],
    mask_dir: str | os.PathLike = "auto",
    instance_dir: str | os.PathLike = "auto",
    images: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, dict]:
    """:func:`check_instance_pair` for every id (a pool of ``workers`` processes when > 0).

    Returns:
        ``{id: {"height", "width", "classes", "instances"}}`` in ``ids`` order; the ``classes``
        entry makes it an index for :func:`pipeline.data.tasks.filter_ids`.
    Raises:
        DatasetError: a folder is missing, or the first bad pair in ``ids`` order.
    """
    root = Path(root)
    check = functools.partial(
        check_instance_pair,
        root,
        mask_dir=resolve_mask_dir(root, mask_dir),
        instance_dir=resolve_instance_dir(root, instance_dir),
        images=images,
    )
    return index_in_order(check, ids, workers, f"instances {root.name}", progress)


def filter_instance_ids(
    index: Mapping[str, dict], task: str, step: int, protocol: str, dataset: str = "voc"
) -> list[str]:
    """Training ids of ``step`` under ``protocol`` from an instance index (CL4WSIS Sec. 4.1).

    The classes of an image are those of its instances; the filter is
    :func:`pipeline.data.tasks.filter_ids` (see the module docstring for the one difference of
    wording between the paper and the authors' code). Images without instances never pass.
    """
    classes = {image_id: sorted({i["class"] for i in entry["instances"]}) for image_id, entry in index.items()}
    return filter_ids(classes, task, step, protocol, dataset)


# ----------------------------------------------------------------------------------------- SBD
def load_sbd_instances(
    path: str | os.PathLike, image_id: str | None = None, num_classes: int = NUM_OBJECT_CLASSES
) -> tuple[np.ndarray, dict[int, int]]:
    """Read an SBD instance file ``inst/<id>.mat`` (``GTinst.Segmentation``, ``GTinst.Categories``; scipy.io).

    ``Segmentation`` holds instance ids 1..N (0 background), ``Categories`` the class of instance
    k at position k-1 (Hariharan et al., ICCV 2011, the benchmark's ``GTinst`` struct).

    Returns:
        instance map (H, W) uint8 and ``{instance id: class}`` for the ids present in the map.
    Raises:
        DatasetError: unreadable file, no ``GTinst`` struct, an id without a category, a category
            outside 1..num_classes, more than 254 instances (names the id and the file).
    """
    import scipy.io  # deferred: only the SBD conversion reads .mat files

    path = Path(path)
    where = _where(path, image_id)
    if not path.is_file():
        raise DatasetError(f"{where}: SBD instance file not found")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError) as err:
        raise DatasetError(f"{where}: cannot read SBD instance file ({err})") from err
    gt = mat.get("GTinst")
    if gt is None or not hasattr(gt, "Segmentation") or not hasattr(gt, "Categories"):
        raise DatasetError(f"{where}: no GTinst struct with Segmentation and Categories; expected an SBD inst/*.mat")
    seg = np.asarray(gt.Segmentation)
    categories = np.atleast_1d(np.asarray(gt.Categories)).astype(np.int64).ravel()
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise DatasetError(
            f"{where}: GTinst.Segmentation is {seg.dtype} of shape {seg.shape}; expected a 2-D integer map"
        )
    ids = [int(k) for k in np.unique(seg) if k not in (0, VOID)]
    bad = [k for k in ids if not 1 <= k <= MAX_INSTANCES]
    if bad:
        raise DatasetError(f"{where}: instance id {bad[0]} outside 1..{MAX_INSTANCES}; expected a uint8 instance map")
    classes = {}
    for k in ids:
        if k > categories.size:
            raise DatasetError(
                f"{where}: instance {k} has no category (GTinst.Categories lists {categories.size}); "
                "expected one category per instance id"
            )
        c = int(categories[k - 1])
        if not 1 <= c <= num_classes:
            raise DatasetError(f"{where}: instance {k} has category {c}; expected 1..{num_classes}")
        classes[k] = c
    return seg.astype(np.uint8), classes


def class_map_from_instances(instance_map: np.ndarray, classes: Mapping[int, int]) -> np.ndarray:
    """The class map an instance map implies: each instance's pixels its class, 255 kept void."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[VOID] = VOID
    for k, c in classes.items():
        lut[k] = c
    return lut[instance_map]


def _convert_one(image_id: str, inst_dir: Path, out_dir: Path) -> None:
    instance_map, _ = load_sbd_instances(inst_dir / f"{image_id}.mat", image_id)
    save_instance_map(instance_map, out_dir / f"{image_id}.png")


def convert_sbd_instances(
    inst_dir: str | os.PathLike, ids: Sequence[str], out_dir: str | os.PathLike, workers: int = 0
) -> None:
    """Write SBD's ``inst/<id>.mat`` as VOC-style instance PNGs ``out_dir/<id>.png`` (palette, atomic).

    The PNGs then pair with the ``SegmentationClassAug`` maps (``SegmentationObjectAug/``); check
    them with :func:`index_instances`.
    """
    inst_dir, out_dir = Path(inst_dir), Path(out_dir)
    convert = functools.partial(_convert_one, inst_dir=inst_dir, out_dir=out_dir)
    if workers > 0:
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap_unordered(convert, ids, chunksize=16):
                pass
    else:
        for image_id in ids:
            convert(image_id)


# ---------------------------------------------------------------------------------------- COCO
def coco_instance_maps(
    annotations: Sequence[dict], height: int, width: int, category_map: Mapping[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Rasterise the COCO instance annotations of one image into an instance map and a class map.

    Polygons and RLE are decoded with ``pycocotools.mask`` (``frPyObjects`` + ``decode``, as
    ``COCO.annToMask``). Non-crowd instances are painted largest first, so that a smaller object
    lying on a larger one stays visible (COCO masks may overlap; an overlap goes to the smaller);
    crowd regions become void (255) where no instance covers them. Annotations whose category is
    not in ``category_map`` are skipped (e.g. the 60 non-VOC classes of COCO-to-VOC).

    Args:
        annotations: COCO annotation dicts of one image (``segmentation``, ``category_id``, ``iscrowd``, ``id``).
        height, width: image size.
        category_map: COCO category id -> class index (default: identity).
    Returns:
        instance map (H, W) uint8 (ids 1..K in painting order), class map (H, W) uint8, and
        ``[{"id": k, "class", "annotation_id"}]`` for the K painted instances.
    Raises:
        ImportError: pycocotools is not installed.
        DatasetError: more than 254 instances.
    """
    from pycocotools import mask as mask_utils  # deferred: an optional dependency, COCO only

    def decode(segmentation) -> np.ndarray:
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        with warnings.catch_warnings():  # pycocotools 2.0 calls np.array(copy=False) on numpy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)

    mapping = (lambda c: c) if category_map is None else category_map.get
    things, crowd = [], np.zeros((height, width), dtype=bool)
    for ann in annotations:
        cls = mapping(ann["category_id"])
        if cls is None:
            continue
        mask = decode(ann["segmentation"])
        if ann.get("iscrowd", 0):
            crowd |= mask
        else:
            things.append((int(mask.sum()), ann, int(cls), mask))
    if len(things) > MAX_INSTANCES:
        raise DatasetError(f"{len(things)} instances in one image; at most {MAX_INSTANCES} fit an instance map")
    things.sort(key=lambda t: -t[0])  # stable: equal areas keep annotation order
    instance_map = np.zeros((height, width), dtype=np.uint8)
    class_map = np.zeros((height, width), dtype=np.uint8)
    instance_map[crowd] = VOID
    class_map[crowd] = VOID
    for k, (_, _, cls, mask) in enumerate(things, start=1):
        instance_map[mask] = k
        class_map[mask] = cls
    visible = np.bincount(instance_map.ravel(), minlength=256)
    table = [
        {"id": k, "class": cls, "annotation_id": ann.get("id")}
        for k, (_, ann, cls, _) in enumerate(things, start=1)
        if visible[k]  # an instance hidden whole under smaller ones is left out
    ]
    return instance_map, class_map, table


__all__ = [
    "INSTANCE_DIRS",
    "Instance",
    "check_instance_pair",
    "class_map_from_instances",
    "coco_instance_maps",
    "convert_sbd_instances",
    "filter_instance_ids",
    "index_instances",
    "instance_classes",
    "instance_masks",
    "list_instances",
    "load_instance_map",
    "load_sbd_instances",
    "resolve_instance_dir",
    "save_instance_map",
]
