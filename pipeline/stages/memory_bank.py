"""Stage ``memory-bank``: FMWISS's memory bank of old-class instances and its copy-paste augmentation.

Source: Yu et al., "Foundation Model Drives Weakly Incremental Learning for Semantic Segmentation"
(FMWISS, CVPR 2023; ``shared/papers/004``), Sec. 3.4 and Fig. 4: "we first construct a memory
bank for each old class, and each class archive will store B foreground instances and
segmentation labels during the base model training. Then, in step t, we randomly pick one pair
of foreground images and labels from a randomly selected old class archive, and randomly paste
them to the new class image." The pasted pixels get target 1 for their class in the old-class
BCE loss (Eq. 8-9); Sec. 4.5.4 fixes the augmentation probability to 0.5 and B = 50.

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
  overlaps resolved by the CLIP score); step t+1 pastes from it. The ``memory-bank`` stage builds
  the step-0 bank from the ground truth of the step-0 training images (``--split step0.json``),
  and the bank of step t >= 1 with ``--previous`` (bank of step t-1) and ``--coseg`` (the step's
  cache, read with ``--coseg-params``).
* **Pasting** (:func:`copy_paste`): one instance per augmented image (as written in the paper),
  at its stored scale by default (bank and training images come from the same dataset, and the
  training transform rescales the composed image afterwards), shrunk if needed so that it fits,
  at a uniformly random position with the whole instance inside the image.

Cache layout (:mod:`pipeline.cache`): one group per instance, ``c{class:02d}_{k:03d}`` (k = 0..n-1
within the class archive), datasets ``image`` (h, w, 3) uint8 and ``mask`` (h, w) uint8 (0/1),
attributes ``class``, ``source`` (image id), ``area`` (pixels) and ``bbox`` (y0, x0, y1, x1 in
the source image, end exclusive); root attributes ``classes`` and ``counts`` (int64 arrays,
instances per class) and ``candidates`` (candidate instances per class).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
import numpy as np
from pipeline.cache import CacheError, open_cache
from pipeline.data.classes import BACKGROUND
from pipeline.methods.fmwiss.memory import (log, DEFAULT_PARAMS, build_memory_bank, extend_memory_bank, ids_digest, stage_params)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline memory-bank``."""
    parser.add_argument("--split", required=True,
                        help="step{t}.json written by the splits stage (step 0, or t >= 1 with --previous)")
    parser.add_argument("--data", required=True, help="dataset index JSON written by prepare-data")
    parser.add_argument("--params", default="{}",
                        help='JSON {"per_class": B, "min_area": pixels, "seed": int} (defaults '
                             f'{json.dumps(DEFAULT_PARAMS)})')
    parser.add_argument("--out", required=True, help="memory_bank .h5 to write")
    parser.add_argument("--previous", help="step t >= 1: the bank of step t-1, to extend with the classes of step t")
    parser.add_argument("--coseg", help="step t >= 1: the step's co-segmentation cache (.h5), whose fused "
                                        "masks give the new-class instances")
    parser.add_argument("--coseg-params", default="{}",
                        help="step t >= 1: JSON coseg config section the cache is read with")
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
    from pipeline.data.datasets import step_dataset

    dataset = step_dataset(data, ids, transform=None)

    def item(i: int) -> tuple[str, np.ndarray, np.ndarray]:
        sample = dataset[i]
        return sample["id"], sample["image"], sample["mask"]

    return _ordered_map(item, len(ids), threads)


def _coseg_sources(data: str, ids: list[str], reader, cfg: Mapping, threads: int
                   ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(id, image, fused co-segmentation label map)`` of each id (step t >= 1: no pixel labels;
    FMWISS Eq. 5 masks, overlaps resolved by the CLIP score, :func:`coseg_label_maps`)."""
    from pipeline.data.voc import IMAGE_DIR, load_image
    from pipeline.foundation.coseg import coseg_label_maps
    from pipeline.io import read_json

    root = Path(read_json(data)["root"])
    missing = [i for i in ids if i not in reader]
    if missing:
        raise CacheError(f"{reader.path}: no co-segmentation for {len(missing)} images of the split, "
                         f"e.g. {missing[0]!r}")
    images = _ordered_map(lambda i: load_image(root / IMAGE_DIR / f"{ids[i]}.jpg", ids[i]), len(ids), threads)
    for image_id, image in zip(ids, images):
        yield image_id, image, coseg_label_maps(reader.get(image_id), cfg, image.shape[:2])["fused"]


def run(args: argparse.Namespace) -> None:
    """Build the bank of a step (module docstring).

    Step 0: B instances per base class from the ground truth of the step-0 training images.
    Step t >= 1 (``--previous``, ``--coseg``): the bank of step t-1 plus B instances per new class
    of step t cut from the step's fused co-segmentation masks (:func:`extend_memory_bank`).

    Raises:
        ValueError: bad ``--params``, a file that is not a split, or options that do not match
            the split's step (names them).
        CacheError: a missing or stale previous bank or coseg cache.
    """
    from tqdm import tqdm

    from pipeline import __version__
    from pipeline.io import read_json
    from pipeline.stages.common import parse_params, setup_logging

    setup_logging()
    params = stage_params(parse_params(args.params))
    split = read_json(args.split)
    missing = [key for key in ("step", "ids", "seen_classes", "new_classes") if key not in split]
    if missing:
        raise ValueError(f"{args.split}: not a split JSON, key {missing[0]!r} missing")
    step, ids = int(split["step"]), list(split["ids"])
    provenance = {"task": split.get("task"), "protocol": split.get("protocol"), "step": step,
                  "split_ids_sha256": ids_digest(ids), "code_version": __version__}
    common = dict(per_class=params["per_class"], seed=params["seed"], min_area=params["min_area"])
    if step == 0:
        if args.previous or args.coseg:
            raise ValueError(f"{args.split}: step 0 builds a new bank from pixel labels; "
                             "--previous/--coseg are for steps t >= 1")
        classes = [c for c in split["seen_classes"] if c != BACKGROUND]
        log.info("memory bank of %d classes from the ground truth of %d images of %s: B=%d, min_area=%d, seed=%d",
                 len(classes), len(ids), args.split, params["per_class"], params["min_area"], params["seed"])
        sources = tqdm(_ground_truth_sources(args.data, ids, args.threads), total=len(ids), desc="memory bank",
                       unit="img", disable=not args.progress, mininterval=1.0)
        counts = build_memory_bank(args.out, sources, classes, provenance={**provenance, "source": "ground_truth"},
                                   **common)
    else:
        if not args.previous or not args.coseg:
            raise ValueError(f"{args.split}: step {step} has no pixel labels; give --previous (the bank of step "
                             f"{step - 1}) and --coseg (the step's co-segmentation cache)")
        from pipeline.foundation.coseg import (
            READ_TIME_KEYS,
            expected_provenance,
            resolve_config,
        )

        cfg = resolve_config(parse_params(args.coseg_params))
        classes = [c for c in split["new_classes"] if c != BACKGROUND]
        log.info("memory bank: %s + %d classes of step %d from %s: B=%d, min_area=%d, seed=%d", args.previous,
                 len(classes), step, args.coseg, params["per_class"], params["min_area"], params["seed"])
        with open_cache(args.coseg, expected_provenance(cfg)) as reader:
            provenance.update({"source": "coseg", "coseg_provenance": reader.provenance,
                               "coseg_read": {key: cfg[key] for key in READ_TIME_KEYS}})
            sources = tqdm(_coseg_sources(args.data, ids, reader, cfg, args.threads), total=len(ids),
                           desc="memory bank", unit="img", disable=not args.progress, mininterval=1.0)
            counts = extend_memory_bank(args.previous, args.out, sources, classes, provenance=provenance, **common)
    log.info("wrote %s: %d instances of %d classes", args.out, sum(counts.values()), len(counts))

