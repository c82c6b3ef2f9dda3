"""Stage ``prepare-data``: check every image/mask pair of a dataset and index class presence.

The stage's command line; what it computes is documented in :mod:`pipeline.data.prepare`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.data.prepare import DEFAULT_TRAIN_LIST, DEFAULT_VAL_LIST, prepare, summary
from pipeline.io import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline prepare-data``."""
    parser.add_argument("--root", type=Path, required=True, help="dataset root (VOC layout)")
    parser.add_argument(
        "--train-list",
        type=Path,
        default=Path(DEFAULT_TRAIN_LIST),
        help="train id list; a relative path is resolved against --root",
    )
    parser.add_argument(
        "--val-list",
        type=Path,
        default=Path(DEFAULT_VAL_LIST),
        help="val id list; a relative path is resolved against --root",
    )
    parser.add_argument(
        "--mask-dir",
        default="auto",
        help="mask folder under --root; 'auto': SegmentationClassAug if present, else SegmentationClass",
    )
    parser.add_argument("--labels-only", action="store_true", help="masks only: do not read or require JPEGImages/")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: none)")
    parser.add_argument("--output", type=Path, required=True, help="index JSON to write")


def run(args: argparse.Namespace) -> None:
    """Entry point of the stage: check, index, log a summary, write ``--output`` atomically."""
    doc = prepare(
        args.root, args.train_list, args.val_list, args.mask_dir, images=not args.labels_only, workers=args.workers
    )
    print(summary(doc), flush=True)
    write_json(args.output, doc)
