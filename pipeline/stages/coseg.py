"""Stage ``coseg``: FMWISS pre-training based co-segmentation of a step's training images (Sec. 3.2).

The stage's command line; what it computes is documented in :mod:`pipeline.foundation.compute`.
"""

from __future__ import annotations

import argparse

from pipeline.cache import open_cache
from pipeline.foundation.compute import VARIANTS, compute_cache, figure_rows, log, measure_quality, step_inputs
from pipeline.foundation.coseg import (
    expected_provenance,
    require_step,
    resolve_config,
)
from pipeline.foundation.figure import coseg_figure
from pipeline.io import read_json, write_json
from pipeline.stages.common import parse_params, set_threads, setup_logging
from pipeline.train.loop import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline coseg``."""
    parser.add_argument("--split", required=True, help="step{t}.json written by the splits stage")
    parser.add_argument("--data", required=True, help="dataset index JSON written by prepare-data")
    parser.add_argument(
        "--params",
        default="{}",
        help="JSON of the config section `coseg` (pipeline/foundation/coseg.py lists every key)",
    )
    parser.add_argument("--out", required=True, help="coseg.h5 cache to write (with --quality-only: to read)")
    parser.add_argument("--quality", help="write the mask quality JSON here (initial / seeds / fused mIoU)")
    parser.add_argument("--figure", help="write the qualitative PNG here")
    parser.add_argument("--figure-images", type=int, default=4, help="images in the figure")
    parser.add_argument(
        "--quality-only",
        action="store_true",
        help="do not compute: read the existing --out cache for --quality/--figure",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes reading images")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> None:
    """Compute (or resume) the cache, then measure its quality and draw the figure (module docstring).

    Raises:
        ValueError: bad ``--params`` or inputs; CacheError: with ``--quality-only``, a missing or
            stale cache, one of another task, protocol, step or class set, or one lacking ids of the
            split.
    """
    setup_logging()
    set_threads(args.threads)
    cfg = resolve_config(parse_params(args.params))
    split, index = read_json(args.split), read_json(args.data)
    ids, _, new_classes = step_inputs(split, index, args.split, args.data)
    if not args.quality_only:
        compute_cache(args.out, cfg, split, index, resolve_device(args.device), args.workers, args.progress)
    if not (args.quality or args.figure):
        return
    with open_cache(args.out, expected_provenance(cfg)) as cache:
        require_step(cache, split)
        cache.require(ids, f"co-segmentation (split {args.split})")
        if args.quality:
            quality = measure_quality(cache, ids, index["mask_dir"], new_classes, cfg, args.progress)
            write_json(
                args.quality,
                {
                    **quality,
                    "n_images": len(ids),
                    "task": split.get("task"),
                    "protocol": split.get("protocol"),
                    "step": split.get("step"),
                    "new_classes": new_classes,
                    "config": cfg,
                    "provenance": cache.provenance,
                    "cache": str(args.out),
                },
            )
            log.info(
                "coseg mask mIoU (bg + new classes): %s",
                ", ".join(f"{v} {100 * (quality[v]['miou'] or 0):.1f}" for v in VARIANTS),
            )
        if args.figure and ids:
            rows = figure_rows(cache, ids[: max(1, args.figure_images)], index, new_classes, cfg)
            coseg_figure(
                args.figure,
                rows,
                title=f"{split.get('task')} {split.get('protocol')} step "
                f"{split.get('step')}: source {cfg['source']}, fusion {cfg['fusion']}, "
                f"top-K {cfg['top_k']} ({cfg['top_k_rule']})",
            )
