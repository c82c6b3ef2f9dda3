"""FMWISS's memory bank of old-class instances (Sec. 3.4): extraction, sampling, build/extend, reader.

Source: Yu et al., "Foundation Model Drives Weakly Incremental Learning for Semantic Segmentation"
(FMWISS, CVPR 2023; ``shared/papers/004``), Sec. 3.4 and Fig. 4: "we first construct a memory
bank for each old class, and each class archive will store B foreground instances and
segmentation labels during the base model training. Then, in step t, we randomly pick one pair
of foreground images and labels from a randomly selected old class archive, and randomly paste
them to the new class image." The pasting is :mod:`pipeline.methods.fmwiss.copy_paste`; the stage
that builds a step's bank is :mod:`pipeline.stages.memory_bank`, with B and the other settings
from the ``memory`` section of ``config.yaml`` (Sec. 4.5.4: B = 50).

What the paper leaves open, and the choices made here:

* **Instances.** VOC class maps have no instance ids, so an *instance* is a connected component
  (8-connectivity, ``scipy.ndimage.label``) of one class's mask; touching objects of one class
  are normally split by VOC's void band, else they form one instance. The component is cropped
  to its bounding box: the image crop keeps every pixel of the box, the mask crop marks the
  component's pixels (void and other classes excluded). Components smaller than ``min_area``
  pixels are dropped (fragments cut off by occluders).
* **Sampling B per class.** Up to B instances per class, uniformly at random without
  replacement among all candidate instances of the class in the step's training images
  (reservoir sampling, Vitter's Algorithm R, with one ``numpy.random.Generator(seed)``: a single
  pass over the images, deterministic for a seed and an image order). A class with fewer than B
  candidates keeps them all.
* **Later steps.** The paper runs two steps only (base + one incremental step), so its bank holds
  the base classes. For tasks with more steps, :func:`extend_memory_bank` copies the bank of step
  t and adds B instances of each class learned at step t, cut from that step's pseudo-masks (the
  only masks a weakly supervised step has: the fused co-segmentation masks ``M_refine`` of Eq. 5,
  overlaps resolved by the CLIP score); step t+1 pastes from it.

Cache layout (:mod:`pipeline.cache`): one group per instance, ``c{class:02d}_{k:03d}`` (k = 0..n-1
within the class archive), datasets ``image`` (h, w, 3) uint8 and ``mask`` (h, w) uint8 (0/1),
attributes ``class``, ``source`` (image id), ``area`` (pixels) and ``bbox`` (y0, x0, y1, x1 in
the source image, end exclusive); root attributes ``classes`` and ``counts`` (int64 arrays,
instances per class) and ``candidates`` (candidate instances per class).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.cache import CacheError, CacheWriter, open_cache
from pipeline.data.classes import VOID, class_name

log = logging.getLogger(__name__)

#: 8-connectivity: thin diagonal parts (legs, spokes) stay with their object.
CONNECTIVITY = np.ones((3, 3), dtype=bool)

Instance = tuple[int, np.ndarray, np.ndarray]


def instance_key(c: int, k: int) -> str:
    """Group name of instance ``k`` of class ``c`` in the cache: ``c03_007``."""
    return f"c{c:02d}_{k:03d}"


def _check_classes(classes: Iterable[int]) -> list[int]:
    out = sorted({int(c) for c in classes})
    bad = [c for c in out if not 0 < c < VOID]
    if bad:
        raise ValueError(f"memory bank classes must be object classes 1..{VOID - 1}, got {bad[0]}")
    return out


def _instances(
    label: np.ndarray, classes: Sequence[int], min_area: int
) -> Iterator[tuple[int, tuple[slice, slice], np.ndarray, int]]:
    """(class, bbox slices, component mask in the box, area) of each kept component."""
    counts = np.bincount(label.ravel(), minlength=256)
    for c in classes:
        if counts[c] < max(min_area, 1):
            continue
        components, n = ndimage.label(label == c, structure=CONNECTIVITY)
        areas = np.bincount(components.ravel(), minlength=n + 1)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            if box is not None and areas[index] >= min_area:
                yield c, box, components[box] == index, int(areas[index])


def extract_instances(
    image: np.ndarray, label: np.ndarray, classes: Iterable[int], min_area: int = 0
) -> list[Instance]:
    """Foreground instances of an image: connected components of each class mask, box-cropped.

    Args:
        image: (H, W, 3) uint8 RGB image.
        label: (H, W) uint8 class map (0 background, 255 void).
        classes: object classes to extract (other values of ``label`` are ignored).
        min_area: components with fewer pixels are dropped.
    Returns:
        ``[(class, image_crop (h, w, 3) uint8, mask_crop (h, w) bool)]``, sorted by class, then in
        the raster order of each component's first pixel; crops are copies. ``mask_crop`` marks
        the component's pixels inside its bounding box.
    Raises:
        ValueError: bad shapes or dtypes, a class outside 1..254, or a negative ``min_area``.
    """
    image, label = np.asarray(image), np.asarray(label)
    check_image_label(image, label)
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    return [(c, image[box].copy(), mask) for c, box, mask, _ in _instances(label, _check_classes(classes), min_area)]


def check_image_label(image: np.ndarray, label: np.ndarray, where: str = "") -> None:
    """Raise ValueError (prefixed by ``where``) unless image is (H, W, 3) uint8 and label (H, W) uint8."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where}image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if label.shape != image.shape[:2] or label.dtype != np.uint8:
        raise ValueError(
            f"{where}label must be (H, W) uint8 matching the image {image.shape[:2]}, got {label.shape} {label.dtype}"
        )


class _Reservoir:
    """Uniform sample of up to ``size`` items from a stream (Vitter's Algorithm R)."""

    def __init__(self, size: int) -> None:
        self.size, self.seen, self.items = size, 0, []

    def offer(self, item: Any, rng: np.random.Generator) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = int(rng.integers(0, self.seen + 1))
            if j < self.size:
                self.items[j] = item
        self.seen += 1


def sample_instances(
    sources: Iterable[tuple[str, np.ndarray, np.ndarray]],
    classes: Iterable[int],
    per_class: int = 50,
    seed: int = 0,
    min_area: int = 0,
) -> tuple[dict[int, list[dict]], dict[int, int]]:
    """Up to ``per_class`` instances per class, uniformly at random among all candidates.

    Args:
        sources: ``(image_id, image (H, W, 3) uint8, label (H, W) uint8)`` triples, read once.
        classes: object classes to sample.
        per_class: B, the archive size per class (FMWISS Sec. 3.4; 50 in Sec. 4.5.4).
        seed: seed of the ``numpy.random.Generator`` (deterministic for a seed and source order).
        min_area: components with fewer pixels are not candidates.
    Returns:
        ``(archives, candidates)``: ``{class: [{"image", "mask" (bool), "source", "area",
        "bbox"}]}`` in source order, and ``{class: number of candidate instances}``.
    Raises:
        ValueError: ``per_class < 0``, ``min_area < 0``, a bad class or a bad image/label pair
            (names the id).
    """
    classes = _check_classes(classes)
    if per_class < 0 or min_area < 0:
        raise ValueError(f"per_class and min_area must be >= 0, got {per_class} and {min_area}")
    rng = np.random.default_rng(seed)
    reservoirs = {c: _Reservoir(per_class) for c in classes}
    position = 0
    for image_id, image, label in sources:
        image, label = np.asarray(image), np.asarray(label)
        check_image_label(image, label, f"image {image_id!r}: ")
        for c, box, mask, area in _instances(label, classes, min_area):
            bbox = [box[0].start, box[1].start, box[0].stop, box[1].stop]
            reservoirs[c].offer(
                (position, {"image": image[box].copy(), "mask": mask, "source": image_id, "area": area, "bbox": bbox}),
                rng,
            )
            position += 1
    archives = {c: [item for _, item in sorted(r.items, key=lambda pair: pair[0])] for c, r in reservoirs.items()}
    return archives, {c: r.seen for c, r in reservoirs.items()}


def _put_archives(writer: CacheWriter, archives: Mapping[int, list[dict]]) -> None:
    for c, items in archives.items():
        for k, item in enumerate(items):
            key = instance_key(c, k)
            if key in writer.done:  # resumed run: same seed and sources give the same instances
                continue
            writer.put(
                key,
                {"image": item["image"], "mask": item["mask"].astype(np.uint8)},
                {
                    "class": int(c),
                    "source": str(item["source"]),
                    "area": int(item["area"]),
                    "bbox": np.asarray(item["bbox"], dtype=np.int64),
                },
            )


def _log_counts(counts: Mapping[int, int], candidates: Mapping[int, int]) -> None:
    for c in sorted(counts):
        level = logging.WARNING if counts[c] == 0 else logging.INFO
        log.log(
            level,
            "class %d (%s): %d instances kept of %d candidates",
            c,
            class_name(c),
            counts[c],
            candidates.get(c, counts[c]),
        )


def _finish(writer: CacheWriter, counts: Mapping[int, int], candidates: Mapping[int, int]) -> Path:
    classes = sorted(counts)
    return writer.finish(
        {
            "classes": np.asarray(classes, dtype=np.int64),
            "counts": np.asarray([counts[c] for c in classes], dtype=np.int64),
            "candidates": np.asarray([candidates[c] for c in classes], dtype=np.int64),
        }
    )


def build_memory_bank(
    out_path: str | os.PathLike,
    sources: Iterable[tuple[str, np.ndarray, np.ndarray]],
    classes: Iterable[int],
    per_class: int = 50,
    seed: int = 0,
    min_area: int = 0,
    provenance: Mapping | None = None,
) -> dict[int, int]:
    """Sample B instances per class (:func:`sample_instances`) and write the bank (FMWISS Sec. 3.4).

    Args:
        out_path: the ``.h5`` to write (atomically, through :class:`pipeline.cache.CacheWriter`).
        sources, classes, per_class, seed, min_area: see :func:`sample_instances`.
        provenance: what produced the bank (recorded with ``per_class``, ``min_area``, ``seed``
            and ``classes``, which are added to it).
    Returns:
        ``{class: instances stored}`` (also the root attributes ``classes``/``counts``).
    Raises:
        ValueError: see :func:`sample_instances`.
    """
    classes = _check_classes(classes)
    archives, candidates = sample_instances(sources, classes, per_class, seed, min_area)
    counts = {c: len(items) for c, items in archives.items()}
    prov = {
        "kind": "memory_bank",
        **(provenance or {}),
        "per_class": per_class,
        "min_area": min_area,
        "seed": seed,
        "classes": classes,
    }
    with CacheWriter(out_path, prov) as writer:
        _put_archives(writer, archives)
        _finish(writer, counts, candidates)
    _log_counts(counts, candidates)
    return counts


def extend_memory_bank(
    previous_path: str | os.PathLike,
    out_path: str | os.PathLike,
    new_sources: Iterable[tuple[str, np.ndarray, np.ndarray]],
    classes: Iterable[int],
    per_class: int = 50,
    seed: int = 0,
    min_area: int = 0,
    provenance: Mapping | None = None,
) -> dict[int, int]:
    """The bank of the previous step plus B instances of each class learned at that step.

    FMWISS stops after one incremental step; for longer tasks the bank used at step t+1 is the
    bank of step t plus instances of step t's new classes, cut from the masks that step had:
    its pseudo-masks (``new_sources`` labels; values outside ``classes`` are ignored).

    Args:
        previous_path: the bank of the previous step.
        out_path: the extended bank to write (atomically).
        new_sources: ``(image_id, image, pseudo_mask)`` triples of the step's training images.
        classes: the classes to add (must not be in the previous bank).
        per_class, seed, min_area: as in :func:`sample_instances`.
        provenance: recorded together with the previous bank's path and provenance.
    Returns:
        ``{class: instances}`` of every class of the extended bank.
    Raises:
        CacheError: the previous bank is missing or unreadable.
        ValueError: a class already in the previous bank (names it), or see :func:`sample_instances`.
    """
    classes = _check_classes(classes)
    with MemoryBank(previous_path) as previous:
        clash = sorted(set(classes) & set(previous.classes(all_classes=True)))
        if clash:
            raise ValueError(
                f"{previous_path}: class {clash[0]} is already in the memory bank; "
                f"extend it with the classes of the next step only"
            )
        archives, candidates = sample_instances(new_sources, classes, per_class, seed, min_area)
        counts = {**previous.counts(), **{c: len(items) for c, items in archives.items()}}
        candidates = {**previous.candidates(), **candidates}
        prov = {
            "kind": "memory_bank",
            **(provenance or {}),
            "per_class": per_class,
            "min_area": min_area,
            "seed": seed,
            "classes": sorted(counts),
            "previous": str(previous_path),
            "previous_provenance": previous.provenance,
        }
        with CacheWriter(out_path, prov) as writer:
            reader = previous.reader
            for key in reader.ids():
                if key not in writer.done:
                    writer.put(key, reader.get(key), reader.attrs(key))
            _put_archives(writer, archives)
            _finish(writer, counts, candidates)
    _log_counts(counts, candidates)
    return counts


class MemoryBank:
    """Read access to a memory bank written by :func:`build_memory_bank` (FMWISS Sec. 3.4).

    Instances are read on demand; the HDF5 file is (re)opened lazily in each process, so a bank
    can be handed to DataLoader workers.

    Args:
        path: the bank ``.h5``.
        expected: provenance keys/values it must have (see :func:`pipeline.cache.open_cache`).
    Raises:
        CacheError: missing, unreadable or stale file, or root attributes that do not match the
            stored instances (names the missing group).
    """

    def __init__(self, path: str | os.PathLike, expected: Mapping | None = None) -> None:
        self.path = Path(path)
        self.expected = expected
        self._reader = None
        self._pid = None
        reader = self.reader
        attrs = reader.root_attrs()
        if "classes" not in attrs or "counts" not in attrs:
            raise CacheError(f"{self.path}: no root attributes 'classes'/'counts'; not a memory bank")
        self.provenance = reader.provenance
        self._counts = {int(c): int(n) for c, n in zip(attrs["classes"], attrs["counts"])}
        self._candidates = {int(c): int(n) for c, n in zip(attrs["classes"], attrs.get("candidates", attrs["counts"]))}
        keys = set(reader.ids())
        for c, n in self._counts.items():
            for k in range(n):
                if instance_key(c, k) not in keys:
                    raise CacheError(
                        f"{self.path}: instance {instance_key(c, k)!r} of class {c} is missing "
                        f"(the root attributes list {n})"
                    )

    @property
    def reader(self):
        """The cache reader of this process (reopened after a fork)."""
        if self._reader is None or self._pid != os.getpid():
            self._reader = open_cache(self.path, self.expected)
            self._pid = os.getpid()
        return self._reader

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = state["_pid"] = None
        return state

    def close(self) -> None:
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __enter__(self) -> MemoryBank:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def classes(self, all_classes: bool = False) -> list[int]:
        """Classes with at least one instance (``all_classes``: also those with none), sorted."""
        return sorted(c for c, n in self._counts.items() if all_classes or n > 0)

    def count(self, c: int) -> int:
        """Number of instances of class ``c`` (0 for a class not in the bank)."""
        return self._counts.get(int(c), 0)

    def counts(self) -> dict[int, int]:
        """``{class: instances}`` of every class of the bank."""
        return dict(self._counts)

    def candidates(self) -> dict[int, int]:
        """``{class: candidate instances}`` the bank was sampled from."""
        return dict(self._candidates)

    def __len__(self) -> int:
        return sum(self._counts.values())

    def get(self, c: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance ``k`` of class ``c``: ``(image (h, w, 3) uint8, mask (h, w) bool)``.

        Raises:
            KeyError: ``k`` outside ``0..count(c)-1`` (names class, index and count).
        """
        if not 0 <= k < self.count(c):
            raise KeyError(f"{self.path}: class {c} has {self.count(c)} instances, no instance {k}")
        arrays = self.reader.get(instance_key(c, k))
        return arrays["image"], arrays["mask"].astype(bool)

    def sample(
        self, rng: np.random.Generator, classes: Iterable[int] | None = None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """A random class archive, then a random instance of it (FMWISS Sec. 3.4).

        Args:
            rng: the generator to draw from (two draws: class, then instance).
            classes: restrict the choice to these classes (e.g. the old classes of a step);
                classes without instances are skipped.
        Returns:
            ``(class, image (h, w, 3) uint8, mask (h, w) bool)``.
        Raises:
            ValueError: no instance of any allowed class (names the classes).
        """
        pool = self.classes() if classes is None else sorted(c for c in {int(c) for c in classes} if self.count(c))
        if not pool:
            raise ValueError(
                f"{self.path}: no instance of classes {None if classes is None else sorted(classes)} "
                f"in the memory bank (it holds {self.counts()})"
            )
        c = pool[int(rng.integers(len(pool)))]
        k = int(rng.integers(self.count(c)))
        return (c, *self.get(c, k))


__all__ = [
    "MemoryBank",
    "build_memory_bank",
    "check_image_label",
    "extend_memory_bank",
    "extract_instances",
    "instance_key",
    "sample_instances",
]
