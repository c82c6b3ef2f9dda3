"""Training on a fraction of a step's images (FMWISS, Yu et al. CVPR 2023, Sec. 4.5.7 and Table 10:
"FMWISS with fewer training data", 30 / 50 / 100 % of the incremental step's images).

The paper gives no sampling rule. Here an image's place in the order of selection depends only
on the seed and its own id: the ids are ranked by ``sha256(f"{seed}:{id}")`` and a fraction f of
n images keeps the first ``k = max(1, floor(f * n + 0.5))`` of that ranking. So, for one seed,

- the subset is the same for every method (it depends on the ids, the seed and f only);
- smaller fractions are nested in larger ones (30 % ⊂ 50 % ⊂ 100 %);
- it does not depend on the order of the ids, and sha256 gives the same ranking on every machine
  and Python or numpy version (numpy's Generator streams may change between versions).

:func:`apply_data_fraction` records the rule, the seed, the fraction and the counts in the split
(``split["data_fraction"]``), next to the kept ``ids``, so a run's data are visible and
reproducible from its split file alone. Torch-free.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

#: How the subset is drawn, as recorded in a split's ``data_fraction`` entry.
RULE = "the k = max(1, floor(fraction * images + 0.5)) ids with the smallest sha256('<seed>:<id>')"


def _check(fraction: float, seed: int) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"data fraction {fraction!r}: expected a number in (0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data fraction seed {seed!r}: expected an integer >= 0")


def selection_order(ids: Sequence[str], seed: int) -> list[str]:
    """The ids in the order a data fraction keeps them: by ``sha256(f"{seed}:{id}")`` ascending.

    Args:
        ids: image ids (unique).
        seed: integer >= 0.
    Returns:
        a new list, the same ids reordered.
    Raises:
        ValueError: a repeated id (named), or a bad seed.
    """
    _check(1.0, seed)
    seen: set[str] = set()
    for image_id in ids:
        if image_id in seen:
            raise ValueError(f"id {image_id!r} appears twice; a split lists every image once")
        seen.add(image_id)
    return sorted(ids, key=lambda i: (hashlib.sha256(f"{seed}:{i}".encode()).hexdigest(), i))


def fraction_size(images: int, fraction: float) -> int:
    """How many of ``images`` a ``fraction`` keeps: ``max(1, floor(fraction * images + 0.5))``
    (round half up, at least one image; 0 for no image).

    Raises:
        ValueError: ``fraction`` outside (0, 1] or ``images`` < 0.
    """
    _check(fraction, 0)
    if images < 0:
        raise ValueError(f"images={images}: expected a count >= 0")
    return 0 if images == 0 else max(1, math.floor(fraction * images + 0.5))


def data_fraction_ids(ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The ids a ``fraction`` of ``ids`` keeps under ``seed`` (rule: module docstring), in the
    order of ``ids``.

    Args:
        ids: the step's training ids (unique).
        fraction: in (0, 1]; 1 keeps every id.
        seed: integer >= 0.
    Returns:
        a sub-list of ``ids``; for one seed, the list for a smaller fraction is a sub-list of the
        list for a larger one.
    Raises:
        ValueError: a fraction outside (0, 1], a bad seed or a repeated id.
    """
    _check(fraction, seed)
    kept = set(selection_order(ids, seed)[: fraction_size(len(ids), fraction)])
    return [i for i in ids if i in kept]


def apply_data_fraction(split: Mapping, fraction: float, seed: int) -> dict:
    """A step's split (``splits`` stage, :func:`pipeline.data.splits.build_splits`) restricted to
    a ``fraction`` of its training images.

    Args:
        split: ``{"ids": [...], "labels": {id: [...]}, "task", "step", ...}``.
        fraction: in (0, 1].
        seed: integer >= 0.
    Returns:
        a new split: ``ids`` and ``labels`` of the kept images only, and ``data_fraction`` =
        ``{"fraction", "seed", "images" (before), "kept", "rule"}``; every other key unchanged.
    Raises:
        ValueError: ``split`` without ``ids``/``labels`` or already restricted (names its task and
            step), an id without labels, a bad fraction or seed.
    """
    where = f"split of task {split.get('task')!r} step {split.get('step')!r}"
    for key in ("ids", "labels"):
        if key not in split:
            raise ValueError(f"{where}: no {key!r}; expected a step{{t}}.json of the splits stage")
    if "data_fraction" in split:
        raise ValueError(f"{where}: already restricted to a data fraction ({split['data_fraction']})")
    missing = [i for i in split["ids"] if i not in split["labels"]]
    if missing:
        raise ValueError(f"{where}: ids without image labels, e.g. {missing[:5]}")
    ids = data_fraction_ids(list(split["ids"]), fraction, seed)
    return {
        **split,
        "ids": ids,
        "labels": {i: split["labels"][i] for i in ids},
        "data_fraction": {
            "fraction": float(fraction),
            "seed": int(seed),
            "images": len(split["ids"]),
            "kept": len(ids),
            "rule": RULE,
        },
    }


__all__ = ["RULE", "apply_data_fraction", "data_fraction_ids", "fraction_size", "selection_order"]
