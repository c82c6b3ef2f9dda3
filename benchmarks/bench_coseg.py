"""Co-segmentation throughput: batched vs one image at a time, and cache read vs recompute.

Runs the ``coseg`` stage's :class:`pipeline.foundation.compute.CosegModels` (CLIP with MaskCLIP's last
block + SSL ViT seed attention, FMWISS Eq. 1-4) on random images of one VOC-like input shape,
with random-init models (``pretrained: none``; same code path as real weights, so the timings of
the forward passes are those of the architectures). Measures, in one process:

1. co-segmentation images/s with ``--batch-size`` images per forward pass and with one image per
   pass (the ratio batched / single is the speed-up of batching);
2. the cache: every result written with :class:`pipeline.cache.CacheWriter` (float16, gzip),
   its bytes per image, and images/s of reading an entry back + the read-time post-processing at
   image resolution (:func:`pipeline.foundation.coseg.coseg_masks`) versus recomputing it
   (the batched forward passes + the same post-processing).

Writes ``benchmarks/results/coseg.json``.

Run: ``python benchmarks/bench_coseg.py [--images 32 --batch-size 8 --input-size 448
--clip ViT-B-16 --ssl vit_base_patch16_224 --device cpu --threads 2]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pipeline.cache import CacheWriter, open_cache  # noqa: E402
from pipeline.foundation.compute import CosegModels  # noqa: E402
from pipeline.foundation.coseg import coseg_masks, expected_provenance, resolve_config  # noqa: E402
from pipeline.io import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "coseg.json"
NEW_CLASSES = [16, 17, 18, 19, 20]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def co_segment(
    models: CosegModels,
    images: torch.Tensor,
    ids: list[str],
    labels: list[list[int]],
    batch_size: int,
    device: torch.device,
) -> tuple[list[dict], float]:
    """All images in passes of ``batch_size``; returns the results and the wall time."""
    _sync(device)
    start = time.perf_counter()
    out = []
    for i in range(0, len(ids), batch_size):
        out += models(images[i : i + batch_size], ids[i : i + batch_size], labels[i : i + batch_size])
    _sync(device)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=448, help="long side fed to the models")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=[375, 500],
        metavar=("H", "W"),
        help="original image size (VOC's most common); masks are made at this size",
    )
    parser.add_argument("--classes", type=int, default=2, help="labelled new classes per image")
    parser.add_argument("--clip", default="ViT-S-16", help="open_clip architecture (random init)")
    parser.add_argument("--ssl", default="vit_small_patch16_224", help="timm ViT (random init)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cfg = resolve_config(
        {
            "clip": {"model": args.clip, "pretrained": "none", "templates": "photo"},
            "ssl": {"model": args.ssl, "pretrained": "none"},
            "input_size": args.input_size,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }
    )
    models = CosegModels(cfg, NEW_CLASSES, device)
    shape = models.input_shape(*args.image_size)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.images, 3, *shape, generator=gen)
    ids = [f"bench_{i:05d}" for i in range(args.images)]
    labels = [sorted(NEW_CLASSES[(i + j) % 5] for j in range(args.classes)) for i in range(args.images)]

    co_segment(models, images[:2], ids[:2], labels[:2], 2, device)  # warm-up
    batched, t_batched = co_segment(models, images, ids, labels, args.batch_size, device)
    single, t_single = co_segment(models, images, ids, labels, 1, device)
    worst = max(float(np.abs(a["clip"] - b["clip"]).max()) for a, b in zip(batched, single))

    size = tuple(args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coseg.h5"
        provenance = expected_provenance(cfg)
        start = time.perf_counter()
        with CacheWriter(path, provenance) as writer:
            for image_id, arrays in zip(ids, batched):
                writer.put(image_id, arrays, {"size": list(size), "input_shape": list(shape)})
            writer.finish()
        t_write = time.perf_counter() - start
        cache_bytes = path.stat().st_size
        start = time.perf_counter()
        with open_cache(path, provenance) as cache:
            for image_id in ids:
                coseg_masks(cache.get(image_id), cfg, size)
        t_read = time.perf_counter() - start
    start = time.perf_counter()
    recomputed, _ = co_segment(models, images, ids, labels, args.batch_size, device)
    for arrays in recomputed:
        coseg_masks(arrays, cfg, size)
    t_recompute = time.perf_counter() - start

    n = args.images
    result = {
        "images": n,
        "batch_size": args.batch_size,
        "input_shape": list(shape),
        "image_size": list(size),
        "classes_per_image": args.classes,
        "clip": args.clip,
        "ssl": args.ssl,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batched_images_per_s": n / t_batched,
        "single_images_per_s": n / t_single,
        "batched_over_single": t_single / t_batched,
        "max_abs_diff_batched_vs_single": worst,
        "cache_bytes_per_image": cache_bytes / n,
        "cache_write_images_per_s": n / t_write,
        "cache_read_images_per_s": n / t_read,
        "recompute_images_per_s": n / t_recompute,
        "read_over_recompute": t_recompute / t_read,
    }
    print(
        f"co-segmentation of {n} images {shape[0]}x{shape[1]} ({args.clip} + {args.ssl}, random init, "
        f"{device}, {result['threads']} threads, load {result['load_average'][0]:.2f})"
    )
    print(f"  batched (batch {args.batch_size}) {result['batched_images_per_s']:8.2f} img/s")
    print(
        f"  one at a time       {result['single_images_per_s']:8.2f} img/s   "
        f"batched/single = {result['batched_over_single']:.2f}x (max |diff| {worst:.1e})"
    )
    print(
        f"  cache: {result['cache_bytes_per_image'] / 1024:.1f} KiB/image; read + masks at {size[0]}x{size[1]} "
        f"{result['cache_read_images_per_s']:8.1f} img/s vs recompute {result['recompute_images_per_s']:.2f} img/s "
        f"= {result['read_over_recompute']:.0f}x"
    )
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
