"""Safe, byte-deterministic ``torch`` checkpoints: every ``.pt`` the pipeline writes or reads.

Loading: :func:`load_checkpoint` calls ``torch.load(..., weights_only=True)`` only. Torch's
restricted unpickler rebuilds tensors, ``dict``/``OrderedDict``/``list``/``tuple``/``set``,
strings, numbers, ``None``, ``torch.dtype``/``torch.device``/``torch.Size`` and refuses every other
Python global, so a file crafted with a ``__reduce__`` payload cannot run code when it is loaded
(``weights_only=False`` would run it). Every failure is a :class:`CheckpointError` (a
``ValueError``; a missing file is also a ``FileNotFoundError``) whose message names the file,
says what is wrong and what to do.

Saving: :func:`save_checkpoint` writes atomically (:func:`pipeline.io.atomic_path`) and the same
object gives the same bytes wherever it is written. ``torch.save(obj, "<dir>/<stem>.pt")``
prefixes every record of its zip archive with the file's stem (``model.tmp-4242/data.pkl``, ...),
so saving to the pid-suffixed temporary name of an atomic write gave different bytes on every
run, and every hash of them (fingerprints, cache provenance) changed; saving through an open file
handle makes torch use the fixed prefix ``archive/``. The object is first converted to the types
the safe loader accepts (numpy scalars → Python numbers, numpy arrays → tensors, ``Path`` → ``str``,
sets → sorted lists, subclasses of ``int``/``float``/``str``/``tuple``/``dict`` → the base type), and
anything else is refused *before* writing, so a file the pipeline writes always loads again.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io import atomic_path

#: First bytes of a zip archive (torch's format since 1.6).
_ZIP_MAGIC = b"PK\x03\x04"

_REMEDY = "delete it and rerun the stage that writes it (or copy the file again)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (safely): the message names the file, the problem and the remedy."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds Python objects the safe unpickler refuses: loading it could run code."""


def _plain(obj: Any, where: str) -> Any:
    """``obj`` made of the types ``torch.load(weights_only=True)`` accepts; unchanged if it already is."""
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    if isinstance(obj, (torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        try:
            return torch.from_numpy(np.array(obj, order="C", copy=True))  # a copy: writable, owned
        except TypeError as error:  # object, string, datetime arrays
            raise TypeError(
                f"{where}: a numpy array of dtype {obj.dtype} cannot be stored as a tensor ({error})"
            ) from error
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, int):  # IntEnum and other subclasses would be pickled as their class
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):  # also StrEnum
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):  # string sets iterate in a per-process order: sort them
        return sorted((_plain(item, f"{where}[...]") for item in obj), key=repr)
    if isinstance(obj, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]") for i, item in enumerate(obj)]
        kind = list if isinstance(obj, list) else tuple
        if type(obj) is kind and all(new is old for new, old in zip(items, obj, strict=True)):
            return obj
        return kind(items)
    if isinstance(obj, dict):
        items = [
            (_plain(key, f"{where} key {key!r}"), _plain(value, f"{where}[{key!r}]")) for key, value in obj.items()
        ]
        kind = OrderedDict if isinstance(obj, OrderedDict) else dict
        if type(obj) is kind and all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, obj.items(), strict=True)):
            return obj  # keeps a state_dict's ``_metadata`` (module versions)
        out = kind(items)
        if hasattr(obj, "_metadata"):
            out._metadata = _plain(obj._metadata, f"{where}._metadata")
        return out
    raise TypeError(
        f"{where}: {type(obj).__module__}.{type(obj).__qualname__} cannot be saved safely (a checkpoint holds "
        "tensors, numbers, strings, None and lists/tuples/dicts of them); convert it to one of those"
    )


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` with ``torch.save``: atomic, and byte-identical for equal objects.

    Args:
        obj: tensors, ``None``, ``bool``/``int``/``float``/``str``/``bytes``, ``torch.dtype``/
            ``device``/``Size`` and (nested) ``dict``/``OrderedDict``/``list``/``tuple`` of them (a
            model's ``state_dict()``, an optimizer's, configs). Converted first: numpy scalars →
            Python numbers, numpy arrays → tensors (``torch.from_numpy``), ``os.PathLike`` →
            ``str``, sets → sorted lists, subclasses of the built-in types → the built-in type.
        path: destination (parents created); the data go to a temporary name beside it, flushed
            to disk and renamed onto ``path`` when complete.
    Raises:
        TypeError: ``obj`` holds another type (names where, e.g. ``meta['train']['x']``); nothing
            is written.
    """
    obj = _plain(obj, "checkpoint")
    with atomic_path(path) as tmp:
        # Through a handle, torch names the archive's records "archive/..." instead of "<tmp stem>/...".
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())


def _torch_reason(error: BaseException) -> str:
    """The informative line of torch's (long, multi-paragraph) load error."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()]
    lines = [line for line in lines if line and line != "WeightsUnpickler error:"]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line
    reason = lines[0].split(". ")[0] if lines else type(error).__name__  # torch appends advice sentences
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _unsafe_global(error: BaseException) -> str | None:
    """The Python global the safe unpickler refused (``getattr``, ``posix.system``), if named."""
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return match.group(1) if match else None


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu", what: str = "checkpoint"
) -> Any:
    """Load a ``torch.save`` file with the safe unpickler (``weights_only=True``) only.

    Args:
        path: the file (``.pt``/``.pth``, zip or legacy format).
        map_location: where tensors go (``torch.load``'s argument).
        what: what the file is, for messages (``"model file"``, ``"coseg.ssl.checkpoint"``).
    Returns:
        The saved object: tensors, dicts/lists/tuples, strings, numbers, ``None``.
    Raises:
        CheckpointNotFoundError: no such file (also a ``FileNotFoundError``).
        UnsafeCheckpointError: a file holding Python objects the safe unpickler refuses (names the
            global, e.g. ``getattr`` or ``posix.system``: loading it could run code).
        CheckpointError: not a file; an empty file; a truncated or corrupt archive; a file that is
            not a torch checkpoint; an unreadable file. Every message starts with the path.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(
            f"{path}: {what} not found; check the path, or run the stage that writes it first"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is not a file; expected a torch checkpoint (.pt)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path}: {what} is empty (0 bytes; an interrupted write or copy, or a full disk); {_REMEDY}"
        )
    head = b""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        name = _unsafe_global(error)
        if name is None and head != _ZIP_MAGIC:
            raise CheckpointError(
                f"{path}: {what} is not a torch checkpoint ({size} bytes, neither a torch zip archive nor a "
                f"pickle the safe loader reads: {_torch_reason(error)}); expected a file written by torch.save"
            ) from None
        found = f"the Python global {name!r}" if name else f"objects other than tensors ({_torch_reason(error)})"
        raise UnsafeCheckpointError(
            f"{path}: {what} refused: it holds {found}, and a file with such objects may run code when "
            "it is loaded, so it is not loaded (accepted: tensors, numbers, strings, None, and lists/tuples/"
            "dicts of them). Use a file of tensors only (a state_dict); if you trust its source, re-save "
            "just its tensors with torch.save(state_dict, path)"
        ) from None
    except OSError as error:  # permissions, I/O errors
        raise CheckpointError(f"{path}: {what} cannot be read ({error})") from error
    except Exception as error:  # RuntimeError (PytorchStreamReader), EOFError, ... for damaged files
        damage = "truncated or corrupt" if head == _ZIP_MAGIC else "not a torch checkpoint, or truncated"
        raise CheckpointError(
            f"{path}: {what} is {damage} ({size} bytes; torch: {_torch_reason(error)}); {_REMEDY}"
        ) from error


__all__ = ["CheckpointError", "CheckpointNotFoundError", "UnsafeCheckpointError", "load_checkpoint", "save_checkpoint"]
