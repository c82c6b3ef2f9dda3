"""Stage ``coseg``: FMWISS pre-training based co-segmentation of a step's training images (Sec. 3.2).

For every training image of the step (ids of ``step{t}.json``) and each of its labelled new
classes, runs CLIP with MaskCLIP's last block (initial mask scores, Eq. 1-3) and a self-supervised
ViT (seed-guided last-block attention, Eq. 4), and caches the score maps in HDF5
(:mod:`pipeline.cache`), one group per image id::

    classes    (K,)         int32    the image's labelled new classes (sorted)
    clip       (K, hc, wc)  float16  M_init, cosine pixel-text scores (Eq. 3) at CLIP's patch grid
    attention  (K, hs, ws)  float16  seed attention (Eq. 4 before [.]binary) / its max, SSL patch grid
    seeds      (K, N, 2)    int16    the seed points (row, col) on the SSL grid, -1 = none
    attrs: size (H, W) of the image, input_shape (h, w) fed to the models

Binarisation, top-K% and fusion are applied by the readers (:mod:`pipeline.foundation.coseg`), so
an ablation of them never re-runs this stage. The root attributes record the provenance
(:func:`pipeline.foundation.coseg.expected_provenance`); a killed run resumes from the partial
cache, skipping the images already written.

Inference: each image is resized (bilinear, antialiased) so that its long side is ``input_size``
with both sides rounded to whole patches (aspect kept to within half a patch); images are batched
by resized shape, so no padding enters the attention and a batch gives the results of one image
at a time. AMP (float16 autocast) on CUDA only.

``source: oracle`` runs no model: ``clip`` and ``attention`` hold the ground-truth masks (1 inside,
0 outside) of the labelled new classes at image resolution, so the read path is unchanged and
the fused masks equal the ground truth (an upper bound; mIoU 1.0 on the step's images).

With ``--quality`` the masks read back from the cache (initial, seeds, fused) are scored against
the ground truth of the step's training images (:class:`pipeline.metrics.quality.MaskQuality`:
mIoU over background + new classes, other classes as background, WILSON's convention; contour
F-score); ``--figure`` draws a few images. ``--quality-only`` reads an existing cache (``--out``)
without computing.
"""

from __future__ import annotations

import argparse

from pipeline.cache import open_cache
from pipeline.foundation.compute import VARIANTS, compute_cache, figure_rows, log, measure_quality, step_inputs
from pipeline.foundation.coseg import (
    expected_provenance,
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
            stale cache, or one lacking ids of the split.
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
