"""FMWISS memory bank (Sec. 3.4): instance extraction, B-per-class sampling, copy-paste, the stage."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.cache import CacheError, open_cache
from pipeline.io import read_json
from pipeline.methods.fmwiss.copy_paste import copy_paste
from pipeline.methods.fmwiss.memory import (
    MemoryBank,
    build_memory_bank,
    extend_memory_bank,
    extract_instances,
    instance_key,
    sample_instances,
)
from pipeline.stages.memory_bank import ids_digest


def coloured(shape=(12, 12)) -> np.ndarray:
    """An image whose every pixel has a distinct colour, so crops can be traced back."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return np.stack([yy * 10, xx * 10, (yy * w + xx) % 256], axis=-1).astype(np.uint8)


# 12x12 label map: two blobs of class 1 (2x2 and an L of 5 px), one pixel of class 2 touching
# the L diagonally (another class: not merged), void around the first blob.
LABEL = np.zeros((12, 12), np.uint8)
LABEL[1:3, 1:3] = 1
LABEL[0, 0:4] = 255
LABEL[6:9, 6] = 1
LABEL[8, 7:9] = 1
LABEL[9, 9] = 2
LABEL[10, 1] = 2


def test_extract_instances_connected_components_by_hand():
    image = coloured()
    instances = extract_instances(image, LABEL, [1, 2])
    assert [(c, m.shape, int(m.sum())) for c, _, m in instances] == [
        (1, (2, 2), 4),
        (1, (3, 3), 5),
        (2, (1, 1), 1),
        (2, (1, 1), 1),
    ]
    _, crop, mask = instances[1]
    np.testing.assert_array_equal(crop, image[6:9, 6:9])  # the whole bounding box
    np.testing.assert_array_equal(mask, [[1, 0, 0], [1, 0, 0], [1, 1, 1]])
    assert crop.dtype == np.uint8 and mask.dtype == bool
    # area filter, class filter
    assert [(c, int(m.sum())) for c, _, m in extract_instances(image, LABEL, [1, 2], min_area=5)] == [(1, 5)]
    assert [c for c, _, _ in extract_instances(image, LABEL, [2])] == [2, 2]


def test_extract_instances_diagonal_pixels_are_one_instance():
    label = np.zeros((5, 5), np.uint8)
    label[1, 1] = label[2, 2] = label[3, 3] = 4  # 8-connectivity
    ((c, _, mask),) = extract_instances(coloured((5, 5)), label, [4])
    assert c == 4 and mask.shape == (3, 3) and np.array_equal(mask, np.eye(3, dtype=bool))


def test_extract_instances_errors():
    with pytest.raises(ValueError, match="label"):
        extract_instances(coloured(), LABEL[:5], [1])
    with pytest.raises(ValueError, match="255"):
        extract_instances(coloured(), LABEL, [255])


def sources(n_images: int = 7):
    """Image i holds one instance of class 1 (its colour encodes i); images 0 and 1 also class 2."""
    out = []
    for i in range(n_images):
        image = np.full((8, 8, 3), i, np.uint8)
        label = np.zeros((8, 8), np.uint8)
        label[1:4, 1:3] = 1
        if i < 2:
            label[5:7, 5:8] = 2
        out.append((f"img{i}", image, label))
    return out


def test_sampling_counts_and_determinism():
    archives, candidates = sample_instances(sources(), [1, 2, 3], per_class=3, seed=0)
    assert {c: len(a) for c, a in archives.items()} == {1: 3, 2: 2, 3: 0}
    assert candidates == {1: 7, 2: 2, 3: 0}

    def picked(seed):
        return [item["source"] for item in sample_instances(sources(), [1], 3, seed)[0][1]]

    assert picked(0) == picked(0)
    assert len({tuple(picked(seed)) for seed in range(10)}) > 1
    item = archives[2][0]
    assert item["bbox"] == [5, 5, 7, 8] and item["area"] == 6 and item["mask"].all()


def test_sampling_is_uniform_over_candidates():
    frequency = np.zeros(7)
    for seed in range(1500):
        for item in sample_instances(sources(), [1], 3, seed)[0][1]:
            frequency[int(item["source"][3:])] += 1
    np.testing.assert_allclose(frequency / 1500, 3 / 7, atol=0.05)


@pytest.fixture
def bank_path(tmp_path):
    path = tmp_path / "bank.h5"
    counts = build_memory_bank(path, sources(), [1, 2], per_class=3, seed=5, min_area=0, provenance={"task": "t"})
    assert counts == {1: 3, 2: 2}
    return path


def test_cache_round_trip(bank_path):
    archives, _ = sample_instances(sources(), [1, 2], per_class=3, seed=5)
    with MemoryBank(bank_path, expected={"per_class": 3, "seed": 5, "task": "t"}) as bank:
        assert bank.classes() == [1, 2] and bank.count(1) == 3 and bank.count(2) == 2 and bank.count(7) == 0
        assert len(bank) == 5
        for c in (1, 2):
            for k, item in enumerate(archives[c]):
                image, mask = bank.get(c, k)
                np.testing.assert_array_equal(image, item["image"])
                np.testing.assert_array_equal(mask, item["mask"])
                assert mask.dtype == bool and image.dtype == np.uint8
        with pytest.raises(KeyError, match="class 2 has 2"):
            bank.get(2, 2)
    with open_cache(bank_path) as reader:
        assert sorted(reader.ids()) == ["c01_000", "c01_001", "c01_002", "c02_000", "c02_001"]
        attrs = reader.attrs(instance_key(2, 0))
        assert attrs["class"] == 2 and attrs["source"] in ("img0", "img1") and attrs["area"] == 6
        root = reader.root_attrs()
        assert root["classes"].tolist() == [1, 2] and root["counts"].tolist() == [3, 2]
        assert root["candidates"].tolist() == [7, 2]
    with pytest.raises(CacheError, match="per_class"):
        MemoryBank(bank_path, expected={"per_class": 50})


def test_sample_picks_class_then_instance(bank_path):
    with MemoryBank(bank_path) as bank:
        rng = np.random.default_rng(0)
        classes = [bank.sample(rng)[0] for _ in range(400)]
        assert 0.4 < classes.count(2) / 400 < 0.6  # classes equally likely
        assert {bank.sample(rng, classes=[2, 9])[0] for _ in range(20)} == {2}
        with pytest.raises(ValueError, match="no instance"):
            bank.sample(rng, classes=[9])


def single_instance_bank(tmp_path, crop_shape=(3, 4)) -> MemoryBank:
    """A bank holding one class-3 instance: an L shape whose box touches every side."""
    h, w = crop_shape
    image = np.zeros((h + 2, w + 2, 3), np.uint8)
    image[1:-1, 1:-1] = coloured(crop_shape) + 1  # never 0
    label = np.zeros(image.shape[:2], np.uint8)
    label[1:-1, 1] = 3
    label[-2, 1:-1] = 3
    build_memory_bank(tmp_path / "one.h5", [("src", image, label)], [3], per_class=5)
    return MemoryBank(tmp_path / "one.h5")


def test_copy_paste_prob_one_on_blank_image(tmp_path):
    bank = single_instance_bank(tmp_path)
    _, crop, crop_mask = bank.sample(np.random.default_rng(0))
    image = np.zeros((10, 12, 3), np.uint8)
    mask = np.zeros((10, 12), np.uint8)
    out_image, out_mask, pasted = copy_paste(image, mask, bank, np.random.default_rng(1), prob=1.0)
    assert pasted.dtype == np.uint8 and set(np.unique(pasted)) == {0, 3}
    rows, cols = np.nonzero(pasted)
    top, left = rows.min(), cols.min()
    region = np.s_[top : top + 3, left : left + 4]
    np.testing.assert_array_equal(pasted[region] == 3, crop_mask)  # pasted pixels = instance mask
    assert int((pasted > 0).sum()) == int(crop_mask.sum())
    np.testing.assert_array_equal(out_mask, pasted)  # mask updated there only
    np.testing.assert_array_equal(out_image[region][crop_mask], crop[crop_mask])
    assert not out_image[pasted == 0].any()  # nothing else changed
    assert not image.any() and not mask.any()  # inputs untouched


def test_copy_paste_prob_zero_changes_nothing(tmp_path):
    bank = single_instance_bank(tmp_path)
    image = coloured((10, 12))
    mask = np.full((10, 12), 255, np.uint8)
    out_image, out_mask, pasted = copy_paste(image, mask, bank, np.random.default_rng(1), prob=0.0)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    assert not pasted.any()


def test_copy_paste_keeps_the_instance_inside_the_image(tmp_path):
    bank = single_instance_bank(tmp_path, crop_shape=(9, 9))
    rng = np.random.default_rng(0)
    for scale in ((1.0, 1.0), (2.0, 3.0), (0.5, 0.5)):
        for _ in range(10):
            _, mask, pasted = copy_paste(
                np.zeros((6, 7, 3), np.uint8), np.zeros((6, 7), np.uint8), bank, rng, prob=1.0, scale_range=scale
            )
            assert pasted.any() and np.array_equal(mask, pasted)
    with pytest.raises(ValueError, match="prob"):
        copy_paste(np.zeros((6, 7, 3), np.uint8), np.zeros((6, 7), np.uint8), bank, rng, prob=1.5)


def test_copy_paste_shrinks_an_instance_larger_than_the_image(tmp_path):
    bank = single_instance_bank(tmp_path, crop_shape=(9, 9))
    _, _, pasted = copy_paste(
        np.zeros((6, 7, 3), np.uint8), np.zeros((6, 7), np.uint8), bank, np.random.default_rng(0), prob=1.0
    )
    rows, cols = np.nonzero(pasted)
    assert rows.max() - rows.min() + 1 == 6 and cols.max() - cols.min() + 1 == 6  # 9x9 -> 6x6


def test_extend_memory_bank(bank_path, tmp_path):
    new = [
        (f"new{i}", np.full((8, 8, 3), 100 + i, np.uint8), np.pad(np.full((2, 2), 4, np.uint8), 3)) for i in range(4)
    ]
    out = tmp_path / "step1.h5"
    counts = extend_memory_bank(bank_path, out, new, [4], per_class=3, seed=0, provenance={"step": 1})
    assert counts == {1: 3, 2: 2, 4: 3}
    with MemoryBank(out, expected={"step": 1, "previous": str(bank_path)}) as bank, MemoryBank(bank_path) as old:
        assert bank.classes() == [1, 2, 4]
        np.testing.assert_array_equal(bank.get(1, 2)[0], old.get(1, 2)[0])
        assert bank.provenance["previous_provenance"]["seed"] == 5
    with pytest.raises(ValueError, match="class 2 is already"):
        extend_memory_bank(bank_path, tmp_path / "bad.h5", new, [2, 4])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A generated dataset (24 train images of 48 px), its index and the 15-5 overlap splits."""
    root = tmp_path_factory.mktemp("memory_stage")
    main(
        [
            "make-demo-data",
            "--root",
            str(root / "data"),
            "--n-train",
            "24",
            "--n-val",
            "2",
            "--size",
            "48",
            "--seed",
            "1",
        ]
    )
    main(["prepare-data", "--root", str(root / "data"), "--output", str(root / "dataset.json")])
    main(
        [
            "splits",
            "--index",
            str(root / "dataset.json"),
            "--task",
            "15-5",
            "--protocol",
            "overlap",
            "--dataset",
            "demo",
            "--outdir",
            str(root / "splits"),
        ]
    )
    return root


PARAMS = json.dumps({"per_class": 2, "min_area": 16, "seed": 0})


def memory_stage(demo, split: str, out, *extra: str) -> None:
    main(
        [
            "memory-bank",
            "--split",
            str(demo / "splits" / split),
            "--data",
            str(demo / "dataset.json"),
            "--params",
            PARAMS,
            "--out",
            str(out),
            *extra,
        ]
    )


def test_memory_bank_stage_end_to_end(demo, tmp_path, capfd):
    out = tmp_path / "step0" / "memory_bank.h5"
    memory_stage(demo, "step0.json", out, "--threads", "2")
    split = read_json(demo / "splits" / "step0.json")
    with MemoryBank(
        out,
        expected={"per_class": 2, "min_area": 16, "seed": 0, "step": 0, "split_ids_sha256": ids_digest(split["ids"])},
    ) as bank:
        assert set(bank.classes(all_classes=True)) == set(range(1, 16))
        assert sum(bank.count(c) for c in range(1, 16)) > 0
        assert all(bank.count(c) <= 2 for c in range(1, 16))
        for c in bank.classes():
            image, mask = bank.get(c, 0)
            assert image.shape[:2] == mask.shape and mask.sum() >= 16
            assert bank.reader.attrs(instance_key(c, 0))["source"] in split["ids"]
        assert bank.provenance["code_version"] and bank.provenance["source"] == "ground_truth"
    assert "instances kept of" in capfd.readouterr().err
    assert not list(out.parent.glob("*.partial.h5"))
    # same inputs, same bank (deterministic with the seed, with or without threads)
    again = tmp_path / "again.h5"
    memory_stage(demo, "step0.json", again, "--no-progress")
    with h5py.File(out) as a, h5py.File(again) as b:
        assert sorted(a["images"]) == sorted(b["images"])
        for key in a["images"]:
            np.testing.assert_array_equal(a["images"][key]["image"][()], b["images"][key]["image"][()])
    with pytest.raises(ValueError, match="per_klass"):
        main(
            [
                "memory-bank",
                "--split",
                str(demo / "splits" / "step0.json"),
                "--data",
                str(demo / "dataset.json"),
                "--params",
                '{"per_klass": 3}',
                "--out",
                str(tmp_path / "x.h5"),
            ]
        )
    with pytest.raises(ValueError, match="--previous"):
        memory_stage(demo, "step1.json", tmp_path / "x.h5")


def test_memory_bank_stage_requires_every_params_key(demo, tmp_path):
    """The `memory` section of config.yaml is the only source of the settings: no key has a default."""
    for key in ("per_class", "min_area", "seed"):
        params = {k: v for k, v in json.loads(PARAMS).items() if k != key}
        with pytest.raises(ValueError, match=f"key '{key}' missing"):
            main(
                [
                    "memory-bank",
                    "--split",
                    str(demo / "splits" / "step0.json"),
                    "--data",
                    str(demo / "dataset.json"),
                    "--params",
                    json.dumps(params),
                    "--out",
                    str(tmp_path / "x.h5"),
                ]
            )
    with pytest.raises(SystemExit):  # --params itself is required
        main(
            [
                "memory-bank",
                "--split",
                str(demo / "splits" / "step0.json"),
                "--data",
                str(demo / "dataset.json"),
                "--out",
                str(tmp_path / "x.h5"),
            ]
        )
    assert not list(tmp_path.iterdir())


def test_memory_bank_stage_extends_with_coseg_masks(demo, tmp_path):
    """Step 1: the step-0 bank plus new-class instances cut from a co-segmentation cache. The cache
    here holds 'oracle' scores (+1 on the class's ground-truth pixels, -1 elsewhere), so its fused
    masks are the ground truth of the labelled new classes."""
    from pipeline.cache import CacheWriter
    from pipeline.data.voc import load_mask
    from pipeline.foundation.coseg import expected_provenance, step_attrs

    bank0 = tmp_path / "step0.h5"
    memory_stage(demo, "step0.json", bank0, "--no-progress")
    split = read_json(demo / "splits" / "step1.json")
    masks = {}
    coseg = tmp_path / "coseg.h5"
    cfg = {"source": "oracle"}
    with CacheWriter(coseg, expected_provenance(cfg)) as writer:
        for image_id in split["ids"]:
            gt = load_mask(demo / "data" / "SegmentationClassAug" / f"{image_id}.png")
            classes = split["labels"][image_id]
            scores = np.stack([np.where(gt == c, 1.0, -1.0) for c in classes]).astype(np.float32)
            writer.put(
                image_id,
                {
                    "classes": np.asarray(classes, np.int64),
                    "clip": scores,
                    "attention": (scores > 0).astype(np.float32),
                },
            )
            masks[image_id] = gt
        writer.finish(step_attrs(split))  # what the coseg stage records: the cache's task, protocol, step
    out = tmp_path / "step1.h5"
    memory_stage(
        demo,
        "step1.json",
        out,
        "--previous",
        str(bank0),
        "--coseg",
        str(coseg),
        "--coseg-params",
        json.dumps(cfg),
        "--threads",
        "2",
        "--no-progress",
    )
    with (
        MemoryBank(out, expected={"step": 1, "source": "coseg", "previous": str(bank0)}) as bank,
        MemoryBank(bank0) as old,
    ):
        assert set(bank.classes(all_classes=True)) == set(range(1, 21))
        for c in old.classes():  # old archives copied
            assert bank.count(c) == old.count(c)
            np.testing.assert_array_equal(bank.get(c, 0)[0], old.get(c, 0)[0])
        new = [c for c in range(16, 21) if bank.count(c)]
        assert new and all(bank.count(c) <= 2 for c in new)
        for c in new:  # cut where the gt has class c
            attrs = bank.reader.attrs(instance_key(c, 0))
            y0, x0, y1, x1 = attrs["bbox"]
            _, mask = bank.get(c, 0)
            assert attrs["source"] in split["ids"]
            assert (masks[attrs["source"]][y0:y1, x0:x1][mask] == c).all()
