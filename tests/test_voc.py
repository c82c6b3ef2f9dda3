"""pipeline.data.voc and the prepare-data stage, on real VOC files (shared/voc-mini, voc-aug-labels)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dir  # noqa: E402  (tests/ is on sys.path under pytest)
from PIL import Image, ImageFile

from pipeline.__main__ import main
from pipeline.data.classes import voc_palette
from pipeline.data.voc import (
    DatasetError,
    VOCSegmentation,
    check_pair,
    index_dataset,
    load_image,
    load_mask,
    read_ids,
    resolve_mask_dir,
)

SHARED = shared_dir()
MINI = SHARED / "voc-mini"
AUG = SHARED / "voc-aug-labels"
needs_mini = pytest.mark.skipif(not MINI.is_dir(), reason="shared/voc-mini not available")
needs_aug = pytest.mark.skipif(not AUG.is_dir(), reason="shared/voc-aug-labels not available")


@pytest.fixture(scope="module")
def metadata() -> dict:
    return json.loads((MINI / "metadata.json").read_text())


@pytest.fixture
def mini(tmp_path) -> Path:
    """A copy of 3 train + 3 val voc-mini pairs, lists in ``train.txt`` / ``val.txt``."""
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    splits = {"train": read_ids(MINI / "train_ids.txt")[:3], "val": read_ids(MINI / "val_ids.txt")[:3]}
    for name, ids in splits.items():
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            shutil.copy(MINI / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
            shutil.copy(MINI / "SegmentationClass" / f"{i}.png", root / "SegmentationClass")
    return root


def _save_index_png(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(voc_palette().tobytes())
    image.save(path)


# ---------------------------------------------------------------------------------------- read_ids
def test_read_ids_strips_and_skips_blank_lines(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("  a_1\n\nb_2  \r\n\t\nc_3")
    assert read_ids(path) == ["a_1", "b_2", "c_3"]


def test_read_ids_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.txt"):
        read_ids(tmp_path / "nope.txt")


def test_read_ids_duplicate_names_id_and_file(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("x\ny\nx\n")
    with pytest.raises(DatasetError, match=r"'x'.*ids\.txt.*lines 1 and 3"):
        read_ids(path)


# ------------------------------------------------------------------------------- resolve_mask_dir
def test_resolve_mask_dir(tmp_path):
    (tmp_path / "SegmentationClass").mkdir()
    assert resolve_mask_dir(tmp_path) == tmp_path / "SegmentationClass"
    (tmp_path / "SegmentationClassAug").mkdir()
    assert resolve_mask_dir(tmp_path, "auto") == tmp_path / "SegmentationClassAug"
    assert resolve_mask_dir(tmp_path, "SegmentationClass") == tmp_path / "SegmentationClass"
    with pytest.raises(DatasetError, match="Other"):
        resolve_mask_dir(tmp_path, "Other")
    with pytest.raises(DatasetError, match="SegmentationClass"):
        resolve_mask_dir(tmp_path / "empty")


# ------------------------------------------------------------------------------ load_image / mask
def test_load_image_converts_to_rgb(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert (rgb == grey[..., None]).all()
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # CMYK red
    red = load_image(tmp_path / "c.jpg")
    assert red.shape == (4, 5, 3)
    assert (red[..., 0] > 200).all() and (red[..., 1:] < 60).all()


@needs_mini
def test_load_image_rejects_truncated_jpeg_even_if_pil_allows_it(tmp_path, monkeypatch):
    data = (MINI / "JPEGImages" / "2007_000123.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might
    with pytest.raises(DatasetError, match=r"cut\.jpg.*truncated"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    with pytest.raises(DatasetError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    full = load_image(MINI / "JPEGImages" / "2007_000123.jpg")
    assert full.shape == (375, 500, 3) and full.dtype == np.uint8


def test_load_mask_returns_indices_not_colours(tmp_path):
    values = np.array([[0, 1, 15], [20, 255, 7]], dtype=np.uint8)
    _save_index_png(values, tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png"), values)
    Image.fromarray(values).save(tmp_path / "l.png")  # mode L
    np.testing.assert_array_equal(load_mask(tmp_path / "l.png"), values)


def test_load_mask_rejects_invalid_values(tmp_path):
    _save_index_png(np.array([[0, 42, 3], [21, 255, 42]]), tmp_path / "bad.png")
    with pytest.raises(DatasetError) as err:
        load_mask(tmp_path / "bad.png")
    message = str(err.value)
    assert "bad.png" in message and "21, 42" in message and "0..20" in message and "255" in message
    _save_index_png(np.array([[0, 15]]), tmp_path / "fifteen.png")
    assert load_mask(tmp_path / "fifteen.png").max() == 15
    with pytest.raises(DatasetError, match="15; expected values in 0..10"):
        load_mask(tmp_path / "fifteen.png", num_classes=10)
    Image.new("RGB", (3, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="mode RGB"):
        load_mask(tmp_path / "rgb.png")


# ----------------------------------------------------------------------------------- check_pair
@needs_mini
def test_check_pair_real_pair_and_labels_only(mini, metadata):
    image_id = read_ids(mini / "train.txt")[0]
    width, height = metadata[image_id]["size"]
    expected = {"id": image_id, "height": height, "width": width, "classes": metadata[image_id]["classes"]}
    assert check_pair(mini, image_id, "SegmentationClass") == expected
    (mini / "JPEGImages" / f"{image_id}.jpg").unlink()
    assert check_pair(mini, image_id, "SegmentationClass", images=False) == expected
    with pytest.raises(DatasetError, match=rf"{image_id}.*{image_id}\.jpg.*not found"):
        check_pair(mini, image_id, "SegmentationClass")


# ---------------------------------------------------------------------------- broken data sets
def _truncate(root: Path, image_id: str) -> None:
    path = root / "JPEGImages" / f"{image_id}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])


def _value_42(root: Path, image_id: str) -> None:
    path = root / "SegmentationClass" / f"{image_id}.png"
    mask = np.array(Image.open(path))
    mask[5, 7] = 42
    _save_index_png(mask, path)


def _shrink_image(root: Path, image_id: str) -> None:
    path = root / "JPEGImages" / f"{image_id}.jpg"
    image = Image.open(path)
    image.crop((0, 0, image.width - 10, image.height)).save(path, quality=90)


def _remove_files(root: Path, image_id: str) -> None:
    (root / "JPEGImages" / f"{image_id}.jpg").unlink()
    (root / "SegmentationClass" / f"{image_id}.png").unlink()


def _duplicate(root: Path, image_id: str) -> None:
    with open(root / "train.txt", "a") as f:
        f.write(f"{image_id}\n")


BROKEN = {  # name: (break the copy, file named in the error, other expected text)
    "truncated-jpeg": (_truncate, "{id}.jpg", "truncated"),
    "mask-value-42": (_value_42, "{id}.png", "42"),
    "size-mismatch": (_shrink_image, "{id}.jpg", "{w_minus_10}x{h}"),
    "missing-id": (_remove_files, "{id}.png", "not found"),
    "duplicated-id": (_duplicate, "train.txt", "duplicated"),
}


@needs_mini
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_dataset_errors_name_id_and_file(mini, metadata, case):
    breaker, file_name, detail = BROKEN[case]
    image_id = read_ids(mini / "train.txt")[1]
    width, height = metadata[image_id]["size"]
    fields = {"id": image_id, "w_minus_10": width - 10, "h": height}
    breaker(mini, image_id)
    ids = read_ids(mini / "val.txt")
    with pytest.raises(DatasetError) as err:
        ids = read_ids(mini / "train.txt") + ids
        index_dataset(mini, ids, progress=False)
    message = str(err.value)
    assert image_id in message
    assert file_name.format(**fields) in message
    assert detail.format(**fields) in message
    if case == "size-mismatch":
        assert f"{width}x{height}" in message  # both sizes named

    output = mini.parent / "out" / "index.json"
    with pytest.raises(DatasetError):
        main(
            [
                "prepare-data",
                "--root",
                str(mini),
                "--train-list",
                "train.txt",
                "--val-list",
                "val.txt",
                "--workers",
                "2" if case == "mask-value-42" else "0",
                "--output",
                str(output),
            ]
        )
    assert not output.exists()
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


# ----------------------------------------------------------------------------- index / prepare
@needs_mini
def test_index_voc_mini_matches_metadata(metadata):
    ids = read_ids(MINI / "ids.txt")
    assert len(ids) == 201
    index = index_dataset(MINI, ids, progress=False)
    assert list(index) == ids
    for image_id in ids:
        width, height = metadata[image_id]["size"]
        assert index[image_id] == {"height": height, "width": width, "classes": metadata[image_id]["classes"]}
    assert index_dataset(MINI, ids[:40], "SegmentationClass", workers=2, progress=False) == {
        i: index[i] for i in ids[:40]
    }


@needs_mini
def test_prepare_data_cli(mini, metadata, capsys):
    output = mini.parent / "prepared" / "index.json"
    assert (
        main(
            [
                "prepare-data",
                "--root",
                str(mini),
                "--train-list",
                "train.txt",
                "--val-list",
                str(mini / "val.txt"),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    doc = json.loads(output.read_text())
    train, val = read_ids(mini / "train.txt"), read_ids(mini / "val.txt")
    assert doc["root"] == str(mini.resolve()) and doc["images"] is True
    assert doc["mask_dir"] == str((mini / "SegmentationClass").resolve())
    assert doc["splits"] == {"train": train, "val": val}
    assert set(doc["index"]) == set(train + val)
    for image_id in train + val:
        assert doc["index"][image_id]["classes"] == metadata[image_id]["classes"]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "train 3 images" in line and "val 3 images" in line
    n_train_with = {c: sum(c in metadata[i]["classes"] for i in train) for c in range(1, 21)}
    first_class = min(c for c, n in n_train_with.items() if n)
    assert f" {first_class}:{n_train_with[first_class]}/" in line

    # labels only: the JPEGs are not needed
    shutil.rmtree(mini / "JPEGImages")
    main(
        [
            "prepare-data",
            "--root",
            str(mini),
            "--train-list",
            "train.txt",
            "--val-list",
            "val.txt",
            "--labels-only",
            "--output",
            str(output),
        ]
    )
    assert json.loads(output.read_text())["images"] is False


@needs_mini
def test_prepare_data_rejects_id_in_both_lists(mini):
    shared_id = read_ids(mini / "val.txt")[0]
    with open(mini / "train.txt", "a") as f:
        f.write(shared_id + "\n")
    output = mini.parent / "index.json"
    with pytest.raises(DatasetError, match=rf"{shared_id}.*train\.txt.*val\.txt"):
        main(
            [
                "prepare-data",
                "--root",
                str(mini),
                "--train-list",
                "train.txt",
                "--val-list",
                "val.txt",
                "--output",
                str(output),
            ]
        )
    assert not output.exists()


@needs_mini
def test_voc_segmentation_dataset(mini, metadata):
    ids = read_ids(mini / "val.txt")
    dataset = VOCSegmentation(mini, ids)
    assert len(dataset) == 3
    sample = dataset[2]
    width, height = metadata[ids[2]]["size"]
    assert sample["id"] == ids[2]
    assert sample["image"].shape == (height, width, 3) and sample["image"].dtype == np.uint8
    assert sample["mask"].shape == (height, width) and sample["mask"].dtype == np.uint8
    assert sample["image"].flags.writeable and sample["mask"].flags.writeable  # transforms may edit in place
    present = sorted(set(np.unique(sample["mask"]).tolist()) - {0, 255})
    assert present == metadata[ids[2]]["classes"]
    flipped = VOCSegmentation(mini, ids, transform=lambda s: {**s, "mask": s["mask"][:, ::-1]})[2]
    np.testing.assert_array_equal(flipped["mask"], sample["mask"][:, ::-1])


# ---------------------------------------------------------------------------------- full scale
@needs_aug
def test_index_full_voc_aug_labels():
    train, val = read_ids(AUG / "train_aug.txt"), read_ids(AUG / "val.txt")
    assert (len(train), len(val)) == (10582, 1449)
    index = index_dataset(AUG, train + val, images=False, workers=2, progress=False)
    assert len(index) == 12031 and list(index) == train + val

    for image_id in random.Random(0).sample(train + val, 200):
        mask = np.array(Image.open(AUG / "SegmentationClassAug" / f"{image_id}.png"))
        assert index[image_id]["classes"] == sorted(set(np.unique(mask).tolist()) - {0, 255})
        assert (index[image_id]["height"], index[image_id]["width"]) == mask.shape

    labels_file = MINI / "lists" / "image_labels_segaug.txt"  # labels read from the masks by others
    if labels_file.exists():
        rows = [line.split() for line in labels_file.read_text().splitlines() if not line.startswith("#")]
        assert len(rows) == 12031
        for image_id, _split, *classes in rows:
            assert index[image_id]["classes"] == [int(c) for c in classes], image_id
