"""Loader throughput on real VOC JPEGs against the model's: how many DataLoader workers keep an
accelerator fed.

Reads the real VOC 2012 images and masks of ``shared/voc-mini`` (JPEG decoding by Pillow, masks
as palette PNGs) through the pipeline's own training path — :class:`pipeline.data.voc.VOCSegmentation`,
:class:`pipeline.data.transforms.TrainTransform` (random scale in [0.5, 2.0], 512² crop, flip,
normalise) and the loop's collate function — and reports images/s

- of the decode + augmentation work in one process (``workers: 0``), i.e. per worker, and
- of a DataLoader with 1, 2, ... workers (batch 24, as the papers' step 0), with the first
  batch (worker start-up) left out;

then divides a model throughput (``--model-images-per-s``, e.g. the train images/s that
``benchmarks/gpu.py`` reports for DeepLabV3-ResNet-101 at 512², batch 24) by the per-worker rate:
the workers a job needs so the loader does not starve the GPU (config ``workers``).

Run: ``python benchmarks/bench_loader.py [--images 120] [--workers 0 1 2] [--model-images-per-s 150]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pipeline.data.transforms import TrainTransform, pad_collate  # noqa: E402
from pipeline.data.voc import VOCSegmentation, read_ids  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "voc-mini"


def images_per_s(dataset, workers: int, batch_size: int, images: int) -> float:
    """Images/s of a DataLoader over ``images`` images, the first batch (start-up) excluded."""
    if workers == 0:  # the per-worker rate: decode + augment + collate in this process
        start = time.perf_counter()
        for i in range(images):
            pad_collate([dataset[i % len(dataset)]])
        return images / (time.perf_counter() - start)
    subset = torch.utils.data.Subset(dataset, [i % len(dataset) for i in range(images + batch_size)])
    loader = DataLoader(subset, batch_size=batch_size, num_workers=workers, collate_fn=pad_collate, drop_last=True)
    it = iter(loader)
    next(it)  # worker start-up and the first batch
    start, count = time.perf_counter(), 0
    for batch in it:
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def workers_needed(model_images_per_s: float, per_worker_images_per_s: float) -> int:
    """DataLoader workers (one CPU core each) whose images/s reach the model's: ceil(model / per worker)."""
    return math.ceil(model_images_per_s / per_worker_images_per_s)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="a VOC-layout root with real JPEGs")
    parser.add_argument("--ids", default="ids.txt", help="id list under --root")
    parser.add_argument("--mask-dir", default="SegmentationClass")
    parser.add_argument("--images", type=int, default=120, help="images timed per setting")
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--model-images-per-s", type=float, default=None, help="train images/s of the model (benchmarks/gpu.py)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    ids = read_ids(args.root / args.ids)
    dataset = VOCSegmentation(args.root, ids, args.mask_dir, transform=TrainTransform(args.crop_size, (0.5, 2.0)))
    rows = {w: images_per_s(dataset, w, args.batch_size, args.images) for w in args.workers}
    per_worker = round(rows[0] if 0 in rows else rows[min(rows)] / min(rows), 1)
    result = {
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "root": str(args.root),
        "crop_size": args.crop_size,
        "batch_size": args.batch_size,
        "images_per_s": {str(w): round(v, 1) for w, v in rows.items()},
        "per_worker_images_per_s": per_worker,
    }
    print(f"real VOC JPEGs of {args.root}, {args.crop_size}² crops, batch {args.batch_size} ({result['host']})")
    for w, v in rows.items():
        print(f"  workers {w}: {v:7.1f} images/s" + ("  (one process: the per-worker rate)" if w == 0 else ""))
    if args.model_images_per_s:
        need = workers_needed(args.model_images_per_s, per_worker)
        result["workers_needed"] = need
        print(f"  a model at {args.model_images_per_s:.0f} images/s needs >= {need} workers (one CPU core each)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.out)
    return result


if __name__ == "__main__":
    main()
