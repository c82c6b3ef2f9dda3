"""Stage ``download-coco``: COCO 2017 images + instances and COCO-Stuff stuffthingmaps (md5 where
known), unpacked in the layout of :mod:`pipeline.data.coco`.

The computation is documented in :mod:`pipeline.data.coco_download`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.data.coco_download import download_coco


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline download-coco``."""
    parser.add_argument("--root", type=Path, default=Path("data/COCO"), help="COCO root to build")
    parser.add_argument("--download-dir", type=Path, default=Path("data/downloads"), help="where the zips go")
    parser.add_argument(
        "--stuffthingmaps-md5", help="md5 of stuffthingmaps_trainval2017.zip to verify (none published)"
    )


def run(args: argparse.Namespace) -> None:
    """Entry point of the stage."""
    done = download_coco(args.root, args.download_dir, args.stuffthingmaps_md5)
    print(f"download-coco: {args.root} ready: {done['counts']}", flush=True)
