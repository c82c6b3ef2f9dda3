"""Stage ``make-demo-data``: a generated demo dataset in the VOC layout, easy to learn from scratch.

Each of the 20 object classes is a unique (colour, texture, shape) combination, and any two
classes differ in at least two of the three cues: every class has its own saturated colour
(10 hues x 2 brightness levels), and no two classes share both texture and shape. Objects
(1-3 per image, 25-45 % of the image side) are painted on a cluttered low-saturation background
(noise, smooth blobs, thin lines), later objects over earlier ones. Masks hold the class index,
0 for background and a 1-pixel void (255) band on the object side of every boundary, as VOC.

Layout written under the root: ``JPEGImages/<id>.jpg`` (quality 90), ``SegmentationClassAug/
<id>.png`` (mode P, VOC palette), ``ImageSets/Segmentation/{train_aug,val}.txt``,
``classes.json``. Ids are ``demo_000000``...; train ids come first, then val ids. Image ``i`` is
drawn from its own ``numpy.random.Generator`` seeded with ``(seed, i)``, so the output is
byte-identical for a seed whatever the number of workers.
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
