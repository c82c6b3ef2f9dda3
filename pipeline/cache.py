"""Per-image HDF5 caches with provenance: co-segmentation scores, CAM pseudo-labels, memory bank.

Layout (DESIGN.md, "HDF5 caches"): one file per (task, protocol, step); one group per image id
(``/images/<id>``) holding that image's datasets, each compressed (gzip) and chunked as one
chunk per dataset, so reading an image touches only its own chunks. Floating-point arrays are
stored as float16 unless told otherwise (scores at feature resolution; the consumer does the
post-processing whose hyper-parameters are ablated).

Provenance: the root group's attributes record what produced the cache (models, weights tags or
checkpoint hashes, input size, seeds, code version...). :func:`open_cache` compares them with
what the reader expects and raises :class:`CacheError` on any difference, so a stale cache is an
error rather than a silent reuse.

Atomicity and resume: :class:`CacheWriter` writes to ``<name>.partial.h5`` beside the target and
renames it onto the target only in :meth:`CacheWriter.finish`. After a kill, the partial file
stays; a new writer with the same provenance reopens it and :attr:`CacheWriter.done` lists the
images already written (an image's group is marked complete only after all its datasets are
written), so the producer skips them. A partial file with other provenance is discarded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.faultpoint import fault_point

log = logging.getLogger(__name__)

#: Attribute marking an image group as fully written.
_COMPLETE = "_complete"
#: Root attribute holding the JSON-encoded provenance.
_PROVENANCE = "provenance"
GZIP_LEVEL = 4


class CacheError(ValueError):
    """A cache is missing, unreadable, incomplete or was produced with other settings."""


def _normalise(value: Any) -> Any:
    """JSON round-trip so that tuples/lists, numpy scalars and ints/floats compare as stored."""

    def default(obj):
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        raise TypeError(f"provenance value {obj!r} ({type(obj).__name__}) is not JSON-serialisable")

    return json.loads(json.dumps(value, sort_keys=True, default=default))


def provenance_mismatch(stored: Mapping, expected: Mapping) -> list[str]:
    """Human-readable differences between two provenance dicts (empty if they agree on every key
    of ``expected``; keys only in ``stored`` are ignored)."""
    stored, expected = _normalise(dict(stored)), _normalise(dict(expected))
    problems = []
    for key in sorted(expected):
        if key not in stored:
            problems.append(f"{key}: not recorded in the cache (expected {expected[key]!r})")
        elif stored[key] != expected[key]:
            problems.append(f"{key}: cache has {stored[key]!r}, expected {expected[key]!r}")
    return problems


def _partial_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _read_provenance(handle: h5py.File, path: Path) -> dict:
    if _PROVENANCE not in handle.attrs:
        raise CacheError(f"{path}: no provenance attribute; not a cache written by this pipeline")
    return json.loads(handle.attrs[_PROVENANCE])


class CacheWriter:
    """Write a per-image cache atomically and resumably (see the module docstring).

    Args:
        path: the final ``.h5`` path.
        provenance: JSON-serialisable dict describing what produced the cache.
        float_dtype: dtype floating arrays are stored as (float16 by default).

    Use as a context manager; call :meth:`finish` when every image is written (leaving the block
    without it keeps the partial file for a later resume).
    """

    def __init__(self, path: str | os.PathLike, provenance: Mapping, float_dtype: str = "float16"):
        self.path = Path(path)
        self.partial = _partial_path(self.path)
        self.provenance = _normalise(dict(provenance))
        self.float_dtype = np.dtype(float_dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self._open()
        images = self.handle.require_group("images")
        self.done: set[str] = {key for key, group in images.items() if group.attrs.get(_COMPLETE, False)}
        if self.done:
            log.info("%s: resuming, %d images already cached", self.partial, len(self.done))

    def _open(self) -> h5py.File:
        if self.partial.exists():
            try:
                handle = h5py.File(self.partial, "a")
                if not provenance_mismatch(_read_provenance(handle, self.partial), self.provenance):
                    return handle
                handle.close()
                log.warning("%s was written with other settings: starting over", self.partial)
            except (OSError, CacheError) as error:  # truncated by a kill in the middle of a write
                log.warning("%s is unreadable (%s): starting over", self.partial, error)
            self.partial.unlink()
        handle = h5py.File(self.partial, "w")
        handle.attrs[_PROVENANCE] = json.dumps(self.provenance, sort_keys=True)
        return handle

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.handle:
            self.handle.close()
            self.handle = None

    def put(self, image_id: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None) -> None:
        """Store one image's arrays (each compressed, one chunk) and attributes, then mark it done.

        Raises:
            ValueError: an empty id or one containing ``/``, or an array that is not numeric.
        """
        if not image_id or "/" in image_id:
            raise ValueError(f"image id {image_id!r}: must be non-empty and contain no '/'")
        images = self.handle["images"]
        if image_id in images:  # an incomplete group left by a kill
            del images[image_id]
        group = images.create_group(image_id)
        for n, (name, array) in enumerate(arrays.items()):
            array = np.asarray(array)
            if array.dtype.kind == "f":
                array = array.astype(self.float_dtype)
            elif array.dtype.kind not in "biu":
                raise ValueError(f"{image_id}/{name}: dtype {array.dtype} is not numeric")
            kwargs = {}
            if array.size and array.ndim:
                kwargs = {"compression": "gzip", "compression_opts": GZIP_LEVEL, "chunks": array.shape}
            group.create_dataset(name, data=array, **kwargs)
            if n == 0:  # a kill inside the group: inert unless WILSS_FAULT is set (pipeline/faultpoint.py)
                fault_point(self.path, "during")
        for key, value in (attrs or {}).items():
            group.attrs[key] = value
        group.attrs[_COMPLETE] = True
        self.handle.flush()
        self.done.add(image_id)
        fault_point(self.path, "after")

    def finish(self, attrs: Mapping[str, Any] | None = None) -> Path:
        """Record root attributes (e.g. summary numbers), close, and rename onto the final path."""
        for key, value in (attrs or {}).items():
            self.handle.attrs[key] = value
        self.close()
        os.replace(self.partial, self.path)
        return self.path


class CacheReader:
    """Read access to a finished cache; see :func:`open_cache`."""

    def __init__(self, path: Path, handle: h5py.File, provenance: dict):
        self.path, self.handle, self.provenance = path, handle, provenance

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.handle.close()

    def ids(self) -> list[str]:
        return list(self.handle["images"].keys())

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.handle["images"]

    def __len__(self) -> int:
        return len(self.handle["images"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def require(self, ids: Iterable[str], what: str) -> None:
        """Check that every id has an entry.

        Args:
            ids: the image ids a stage is about to read.
            what: what an entry is, for the message (``"pseudo-label"``, ``"co-segmentation"``).
        Raises:
            CacheError: naming the cache, the number of missing ids and the first of them.
        """
        ids = list(ids)  # an iterator would be spent by the first pass, and the count would read 0
        missing = [i for i in ids if i not in self]
        if missing:
            raise CacheError(
                f"{self.path}: no {what} for {len(missing)} of the {len(ids)} images of the step, e.g. {missing[0]!r}"
            )

    def require_attrs(self, expected: Mapping[str, Any], what: str) -> None:
        """Check the root attributes that say what the cache was made for (task, protocol, step,
        classes: recorded by :meth:`CacheWriter.finish`, not part of the provenance) against the
        reader's.

        Args:
            expected: the keys and values the root attributes must have.
            what: what the reader needs, for the message (``"the co-segmentation cache of 15-5
                overlap step 1"``).
        Raises:
            CacheError: naming the cache, every differing key with both values, and ``what``.
        """
        problems = provenance_mismatch(self.root_attrs(), expected)
        if problems:
            raise CacheError(
                f"{self.path}: not {what}: {'; '.join(problems)}. Pass the cache of this step "
                "(or re-run the stage that writes it)"
            )

    def get(self, image_id: str) -> dict[str, np.ndarray]:
        """All arrays of one image (as stored: float16 stays float16).

        Raises:
            CacheError: the id is not in the cache.
        """
        group = self._group(image_id)
        return {name: group[name][()] for name in group}

    def attrs(self, image_id: str) -> dict[str, Any]:
        """The image's attributes (without the internal completion flag)."""
        return {k: v for k, v in self._group(image_id).attrs.items() if k != _COMPLETE}

    def root_attrs(self) -> dict[str, Any]:
        return {k: v for k, v in self.handle.attrs.items() if k != _PROVENANCE}

    def _group(self, image_id: str) -> h5py.Group:
        images = self.handle["images"]
        if image_id not in images:
            raise CacheError(f"{self.path}: no entry for image {image_id!r} ({len(images)} images cached)")
        return images[image_id]


def open_cache(path: str | os.PathLike, expected: Mapping | None = None) -> CacheReader:
    """Open a finished cache for reading, checking its provenance against ``expected``.

    Args:
        path: the ``.h5`` file written by :class:`CacheWriter`.
        expected: keys and values the provenance must have (None: no check).
    Raises:
        CacheError: missing file (with a hint when only the partial file exists), unreadable file,
            or provenance differing from ``expected`` (every differing key is named).
    """
    path = Path(path)
    if not path.exists():
        hint = (
            " (an unfinished .partial.h5 exists: re-run the stage to resume it)" if _partial_path(path).exists() else ""
        )
        raise CacheError(f"{path}: cache not found{hint}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise CacheError(f"{path}: not a readable HDF5 file ({error})") from error
    provenance = _read_provenance(handle, path)
    if expected is not None:
        problems = provenance_mismatch(provenance, expected)
        if problems:
            handle.close()
            raise CacheError(
                f"{path} is stale, produced with other settings: "
                + "; ".join(problems)
                + ". Re-run the stage that writes it (snakemake --forcerun <rule>)."
            )
    return CacheReader(path, handle, provenance)


__all__ = ["CacheError", "CacheReader", "CacheWriter", "open_cache", "provenance_mismatch"]
