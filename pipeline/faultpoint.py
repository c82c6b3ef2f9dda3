"""Deterministic kill points for the fault harness (docs/reliability.md, "Fault injection").

Inert unless the environment variable ``WILSS_FAULT`` is set; the writers call
:func:`fault_point` at their write boundaries (:func:`pipeline.io.atomic_path`, so every JSON,
CSV, PNG, ``model.pt`` and ``checkpoint.pt``; :meth:`pipeline.cache.CacheWriter.put` for the HDF5
caches). ``WILSS_FAULT="<when>:<glob>@<n>"`` makes the process ``SIGKILL`` itself at the ``n``-th
write (1-based, counted in this process) of a file whose name matches ``glob``
(:func:`fnmatch.fnmatch`, e.g. ``checkpoint.pt``, ``*.h5``, ``*.png``):

- ``during``: while the write is incomplete. An atomic write: its temporary file is cut to half
  its bytes, then the kill, before the rename (the final name never appears). An HDF5 cache: inside
  the image's group, after its first dataset and before the group is marked complete (nothing is
  flushed first, as with a real kill).
- ``after``: just after the write is complete (renamed; an image's group marked complete and
  flushed), e.g. ``after:*.h5@12`` stops a cache stage with 12 images cached.

A ``SIGKILL`` runs no handler, ``finally`` block or ``atexit``: the process ends as a scheduler's
or the OOM killer's kill ends it, at a point the harness chose.
"""

from __future__ import annotations

import fnmatch
import os
import re
import signal
import sys
from pathlib import Path

#: The environment variable read by :func:`fault_point`.
VARIABLE = "WILSS_FAULT"
_SPEC = re.compile(r"^(during|after):([^@]+)@([1-9]\d*)$")
_seen = 0  # matching writes in this process so far


def parse_fault(spec: str) -> tuple[str, str, int]:
    """``"during:checkpoint.pt@2"`` → ``("during", "checkpoint.pt", 2)``.

    Raises:
        ValueError: ``spec`` is not ``<during|after>:<glob>@<n>`` with n >= 1 (names the value).
    """
    match = _SPEC.match(spec.strip())
    if not match:
        raise ValueError(
            f"{VARIABLE}={spec!r}: expected '<during|after>:<file name glob>@<n>' with n >= 1, "
            "e.g. 'during:checkpoint.pt@2' or 'after:*.h5@12' (docs/reliability.md)"
        )
    return match.group(1), match.group(2), int(match.group(3))


def fault_point(path: str | os.PathLike, when: str, partial: str | os.PathLike | None = None) -> None:
    """Kill this process here if ``WILSS_FAULT`` names this write (module docstring); else return.

    Args:
        path: the file's final name (matched against the glob by its name).
        when: ``"during"`` (the write is incomplete) or ``"after"`` (it is complete).
        partial: with ``during``, a file to cut to half its bytes before the kill (the temporary
            file of an atomic write); None leaves the files as they are.
    Raises:
        ValueError: a malformed ``WILSS_FAULT`` (see :func:`parse_fault`).
    """
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    kind, glob, n = parse_fault(spec)
    if kind != when or not fnmatch.fnmatch(Path(path).name, glob):
        return
    global _seen
    _seen += 1
    if _seen != n:
        return
    if partial is not None and Path(partial).is_file():
        os.truncate(partial, Path(partial).stat().st_size // 2)
    sys.stderr.write(f"{VARIABLE}={spec}: SIGKILL {when} write #{n} of {path}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["VARIABLE", "fault_point", "parse_fault"]
