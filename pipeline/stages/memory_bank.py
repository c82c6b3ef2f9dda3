"""Stage ``memory-bank``: FMWISS's memory bank of old-class instances of a step (Sec. 3.4).

Yu et al., "Foundation Model Drives Weakly Incremental Learning for Semantic Segmentation"
(FMWISS, CVPR 2023; ``shared/papers/004``) keep, for each old class, an archive of B foreground
instances, pasted into the new-class images of the next step
(:mod:`pipeline.methods.fmwiss.copy_paste`). The step-0 bank is built from the ground truth of the
step-0 training images (``--split step0.json``); the bank of step t >= 1 is the bank of step t-1
(``--previous``) plus B instances per new class of step t, cut from the step's fused
co-segmentation masks (``--coseg``, read with ``--coseg-params``). Instances, sampling and the
cache layout: :mod:`pipeline.methods.fmwiss.memory`.

``--params``: the ``memory`` section of ``config.yaml`` (the only place its values are set, schema
``schemas/config.schema.yaml``), every key required: ``per_class`` (B; 50 in Sec. 4.5.4),
``min_area`` (pixels) and ``seed``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.cache import CacheReader, open_cache
from pipeline.data.classes import BACKGROUND
from pipeline.data.datasets import step_dataset
from pipeline.data.voc import IMAGE_DIR, load_image
from pipeline.foundation.coseg import (
    READ_TIME_KEYS,
    coseg_label_maps,
    expected_provenance,
    require_step,
    resolve_config,
)
from pipeline.io import read_json
from pipeline.methods.fmwiss.memory import MemoryBank, build_memory_bank, extend_memory_bank
from pipeline.stages.common import parse_params, setup_logging

log = logging.getLogger(__name__)

#: Keys of ``--params`` (the ``memory`` section of config.yaml), all required.
PARAM_KEYS = ("per_class", "min_area", "seed")


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 (hex) of the ids joined by newlines: records which images a bank was built from."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def stage_params(params: Mapping) -> dict:
    """Check ``--params``: exactly the keys of :data:`PARAM_KEYS`, each an integer >= 0.

    Raises:
        ValueError: an unknown key, a missing key or a bad value (names the key).
    """
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ValueError(f"memory-bank --params: unknown key {unknown[0]!r}; expected {list(PARAM_KEYS)}")
    missing = [key for key in PARAM_KEYS if key not in params]
    if missing:
        raise ValueError(
            f"memory-bank --params: key {missing[0]!r} missing; give every key of the `memory` "
            f"section of config.yaml: {list(PARAM_KEYS)}"
        )
    for key in PARAM_KEYS:
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"memory-bank --params: {key} must be an integer >= 0, got {value!r}")
    return {key: params[key] for key in PARAM_KEYS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline memory-bank``."""
    parser.add_argument(
        "--split", required=True, help="step{t}.json written by the splits stage (step 0, or t >= 1 with --previous)"
    )
    parser.add_argument("--data", required=True, help="dataset index JSON written by prepare-data")
    parser.add_argument(
        "--params",
        required=True,
        help='JSON {"per_class": B, "min_area": pixels, "seed": int}, every key required: '
        "the `memory` section of config.yaml",
    )
    parser.add_argument("--out", required=True, help="memory_bank .h5 to write")
    parser.add_argument("--previous", help="step t >= 1: the bank of step t-1, to extend with the classes of step t")
    parser.add_argument(
        "--coseg",
        help="step t >= 1: the step's co-segmentation cache (.h5), whose fused masks give the new-class instances",
    )
    parser.add_argument(
        "--coseg-params", default="{}", help="step t >= 1: JSON coseg config section the cache is read with"
    )
    parser.add_argument("--threads", type=int, default=0, help="image-loading threads (0: load in this thread)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _ordered_map(fn, n: int, threads: int) -> Iterator:
    """``fn(0), ..., fn(n-1)`` in order; ``threads > 0``: computed ahead in a thread pool
    (a bounded window, so a big split is never held in memory at once)."""
    if threads <= 0:
        yield from map(fn, range(n))
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        window = 4 * threads
        futures = {i: pool.submit(fn, i) for i in range(min(window, n))}
        for i in range(n):
            if i + window < n:
                futures[i + window] = pool.submit(fn, i + window)
            yield futures.pop(i).result()


def _ground_truth_sources(data: str, ids: list[str], threads: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(id, image, ground-truth mask)`` of each id (step 0: pixel labels are available)."""
    dataset = step_dataset(data, ids, transform=None)

    def item(i: int) -> tuple[str, np.ndarray, np.ndarray]:
        sample = dataset[i]
        return sample["id"], sample["image"], sample["mask"]

    return _ordered_map(item, len(ids), threads)


def _coseg_sources(
    data: str, ids: list[str], reader: CacheReader, cfg: Mapping, threads: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(id, image, fused co-segmentation label map)`` of each id (step t >= 1: no pixel labels;
    FMWISS Eq. 5 masks, overlaps resolved by the CLIP score, :func:`coseg_label_maps`).

    Raises:
        CacheError: (when iteration starts) the cache lacks an id of the split (names one).
    """
    root = Path(read_json(data)["root"])
    reader.require(ids, "co-segmentation")
    images = _ordered_map(lambda i: load_image(root / IMAGE_DIR / f"{ids[i]}.jpg", ids[i]), len(ids), threads)
    for image_id, image in zip(ids, images):
        yield image_id, image, coseg_label_maps(reader.get(image_id), cfg, image.shape[:2])["fused"]


def run(args: argparse.Namespace) -> None:
    """Build the bank of a step (module docstring).

    Step 0: B instances per base class from the ground truth of the step-0 training images.
    Step t >= 1 (``--previous``, ``--coseg``): the bank of step t-1 plus B instances per new class
    of step t cut from the step's fused co-segmentation masks (:func:`extend_memory_bank`).

    Raises:
        ValueError: bad ``--params`` (an unknown or missing key names it), a file that is not a
            split, or options that do not match the split's step (names them).
        CacheError: a missing or stale previous bank or coseg cache, or one of another task,
            protocol or step (names the file and the differing keys).
    """
    from tqdm import tqdm

    setup_logging()
    params = stage_params(parse_params(args.params))
    split = read_json(args.split)
    missing = [key for key in ("step", "ids", "seen_classes", "new_classes") if key not in split]
    if missing:
        raise ValueError(f"{args.split}: not a split JSON, key {missing[0]!r} missing")
    step, ids = int(split["step"]), list(split["ids"])
    provenance = {
        "task": split.get("task"),
        "protocol": split.get("protocol"),
        "step": step,
        "split_ids_sha256": ids_digest(ids),
        "code_version": __version__,
    }
    if step == 0:
        if args.previous or args.coseg:
            raise ValueError(
                f"{args.split}: step 0 builds a new bank from pixel labels; --previous/--coseg are for steps t >= 1"
            )
        classes = [c for c in split["seen_classes"] if c != BACKGROUND]
        log.info(
            "memory bank of %d classes from the ground truth of %d images of %s: B=%d, min_area=%d, seed=%d",
            len(classes),
            len(ids),
            args.split,
            params["per_class"],
            params["min_area"],
            params["seed"],
        )
        sources = tqdm(
            _ground_truth_sources(args.data, ids, args.threads),
            total=len(ids),
            desc="memory bank",
            unit="img",
            disable=not args.progress,
            mininterval=1.0,
        )
        counts = build_memory_bank(
            args.out, sources, classes, provenance={**provenance, "source": "ground_truth"}, **params
        )
    else:
        if not args.previous or not args.coseg:
            raise ValueError(
                f"{args.split}: step {step} has no pixel labels; give --previous (the bank of step "
                f"{step - 1}) and --coseg (the step's co-segmentation cache)"
            )
        cfg = resolve_config(parse_params(args.coseg_params))
        classes = [c for c in split["new_classes"] if c != BACKGROUND]
        log.info(
            "memory bank: %s + %d classes of step %d from %s: B=%d, min_area=%d, seed=%d",
            args.previous,
            len(classes),
            step,
            args.coseg,
            params["per_class"],
            params["min_area"],
            params["seed"],
        )
        previous = {"task": split.get("task"), "protocol": split.get("protocol"), "step": step - 1}
        MemoryBank(args.previous, expected=previous).close()  # the bank of step t-1 of this task and protocol
        with open_cache(args.coseg, expected_provenance(cfg)) as reader:
            require_step(reader, split)
            provenance.update(
                {
                    "source": "coseg",
                    "coseg_provenance": reader.provenance,
                    "coseg_read": {key: cfg[key] for key in READ_TIME_KEYS},
                }
            )
            sources = tqdm(
                _coseg_sources(args.data, ids, reader, cfg, args.threads),
                total=len(ids),
                desc="memory bank",
                unit="img",
                disable=not args.progress,
                mininterval=1.0,
            )
            counts = extend_memory_bank(args.previous, args.out, sources, classes, provenance=provenance, **params)
    log.info("wrote %s: %d instances of %d classes", args.out, sum(counts.values()), len(counts))
