"""Stage ``download``: fetch PASCAL VOC 2012 + SBD (md5 verified) and build the VOC-aug layout.

Archives (URLs and md5 sums as in torchvision's ``VOCSegmentation`` and ``SBDataset``):
``VOCtrainval_11-May-2012.tar`` (Everingham et al.) and ``benchmark.tgz`` (SBD, Hariharan et
al., ICCV 2011), fetched and extracted with ``torchvision.datasets.utils.
download_and_extract_archive`` into ``--download-dir``. Layout built under ``--root``:

- ``JPEGImages/<id>.jpg`` for every listed id (copied from VOC);
- ``SegmentationClassAug/<id>.png``: index PNGs (VOC palette); VOC ``SegmentationClass`` masks
  for VOC segmentation ids, SBD ``cls/<id>.mat`` (``GTcls.Segmentation``) for the others;
- ``ImageSets/Segmentation/train_aug.txt`` = (SBD train ∪ SBD val ∪ VOC seg train) − VOC seg val
  (10,582 ids) and ``val.txt`` = VOC seg val (1,449 ids);
- ``DONE.json`` written last (archive md5 sums, list sha256 sums, counts): a root without it is
  unfinished and is rebuilt by the next run.
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
