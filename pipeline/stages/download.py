"""Stage ``download``: fetch PASCAL VOC 2012 + SBD (md5 verified) and build the VOC-aug layout.

The stage's command line; what it computes is documented in :mod:`pipeline.data.download`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.data.download import download


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline download``."""
    parser.add_argument("--root", type=Path, default=Path("data/VOC2012"), help="dataset root to build")
    parser.add_argument(
        "--download-dir", type=Path, default=Path("data/downloads"), help="where archives are downloaded and extracted"
    )
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: none)")


def run(args: argparse.Namespace) -> None:
    """Entry point of the stage."""
    done = download(args.root, args.download_dir, args.workers)
    print(
        f"download: {args.root} ready, train_aug {done['lists']['train_aug']['ids']} ids, "
        f"val {done['lists']['val']['ids']} ids",
        flush=True,
    )
