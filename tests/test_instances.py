"""Instance data (pipeline.data.instances) and Panoptic-DeepLab targets and grouping (pipeline.models.panoptic).

Real files: shared/voc-instance-sample (20 VOC 2012 images with SegmentationObject/Class and XML)
and shared/coco-mini (COCO val instances, rasterised with pycocotools when it is installed).
Targets and grouping are checked on maps small enough to work out by hand.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from conftest import shared_dir  # noqa: E402  (tests/ is on sys.path under pytest)
from PIL import Image

from pipeline.data.classes import VOC_CLASSES, voc_palette
from pipeline.data.instances import (
    Instance,
    check_instance_pair,
    class_map_from_instances,
    coco_instance_maps,
    convert_sbd_instances,
    filter_instance_ids,
    index_instances,
    instance_classes,
    instance_masks,
    list_instances,
    load_instance_map,
    load_sbd_instances,
    resolve_instance_dir,
    save_instance_map,
)
from pipeline.data.voc import DatasetError, read_ids
from pipeline.models.panoptic import (
    find_instance_centers,
    group_pixels,
    panoptic_instances,
    panoptic_targets,
)

# pycocotools 2.0 calls np.array(copy=False) on numpy 2 (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
SHARED = shared_dir()
VOC_SAMPLE = SHARED / "voc-instance-sample"
COCO = SHARED / "coco-mini"
needs_voc = pytest.mark.skipif(not VOC_SAMPLE.is_dir(), reason="shared/voc-instance-sample not available")
needs_coco = pytest.mark.skipif(not COCO.is_dir(), reason="shared/coco-mini not available")


def _png(values: np.ndarray, path: Path) -> None:
    image = Image.fromarray(values.astype(np.uint8))
    image.putpalette(voc_palette().tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# ------------------------------------------------------------------------------ VOC on disk
@needs_voc
def test_voc_sample_instances_match_the_xml():
    ids = sorted(p.stem for p in (VOC_SAMPLE / "SegmentationObject").glob("*.png"))
    assert len(ids) == 20
    index = index_instances(
        VOC_SAMPLE, ids, mask_dir="SegmentationClass", instance_dir="SegmentationObject", images=True, progress=False
    )
    assert sum(len(e["instances"]) for e in index.values()) == 72  # SOURCES.md
    for image_id, entry in index.items():
        objects = ET.parse(VOC_SAMPLE / "Annotations" / f"{image_id}.xml").findall("object")
        names = [o.findtext("name") for o in objects]
        assert [i["id"] for i in entry["instances"]] == list(range(1, len(names) + 1)), image_id
        assert [VOC_CLASSES[i["class"]] for i in entry["instances"]] == names, image_id
        size = ET.parse(VOC_SAMPLE / "Annotations" / f"{image_id}.xml").find("size")
        assert (entry["width"], entry["height"]) == (int(size.findtext("width")), int(size.findtext("height")))
    first = index["2007_000032"]
    assert [(i["id"], i["class"]) for i in first["instances"]] == [(1, 1), (2, 1), (3, 15), (4, 15)]
    assert first["classes"] == [1, 15] and (first["height"], first["width"]) == (281, 500)
    for inst in first["instances"]:  # area and box agree with the map itself
        instance_map = load_instance_map(VOC_SAMPLE / "SegmentationObject" / "2007_000032.png")
        ys, xs = np.nonzero(instance_map == inst["id"])
        assert inst["area"] == ys.size and inst["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@needs_voc
def test_voc_sample_png_is_palette_of_ids_and_masks_exclude_void():
    path = VOC_SAMPLE / "SegmentationObject" / "2007_000129.png"
    assert Image.open(path).mode == "P"
    instance_map = load_instance_map(path)
    assert set(np.unique(instance_map).tolist()) == {0, 1, 2, 3, 4, 5, 6, 255}
    entry = check_instance_pair(VOC_SAMPLE, "2007_000129", "SegmentationClass", "SegmentationObject")
    masks, labels = instance_masks(
        instance_map, [Instance(i["id"], i["class"], i["area"], tuple(i["bbox"])) for i in entry["instances"]]
    )
    assert masks.shape == (6, 500, 334) and labels.tolist() == [2, 2, 2, 15, 15, 15]
    assert masks.sum() == (instance_map != 0).sum() - (instance_map == 255).sum()
    assert not masks.any(0)[instance_map == 255].any()


def test_resolve_instance_dir(tmp_path):
    (tmp_path / "SegmentationObject").mkdir()
    assert resolve_instance_dir(tmp_path) == tmp_path / "SegmentationObject"
    (tmp_path / "SegmentationObjectAug").mkdir()
    assert resolve_instance_dir(tmp_path) == tmp_path / "SegmentationObjectAug"
    with pytest.raises(DatasetError, match="Nope"):
        resolve_instance_dir(tmp_path, "Nope")


# ------------------------------------------------------------------------------------- checks
def _pair():
    classes = np.array([[0, 0, 0, 0, 0], [0, 3, 3, 255, 7], [0, 3, 3, 255, 7], [0, 0, 0, 0, 7]], np.uint8)
    instances = np.array([[0, 0, 0, 0, 0], [0, 1, 2, 255, 3], [0, 1, 2, 255, 3], [0, 0, 0, 0, 3]], np.uint8)
    return instances, classes


def test_instance_classes_and_list_by_hand():
    instances, classes = _pair()
    table = instance_classes(instances, classes)
    assert table == {1: 3, 2: 3, 3: 7}
    assert list_instances(instances, table) == [
        Instance(1, 3, 2, (1, 1, 2, 3)),
        Instance(2, 3, 2, (2, 1, 3, 3)),
        Instance(3, 7, 3, (4, 1, 5, 4)),
    ]
    assert Instance(3, 7, 3, (4, 1, 5, 4)).to_dict() == {"id": 3, "class": 7, "area": 3, "bbox": [4, 1, 5, 4]}


def test_instance_spanning_two_classes_names_id_and_files():
    instances, classes = _pair()
    classes[2, 2] = 9  # instance 2 now lies on classes 3 and 9
    with pytest.raises(DatasetError) as err:
        instance_classes(instances, classes, "img_7", "obj/img_7.png", "cls/img_7.png")
    message = str(err.value)
    assert "'img_7'" in message and "instance 2" in message and "obj/img_7.png" in message
    assert "cls/img_7.png" in message and "class 3: 1 px, class 9: 1 px" in message


def test_other_check_failures():
    instances, classes = _pair()
    with pytest.raises(DatasetError, match=r"instance map is 5x4 \(WxH\) but class map is 4x4"):
        instance_classes(instances, classes[:, :4], "a")
    bad = instances.copy()
    bad[0, 0] = 1  # instance 1 on background
    with pytest.raises(DatasetError, match="instance 1 has 1 pixel"):
        instance_classes(bad, classes, "a")
    bad = instances.copy()
    bad[1, 4] = 0  # a class-7 pixel outside every instance
    with pytest.raises(DatasetError, match="1 pixel.* of class 7 .* lie in no instance"):
        instance_classes(bad, classes, "a")
    assert instance_classes(bad, classes, "a", cover=False) == {1: 3, 2: 3, 3: 7}
    bad = instances.copy()
    bad[1:3, 3] = 4  # an instance on void pixels only
    with pytest.raises(DatasetError, match="instance 4 spans only void: 2 px"):
        instance_classes(bad, classes, "a")
    with pytest.raises(DatasetError, match="classes 1..5"):
        instance_classes(instances, classes, "a", num_classes=5)


def test_check_instance_pair_on_disk(tmp_path):
    instances, classes = _pair()
    _png(classes, tmp_path / "SegmentationClassAug" / "x.png")
    save_instance_map(instances, tmp_path / "SegmentationObject" / "x.png")
    assert Image.open(tmp_path / "SegmentationObject" / "x.png").mode == "P"
    entry = check_instance_pair(tmp_path, "x")
    assert entry["classes"] == [3, 7] and [i["id"] for i in entry["instances"]] == [1, 2, 3]
    Image.new("RGB", (5, 4)).save(tmp_path / "SegmentationObject" / "y.png")
    _png(classes, tmp_path / "SegmentationClassAug" / "y.png")
    with pytest.raises(DatasetError, match=r"id 'y'.*y\.png.*mode RGB"):
        check_instance_pair(tmp_path, "y")
    with pytest.raises(DatasetError, match=r"id 'z'.*z\.png.*not found"):
        check_instance_pair(tmp_path, "z")


# ----------------------------------------------------------------------------------- SBD .mat
def _sbd_mat(path: Path, seg: np.ndarray, categories) -> None:
    gt = {"Segmentation": seg.astype(np.uint8), "Categories": np.array(categories, np.uint8).reshape(-1, 1)}
    scipy.io.savemat(path, {"GTinst": gt})


def test_sbd_instances_convert_and_check(tmp_path):
    seg = np.zeros((5, 6), np.uint8)
    seg[1:3, 1:3], seg[1:4, 4:6], seg[4, 0:2] = 1, 2, 3
    (tmp_path / "inst").mkdir()
    _sbd_mat(tmp_path / "inst" / "2008_000002.mat", seg, [15, 15, 12])
    _sbd_mat(tmp_path / "inst" / "2008_000003.mat", seg[:3, :3], [8])  # one instance: Categories a scalar
    instance_map, classes = load_sbd_instances(tmp_path / "inst" / "2008_000002.mat")
    np.testing.assert_array_equal(instance_map, seg)
    assert classes == {1: 15, 2: 15, 3: 12}
    assert load_sbd_instances(tmp_path / "inst" / "2008_000003.mat")[1] == {1: 8}
    ids = ["2008_000002", "2008_000003"]
    convert_sbd_instances(tmp_path / "inst", ids, tmp_path / "root" / "SegmentationObjectAug")
    for image_id in ids:  # class maps as SegmentationClassAug would hold them (SBD's GTcls)
        instance_map, classes = load_sbd_instances(tmp_path / "inst" / f"{image_id}.mat")
        _png(
            class_map_from_instances(instance_map, classes),
            tmp_path / "root" / "SegmentationClassAug" / f"{image_id}.png",
        )
    index = index_instances(tmp_path / "root", ids, progress=False)
    assert [(i["id"], i["class"], i["area"]) for i in index["2008_000002"]["instances"]] == [
        (1, 15, 4),
        (2, 15, 6),
        (3, 12, 2),
    ]
    assert index["2008_000003"]["classes"] == [8]
    _sbd_mat(tmp_path / "inst" / "bad.mat", seg, [15, 15])  # instance 3 has no category
    with pytest.raises(DatasetError, match=r"id 'bad'.*bad\.mat.*instance 3 has no category"):
        load_sbd_instances(tmp_path / "inst" / "bad.mat", "bad")
    with pytest.raises(DatasetError, match="not found"):
        load_sbd_instances(tmp_path / "inst" / "missing.mat", "missing")


def test_filter_instance_ids_follows_mib_filters():
    def entry(*classes):
        return {"instances": [{"id": k + 1, "class": c} for k, c in enumerate(classes)]}

    index = {
        "old_only": entry(3, 3),
        "new": entry(16, 16),
        "old_new": entry(2, 17),
        "two_new": entry(17, 18),
        "none": entry(),
    }
    # 15-5: classes 1..15 at step 0, 16..20 at step 1
    assert filter_instance_ids(index, "15-5", 1, "overlap") == ["new", "old_new", "two_new"]
    assert filter_instance_ids(index, "15-5", 1, "disjoint") == ["new", "old_new", "two_new"]
    assert filter_instance_ids(index, "15-5", 0, "disjoint") == ["old_only"]  # 16, 17 are future at step 0
    assert filter_instance_ids(index, "15-5", 0, "overlap") == ["old_only", "old_new"]


# ---------------------------------------------------------------------------------- COCO
@needs_coco
def test_coco_instances_rasterised_match_the_stuffthing_map():
    pytest.importorskip("pycocotools", reason="pycocotools not installed: COCO polygons cannot be rasterised")
    data = json.loads((COCO / "annotations" / "instances_val2017.json").read_text())
    image = next(i for i in data["images"] if i["id"] == 18380)
    annotations = [a for a in data["annotations"] if a["image_id"] == 18380]
    assert len(annotations) == 54 and sum(a["iscrowd"] for a in annotations) == 1
    instance_map, class_map, table = coco_instance_maps(annotations, image["height"], image["width"])
    assert len(table) == 53 and {t["id"] for t in table} == set(range(1, 54))
    things = np.array(Image.open(COCO / "stuffthingmaps_trainval2017" / "val2017" / "000000018380.png"))
    # SOURCES.md: the map's thing pixels (0..90) are exactly the union of the 53 non-crowd masks,
    # and the pixels only the crowd region covers are 255 (unlabelled) there
    np.testing.assert_array_equal((instance_map != 0) & (instance_map != 255), things <= 90)
    assert (things[instance_map == 255] == 255).all()
    assert (instance_map == 255).sum() == 10651
    agree = (class_map[things <= 90].astype(int) == things[things <= 90].astype(int) + 1).mean()
    assert agree > 0.999  # COCO masks overlap; largest-first painting leaves 0.07 % of the pixels elsewhere
    table_ids = instance_classes(instance_map, class_map, "000000018380", num_classes=90)
    assert table_ids == {t["id"]: t["class"] for t in table}
    persons = [t for t in table if t["class"] == 1]
    assert len(persons) == sum(1 for a in annotations if a["category_id"] == 1 and not a["iscrowd"])


# ------------------------------------------------------------------------ Panoptic-DeepLab targets
def test_targets_one_blob_by_hand():
    instance_map = np.zeros((8, 10), np.uint8)
    instance_map[2:5, 3:6] = 1  # 3x3 blob, center of mass (3, 4)
    t = panoptic_targets(instance_map, sigma=8)
    assert t["centers"].tolist() == [[3.0, 4.0]] and t["ids"].tolist() == [1]
    center = t["center"][0]
    assert center[3, 4] == 1.0
    assert math.isclose(center[3, 5], math.exp(-1 / 128), rel_tol=1e-6)
    assert math.isclose(center[0, 0], math.exp(-(9 + 16) / 128), rel_tol=1e-6)
    assert t["offset"][:, 2, 3].tolist() == [1.0, 1.0] and t["offset"][:, 4, 5].tolist() == [-1.0, -1.0]
    assert t["offset"][:, 3, 4].tolist() == [0.0, 0.0] and t["offset"][:, 0, 0].tolist() == [0.0, 0.0]
    assert t["offset_weight"][0].bool().tolist() == (instance_map == 1).tolist()
    assert t["center_weight"].min() == 1  # no void


def test_targets_gaussian_window_and_half_pixel_center():
    instance_map = np.zeros((8, 10), np.uint8)
    instance_map[2:5, 3:6] = 1
    center = panoptic_targets(instance_map, sigma=1)["center"][0]
    # window [x - 3 sigma - 1, x + 3 sigma + 2): columns 0..8 for x = 4, nothing at distance 5
    assert math.isclose(center[3, 8], math.exp(-16 / 2), rel_tol=1e-6) and center[3, 9] == 0
    assert math.isclose(center[7, 4], math.exp(-16 / 2), rel_tol=1e-6)
    block = np.zeros((6, 6), np.uint8)
    block[2:4, 2:4] = 5  # 2x2 block: center of mass (2.5, 2.5), rounded half to even -> (2, 2)
    t = panoptic_targets(block, sigma=8)
    assert t["centers"].tolist() == [[2.5, 2.5]] and t["ids"].tolist() == [5]
    assert t["center"][0, 2, 2] == 1 and math.isclose(t["center"][0, 3, 3], math.exp(-2 / 128), rel_tol=1e-6)
    assert t["offset"][:, 2, 2].tolist() == [0.5, 0.5] and t["offset"][:, 3, 3].tolist() == [-0.5, -0.5]


def test_targets_two_touching_blobs_by_hand():
    instance_map = np.zeros((4, 8), np.uint8)
    instance_map[1:3, 1:4] = 1  # centers of mass (1.5, 2) and (1.5, 5), peaks at (2, 2), (2, 5)
    instance_map[1:3, 4:7] = 2
    instance_map[0, 0] = 255
    t = panoptic_targets(instance_map, sigma=8)
    assert t["centers"].tolist() == [[1.5, 2.0], [1.5, 5.0]]
    center = t["center"][0]
    assert center[2, 2] == 1 and center[2, 5] == 1
    # the maximum of the two Gaussians: (1, 3) is (1, 1) from peak 1 and (1, 2) from peak 2
    assert math.isclose(center[1, 3], math.exp(-2 / 128), rel_tol=1e-6)
    assert math.isclose(center[1, 4], math.exp(-2 / 128), rel_tol=1e-6)
    assert math.isclose(center[0, 7], math.exp(-(4 + 4) / 128), rel_tol=1e-6)
    assert t["offset"][:, 1, 3].tolist() == [0.5, -1.0]  # instance 1 pixel to (1.5, 2)
    assert t["offset"][:, 1, 4].tolist() == [0.5, 1.0]  # instance 2 pixel to (1.5, 5)
    assert t["offset"][:, 2, 6].tolist() == [-0.5, -1.0]
    assert t["center_weight"][0, 0, 0] == 0 and t["center_weight"].sum() == 31
    assert t["offset_weight"].sum() == 12 and t["offset"][:, 0, 0].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------- Panoptic-DeepLab grouping
def _exact_offsets(regions: list[tuple[np.ndarray, tuple[int, int]]], shape) -> torch.Tensor:
    """Offsets of every pixel of each region pointing exactly to the given center, 0 elsewhere."""
    offsets = torch.zeros(2, *shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for region, (cy, cx) in regions:
        r = torch.from_numpy(region)
        offsets[0][r] = torch.from_numpy((cy - yy)[region]).float()
        offsets[1][r] = torch.from_numpy((cx - xx)[region]).float()
    return offsets


def _probabilities(shape, num_classes, regions: list[tuple[np.ndarray, int, float]]) -> torch.Tensor:
    """Background 1 everywhere; on each region, class ``c`` at ``p`` and background ``1 - p``."""
    prob = torch.zeros(num_classes, *shape)
    prob[0] = 1
    for region, c, p in regions:
        r = torch.from_numpy(region)
        prob[0][r], prob[c][r] = 1 - p, p
    return prob


def test_grouping_two_blobs_apart():
    shape = (10, 12)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[1:4, 1:4], b[5:9, 7:11] = True, True
    heat = torch.zeros(shape)
    heat[2, 2], heat[6, 8] = 0.9, 0.7
    heat[8, 1] = 0.05  # below the threshold
    prob = _probabilities(shape, 3, [(a, 1, 0.8), (b, 2, 0.6)])
    out = panoptic_instances(prob, heat, _exact_offsets([(a, (2, 2)), (b, (6, 8))], shape))
    expected = np.zeros(shape, int)
    expected[a], expected[b] = 1, 2
    np.testing.assert_array_equal(out.id_map.numpy(), expected)
    assert out.labels.tolist() == [1, 2] and out.centers.tolist() == [[2, 2], [6, 8]]
    np.testing.assert_allclose(out.scores.numpy(), [0.8 * 0.9, 0.6 * 0.7], rtol=1e-6)
    assert out.masks().shape == (2, *shape) and out.masks()[1].sum() == 16


def test_grouping_touching_blobs_follows_the_offsets_not_the_distance():
    shape = (7, 10)
    left, right = np.zeros(shape, bool), np.zeros(shape, bool)
    left[2:5, 1:6], right[2:5, 6:9] = True, True  # one connected region of class 1
    heat = torch.zeros(shape)
    heat[3, 2], heat[3, 7] = 0.9, 0.6  # 5 px apart: both survive the 7x7 NMS
    prob = _probabilities(shape, 2, [(left, 1, 0.9), (right, 1, 0.7)])
    offsets = _exact_offsets([(left, (3, 2)), (right, (3, 7))], shape)
    out = panoptic_instances(prob, heat, offsets)
    # column 5 lies nearer (3, 7) than (3, 2), but its offset points to (3, 2)
    np.testing.assert_array_equal(out.id_map.numpy(), left * 1 + right * 2)
    np.testing.assert_allclose(out.scores.numpy(), [0.9 * 0.9, 0.7 * 0.6], rtol=1e-6)
    voronoi = panoptic_instances(prob, heat, torch.zeros(2, *shape))  # no offsets: nearest center
    assert (voronoi.id_map[2:5, 5] == 2).all() and (voronoi.id_map[2:5, 1:5] == 1).all()


def test_grouping_blob_pointing_to_the_other_center_joins_it():
    shape = (8, 12)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[1:4, 1:4], b[4:7, 7:10] = True, True
    heat = torch.zeros(shape)
    heat[2, 2], heat[5, 8] = 0.8, 0.5
    prob = _probabilities(shape, 2, [(a, 1, 0.9), (b, 1, 0.6)])
    out = panoptic_instances(prob, heat, _exact_offsets([(a, (2, 2)), (b, (2, 2))], shape))
    # every pixel of b, its own peak included, moves onto (2, 2): one instance; b's center gets
    # no pixel and is dropped
    np.testing.assert_array_equal(out.id_map.numpy(), (a | b).astype(int))
    assert out.labels.tolist() == [1] and out.centers.tolist() == [[2, 2]]
    assert math.isclose(out.scores.item(), (9 * 0.9 + 9 * 0.6) / 18 * 0.8, rel_tol=1e-6)


def test_grouping_majority_class_and_thing_classes():
    shape = (5, 5)
    region = np.zeros(shape, bool)
    region[1:3, 0:5] = True  # 10 pixels: 6 argmax class 1, 4 argmax class 2
    prob = torch.zeros(3, *shape)
    prob[0] = 1
    ones, twos = region.copy(), np.zeros(shape, bool)
    ones[1:3, 3:5], twos[1:3, 3:5] = False, True
    prob[:, torch.from_numpy(ones)] = torch.tensor([0.1, 0.7, 0.2])[:, None]
    prob[:, torch.from_numpy(twos)] = torch.tensor([0.1, 0.3, 0.6])[:, None]
    heat = torch.zeros(shape)
    heat[1, 2] = 0.8
    out = panoptic_instances(prob, heat, torch.zeros(2, *shape))
    assert out.labels.tolist() == [1] and out.id_map.sum() == 10
    assert math.isclose(out.scores.item(), (6 * 0.7 + 4 * 0.3) / 10 * 0.8, rel_tol=1e-6)
    only_one = panoptic_instances(prob, heat, torch.zeros(2, *shape), thing_classes=[1])
    assert only_one.id_map.sum() == 6 and math.isclose(only_one.scores.item(), 0.7 * 0.8, rel_tol=1e-6)
    nothing = panoptic_instances(prob, torch.zeros(shape), torch.zeros(2, *shape))
    assert nothing.labels.numel() == 0 and nothing.id_map.sum() == 0


def test_find_centers_nms_threshold_top_k():
    heat = torch.zeros(10, 12)
    heat[1, 1], heat[1, 4], heat[1, 8] = 0.5, 0.4, 0.3  # (1, 4) lies in the 7x7 window of (1, 1)
    heat[6, 6] = 0.1  # not above the threshold 0.1
    heat[8, 1] = 0.2
    assert find_instance_centers(heat).tolist() == [[1, 1], [1, 8], [8, 1]]
    assert find_instance_centers(heat, top_k=2).tolist() == [[1, 1], [1, 8]]  # 0.5 and 0.3, row-major
    assert find_instance_centers(heat, nms_kernel=3).tolist() == [[1, 1], [1, 4], [1, 8], [8, 1]]
    assert find_instance_centers(heat[None], threshold=0.35).tolist() == [[1, 1]]
    heat[1, 2] = 0.5  # a plateau keeps both points, as the reference
    assert find_instance_centers(heat, top_k=None)[:2].tolist() == [[1, 1], [1, 2]]
    with pytest.raises(ValueError, match="odd"):
        find_instance_centers(heat, nms_kernel=4)


def test_group_pixels_nearest_center_after_offset_ties_to_lower_id():
    centers = torch.tensor([[0, 0], [0, 4]])
    offsets = torch.zeros(2, 1, 5)
    ids = group_pixels(centers, offsets)
    assert ids.tolist() == [[1, 1, 1, 2, 2]]  # column 2 is equidistant: the lower id
    offsets[1, 0, 0] = 4.0  # pixel 0 moved onto center 2
    assert group_pixels(centers, offsets).tolist() == [[2, 1, 1, 2, 2]]


def test_targets_then_grouping_recover_the_demo_instances(demo_root):
    """Panoptic-DeepLab's targets, fed back as perfect predictions, give back every demo instance."""
    ids = [i for i in read_ids(demo_root / "ImageSets" / "Segmentation" / "val_inst.txt") if "inst" in i][:8]
    for image_id in ids:
        instance_map = load_instance_map(demo_root / "SegmentationObject" / f"{image_id}.png")
        class_map = np.array(Image.open(demo_root / "SegmentationClassAug" / f"{image_id}.png"))
        t = panoptic_targets(instance_map)
        prob = torch.nn.functional.one_hot(torch.from_numpy(np.where(class_map == 255, 0, class_map)).long(), 21)
        prob = prob.permute(2, 0, 1).float()
        heat = torch.zeros_like(t["center"][0])
        peaks = t["centers"].round().long()
        heat[peaks[:, 0], peaks[:, 1]] = 1.0  # one clean peak per instance
        out = panoptic_instances(prob, heat, t["offset"], nms_kernel=3)
        gt = (instance_map != 0) & (instance_map != 255)
        assert out.labels.numel() == len(t["ids"]), image_id
        assert (out.id_map.numpy() > 0).sum() == gt.sum()
        for k in t["ids"].tolist():  # each instance comes back whole (its best predicted mask)
            target = torch.from_numpy(instance_map == k)
            iou = max(((m & target).sum() / (m | target).sum()).item() for m in out.masks())
            assert iou == 1.0, (image_id, k, iou)
