"""Stage ``make-coco-voc-fixture``: a generated COCO-to-VOC dataset, a COCO 2017 + COCO-Stuff
layout (images, stuffthingmaps, instances JSON) and a VOC layout, for tests and the fixture DAG.

The computation is documented in :func:`pipeline.data.coco_voc.write_fixture`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.data.coco_voc import write_fixture


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline make-coco-voc-fixture``."""
    parser.add_argument("--coco-root", type=Path, required=True, help="COCO-layout output root")
    parser.add_argument("--voc-root", type=Path, required=True, help="VOC-layout output root")
    parser.add_argument("--n-coco-train", type=int, default=120)
    parser.add_argument("--n-coco-val", type=int, default=24)
    parser.add_argument("--n-voc-train", type=int, default=48)
    parser.add_argument("--n-voc-val", type=int, default=24)
    parser.add_argument("--coco-size", type=int, nargs=2, default=(48, 64), metavar=("H", "W"))
    parser.add_argument("--voc-size", type=int, default=48, help="VOC image side (>= 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    """Entry point of the stage."""
    start = time.perf_counter()
    out = write_fixture(
        args.coco_root,
        args.voc_root,
        args.n_coco_train,
        args.n_coco_val,
        args.n_voc_train,
        args.n_voc_val,
        tuple(args.coco_size),
        args.voc_size,
        args.seed,
        args.workers,
    )
    print(
        f"make-coco-voc-fixture: COCO {len(out['coco']['train2017'])} + {len(out['coco']['val2017'])} images in "
        f"{args.coco_root}, VOC {args.n_voc_train} + {args.n_voc_val} in {args.voc_root} "
        f"({time.perf_counter() - start:.1f} s)",
        flush=True,
    )
