"""pipeline.data.download, up to the network: fetch calls, .mat -> PNG, train_aug list arithmetic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

import pipeline.data.download as dl
from pipeline.__main__ import main
from pipeline.data.classes import voc_palette
from pipeline.data.voc import DatasetError, index_dataset, load_mask, read_ids

VOC_URL = "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"

# A tiny VOC + SBD: VOC seg train {a, b}, val {c, d}; SBD train {b, e, f}, val {c, g}.
A, B, C, D, E, F, G = (f"2008_00000{k}" for k in range(1, 8))
VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL = [A, B], [C, D], [B, E, F], [C, G]
TRAIN_AUG = [A, B, E, F, G]  # ({b,e,f} | {c,g} | {a,b}) - {c,d}, by hand
SIZES = {i: (20 + 2 * k, 16 + k) for k, i in enumerate((A, B, C, D, E, F, G))}  # id: (H, W)


def _label(image_id: str, offset: int) -> np.ndarray:
    """A (H, W) uint8 label map with classes depending on the id; ``offset`` tells sources apart."""
    h, w = SIZES[image_id]
    k = int(image_id[-1])
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[2:10, 3:9] = k + offset
    mask[12:, w // 2 :] = 20 - k
    return mask


def write_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """A ``cls/<id>.mat`` shaped like SBD's: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(segmentation == k + 1)
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    scipy.io.savemat(
        path, {"GTcls": {"Segmentation": segmentation, "Boundaries": boundaries, "CategoriesPresent": present}}
    )


def _build_fake_archive(filename: str, root: Path, broken: set[str]) -> None:
    if filename == "VOCtrainval_11-May-2012.tar":
        voc = root / "VOCdevkit" / "VOC2012"
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (voc / folder).mkdir(parents=True)
        for image_id, (h, w) in SIZES.items():
            Image.new("RGB", (w, h), (10 * h, 5 * w, 90)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        for image_id in VOC_TRAIN + VOC_VAL:
            png = Image.fromarray(_label(image_id, 0))
            png.putpalette(voc_palette().tobytes())
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
        (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
        (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(VOC_VAL) + "\n")
    elif filename == "benchmark.tgz":
        sbd = root / "benchmark_RELEASE" / "dataset"
        (sbd / "cls").mkdir(parents=True)
        for image_id in SBD_TRAIN + SBD_VAL:
            if image_id not in broken:
                write_sbd_mat(sbd / "cls" / f"{image_id}.mat", _label(image_id, 1))
        (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
        (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    else:
        raise AssertionError(f"unexpected archive {filename}")


@pytest.fixture
def fake_download(monkeypatch):
    """Replace the network call; record (url, filename, md5) and build the extracted tree."""
    calls: list[tuple[str, str, str]] = []
    broken: set[str] = set()

    def fake(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append((url, filename, md5))
        _build_fake_archive(filename, Path(extract_root or download_root), broken)

    monkeypatch.setattr(dl, "download_and_extract_archive", fake)
    return calls, broken


def test_archives_are_torchvisions():
    assert (dl.VOC2012["url"], dl.VOC2012["filename"], dl.VOC2012["md5"]) == (
        VOC_URL,
        "VOCtrainval_11-May-2012.tar",
        VOC_MD5,
    )
    assert (dl.SBD["url"], dl.SBD["filename"], dl.SBD["md5"]) == (SBD_URL, "benchmark.tgz", SBD_MD5)


def test_train_aug_ids_by_hand():
    assert dl.train_aug_ids(SBD_TRAIN, SBD_VAL, VOC_TRAIN, VOC_VAL) == TRAIN_AUG
    assert dl.train_aug_ids(["x", "y"], ["z"], ["y", "w"], ["x"]) == ["w", "y", "z"]


def test_sbd_mat_to_png(tmp_path):
    segmentation = _label(E, 1)
    write_sbd_mat(tmp_path / "e.mat", segmentation)
    mask = dl.sbd_mask(tmp_path / "e.mat", E)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, segmentation)
    dl.save_index_png(mask, tmp_path / "e.png")
    assert Image.open(tmp_path / "e.png").mode == "P"
    np.testing.assert_array_equal(load_mask(tmp_path / "e.png"), segmentation)

    bad = segmentation.copy()
    bad[0, 0] = 42
    write_sbd_mat(tmp_path / "bad.mat", bad)
    with pytest.raises(DatasetError, match=r"'x'.*bad\.mat.*42"):
        dl.sbd_mask(tmp_path / "bad.mat", "x")
    scipy.io.savemat(tmp_path / "other.mat", {"GTinst": {"Segmentation": segmentation}})
    with pytest.raises(DatasetError, match=r"other\.mat.*GTcls"):
        dl.sbd_mask(tmp_path / "other.mat", "y")


def test_download_stage_builds_layout(tmp_path, fake_download):
    calls, _ = fake_download
    root, archives = tmp_path / "VOC2012", tmp_path / "downloads"
    argv = ["download", "--root", str(root), "--download-dir", str(archives)]
    assert main(argv) == 0
    assert calls == [(VOC_URL, "VOCtrainval_11-May-2012.tar", VOC_MD5), (SBD_URL, "benchmark.tgz", SBD_MD5)]

    lists = root / "ImageSets" / "Segmentation"
    assert read_ids(lists / "train_aug.txt") == TRAIN_AUG
    assert read_ids(lists / "val.txt") == VOC_VAL
    assert sorted(p.stem for p in (root / "JPEGImages").iterdir()) == sorted(TRAIN_AUG + VOC_VAL)
    voc_masks = archives / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    for image_id in TRAIN_AUG + VOC_VAL:
        png = root / "SegmentationClassAug" / f"{image_id}.png"
        assert Image.open(png).mode == "P"
        from_voc = image_id in VOC_TRAIN + VOC_VAL  # b is in SBD too: VOC's annotation wins
        np.testing.assert_array_equal(load_mask(png), _label(image_id, 0 if from_voc else 1))
        if from_voc:
            assert png.read_bytes() == (voc_masks / f"{image_id}.png").read_bytes()
    index = index_dataset(root, TRAIN_AUG + VOC_VAL, progress=False)  # the result is a valid dataset
    assert index[G]["classes"] == sorted({int(G[-1]) + 1, 20 - int(G[-1])})

    done = json.loads((root / "DONE.json").read_text())
    assert done["archives"]["VOCtrainval_11-May-2012.tar"]["md5"] == VOC_MD5
    assert done["archives"]["benchmark.tgz"]["md5"] == SBD_MD5
    assert done["lists"]["train_aug"] == {
        "ids": 5,
        "sha256": hashlib.sha256((lists / "train_aug.txt").read_bytes()).hexdigest(),
    }
    assert done["lists"]["val"]["ids"] == 2

    assert main(argv) == 0  # finished: nothing fetched again
    assert len(calls) == 2


def test_interrupted_build_is_not_done(tmp_path, fake_download):
    calls, broken = fake_download
    broken.add(F)  # SBD annotation of f missing from the archive
    root, archives = tmp_path / "VOC2012", tmp_path / "downloads"
    argv = ["download", "--root", str(root), "--download-dir", str(archives), "--workers", "2"]
    with pytest.raises(DatasetError, match=rf"{F}.*{F}\.mat"):
        main(argv)
    assert not (root / "DONE.json").exists()
    assert not (root / "ImageSets" / "Segmentation" / "train_aug.txt").exists()

    write_sbd_mat(archives / "benchmark_RELEASE" / "dataset" / "cls" / f"{F}.mat", _label(F, 1))
    main(argv)  # resumes: archives already extracted are not fetched again
    assert len(calls) == 2
    assert (root / "DONE.json").exists()
    np.testing.assert_array_equal(load_mask(root / "SegmentationClassAug" / f"{F}.png"), _label(F, 1))
