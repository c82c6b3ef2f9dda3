"""The indexing pass every dataset reader runs: one function per image id, in a process pool,
results in input order, with a progress bar (VOC pairs, instance maps, COCO label maps, the
COCO-to-VOC assembly)."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Sequence

from tqdm import tqdm


def index_in_order(
    check: Callable[[str], dict], ids: Sequence[str], workers: int, desc: str, progress: bool = True
) -> dict[str, dict]:
    """``{id: entry}`` of ``check(id)`` for every id, in ``ids`` order.

    Args:
        check: a picklable function (e.g. a ``functools.partial`` of a module-level function)
            returning a dict with the key ``"id"`` (taken out of the entry) and the entry's fields.
        ids: the image ids (or whatever ``check`` takes, each once).
        workers: 0 runs in this process; >0 a ``multiprocessing`` pool of that many processes
            (chunked ``imap``: chunks of up to 256 ids, about 8 per worker).
        desc: the progress bar's label.
        progress: show a tqdm progress bar (stderr).
    Raises:
        whatever ``check`` raises, for the first failing id in ``ids`` order.
    """
    index: dict[str, dict] = {}
    bar = tqdm(total=len(ids), desc=desc, unit="img", disable=not progress, mininterval=1.0)
    with bar, contextlib.ExitStack() as stack:
        if workers > 0 and len(ids) > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            results = pool.imap(check, ids, chunksize=max(1, min(256, len(ids) // (8 * workers))))
        else:
            results = map(check, ids)
        for entry in results:
            index[entry.pop("id")] = entry
            bar.update()
    return index


__all__ = ["index_in_order"]
