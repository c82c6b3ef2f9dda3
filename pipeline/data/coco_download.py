"""Download COCO 2017 images, instance annotations and COCO-Stuff's ``stuffthingmaps`` into the
layout of :mod:`pipeline.data.coco` (only when asked: ``snakemake --cores 2 download_coco``).

Archives (COCO: cocodataset.org; COCO-Stuff: Caesar et al., CVPR 2018, github.com/nightrome/cocostuff):

=====================================  ==================================  =================================
archive                                unpacked under the COCO root        md5
=====================================  ==================================  =================================
``train2017.zip`` (18 GB, 118,287)     ``train2017/<id>.jpg``              cced6f7f71b7629ddf16f17bbcfab6b2
``val2017.zip`` (1 GB, 5,000)          ``val2017/<id>.jpg``                442b8da7639aecaf257c1dceb8ba8c80
``annotations_trainval2017.zip``       ``annotations/instances_*.json``    f4bbac642086de4f52a3fdda2de5fa2c
``stuffthingmaps_trainval2017.zip``    ``stuffthingmaps_trainval2017/``    none published (recorded, below)
=====================================  ==================================  =================================

The three COCO sums are the ones COCO's mirrors and the MLPerf/Detectron download scripts check.
COCO-Stuff publishes no checksum for ``stuffthingmaps_trainval2017.zip`` (659 MB): the file is
downloaded unverified, its md5 is computed and recorded in ``DONE.json``, and a known md5 can be
given (``md5`` argument / config ``coco.stuffthingmaps_md5``) to verify it. Downloads and
extraction use ``torchvision.datasets.utils`` (md5 check, resumable skip of a verified file);
an ``<archive>.extracted`` marker written after extraction tells a finished one from an
interrupted one, and ``DONE.json`` (archives, sums, image and map counts) is written last.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from torchvision.datasets.utils import download_and_extract_archive

from pipeline.data import coco
from pipeline.io import read_json, write_json

DONE = "DONE.json"

#: name -> (url, md5 or None, folder under the COCO root the archive is unpacked into).
ARCHIVES: dict[str, tuple[str, str | None, str]] = {
    "train2017.zip": ("http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", "."),
    "val2017.zip": ("http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", "."),
    "annotations_trainval2017.zip": (
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        "f4bbac642086de4f52a3fdda2de5fa2c",
        ".",
    ),
    # unpacks to train2017/ and val2017/ at its top level, hence its own folder
    "stuffthingmaps_trainval2017.zip": (
        "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
        None,
        coco.STUFFTHING_DIR,
    ),
}


def file_md5(path: str | os.PathLike) -> str:
    """md5 hex digest of a file (4 MiB blocks)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, root: Path, download_dir: Path, md5: str | None) -> dict:
    """Download (md5-verified when ``md5`` is known) and unpack one archive unless its marker says
    it was unpacked; returns ``{"url", "md5", "verified"}``."""
    url, _, folder = ARCHIVES[name]
    marker = download_dir / f"{name}.extracted"
    if marker.exists():
        return read_json(marker)
    download_and_extract_archive(
        url, download_root=str(download_dir), extract_root=str(root / folder), filename=name, md5=md5
    )
    record = {"url": url, "md5": md5 or file_md5(download_dir / name), "verified": md5 is not None}
    write_json(marker, record)
    return record


def download_coco(
    root: str | os.PathLike, download_dir: str | os.PathLike, stuffthingmaps_md5: str | None = None
) -> dict:
    """Fetch every archive of :data:`ARCHIVES`, unpack them under ``root`` and write ``root/DONE.json``.

    Returns:
        The DONE.json document (returned as is when it exists).
    Raises:
        RuntimeError/OSError (torchvision): a failed download or an md5 mismatch, naming the file.
    """
    root, download_dir = Path(root), Path(download_dir)
    if (root / DONE).exists():
        return read_json(root / DONE)
    download_dir.mkdir(parents=True, exist_ok=True)
    archives = {}
    for name, (_, md5, _) in ARCHIVES.items():
        known = stuffthingmaps_md5 if name.startswith("stuffthingmaps") else md5
        archives[name] = fetch(name, root, download_dir, known)
    counts = {}
    for split in ("train2017", "val2017"):
        counts[f"images_{split}"] = len(coco.list_ids(root / split, ".jpg"))
        counts[f"stuffthingmaps_{split}"] = len(coco.list_ids(root / coco.STUFFTHING_DIR / split))
    done = {"archives": archives, "counts": counts}
    write_json(root / DONE, done)
    return done


__all__ = ["ARCHIVES", "DONE", "download_coco", "fetch", "file_md5"]
