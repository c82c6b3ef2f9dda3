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

import functools
import hashlib
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from torchvision.datasets.sbd import SBDataset
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.datasets.voc import DATASET_YEAR_DICT
from tqdm import tqdm

from pipeline.data.classes import voc_palette
from pipeline.data.voc import DatasetError, check_mask_values, read_ids
from pipeline.io import atomic_path, read_json, write_json, write_text

VOC2012 = {
    "url": DATASET_YEAR_DICT["2012"]["url"],
    "filename": DATASET_YEAR_DICT["2012"]["filename"],
    "md5": DATASET_YEAR_DICT["2012"]["md5"],
    "base_dir": "VOCdevkit/VOC2012",
}
SBD = {
    "url": SBDataset.url,
    "filename": SBDataset.filename,
    "md5": SBDataset.md5,
    "base_dir": "benchmark_RELEASE/dataset",
}
DONE = "DONE.json"


def fetch(archive: dict, download_dir: Path) -> Path:
    """Download (md5 verified) and extract one archive unless already extracted.

    An ``<filename>.extracted`` marker, written after extraction, tells a finished extraction
    from an interrupted one. Returns the extracted dataset folder (``download_dir/base_dir``).
    """
    marker = download_dir / f"{archive['filename']}.extracted"
    if not marker.exists():
        download_and_extract_archive(
            archive["url"], download_root=str(download_dir), filename=archive["filename"], md5=archive["md5"]
        )
        write_text(marker, archive["md5"] + "\n")
    return download_dir / archive["base_dir"]


def sbd_mask(path: str | os.PathLike, image_id: str | None = None) -> np.ndarray:
    """Read an SBD class annotation ``cls/<id>.mat`` (field ``GTcls.Segmentation``; scipy.io).

    Returns:
        (H, W) uint8 label map, values 0..20.
    Raises:
        DatasetError: unreadable file, no ``GTcls.Segmentation``, or values outside 0..20/255.
    """
    try:
        gt = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
        mask = np.asarray(gt.Segmentation)
    except (OSError, ValueError, KeyError, AttributeError) as err:
        where = f"id {image_id!r}, file {path}" if image_id else str(path)
        raise DatasetError(
            f"{where}: cannot read GTcls.Segmentation ({err!r}); expected an SBD cls/<id>.mat annotation"
        ) from err
    if mask.ndim != 2 or mask.dtype.kind not in "ui" or mask.min() < 0 or mask.max() > 255:
        raise DatasetError(
            f"id {image_id!r}, file {path}: GTcls.Segmentation is {mask.dtype} "
            f"{mask.shape}; expected an (H, W) integer array with values 0..20"
        )
    mask = mask.astype(np.uint8)
    check_mask_values(mask, path, image_id)
    return mask


def save_index_png(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (H, W) uint8 label map as a mode-P PNG with the VOC palette, atomically (PIL)."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8))
    image.putpalette(voc_palette().tobytes())
    with atomic_path(path) as tmp:
        image.save(tmp)


def train_aug_ids(sbd_train: list[str], sbd_val: list[str], voc_train: list[str], voc_val: list[str]) -> list[str]:
    """The train_aug list: (SBD train ∪ SBD val ∪ VOC seg train) − VOC seg val, sorted.

    10,582 ids for the real lists (8,498 + 2,857 SBD, 1,464 VOC train, 1,449 VOC val).
    """
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def _copy(src: Path, dst: Path, image_id: str) -> None:
    if not src.is_file():
        raise DatasetError(f"id {image_id!r}, file {src}: not found in the extracted archive")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _build_one(image_id: str, voc_dir: Path, sbd_dir: Path, root: Path, voc_seg: frozenset) -> None:
    """Copy the JPEG of ``image_id`` and write its SegmentationClassAug PNG."""
    _copy(voc_dir / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages" / f"{image_id}.jpg", image_id)
    target = root / "SegmentationClassAug" / f"{image_id}.png"
    if image_id in voc_seg:  # already an index PNG with the VOC palette
        _copy(voc_dir / "SegmentationClass" / f"{image_id}.png", target, image_id)
    else:
        save_index_png(sbd_mask(sbd_dir / "cls" / f"{image_id}.mat", image_id), target)


def build_layout(voc_dir: Path, sbd_dir: Path, root: Path, workers: int = 0) -> dict:
    """Build JPEGImages/, SegmentationClassAug/ and the two id lists under ``root``.

    Args:
        voc_dir: extracted ``VOCdevkit/VOC2012``; sbd_dir: extracted ``benchmark_RELEASE/dataset``.
        workers: 0 works in this process, >0 in a ``multiprocessing`` pool.
    Returns:
        ``{"train_aug": n, "val": n}`` id counts.
    Raises:
        DatasetError: a list, image, mask or annotation is missing or bad.
    """
    seg = voc_dir / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_ids(seg / "train.txt"), read_ids(seg / "val.txt")
    train = train_aug_ids(read_ids(sbd_dir / "train.txt"), read_ids(sbd_dir / "val.txt"), voc_train, voc_val)
    ids = train + voc_val
    build = functools.partial(
        _build_one, voc_dir=voc_dir, sbd_dir=sbd_dir, root=root, voc_seg=frozenset(voc_train) | frozenset(voc_val)
    )
    with tqdm(total=len(ids), desc="build VOC-aug", unit="img", mininterval=1.0) as bar:
        if workers > 0:
            with multiprocessing.Pool(workers) as pool:
                for _ in pool.imap_unordered(build, ids, chunksize=64):
                    bar.update()
        else:
            for image_id in ids:
                build(image_id)
                bar.update()
    lists = root / "ImageSets" / "Segmentation"
    write_text(lists / "train_aug.txt", "".join(f"{i}\n" for i in train))
    write_text(lists / "val.txt", "".join(f"{i}\n" for i in voc_val))
    return {"train_aug": len(train), "val": len(voc_val)}


def download(root: str | os.PathLike, download_dir: str | os.PathLike, workers: int = 0) -> dict:
    """Fetch both archives, build the layout and write ``root/DONE.json`` last.

    Returns:
        The DONE.json document; if it already exists the build is skipped and it is returned.
    Raises:
        DatasetError: bad archive content; RuntimeError/OSError from torchvision on a failed
            download or md5 mismatch.
    """
    root, download_dir = Path(root), Path(download_dir)
    if (root / DONE).exists():
        return read_json(root / DONE)
    voc_dir, sbd_dir = fetch(VOC2012, download_dir), fetch(SBD, download_dir)
    counts = build_layout(voc_dir, sbd_dir, root, workers)
    lists = root / "ImageSets" / "Segmentation"
    done = {
        "archives": {a["filename"]: {"url": a["url"], "md5": a["md5"]} for a in (VOC2012, SBD)},
        "lists": {
            name: {"ids": counts[name], "sha256": hashlib.sha256((lists / f"{name}.txt").read_bytes()).hexdigest()}
            for name in ("train_aug", "val")
        },
    }
    write_json(root / DONE, done)
    return done
