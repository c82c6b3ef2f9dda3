"""Stage ``coco-labels``: COCO-Stuff stuffthingmaps of one COCO 2017 split -> COCO-id label maps
(resumable, atomic), then the checked class-presence index of the split, cached with provenance.

The computation is documented in :mod:`pipeline.data.coco` (:func:`~pipeline.data.coco.convert_stuffthingmaps`,
:func:`~pipeline.data.coco.index_coco`). Killed mid-way, the next run skips the maps already written
and rebuilds only the index; an index whose provenance (converter version, file-list digest) matches
is reused without reading a map.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.data import coco
from pipeline.data.voc import DatasetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline coco-labels``."""
    parser.add_argument(
        "--root", type=Path, required=True, help="COCO root (train2017/, val2017/, stuffthingmaps_trainval2017/)"
    )
    parser.add_argument("--split", required=True, choices=sorted(coco.SPLITS), help="COCO 2017 split")
    parser.add_argument(
        "--label-root", type=Path, help="where the COCO-id maps go (default <root>/labels_coco; any writable folder)"
    )
    parser.add_argument("--cache", type=Path, required=True, help="index JSON to write (provenance + index)")
    parser.add_argument(
        "--images", action="store_true", help="also check that every image decodes and has its map's size"
    )
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: none)")


def run(args: argparse.Namespace) -> None:
    """Entry point: convert (skipping done maps), then index (reusing a matching cache)."""
    start = time.perf_counter()
    source = coco.stuffthing_path(args.root, args.split, "x").parent
    if not source.is_dir():
        raise DatasetError(
            f"{source}: COCO-Stuff stuffthingmaps folder not found; unpack stuffthingmaps_trainval2017.zip under "
            f"{args.root} (`snakemake --cores 2 download_coco`), or set coco.root"
        )
    target = coco.label_dir(args.root, args.split, args.label_root)
    done = coco.convert_stuffthingmaps(source, target, workers=args.workers)
    index = coco.index_coco(
        args.root, args.split, label_root=args.label_root, images=args.images, workers=args.workers, cache=args.cache
    )
    voc_free = len(coco.voc_pixel_free(index))
    print(
        f"coco-labels {coco.split_folder(args.split)}: {done['total']} maps ({done['converted']} converted, "
        f"{done['skipped']} already there) -> {target}; index of {len(index)} maps, {voc_free} without a VOC-class "
        f"pixel -> {args.cache} ({time.perf_counter() - start:.1f} s)",
        flush=True,
    )
