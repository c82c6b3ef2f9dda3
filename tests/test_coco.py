"""COCO-to-VOC data layer: the class-id table, the coco-voc task, COCO-Stuff conversion, checks,
index cache, instance rasterisation (pycocotools), datasets; on a generated COCO-layout fixture
and on real data (shared/coco-mini: COCO val2017 images, COCO-Stuff stuffthingmaps, instances)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dir  # noqa: E402  (tests/ is on sys.path under pytest)
from PIL import Image

from pipeline.data import coco, coco_classes, tasks
from pipeline.data.classes import VOC_CLASSES
from pipeline.data.coco_classes import (
    COCO_CATEGORIES,
    COCO_IDS,
    COCO_NON_VOC_IDS,
    COCO_TO_VOC,
    COCO_UNUSED_IDS,
    PAPER_ORDER,
    VOC_COCO_IDS,
    VOC_TO_COCO,
)
from pipeline.data.splits import build_splits
from pipeline.data.voc import DatasetError, VOCSegmentation, read_ids

SHARED = shared_dir()
COCO_MINI = SHARED / "coco-mini"
VOC_MINI = SHARED / "voc-mini"
needs_coco_mini = pytest.mark.skipif(not COCO_MINI.is_dir(), reason="shared/coco-mini not available")
needs_voc_mini = pytest.mark.skipif(not VOC_MINI.is_dir(), reason="shared/voc-mini not available")

# The protocol as the authors' code writes it (the issue's list): VOC index -> COCO id.
ISSUE_VOC_TO_COCO = {
    1: 5, 2: 2, 3: 16, 4: 9, 5: 44, 6: 6, 7: 3, 8: 17, 9: 62, 10: 21,
    11: 67, 12: 18, 13: 19, 14: 4, 15: 1, 16: 64, 17: 20, 18: 63, 19: 7, 20: 72,
}  # fmt: skip
# VOC name -> COCO 2017 category name of the same class.
VOC_NAME_TO_COCO_NAME = {
    "aeroplane": "airplane", "bicycle": "bicycle", "bird": "bird", "boat": "boat", "bottle": "bottle",
    "bus": "bus", "car": "car", "cat": "cat", "chair": "chair", "cow": "cow",
    "diningtable": "dining table", "dog": "dog", "horse": "horse", "motorbike": "motorcycle",
    "person": "person", "pottedplant": "potted plant", "sheep": "sheep", "sofa": "couch", "train": "train",
    "tvmonitor": "tv",
}  # fmt: skip


# ------------------------------------------------------------------------------------------
# the class-id table


def test_coco_ids_are_the_80_used_of_1_to_91():
    assert len(COCO_IDS) == 80 and list(COCO_IDS) == sorted(COCO_IDS)
    assert set(COCO_IDS) | set(COCO_UNUSED_IDS) == set(range(1, 92))
    assert not set(COCO_IDS) & set(COCO_UNUSED_IDS)
    assert COCO_UNUSED_IDS == (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
    assert coco_classes.COCO_MAX_ID == 90


def test_voc_to_coco_matches_the_issue_list_and_names():
    assert VOC_TO_COCO == ISSUE_VOC_TO_COCO
    for voc, coco_id in VOC_TO_COCO.items():
        assert COCO_CATEGORIES[coco_id] == VOC_NAME_TO_COCO_NAME[VOC_CLASSES[voc]]
        assert coco_classes.voc_name_of_coco(coco_id) == VOC_CLASSES[voc]


def test_coco_to_voc_is_the_inverse_both_ways():
    assert len(COCO_TO_VOC) == 20
    assert all(COCO_TO_VOC[VOC_TO_COCO[v]] == v for v in range(1, 21))
    assert all(VOC_TO_COCO[COCO_TO_VOC[c]] == c for c in COCO_TO_VOC)
    assert VOC_COCO_IDS == (1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72)
    assert len(COCO_NON_VOC_IDS) == 60 and set(COCO_NON_VOC_IDS) | set(VOC_COCO_IDS) == set(COCO_IDS)
    assert PAPER_ORDER[:60] == COCO_NON_VOC_IDS and PAPER_ORDER[60:] == VOC_COCO_IDS
    assert coco_classes.paper_index(8) == 1 and coco_classes.paper_index(1) == 61 and coco_classes.paper_index(72) == 80
    with pytest.raises(ValueError, match="12"):
        coco_classes.paper_index(12)


def test_luts_voc_to_coco_and_back():
    to_coco, to_voc = coco_classes.voc_to_coco_lut(), coco_classes.coco_to_voc_lut()
    assert to_coco.dtype == np.uint8 and to_coco.shape == (256,)
    assert to_coco[0] == 0 and to_coco[255] == 255 and to_coco[15] == 1 and to_coco[18] == 63
    assert (to_coco[21:255] == 255).all()
    voc_values = np.array([*range(21), 255], dtype=np.uint8)
    np.testing.assert_array_equal(to_voc[to_coco[voc_values]], voc_values)
    assert to_voc[8] == 0 and to_voc[90] == 0  # truck, toothbrush: background in VOC
    assert to_voc[12] == 255 and to_voc[91] == 255  # unused ids: ignored


def test_voc_index_as_coco():
    index = {"a": {"classes": [15, 12], "height": 3}, "b": [0, 1, 255]}
    assert coco_classes.voc_index_as_coco(index) == {
        "a": {"classes": [1, 18], "height": 3},
        "b": {"classes": [0, 5, 255]},
    }
    with pytest.raises(ValueError, match="'c'.*21"):
        coco_classes.voc_index_as_coco({"c": [21]})


def test_coco_class_names():
    assert coco_classes.coco_class_name(0) == "background" and coco_classes.coco_class_name(255) == "void"
    assert coco_classes.coco_class_name(63) == "couch" and coco_classes.coco_class_name(12) == "unused-12"


@needs_coco_mini
def test_category_names_are_pycocotools_ones():
    instances = coco.Instances(COCO_MINI / "annotations/instances_val2017.json")
    assert {c: instances.coco.cats[c]["name"] for c in instances.coco.getCatIds()} == COCO_CATEGORIES


# ------------------------------------------------------------------------------------------
# the coco-voc task


def test_coco_voc_task_table():
    steps = tasks.task_steps("coco-voc", "coco")
    assert steps == [[0, *COCO_NON_VOC_IDS], list(VOC_COCO_IDS)]
    assert tasks.num_steps("coco-voc", "coco") == 2
    assert tasks.new_classes("coco-voc", 0, "coco") == list(COCO_NON_VOC_IDS)
    assert tasks.old_classes("coco-voc", 1, "coco") == list(COCO_NON_VOC_IDS)
    assert tasks.new_classes("coco-voc", 1, "coco") == list(VOC_COCO_IDS)
    assert tasks.seen_classes("coco-voc", 1, "coco") == [0, *COCO_IDS]
    assert tasks.future_classes("coco-voc", 0, "coco") == list(VOC_COCO_IDS)
    assert set(tasks.NUM_CLASSES) == set(tasks.TASKS) == set(tasks.CLASS_IDS)
    assert tasks.CLASS_IDS["voc"] == tuple(range(1, 21)) and tasks.CLASS_IDS["coco"] == COCO_IDS
    with pytest.raises(ValueError, match="coco-voc"):
        tasks.task_steps("coco-voc")  # not a VOC task


def test_coco_voc_filters():
    index = {
        "coco_only": [0, 8, 65],  # truck, bed
        "with_person": [1, 8],
        "voc_only": [0, 1, 255],
        "stuff_only": [0],
    }
    assert tasks.filter_ids(index, "coco-voc", 0, "disjoint", "coco") == ["coco_only"]
    assert tasks.filter_ids(index, "coco-voc", 0, "overlap", "coco") == ["coco_only", "with_person"]
    assert tasks.filter_ids(index, "coco-voc", 1, "disjoint", "coco") == ["with_person", "voc_only"]
    assert tasks.image_labels([1, 8, 63], "coco-voc", 1, dataset="coco") == [1, 63]
    assert tasks.image_labels([1, 8, 63], "coco-voc", 1, relaxed=True, dataset="coco") == [1, 8, 63]
    with pytest.raises(ValueError, match="'bad'.*\\[12\\]"):
        tasks.filter_ids({"bad": [12]}, "coco-voc", 0, "overlap", "coco")
    with pytest.raises(ValueError, match="'bad'.*\\[21\\].*0..20 or 255"):
        tasks.filter_ids({"bad": [21]}, "15-5", 0, "overlap")  # VOC message unchanged


def test_coco_voc_luts():
    step0 = tasks.pixel_target_lut("coco-voc", 0, dataset="coco")
    assert step0[8] == 8 and step0[1] == 0 and step0[0] == 0 and step0[255] == 255
    assert step0[12] == 255 and step0[91] == 255 and step0[100] == 255
    ev = tasks.eval_target_lut("coco-voc", 1, "coco")
    assert all(ev[c] == c for c in COCO_IDS) and ev[12] == 255
    assert (tasks.eval_target_lut("coco-voc", 0, "coco")[list(VOC_COCO_IDS)] == 0).all()


@pytest.mark.parametrize("task", sorted(tasks.TASKS["voc"]))
def test_voc_luts_unchanged(task):
    """The VOC tables as they were before COCO ids existed: 0..20 -> background or kept, rest 255."""
    for step in range(tasks.num_steps(task)):
        for learned, keep in (("current", tasks.new_classes(task, step)), ("seen", tasks.seen_classes(task, step))):
            expected = np.full(256, 255, dtype=np.uint8)
            expected[:21] = 0
            expected[keep] = keep
            np.testing.assert_array_equal(tasks.pixel_target_lut(task, step, learned), expected)


def test_build_splits_on_the_coco_table():
    index = {"a": [8, 65], "b": [1, 8], "c": [63]}
    steps = build_splits(index, "coco-voc", "disjoint", dataset="coco", task_table="coco")
    assert [s["ids"] for s in steps] == [["a"], ["b", "c"]]
    assert steps[1]["labels"] == {"b": [1], "c": [63]}


# ------------------------------------------------------------------------------------------
# conversion of stuffthingmaps


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def test_stuffthing_lut():
    lut = coco.stuffthing_lut()
    assert lut[0] == 1 and lut[89] == 90 and lut[62] == 63  # thing k -> id k + 1
    assert lut[11] == 255 and lut[90] == 255  # ids 12 and 91 are unused: ignored
    assert (lut[91:182] == 0).all() and lut[255] == 255
    assert sum(lut[k] == k + 1 for k in range(91)) == 80


def test_convert_one_map(tmp_path):
    src = _png(tmp_path / "src/000000000001.png", np.array([[0, 17, 91, 181], [255, 11, 62, 90]]))
    entry = coco.convert_stuffthingmap(src, tmp_path / "dst/000000000001.png", "000000000001")
    assert entry == {"id": "000000000001", "height": 2, "width": 4, "classes": [1, 18, 63]}
    out = coco.load_coco_label(tmp_path / "dst/000000000001.png", "000000000001")
    np.testing.assert_array_equal(out, [[1, 18, 0, 0], [255, 255, 63, 255]])
    assert out.dtype == np.uint8 and Image.open(tmp_path / "dst/000000000001.png").mode == "L"


def test_bad_maps_name_the_id_and_file(tmp_path):
    bad = _png(tmp_path / "000000000002.png", np.array([[0, 200]]))
    with pytest.raises(DatasetError, match=r"id '000000000002', file .*000000000002.png.*200"):
        coco.load_stuffthingmap(bad, "000000000002")
    rgb = tmp_path / "000000000003.png"
    Image.new("RGB", (4, 2)).save(rgb)
    with pytest.raises(DatasetError, match="000000000003.*mode RGB"):
        coco.load_stuffthingmap(rgb, "000000000003")
    truncated = tmp_path / "000000000004.png"
    _png(tmp_path / "full.png", np.random.default_rng(0).integers(0, 180, (64, 64)))
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    with pytest.raises(DatasetError, match="000000000004.*(truncated|cannot read)"):
        coco.load_stuffthingmap(truncated, "000000000004")
    with pytest.raises(DatasetError, match="000000000005.*not found"):
        coco.load_stuffthingmap(tmp_path / "000000000005.png", "000000000005")
    unused = _png(tmp_path / "000000000006.png", np.array([[0, 12, 91]]))
    with pytest.raises(DatasetError, match="000000000006.*12, 91.*COCO category id"):
        coco.load_coco_label(unused, "000000000006")


def test_batch_conversion_resumes_and_is_atomic(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    rng = np.random.default_rng(1)
    for k in range(6):
        _png(src / f"{k:012d}.png", rng.integers(0, 182, (8, 10)))
    calls = []
    real = coco.convert_stuffthingmap

    def crash_on_third(s, d, image_id=None):
        calls.append(image_id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill in the middle of the batch
        return real(s, d, image_id)

    monkeypatch.setattr(coco, "convert_stuffthingmap", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        coco.convert_stuffthingmaps(src, dst, progress=False)
    monkeypatch.setattr(coco, "convert_stuffthingmap", real)
    assert sorted(p.name for p in dst.glob("*.png")) == [f"{k:012d}.png" for k in range(2)]  # no partial file
    (dst / "000000000009.tmp-123.png").write_bytes(b"left by a SIGKILL")  # ignored
    assert coco.convert_stuffthingmaps(src, dst, progress=False) == {"total": 6, "converted": 4, "skipped": 2}
    assert coco.convert_stuffthingmaps(src, dst, workers=2, progress=False)["skipped"] == 6
    assert coco.list_ids(dst) == [f"{k:012d}" for k in range(6)]
    for k in range(6):
        stem = f"{k:012d}"
        np.testing.assert_array_equal(
            coco.load_coco_label(dst / f"{stem}.png"),
            coco.stuffthing_to_coco(coco.load_stuffthingmap(src / f"{stem}.png")),
        )
    marker = json.loads((dst / coco.MARKER).read_text())
    assert marker["converter_version"] == coco.CONVERTER_VERSION
    monkeypatch.setattr(coco, "CONVERTER_VERSION", coco.CONVERTER_VERSION + 1)
    with pytest.raises(DatasetError, match="converter.json.*version 1.*delete"):
        coco.convert_stuffthingmaps(src, dst, progress=False)


# ------------------------------------------------------------------------------------------
# the generated COCO-layout fixture: conversion, index, instances, datasets


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    coco.write_coco_fixture(root, n_train=9, n_val=6, size=(40, 56), seed=3)
    for split in ("train", "val"):
        folder = coco.split_folder(split)
        coco.convert_stuffthingmaps(root / coco.STUFFTHING_DIR / folder, coco.label_dir(root, split), progress=False)
    return root


def test_fixture_layout(fixture_root):
    for folder, n in (("train2017", 9), ("val2017", 6)):
        assert len(coco.list_ids(fixture_root / folder, ".jpg")) == n
        assert len(coco.list_ids(fixture_root / coco.STUFFTHING_DIR / folder)) == n
        assert (fixture_root / "annotations" / f"instances_{folder}.json").is_file()
    assert coco.list_ids(fixture_root / "val2017", ".jpg")[0] == "000001000001"


def test_fixture_is_deterministic(tmp_path):
    a = coco.write_coco_fixture(tmp_path / "a", n_train=3, n_val=2, seed=5)
    b = coco.write_coco_fixture(tmp_path / "b", n_train=3, n_val=2, seed=5, workers=2)
    assert a == b
    for stem in a["train2017"]:
        rel = f"{coco.STUFFTHING_DIR}/train2017/{stem}.png"
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_instances_rasterise_to_the_converted_maps(fixture_root):
    for folder in ("train2017", "val2017"):
        instances = coco.Instances(fixture_root / "annotations" / f"instances_{folder}.json")
        assert instances.image_ids() == coco.list_ids(fixture_root / folder, ".jpg")
        for stem in instances.image_ids():
            reference = coco.load_coco_label(coco.label_dir(fixture_root, folder) / f"{stem}.png", stem)
            raster = instances.label_map(stem)
            np.testing.assert_array_equal(raster, reference)  # crowd: 255 as in the map
            assert coco.thing_agreement(raster, reference)["agreement"] in (1.0, None)


def test_index_serial_parallel_cache(fixture_root, tmp_path, monkeypatch):
    cache = tmp_path / "index.json"
    serial = coco.index_coco(fixture_root, "train", images=True, progress=False)
    parallel = coco.index_coco(fixture_root, "train", images=True, workers=2, progress=False, cache=cache)
    assert serial == parallel and list(parallel) == coco.list_ids(coco.label_dir(fixture_root, "train"))
    some = next(iter(serial.values()))
    assert some["height"] == 40 and some["width"] == 56 and set(some["classes"]) <= set(COCO_IDS)
    stored = json.loads(cache.read_text())
    assert stored["provenance"]["converter_version"] == coco.CONVERTER_VERSION
    assert stored["provenance"]["files"] == 9 and len(stored["provenance"]["files_sha256"]) == 64

    def no_read(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(coco, "_index_one", no_read)
    assert coco.index_coco(fixture_root, "train", images=True, progress=False, cache=cache) == serial
    monkeypatch.setattr(coco, "CONVERTER_VERSION", coco.CONVERTER_VERSION + 1)  # another converter: recompute
    with pytest.raises(AssertionError, match="cache should have answered"):
        coco.index_coco(fixture_root, "train", images=True, progress=False, cache=cache)


def test_index_cache_notices_a_changed_file(fixture_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fixture_root, root)
    cache = tmp_path / "index.json"
    before = coco.index_coco(root, "val", progress=False, cache=cache)
    stem = next(iter(before))
    _png(coco.label_dir(root, "val") / f"{stem}.png", np.full((40, 56), 90))
    after = coco.index_coco(root, "val", progress=False, cache=cache)
    assert after[stem]["classes"] == [90]


def test_pair_check_errors(fixture_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fixture_root, root)
    stem = coco.list_ids(root / "val2017", ".jpg")[0]
    Image.new("RGB", (10, 10)).save(root / "val2017" / f"{stem}.jpg")
    with pytest.raises(DatasetError, match=f"id '{stem}'.*10x10.*56x40"):
        coco.check_coco_pair(root, "val", stem)
    (root / "val2017" / f"{stem}.jpg").unlink()
    with pytest.raises(DatasetError, match=f"id '{stem}'.*{stem}.jpg.*not found"):
        coco.index_coco(root, "val", images=True, progress=False)


def test_coco_segmentation_samples(fixture_root):
    dataset = coco.COCOSegmentation(fixture_root, "val")
    sample = dataset[0]
    assert set(sample) == {"id", "image", "mask"} and sample["id"] == "000001000001"
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (40, 56, 3)
    assert sample["mask"].dtype == np.uint8 and sample["mask"].shape == (40, 56)
    assert set(np.unique(sample["mask"])) <= {0, 255, *COCO_IDS}
    assert coco.COCOSegmentation(fixture_root, "val", transform=lambda s: s["id"])[1] == "000001000002"
    with pytest.raises(DatasetError, match="labels_coco.*not found"):
        coco.COCOSegmentation(fixture_root / "nowhere", "val", ids=["1"])


def test_fixture_voc_free_images_pass_the_step0_filter(fixture_root):
    index = coco.index_coco(fixture_root, "train", progress=False)
    free = coco.voc_pixel_free(index)
    assert free == tasks.filter_ids(index, "coco-voc", 0, "disjoint", "coco")
    assert {"000000000001", "000000000004", "000000000007"} <= set(free)  # every 3rd is drawn VOC-free


def test_instances_errors(tmp_path, fixture_root):
    good = json.loads((fixture_root / "annotations/instances_val2017.json").read_text())
    cases = [
        ({k: v for k, v in good.items() if k != "annotations"}, "key 'annotations' missing"),
        ({**good, "annotations": [{**good["annotations"][0], "category_id": 12}]}, "000001000001.*category_id 12"),
        ({**good, "annotations": [{**good["annotations"][0], "image_id": 5}]}, "image_id 5 is not in 'images'"),
        ({**good, "categories": [{"id": 1, "name": "human"}]}, "'human'.*not a COCO 2017 category"),
        (
            {**good, "annotations": [{"id": 7, "image_id": 1000001}]},
            "annotations\\[0\\] \\(id 7\\) has no key 'category_id'",
        ),
    ]
    for n, (doc, pattern) in enumerate(cases):
        path = tmp_path / f"bad{n}.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(DatasetError, match=pattern):
            coco.Instances(path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DatasetError, match="broken.json.*cannot read"):
        coco.Instances(tmp_path / "broken.json")
    instances = coco.Instances(fixture_root / "annotations/instances_val2017.json")
    with pytest.raises(DatasetError, match="'000000000042'.*not in 'images'"):
        instances.label_map("000000000042")
    with pytest.raises(ValueError, match="crowd"):
        instances.label_map("000001000001", crowd="maybe")


# ------------------------------------------------------------------------------------------
# VOC read as COCO ids (step 1, VOC evaluation)


@needs_voc_mini
def test_voc_as_coco_on_real_voc_masks():
    ids = read_ids(VOC_MINI / "train_ids.txt")[:4]
    plain = VOCSegmentation(VOC_MINI, ids, mask_dir="SegmentationClass")
    as_coco = coco.VOCAsCOCO(VOC_MINI, ids, mask_dir="SegmentationClass")
    lut = coco_classes.voc_to_coco_lut()
    for i in range(len(ids)):
        voc_mask, coco_mask = plain[i]["mask"], as_coco[i]["mask"]
        np.testing.assert_array_equal(coco_mask, lut[voc_mask])
        voc_classes = set(np.unique(voc_mask)) - {0, 255}
        assert set(np.unique(coco_mask)) - {0, 255} == {VOC_TO_COCO[int(c)] for c in voc_classes}
        np.testing.assert_array_equal(coco_classes.coco_to_voc_lut()[coco_mask], voc_mask)
    seen = coco.VOCAsCOCO(VOC_MINI, ids, mask_dir="SegmentationClass", transform=lambda s: sorted(np.unique(s["mask"])))
    assert set(seen[0]) <= {0, 255, *VOC_COCO_IDS}


# ------------------------------------------------------------------------------------------
# real data: shared/coco-mini


@pytest.fixture(scope="module")
def mini_labels(tmp_path_factory) -> Path:
    """The coco-mini stuffthingmaps converted to COCO ids (the shared folder is read-only)."""
    out = tmp_path_factory.mktemp("coco-mini-labels")
    coco.convert_stuffthingmaps(COCO_MINI / coco.STUFFTHING_DIR / "val2017", out / "val2017", progress=False)
    return out


@needs_coco_mini
def test_coco_mini_reader_checks_and_conversion(mini_labels):
    stems = coco.list_ids(COCO_MINI / coco.STUFFTHING_DIR / "val2017")
    assert len(stems) == 44  # SOURCES.md: 44 maps (149 images, 106 with complete instances)
    index = coco.index_coco(COCO_MINI, "val", label_root=mini_labels, images=True, progress=False)
    assert list(index) == stems
    for stem in stems:
        raw = coco.load_stuffthingmap(COCO_MINI / coco.STUFFTHING_DIR / "val2017" / f"{stem}.png", stem)
        assert not set(np.unique(raw)) & {k - 1 for k in COCO_UNUSED_IDS}  # no unused thing id occurs
        converted = coco.load_coco_label(mini_labels / "val2017" / f"{stem}.png", stem)
        np.testing.assert_array_equal(converted == 0, (raw >= 91) & (raw <= 181))  # stuff -> background
        np.testing.assert_array_equal(converted == 255, raw == 255)
        assert index[stem]["classes"] == sorted(int(k) + 1 for k in np.unique(raw) if k <= 90)
    sample = coco.COCOSegmentation(COCO_MINI, "val", ids=stems[:1], label_root=mini_labels)[0]
    assert sample["image"].shape[:2] == sample["mask"].shape


@needs_coco_mini
def test_coco_mini_filter_counts(mini_labels):
    index = coco.index_coco(COCO_MINI, "val", label_root=mini_labels, progress=False)
    free = coco.voc_pixel_free(index)
    assert len(free) == 15 and tasks.filter_ids(index, "coco-voc", 0, "disjoint", "coco") == free
    assert len(tasks.filter_ids(index, "coco-voc", 0, "overlap", "coco")) == 39
    assert len(tasks.filter_ids(index, "coco-voc", 1, "overlap", "coco")) == 29
    assert len(tasks.filter_ids(index, "coco-voc", 1, "disjoint", "coco")) == 29


@needs_coco_mini
def test_coco_mini_instances_against_real_maps(mini_labels):
    """Per image: the pycocotools rasterisation of the instance JSON vs the real map's things."""
    cases = {
        "000000018380": COCO_MINI / "annotations/instances_val2017.json",  # complete instances
        "000000000139": COCO_MINI / "annotations/instances_val2017_partial_000000000139.json",  # 2 of them
    }
    found = {}
    for stem, path in cases.items():
        reference = coco.load_coco_label(mini_labels / "val2017" / f"{stem}.png", stem)
        instances = coco.Instances(path)
        found[stem] = {
            (crowd, order): coco.thing_agreement(instances.label_map(stem, crowd, order), reference)
            for crowd in coco.CROWD_MODES
            for order in coco.ORDERS
        }
        for key, result in found[stem].items():
            print(stem, key, {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    complete = found["000000018380"]
    assert complete[("void", "annotation")]["agreement"] == 1.0  # COCO-Stuff's painting rule, exactly
    assert complete[("void", "annotation")]["thing_pixels"] == 180_408
    assert complete[("void", "area")]["agreement"] == pytest.approx(0.9993, abs=1e-4)
    assert complete[("label", "area")]["raster_agreement"] == pytest.approx(0.9436, abs=1e-4)
    partial = found["000000000139"][("void", "annotation")]
    assert partial["raster_agreement"] == pytest.approx(0.9756, abs=1e-4)  # the 2 persons' pixels
    assert partial["agreement"] == pytest.approx(0.0902, abs=1e-4)  # other objects are not annotated


@needs_coco_mini
def test_coco_mini_instance_images_filter(tmp_path):
    """The 106 images with complete instances: VOC-free count from their rasterised labels."""
    instances = coco.Instances(COCO_MINI / "annotations/instances_val2017.json")
    stems = instances.image_ids()
    assert len(stems) == 106
    index = {s: sorted(set(np.unique(instances.label_map(s))) - {0, 255}) for s in stems}
    free = coco.voc_pixel_free(index)
    print("instances: images", len(stems), "VOC-free", len(free))
    assert 0 < len(free) < len(stems)


def test_index_benchmark_runs_small(tmp_path, monkeypatch):
    """The benchmark script's code on a few maps (its numbers are not a benchmark)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_coco_index.py"
    spec = importlib.util.spec_from_file_location("bench_coco_index", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its pool pickles module-level functions
    spec.loader.exec_module(bench)
    out = tmp_path / "coco_index.json"
    result = bench.main(
        ["--images", "12", "--size", "24", "32", "--with-images", "4", "--real-repeats", "1", "--output", str(out)]
    )
    assert out.is_file() and result["index"]["images_per_s"] > 0 and result["convert"]["images_per_s"] > 0
    projection = result["projection_generated_rates"]
    assert projection["images"] == 123_287
    assert projection["index_minutes"] == pytest.approx(123_287 / result["index"]["images_per_s"] / 60)
