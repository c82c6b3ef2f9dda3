"""Stage ``coco-voc-prepare``: assemble COCO-to-VOC into one VOC-layout root in the paper's class
numbering (COCO step-0 pool + VOC train_aug for training, COCO val2017 and VOC val for evaluation)
and write its prepare-data index.

The computation is documented in :mod:`pipeline.data.coco_voc`. Resumable: maps and links already
assembled are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.data import coco_voc
from pipeline.data.splits import load_index
from pipeline.data.voc import DatasetError
from pipeline.io import read_json, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline coco-voc-prepare``."""
    parser.add_argument("--coco-root", type=Path, required=True, help="COCO root (train2017/, val2017/)")
    parser.add_argument("--coco-val-root", type=Path, help="COCO root of val2017 when not --coco-root")
    parser.add_argument("--coco-label-root", type=Path, help="COCO-id label maps (default <coco-root>/labels_coco)")
    parser.add_argument("--coco-train-index", type=Path, required=True, help="index JSON of train2017 (coco-labels)")
    parser.add_argument("--coco-val-index", type=Path, required=True, help="index JSON of val2017 (coco-labels)")
    parser.add_argument("--voc-root", type=Path, required=True, help="VOC-layout root (VOC 2012 + SBD)")
    parser.add_argument(
        "--voc-train-list", default="ImageSets/Segmentation/train_aug.txt", help="relative to --voc-root"
    )
    parser.add_argument("--voc-val-list", default="ImageSets/Segmentation/val.txt", help="relative to --voc-root")
    parser.add_argument(
        "--voc-mask-dir", default="auto", help="mask folder under --voc-root (auto: SegmentationClassAug)"
    )
    parser.add_argument("--out-root", type=Path, required=True, help="the assembled root to write")
    parser.add_argument("--labels-only", action="store_true", help="do not require or check the images")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: none)")
    parser.add_argument("--output", type=Path, required=True, help="prepare-data index JSON to write")


def _coco_index(path: Path) -> dict:
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("index"), dict):
        raise DatasetError(f"{path}: expected a COCO index cache {{'provenance', 'index'}} (stage coco-labels)")
    return doc["index"]


def run(args: argparse.Namespace) -> None:
    """Entry point: assemble, print a summary, write ``--output`` atomically."""
    voc_train, voc_val = coco_voc.read_voc_lists(args.voc_root, args.voc_train_list, args.voc_val_list)
    doc = coco_voc.assemble(
        args.out_root,
        args.coco_root,
        {"train": _coco_index(args.coco_train_index), "val": _coco_index(args.coco_val_index)},
        args.voc_root,
        voc_train,
        voc_val,
        coco_label_root=args.coco_label_root,
        voc_mask_dir=args.voc_mask_dir,
        images=not args.labels_only,
        workers=args.workers,
        coco_val_root=args.coco_val_root,
    )
    print(coco_voc.summary(doc), flush=True)
    write_json(args.output, doc)
    load_index(args.output, "val_voc")  # the document reads back as a prepare-data index
