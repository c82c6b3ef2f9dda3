"""Stage ``make-demo-data``: a generated demo dataset in the VOC layout, easy to learn from scratch.

The stage's command line; what it computes is documented in :mod:`pipeline.data.synthetic`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.data.synthetic import generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline make-demo-data``."""
    parser.add_argument("--root", type=Path, required=True, help="output dataset root")
    parser.add_argument("--n-train", type=int, default=600, help="training images")
    parser.add_argument("--n-val", type=int, default=120, help="validation images")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: none)")


def run(args: argparse.Namespace) -> None:
    """Entry point of the stage."""
    start = time.perf_counter()
    generate(args.root, args.n_train, args.n_val, args.size, args.seed, args.workers)
    print(
        f"make-demo-data: {args.n_train} train + {args.n_val} val images of {args.size} px "
        f"in {args.root} ({time.perf_counter() - start:.1f} s)",
        flush=True,
    )
