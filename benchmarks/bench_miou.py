"""Evaluation throughput: our ConfusionMatrix + iou_per_class against torchmetrics.

Both metrics consume the same random (pred, target) batches in the same process: 21 classes,
``--void`` fraction of target pixels set to 255. One warm-up batch each, then the full pass
(update on every batch + final per-class IoU) is timed ``--repeats`` times and the best time
kept. The per-class IoUs must agree to 1e-6. Writes ``benchmarks/results/miou.json``.

Run: ``python benchmarks/bench_miou.py [--batches 20 --batch-size 8 --size 512 --device cpu]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pipeline.io import write_json  # noqa: E402
from pipeline.metrics.miou import ConfusionMatrix, iou_per_class  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "miou.json"


def make_batches(n: int, batch: int, size: int, classes: int, void: float, device: str, seed: int):
    """``n`` pairs of int64 ``(batch, size, size)`` tensors: predictions uniform in
    ``[0, classes)``; targets equal to the prediction on ~half the pixels, uniform elsewhere,
    ``void`` of them 255."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        pred = torch.randint(0, classes, (batch, size, size), generator=gen)
        target = torch.where(
            torch.rand(pred.shape, generator=gen) < 0.5, pred, torch.randint(0, classes, pred.shape, generator=gen)
        )
        target[torch.rand(pred.shape, generator=gen) < void] = 255
        out.append((pred.to(device), target.to(device)))
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(batches, classes: int) -> np.ndarray:
    cm = ConfusionMatrix(classes, ignore_index=255)
    for pred, target in batches:
        cm.update(pred, target)
    return iou_per_class(cm.matrix)


def run_torchmetrics(batches, classes: int, device: str, validate_args: bool = True) -> np.ndarray:
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(
        num_classes=classes, ignore_index=255, average=None, validate_args=validate_args
    ).to(device)
    for pred, target in batches:
        metric.update(pred, target)
    return metric.compute().double().cpu().numpy()


def best_time(fn, device: str, repeats: int) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="image side (pixels)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--void", type=float, default=0.05, help="fraction of target pixels set to 255")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is kept")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default); 1 is steadier on a busy machine",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torchmetrics

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    batches = make_batches(args.batches, args.batch_size, args.size, args.classes, args.void, args.device, args.seed)
    pixels = args.batches * args.batch_size * args.size * args.size
    # Warm-up (allocator, kernels, lazy imports) on one batch each.
    run_ours(batches[:1], args.classes)
    run_torchmetrics(batches[:1], args.classes, args.device)

    t_ours, iou_ours = best_time(lambda: run_ours(batches, args.classes), args.device, args.repeats)
    t_tm, iou_tm = best_time(lambda: run_torchmetrics(batches, args.classes, args.device), args.device, args.repeats)
    # For reading the ratio: torchmetrics without its input checks (ours always checks ranges).
    t_nv, iou_nv = best_time(
        lambda: run_torchmetrics(batches, args.classes, args.device, validate_args=False), args.device, args.repeats
    )
    # torchmetrics reports 0 for a class absent from both prediction and target, ours NaN.
    ours0 = np.nan_to_num(iou_ours, nan=0.0)
    max_diff = float(max(np.max(np.abs(ours0 - iou_tm)), np.max(np.abs(ours0 - iou_nv))))
    agree = max_diff <= 1e-6

    rows = [
        ("ours (ConfusionMatrix + iou_per_class)", t_ours),
        ("torchmetrics MulticlassJaccardIndex", t_tm),
        ("  same, validate_args=False", t_nv),
    ]
    print(
        f"{pixels:,} pixels ({args.batches} x {args.batch_size}x{args.size}x{args.size}), "
        f"{args.classes} classes, {args.void:.0%} void, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    print(f"{'implementation':<42}{'best s':>10}{'Mpixel/s':>12}{'ours/this':>11}")
    for name, t in rows:
        print(f"{name:<42}{t:>10.4f}{pixels / t / 1e6:>12.1f}{t / t_ours:>11.2f}")
    ratio = t_tm / t_ours  # = throughput ours / throughput torchmetrics (same pixels)
    print(
        f"throughput ratio ours/torchmetrics: {ratio:.2f}  (>1: ours faster; "
        f"{t_nv / t_ours:.2f} against validate_args=False)"
    )
    print(f"max |IoU difference|: {max_diff:.2e}  -> {'agree' if agree else 'DISAGREE'} (tolerance 1e-6)")

    write_json(
        args.output,
        {
            "pixels": pixels,
            "batches": args.batches,
            "batch_size": args.batch_size,
            "size": args.size,
            "classes": args.classes,
            "void": args.void,
            "repeats": args.repeats,
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "ours_s": t_ours,
            "torchmetrics_s": t_tm,
            "torchmetrics_novalidate_s": t_nv,
            "ours_pixels_per_s": pixels / t_ours,
            "torchmetrics_pixels_per_s": pixels / t_tm,
            "ratio_ours_over_torchmetrics": ratio,
            "ratio_ours_over_torchmetrics_novalidate": t_nv / t_ours,
            "max_abs_iou_diff": max_diff,
            "agree": agree,
        },
    )
    print(f"wrote {args.output}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
