"""pipeline.data.synthetic: the generated demo dataset (layout, determinism, learnable cues)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.__main__ import main
from pipeline.data.instances import instance_classes, load_instance_map
from pipeline.data.synthetic import add_void_band, generate, instance_map_for, make_sample_with_instances
from pipeline.data.voc import index_dataset, load_image, load_mask, read_ids

LISTS = Path("ImageSets") / "Segmentation"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_index(demo_root) -> dict:
    ids = read_ids(demo_root / LISTS / "train_aug.txt") + read_ids(demo_root / LISTS / "val.txt")
    return index_dataset(demo_root, ids, workers=2, progress=False)


def test_same_seed_same_bytes_whatever_the_workers(demo_root, tmp_path):
    start = time.perf_counter()
    generate(tmp_path / "serial", seed=0, workers=0)  # the default set, in one process
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"default demo set took {elapsed:.1f} s"
    assert _files(tmp_path / "serial") == _files(demo_root)


def test_other_seed_other_images(tmp_path):
    main(["make-demo-data", "--root", str(tmp_path / "a"), "--n-train", "8", "--n-val", "2", "--seed", "3"])
    generate(tmp_path / "b", n_train=8, n_val=2, seed=4)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    # 10 demo_* + 3 demo_inst_* images (2 train, 1 val) x (jpg, class png, instance png),
    # classes.json and four id lists
    assert a.keys() == b.keys() and len(a) == 3 * (10 + 3) + 5
    images = [name for name in a if name.endswith((".jpg", ".png"))]
    assert all(a[name] != b[name] for name in images)
    assert a["classes.json"] == b["classes.json"]


def test_layout_and_values(demo_root, demo_index):
    train = read_ids(demo_root / LISTS / "train_aug.txt")
    val = read_ids(demo_root / LISTS / "val.txt")
    assert train == [f"demo_{i:06d}" for i in range(600)]
    assert val == [f"demo_{i:06d}" for i in range(600, 720)]
    assert all(re.fullmatch(r"demo_\d{6}", i) for i in train + val)
    assert {(v["height"], v["width"]) for v in demo_index.values()} == {(96, 96)}
    image = load_image(demo_root / "JPEGImages" / "demo_000007.jpg")
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    png = Image.open(demo_root / "SegmentationClassAug" / "demo_000007.png")
    assert png.mode == "P" and png.getpalette()[15 * 3 : 16 * 3] == [192, 128, 128]  # VOC colour of 15
    values = set()
    for image_id in train[:100]:
        values |= set(np.unique(load_mask(demo_root / "SegmentationClassAug" / f"{image_id}.png")).tolist())
    assert values <= set(range(21)) | {255} and {0, 255} <= values


def test_classes_json_cues_differ_in_two_of_three(demo_root):
    classes = json.loads((demo_root / "classes.json").read_text())
    assert [c["index"] for c in classes] == list(range(1, 21))
    assert len({c["name"] for c in classes}) == 20
    assert all(c["name"] == f"{c['colour']}-{c['texture']}-{c['shape']}" for c in classes)
    for a, b in itertools.combinations(classes, 2):
        differ = sum(a[cue] != b[cue] for cue in ("colour", "texture", "shape"))
        assert differ >= 2, (a["name"], b["name"])
        distance = np.abs(np.subtract(a["rgb"], b["rgb"])).max()  # colours well separated
        assert distance >= 60, (a["name"], b["name"], distance)
    for c in classes:  # saturated: the largest channel is far above the smallest
        assert max(c["rgb"]) - min(c["rgb"]) >= 150, c


def test_classes_balanced_and_one_to_three_objects(demo_root, demo_index):
    train = read_ids(demo_root / LISTS / "train_aug.txt")
    counts = np.zeros(21)
    objects = []
    for image_id in train:
        classes = demo_index[image_id]["classes"]
        counts[classes] += 1
        objects.append(len(classes))
    share = counts[1:] / len(train)
    assert share.min() >= 0.06 and share.mean() >= 0.08, share.round(3)
    assert set(objects) == {1, 2, 3}  # every image 1..3 objects, each number occurring


def test_void_band_separates_every_boundary(demo_root, demo_index):
    for image_id in list(demo_index)[:150]:
        mask = load_mask(demo_root / "SegmentationClassAug" / f"{image_id}.png")
        assert (mask == 255).any()
        padded = np.pad(mask, 1, mode="edge")
        for dy, dx in ((0, 1), (1, 0), (2, 1), (1, 2)):  # the 4 neighbours
            neighbour = padded[dy : dy + 96, dx : dx + 96]
            touching = (mask != 255) & (neighbour != 255) & (mask != neighbour)
            assert not touching.any(), image_id  # no two labels touch without void between them
        objects, void = np.isin(mask, range(1, 21)), mask == 255
        assert void.sum() < 0.5 * (objects.sum() + void.sum())  # a thin band, not whole objects


def test_add_void_band_by_hand():
    label = np.zeros((6, 7), dtype=np.uint8)
    label[1:5, 1:4] = 2  # a 4x3 block of class 2
    label[1:5, 4:6] = 5  # touching a 4x2 block of class 5 on its right
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [0, 255, 255, 255, 255, 255, 0],
            [0, 255, 2, 2, 255, 255, 0],
            [0, 255, 2, 2, 255, 255, 0],
            [0, 255, 255, 255, 255, 255, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )  # 1-pixel band on the inner side; class 5 (higher) takes the shared edge
    np.testing.assert_array_equal(add_void_band(label), expected)


def test_objects_never_confusable_with_background(demo_root, demo_index):
    """Chroma (max - min channel) of background pixels stays below that of object pixels."""
    background, objects = [], []
    for image_id in list(demo_index)[:100]:
        image = load_image(demo_root / "JPEGImages" / f"{image_id}.jpg").astype(np.int16)
        mask = load_mask(demo_root / "SegmentationClassAug" / f"{image_id}.png")
        chroma = image.max(-1) - image.min(-1)
        near_void = ndimage.binary_dilation(mask == 255, iterations=2)  # JPEG ringing at edges
        background.append(chroma[(mask == 0) & ~near_void])
        objects.append(chroma[np.isin(mask, range(1, 21)) & ~near_void])
    assert np.percentile(np.concatenate(background), 99.5) < np.percentile(np.concatenate(objects), 0.5)
    assert np.concatenate(background).std() > 2  # cluttered, not a flat colour


# ------------------------------------------------------------------------------ instance maps
def _instance_ids(demo_root: Path) -> list[str]:
    return read_ids(demo_root / LISTS / "train_inst.txt") + read_ids(demo_root / LISTS / "val_inst.txt")


def test_instance_lists_extend_the_class_lists(demo_root):
    train, val = read_ids(demo_root / LISTS / "train_aug.txt"), read_ids(demo_root / LISTS / "val.txt")
    train_inst, val_inst = read_ids(demo_root / LISTS / "train_inst.txt"), read_ids(demo_root / LISTS / "val_inst.txt")
    assert train_inst == train + [f"demo_inst_{j:06d}" for j in range(150)]
    assert val_inst == val + [f"demo_inst_{j:06d}" for j in range(150, 180)]
    png = Image.open(demo_root / "SegmentationObject" / "demo_inst_000003.png")
    assert png.mode == "P" and png.size == (96, 96)


def test_class_maps_are_those_of_the_generator_before_instances():
    """sha256 of the class maps of demo_000000..49 (seed 0), as the generator wrote them before
    instance maps existed (the arrays, not the PNG bytes: independent of zlib/Pillow)."""
    digest = hashlib.sha256()
    for i in range(50):
        digest.update(make_sample_with_instances(0, i)[1].tobytes())
    assert digest.hexdigest() == "a50cbe0af120695d97fa5fa3f41a2b84f7d6aea9aab394a1fd48dbfaae62003d"


def test_instance_maps_refine_the_class_maps(demo_root):
    """Every instance id lies in one class, the union of a class's instances is its class pixels,
    and void is the same in both maps (all 900 images)."""
    for image_id in _instance_ids(demo_root):
        classes = load_mask(demo_root / "SegmentationClassAug" / f"{image_id}.png")
        instances = load_instance_map(demo_root / "SegmentationObject" / f"{image_id}.png")
        table = instance_classes(instances, classes, image_id)  # one class each, raises otherwise
        assert sorted(table) == list(range(1, len(table) + 1)), image_id  # ids 1..N
        np.testing.assert_array_equal(instances == 255, classes == 255)
        for c in set(table.values()):
            union = np.isin(instances, [k for k, v in table.items() if v == c])
            np.testing.assert_array_equal(union, classes == c, err_msg=f"{image_id} class {c}")


def test_instance_images_hold_touching_and_separate_instances_of_one_class(demo_root):
    touching = apart = several = 0
    for image_id in [i for i in _instance_ids(demo_root) if i.startswith("demo_inst_")]:
        classes = load_mask(demo_root / "SegmentationClassAug" / f"{image_id}.png")
        instances = load_instance_map(demo_root / "SegmentationObject" / f"{image_id}.png")
        table = instance_classes(instances, classes, image_id)
        repeated = {c for c in table.values() if list(table.values()).count(c) > 1}
        several += bool(repeated)
        # 4-adjacent pixels of two instances of one class: no void between them, so they lie in one
        # connected region of the class map, which only the instance map splits
        pairs = set()
        for a, b in ((instances[:, 1:], instances[:, :-1]), (instances[1:], instances[:-1])):
            edge = (a != b) & np.isin(a, list(table)) & np.isin(b, list(table))
            pairs |= {(p, q) for p, q in zip(a[edge].tolist(), b[edge].tolist()) if table[p] == table[q]}
        touching += bool(pairs)
        in_pairs = {k for pair in pairs for k in pair}
        apart += any(table[k] in repeated and k not in in_pairs for k in table)
    assert several >= 170 and touching >= 100 and apart >= 80, (several, touching, apart)


def test_instance_map_for_by_hand():
    painted = np.array([[0, 1, 1, 2], [0, 1, 3, 2]], dtype=np.uint8)
    mask = np.array([[0, 255, 4, 255], [0, 4, 4, 255]], dtype=np.uint8)  # instance 2 all void
    expected = np.array([[0, 255, 1, 255], [0, 1, 2, 255]], dtype=np.uint8)  # 3 renumbered to 2
    np.testing.assert_array_equal(instance_map_for(mask, painted), expected)
