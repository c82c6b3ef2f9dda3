"""Atomic file output: every artifact is written to a temporary name and renamed when complete.

A crash (or ``SIGKILL``) in the middle of a write therefore never leaves a file that looks
finished: the temporary file carries a ``.tmp-<pid>`` suffix that no rule declares as output.
A kill leaves that temporary behind; the next write of the same path removes it (when no process
of that id is running on this host), so a re-run after a kill leaves no stale temporaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.faultpoint import fault_point

log = logging.getLogger(__name__)


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` (``<stem>.tmp-<pid><suffix>``) left by killed writers.

    A temporary whose pid is a running process (another writer, or this one) is kept.

    Returns:
        the removed paths (each also logged as a warning).
    """
    path = Path(path)
    pattern = re.compile(rf"{re.escape(path.stem)}\.tmp-(\d+){re.escape(path.suffix)}")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and not _running(int(match.group(1))) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            log.warning("removed %s, the temporary of a killed writer of %s", candidate, path.name)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the suffix of ``path`` (``model.tmp-123.pt``) so that libraries
    choosing a format from the extension (PIL, matplotlib, h5py) still work.

    Temporaries of ``path`` left by killed writers are removed first
    (:func:`remove_stale_temporaries`).

    Raises:
        Whatever the block raises; the temporary file is removed in that case.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        fault_point(path, "during", partial=tmp)  # inert unless WILSS_FAULT is set (pipeline/faultpoint.py)
        os.replace(tmp, path)
        fault_point(path, "after")
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (numpy scalars/arrays allowed)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; raise ``ValueError`` naming the file if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def file_sha256(path: str | os.PathLike) -> str:
    """Full sha256 hex digest of a file's bytes (read in 4 MiB blocks).

    Raises:
        FileNotFoundError: naming the path.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
