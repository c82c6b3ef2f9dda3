"""COCO-Stuff at scale: conversion and class-presence indexing rate, peak memory, and the
projection to the full COCO 2017 pass (118,287 train + 5,000 val label maps).

On a generated COCO-layout fixture (:func:`pipeline.data.coco.write_coco_fixture`: ``--images``
stuffthingmaps of ``--size`` pixels, labels only) in one run:

1. the batch conversion stuffthingmap -> COCO-id label map
   (:func:`pipeline.data.coco.convert_stuffthingmaps`, ``--workers`` processes): images/s;
2. the class-presence index over the converted maps (:func:`pipeline.data.coco.index_coco`,
   ``--workers`` processes, cached to JSON): images/s, the main process's RSS growth and peak
   (``/proc/self/status`` VmRSS/VmHWM), the largest worker's peak (``RUSAGE_CHILDREN``), the
   cache's size; then the cached reload (a provenance check + JSON read);
3. ``--with-images N``: the index with image checks (JPEG decoded at 1/8 scale) on N images;
4. calibration: single-process conversion and index rates on the 44 real COCO-Stuff maps of
   ``shared/coco-mini`` (if present) and on as many generated ones, since generated maps (bands
   and boxes) compress and decode differently from real ones.

The projection divides 123,287 images by each measured parallel rate, and again by those rates
scaled by the real/generated single-process ratio; it scales the index's memory (the main
process's RSS growth) and the cache size per image. Writes ``benchmarks/results/coco_index.json``.

Run: ``python benchmarks/bench_coco_index.py [--images 5000 --size 480 640 --workers 2]``
(about 1-2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pipeline.data import coco  # noqa: E402
from pipeline.io import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "coco_index.json"
FULL_TRAIN, FULL_VAL = 118_287, 5_000
COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "coco-mini"
if not COCO_MINI.is_dir():
    COCO_MINI = Path("/work/shared/coco-mini")


def _status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` memory field in KiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``clear_refs`` 5); silently skipped elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _private_kib() -> int | None:
    """This process's private (unshared) memory in KiB: Private_Clean + Private_Dirty of
    ``/proc/self/smaps_rollup`` (Linux >= 4.14), else None."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
        return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))
    except (OSError, KeyError, ValueError):
        return None


def _index_chunk_private(chunk: list[str], folder: str) -> int | None:
    """Index a chunk of label maps in a worker, then report the worker's private memory."""
    for image_id in chunk:
        coco.label_entry(Path(folder) / f"{image_id}.png", image_id)
    return _private_kib()


def worker_private_kib(folder: Path, ids: list[str], workers: int) -> int | None:
    """Largest private memory (KiB) of ``workers`` forked processes after each indexed its share of
    ``ids``: what a worker costs beyond the pages it shares with the parent (torch, numpy, PIL)."""
    chunks = [ids[k::workers] for k in range(workers)]
    with multiprocessing.Pool(workers) as pool:
        found = pool.map(functools.partial(_index_chunk_private, folder=str(folder)), chunks)
    return max((f for f in found if f is not None), default=None)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def project(rates: dict[str, float], index_kib_per_image: float, cache_bytes_per_image: float) -> dict:
    """Wall time and memory of the full COCO 2017 pass (train + val) at the measured rates.

    Args:
        rates: images/s per part (``convert``, ``index``, optional ``index_with_images``).
    Returns:
        ``{"images", "<part>_minutes", "index_memory_mib", "cache_mib"}``.
    """
    images = FULL_TRAIN + FULL_VAL
    out: dict[str, float] = {"images": images}
    for part, rate in rates.items():
        out[f"{part}_minutes"] = images / rate / 60
    out["index_memory_mib"] = images * index_kib_per_image / 1024
    out["cache_mib"] = images * cache_bytes_per_image / 2**20
    return out


def serial_rates(src: Path, ids: list[str], repeats: int) -> dict:
    """Single-process images/s of the conversion and of the index entry on some stuffthingmaps
    (each map converted ``repeats`` times into a temporary folder, then indexed ``repeats`` times)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        for r in range(repeats):
            for image_id in ids:
                coco.convert_stuffthingmap(src / f"{image_id}.png", out / str(r) / f"{image_id}.png", image_id)
        t_convert = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeats):
            for image_id in ids:
                coco.label_entry(out / "0" / f"{image_id}.png", image_id)
        t_index = time.perf_counter() - start
    n = len(ids) * repeats
    return {"convert_images_per_s": n / t_convert, "index_images_per_s": n / t_index}


def calibrate_real(generated_src: Path, repeats: int) -> dict | None:
    """Single-process rates on coco-mini's real stuffthingmaps and on as many generated ones."""
    src = COCO_MINI / coco.STUFFTHING_DIR / "val2017"
    if not src.is_dir():
        return None
    real_ids = coco.list_ids(src)
    real = serial_rates(src, real_ids, repeats)
    generated = serial_rates(generated_src, coco.list_ids(generated_src)[: len(real_ids)], repeats)
    return {
        "maps": len(real_ids),
        "repeats": repeats,
        "mean_png_bytes": sum((src / f"{i}.png").stat().st_size for i in real_ids) / len(real_ids),
        "real_single_process": real,
        "generated_single_process": generated,
        "convert_real_over_generated": real["convert_images_per_s"] / generated["convert_images_per_s"],
        "index_real_over_generated": real["index_images_per_s"] / generated["index_images_per_s"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="generated label maps (default 5000)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--with-images", type=int, default=500, help="images for the check with JPEGs (0: skip)")
    parser.add_argument("--real-repeats", type=int, default=10, help="passes over coco-mini's 44 real maps (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="fixture folder (default: a temporary one, removed)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    root = args.root or Path(tempfile.mkdtemp(prefix="bench_coco_"))
    try:
        _, t_fixture = _timed(
            lambda: coco.write_coco_fixture(
                root,
                n_train=args.images,
                n_val=0,
                size=tuple(args.size),
                seed=args.seed,
                images=False,
                instances=False,
                workers=args.workers,
            )
        )
        src = root / coco.STUFFTHING_DIR / "train2017"
        png_bytes = sum(p.stat().st_size for p in src.iterdir()) / args.images
        stats, t_convert = _timed(
            lambda: coco.convert_stuffthingmaps(src, coco.label_dir(root, "train"), workers=args.workers)
        )
        assert stats["converted"] == args.images, stats

        cache = root / "index.json"
        rss_before = _status_kib("VmRSS")
        _reset_peak()
        index, t_index = _timed(lambda: coco.index_coco(root, "train", workers=args.workers, cache=cache))
        rss_after, rss_peak = _status_kib("VmRSS"), _status_kib("VmHWM")
        child_peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        label_folder = coco.label_dir(root, "train")
        private_kib = worker_private_kib(label_folder, coco.list_ids(label_folder)[:1000], max(1, args.workers))
        assert len(index) == args.images
        cached, t_cached = _timed(lambda: coco.index_coco(root, "train", workers=args.workers, cache=cache))
        assert cached == index
        del cached
        cache_bytes = cache.stat().st_size

        with_images = None
        if args.with_images > 0:
            img_root = root / "with_images"
            n = min(args.with_images, args.images)
            coco.write_coco_fixture(
                img_root,
                n_train=n,
                n_val=0,
                size=tuple(args.size),
                seed=args.seed,
                images=True,
                instances=False,
                workers=args.workers,
            )
            coco.convert_stuffthingmaps(
                img_root / coco.STUFFTHING_DIR / "train2017",
                coco.label_dir(img_root, "train"),
                progress=False,
                workers=args.workers,
            )
            _, t_img = _timed(
                lambda: coco.index_coco(img_root, "train", images=True, workers=args.workers, progress=False)
            )
            with_images = {"images": n, "images_per_s": n / t_img}
        real = calibrate_real(src, args.real_repeats) if args.real_repeats > 0 else None
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    rates = {"convert": args.images / t_convert, "index": args.images / t_index}
    if with_images:
        rates["index_with_images"] = with_images["images_per_s"]
    index_kib = max(0, (rss_after or 0) - (rss_before or 0)) / args.images
    result = {
        "images": args.images,
        "size": list(args.size),
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "fixture_seconds": t_fixture,
        "fixture_png_bytes_mean": png_bytes,
        "convert": {"seconds": t_convert, "images_per_s": rates["convert"]},
        "index": {
            "seconds": t_index,
            "images_per_s": rates["index"],
            "main_rss_before_mib": (rss_before or 0) / 1024,
            "main_rss_after_mib": (rss_after or 0) / 1024,
            "main_peak_rss_mib": (rss_peak or 0) / 1024,
            "worker_peak_rss_mib": child_peak_kib / 1024,
            "worker_private_mib": (private_kib or 0) / 1024,
            "index_kib_per_image": index_kib,
            "cache_bytes": cache_bytes,
            "cached_reload_seconds": t_cached,
        },
        "index_with_images": with_images,
        "real_maps": real,
        "projection_generated_rates": project(rates, index_kib, cache_bytes / args.images),
    }
    if real:
        real_rates = {
            "convert": rates["convert"] * real["convert_real_over_generated"],
            "index": rates["index"] * real["index_real_over_generated"],
        }
        result["projection_real_map_rates"] = project(real_rates, index_kib, cache_bytes / args.images)
    write_json(args.output, result)
    _print(result)
    return result


def _print(r: dict) -> None:
    ix = r["index"]
    print(
        f"\n{r['images']} generated maps {r['size'][0]}x{r['size'][1]}, {r['workers']} workers, "
        f"{r['cpus']} CPUs, load {r['load_average'][0]:.2f}"
    )
    print(f"fixture : {r['fixture_seconds']:.1f} s, {r['fixture_png_bytes_mean'] / 1024:.1f} KiB/PNG")
    print(f"convert : {r['convert']['images_per_s']:8.1f} img/s ({r['convert']['seconds']:.1f} s)")
    print(
        f"index   : {ix['images_per_s']:8.1f} img/s ({ix['seconds']:.1f} s); main RSS {ix['main_rss_before_mib']:.0f}"
        f" -> {ix['main_rss_after_mib']:.0f} MiB (peak {ix['main_peak_rss_mib']:.0f}), worker peak "
        f"{ix['worker_peak_rss_mib']:.0f} MiB RSS ({ix['worker_private_mib']:.0f} MiB private); cache {ix['cache_bytes'] / 2**20:.2f} MiB, reload "
        f"{ix['cached_reload_seconds']:.2f} s"
    )
    if r["index_with_images"]:
        print(f"index + image checks: {r['index_with_images']['images_per_s']:8.1f} img/s")
    if r["real_maps"]:
        rm = r["real_maps"]
        real, gen = rm["real_single_process"], rm["generated_single_process"]
        print(
            f"single process, {rm['maps']} real coco-mini maps ({rm['mean_png_bytes'] / 1024:.1f} KiB/PNG) vs "
            f"{rm['maps']} generated: convert {real['convert_images_per_s']:.1f} vs {gen['convert_images_per_s']:.1f}"
            f" img/s (x{rm['convert_real_over_generated']:.2f}), index {real['index_images_per_s']:.1f} vs "
            f"{gen['index_images_per_s']:.1f} img/s (x{rm['index_real_over_generated']:.2f})"
        )
    for key in ("projection_generated_rates", "projection_real_map_rates"):
        if key in r:
            p = r[key]
            parts = ", ".join(f"{k[:-8]} {v:.1f} min" for k, v in p.items() if k.endswith("_minutes"))
            print(
                f"{key}: {p['images']} images: {parts}; index memory {p['index_memory_mib']:.0f} MiB, "
                f"cache {p['cache_mib']:.1f} MiB"
            )


if __name__ == "__main__":
    main()
