"""COCO-to-VOC as a DAG: the paper-numbered task table and lookup tables, the assembly of COCO and
VOC into one root (resumable, checked), its splits, the COCO download (mocked), Table 3 of the
report, the backbone, the dry-run job lists, and (marked long) the fixture DAG end to end and the real
maps of shared/coco-mini."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dir  # noqa: E402  (tests/ is on sys.path under pytest)
from helpers.dag import REPO, job_counts, snakemake
from PIL import Image

from pipeline.data import coco, coco_voc, tasks
from pipeline.data.coco_classes import COCO_CATEGORIES, coco_to_paper_lut, voc_to_paper_lut
from pipeline.data.splits import build_splits
from pipeline.data.voc import DatasetError, folder_num_classes, load_mask, read_ids
from pipeline.io import write_json

COCO_MINI = shared_dir() / "coco-mini"
needs_coco_mini = pytest.mark.skipif(not COCO_MINI.is_dir(), reason="shared/coco-mini not available")

# The protocol's VOC -> COCO table as the issue writes it, and the 20 COCO ids it names.
ISSUE_VOC_TO_COCO = {
    1: 5, 2: 2, 3: 16, 4: 9, 5: 44, 6: 6, 7: 3, 8: 17, 9: 62, 10: 21,
    11: 67, 12: 18, 13: 19, 14: 4, 15: 1, 16: 64, 17: 20, 18: 63, 19: 7, 20: 72,
}  # fmt: skip
VOC_IN_COCO = sorted(ISSUE_VOC_TO_COCO.values())
UNUSED = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
NON_VOC = [c for c in range(1, 91) if c not in UNUSED and c not in VOC_IN_COCO]
CONFIGS = [str(REPO / "config/coco-voc.yaml")]
FIXTURE = [*CONFIGS, str(REPO / "config/coco-voc-fixture.yaml")]


# ------------------------------------------------------------------------------------------
# the paper's numbering


def test_coco80_table_is_the_paper_numbering():
    assert len(NON_VOC) == 60
    steps = tasks.task_steps("coco-voc", "coco80")
    assert steps == [list(range(0, 61)), list(range(61, 81))]
    assert tasks.NUM_CLASSES["coco80"] == 80 and tasks.CLASS_IDS["coco80"] == tuple(range(1, 81))
    # class i: the i-th non-VOC COCO id (1..60), then the VOC classes' COCO ids ascending (61..80)
    for i, coco_id in enumerate(NON_VOC + VOC_IN_COCO, start=1):
        assert tasks.class_name_in("coco80", i) == COCO_CATEGORIES[coco_id]
    assert [tasks.class_name_in("coco80", c) for c in (0, 1, 60, 61, 80, 255)] == [
        "background", "truck", "toothbrush", "person", "tv", "void",
    ]  # fmt: skip
    assert tasks.class_name_in("voc", 15) == "person" and tasks.class_name_in("coco", 8) == "truck"
    with pytest.raises(ValueError, match="coco90"):
        tasks.class_name_in("coco90", 1)


def test_luts_to_the_paper_numbering():
    coco_lut, voc_lut = coco_to_paper_lut(), voc_to_paper_lut()
    expected = np.full(256, 255)
    expected[0] = 0
    for i, coco_id in enumerate(NON_VOC + VOC_IN_COCO, start=1):
        expected[coco_id] = i
    np.testing.assert_array_equal(coco_lut, expected)  # unused ids and 91..254 -> void
    for voc, coco_id in ISSUE_VOC_TO_COCO.items():
        assert voc_lut[voc] == 61 + VOC_IN_COCO.index(coco_id)
    assert (voc_lut[0], voc_lut[255], voc_lut[21]) == (0, 255, 255)
    assert (voc_lut[15], voc_lut[20], voc_lut[1]) == (61, 80, 65)  # person, tv, aeroplane (COCO 1, 72, 5)


def test_mask_folder_label_space(tmp_path):
    mask = np.array([[0, 75], [255, 80]], dtype=np.uint8)
    Image.fromarray(mask).save(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png.*75, 80.*0\.\.20"):
        load_mask(tmp_path / "a.png")  # a folder without label_space.json holds VOC's 20 classes
    spaced = tmp_path / "spaced"
    spaced.mkdir()
    write_json(spaced / "label_space.json", coco_voc.label_space())
    Image.fromarray(mask).save(spaced / "a.png")
    np.testing.assert_array_equal(load_mask(spaced / "a.png"), mask)
    with pytest.raises(DatasetError, match="0..20"):
        load_mask(spaced / "a.png", 20)  # an explicit count still wins
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "label_space.json").write_text('{"num_classes": 300}')
    with pytest.raises(DatasetError, match=r"label_space\.json.*300"):
        folder_num_classes(str(bad))


# ------------------------------------------------------------------------------------------
# assembly of a generated fixture


def _raw_coco_ids(stuffthing: np.ndarray) -> set[int]:
    """COCO ids of the thing pixels of a COCO-Stuff map, computed here: thing index k is id k + 1."""
    return {int(v) + 1 for v in np.unique(stuffthing) if v <= 90}


@pytest.fixture(scope="module")
def assembled(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_voc")
    coco_voc.write_fixture(root / "coco", root / "voc", 16, 6, 8, 4, (32, 40), 32, seed=3)
    index = {}
    for split in ("train", "val"):
        coco.convert_stuffthingmaps(
            coco.stuffthing_path(root / "coco", split, "x").parent, coco.label_dir(root / "coco", split), progress=False
        )
        index[split] = coco.index_coco(root / "coco", split, progress=False)
    voc_train = read_ids(root / "voc/ImageSets/Segmentation/train_aug.txt")
    voc_val = read_ids(root / "voc/ImageSets/Segmentation/val.txt")
    doc = coco_voc.assemble(root / "out", root / "coco", index, root / "voc", voc_train, voc_val, progress=False)
    return root, doc, index, voc_train, voc_val


def test_assembly_pools_and_lists(assembled):
    root, doc, index, voc_train, voc_val = assembled
    raw_train = {
        i: _raw_coco_ids(np.array(Image.open(coco.stuffthing_path(root / "coco", "train", i)))) for i in index["train"]
    }
    voc_free = [i for i in index["train"] if not raw_train[i] & set(VOC_IN_COCO)]
    assert 0 < len(voc_free) < len(index["train"])  # the fixture has both kinds
    assert doc["splits"]["train"] == voc_free + voc_train
    assert doc["splits"]["val"] == list(index["val"]) and doc["splits"]["val_voc"] == voc_val
    assert doc["task_table"] == "coco80" and doc["counts"]["coco_train_voc_free"] == len(voc_free)
    for name, rel in coco_voc.LISTS.items():
        assert read_ids(root / "out" / rel) == doc["splits"][name]
    assert {doc["index"][i]["source"] for i in voc_free} == {"coco"}
    assert {doc["index"][i]["source"] for i in voc_train + voc_val} == {"voc"}


def test_assembled_maps_are_the_paper_numbering(assembled):
    root, doc, index, voc_train, _ = assembled
    paper = {coco_id: i for i, coco_id in enumerate(NON_VOC + VOC_IN_COCO, start=1)}
    for image_id in doc["splits"]["train"][:4] + doc["splits"]["val"][:2]:
        split = "train" if image_id in index["train"] else "val"
        raw = np.array(Image.open(coco.stuffthing_path(root / "coco", split, image_id)))
        expected = np.zeros_like(raw)
        expected[raw == 255] = 255
        for v in np.unique(raw[raw <= 90]):
            expected[raw == v] = paper[int(v) + 1]
        out = np.array(Image.open(root / "out/SegmentationClassAug" / f"{image_id}.png"))
        np.testing.assert_array_equal(out, expected)
        assert doc["index"][image_id]["classes"] == sorted({paper[c] for c in _raw_coco_ids(raw)})
        assert (root / "out/JPEGImages" / f"{image_id}.jpg").resolve() == coco.image_path(
            root / "coco", split, image_id
        ).resolve()
    for image_id in voc_train[:3]:
        raw = np.array(Image.open(root / "voc/SegmentationClassAug" / f"{image_id}.png"))
        out = np.array(Image.open(root / "out/SegmentationClassAug" / f"{image_id}.png"))
        expected = raw.copy()
        for voc, coco_id in ISSUE_VOC_TO_COCO.items():
            expected[raw == voc] = paper[coco_id]
        np.testing.assert_array_equal(out, expected)
        assert all(c >= 61 for c in doc["index"][image_id]["classes"]) and doc["index"][image_id]["classes"]
    # every reader of the folder accepts the 80 classes (label_space.json), VOC ones included
    values = set(np.unique(load_mask(root / "out/SegmentationClassAug" / f"{voc_train[0]}.png")).tolist())
    assert values - {0, 255} and all(61 <= v <= 80 for v in values - {0, 255})


def test_splits_draw_step0_from_coco_and_step1_from_voc(assembled):
    _, doc, _, voc_train, _ = assembled
    train = {i: doc["index"][i] for i in doc["splits"]["train"]}
    for protocol in ("overlap", "disjoint"):  # the same images under both protocols
        steps = build_splits(train, "coco-voc", protocol, task_table="coco80")
        assert {doc["index"][i]["source"] for i in steps[0]["ids"]} == {"coco"}
        assert steps[1]["ids"] == voc_train
        for i in steps[1]["ids"]:
            assert steps[1]["labels"][i] == doc["index"][i]["classes"]  # the VOC classes present, 61..80
    joint = tasks.joint_ids(train, "coco-voc", 1, "overlap", "coco80")
    assert set(joint) == set(steps[0]["ids"]) | set(voc_train)


def test_assembly_resumes_and_refuses_mismatches(assembled, tmp_path):
    root, doc, index, voc_train, voc_val = assembled
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, symlinks=True)
    victim = out / "SegmentationClassAug" / f"{doc['splits']['val'][0]}.png"
    before = victim.read_bytes()
    victim.unlink()
    again = coco_voc.assemble(out, root / "coco", index, root / "voc", voc_train, voc_val, progress=False)
    assert victim.read_bytes() == before
    assert {k: again[k] for k in ("splits", "index")} == {
        k: json.loads(json.dumps(doc[k])) for k in ("splits", "index")
    }
    marker = json.loads((out / coco_voc.MARKER).read_text())
    write_json(out / coco_voc.MARKER, {**marker, "version": 0})
    with pytest.raises(DatasetError, match=r"ASSEMBLY\.json.*delete"):
        coco_voc.assemble(out, root / "coco", index, root / "voc", voc_train, voc_val, progress=False)
    with pytest.raises(DatasetError, match="appear in two sources"):
        coco_voc.assemble(
            tmp_path / "dup", root / "coco", index, root / "voc", voc_train, voc_train[:1] + voc_val, progress=False
        )
    with pytest.raises(DatasetError, match="VOC val holds no image"):
        coco_voc.assemble(tmp_path / "none", root / "coco", index, root / "voc", voc_train, [], progress=False)


def test_assembly_names_a_bad_source_map(assembled, tmp_path):
    root, _, index, voc_train, voc_val = assembled
    voc = tmp_path / "voc"
    shutil.copytree(root / "voc", voc)
    Image.fromarray(np.full((32, 32), 33, dtype=np.uint8)).save(voc / "SegmentationClassAug" / f"{voc_train[1]}.png")
    with pytest.raises(DatasetError, match=rf"{voc_train[1]}.*33"):
        coco_voc.assemble(tmp_path / "out", root / "coco", index, voc, voc_train, voc_val, progress=False)


# ------------------------------------------------------------------------------------------
# download (no network here: torchvision's downloader is replaced)


def test_download_coco_mocked(tmp_path, monkeypatch):
    from pipeline.data import coco_download

    calls = []

    def fake(url, download_root, extract_root, filename, md5):
        calls.append((filename, md5, Path(extract_root)))
        (Path(download_root) / filename).write_bytes(b"zip " + filename.encode())
        if filename in ("train2017.zip", "val2017.zip"):
            folder = Path(extract_root) / filename.replace(".zip", "")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "000000000001.jpg").write_bytes(b"")
        if filename.startswith("stuffthingmaps"):
            for split in ("train2017", "val2017"):
                (Path(extract_root) / split).mkdir(parents=True, exist_ok=True)
                (Path(extract_root) / split / "000000000001.png").write_bytes(b"")

    monkeypatch.setattr(coco_download, "download_and_extract_archive", fake)
    root = tmp_path / "COCO"
    done = coco_download.download_coco(root, tmp_path / "dl")
    assert [c[0] for c in calls] == list(coco_download.ARCHIVES)
    assert calls[0][1] == "cced6f7f71b7629ddf16f17bbcfab6b2" and calls[1][1] == "442b8da7639aecaf257c1dceb8ba8c80"
    assert calls[2][1] == "f4bbac642086de4f52a3fdda2de5fa2c" and calls[3][1] is None
    assert calls[3][2] == root / "stuffthingmaps_trainval2017"  # its zip holds train2017/ and val2017/ at the top
    record = done["archives"]["stuffthingmaps_trainval2017.zip"]
    assert record["verified"] is False and record["md5"] == coco_download.file_md5(
        tmp_path / "dl/stuffthingmaps_trainval2017.zip"
    )
    assert done["counts"] == {
        "images_train2017": 1, "stuffthingmaps_train2017": 1, "images_val2017": 1, "stuffthingmaps_val2017": 1,
    }  # fmt: skip
    assert json.loads((root / "DONE.json").read_text()) == done
    calls.clear()
    assert coco_download.download_coco(root, tmp_path / "dl") == done and not calls  # done: nothing fetched


# ------------------------------------------------------------------------------------------
# Table 3 of the report


def _metrics(path: Path, method: str, step: int, old: float, new: float | None, all_: float, seed: int = 0,
             val_split: str = "val") -> Path:  # fmt: skip
    data = {
        "dataset": "cv", "task": "coco-voc", "protocol": "overlap", "step": step, "num_steps": 2,
        "method": method, "seed": seed, "task_table": "coco80", "val_split": val_split,
        "old_classes": list(range(1, 61)), "new_classes": list(range(61, 81)) if step else [],
        "seen_classes": list(range(0, 81 if step else 61)), "per_class_iou": {},
        "miou_old": old, "miou_new": new, "miou_all": all_, "pixel_accuracy": 0.5,
        "predictions_dir": "", "image_root": "", "mask_dir": "", "val_ids": ["a"],
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_table3_layout(tmp_path):
    from pipeline.report.coco_voc import coco_voc_tables
    from pipeline.report.runs import load_metrics

    m = lambda name, *a, **k: load_metrics(_metrics(tmp_path / f"{name}.json", *a, **k))  # noqa: E731
    runs = [
        m("base", "base", 0, 0.5, None, 0.52),
        m("wilson0", "wilson", 1, 0.398, 0.410, 0.406),
        m("wilson1", "wilson", 1, 0.402, 0.420, 0.410, seed=1),
        m("ft", "ft", 1, 0.019, 0.417, 0.127),
    ]
    second = [
        m("wilson0_voc", "wilson", 1, 0.0, 0.557, 0.3, val_split="val_voc"),
        m("wilson1_voc", "wilson", 1, 0.0, 0.559, 0.3, seed=1, val_split="val_voc"),
    ]
    (table,) = coco_voc_tables(runs, second)
    assert table["header"] == ["Method", "Sup", "COCO 1-60", "COCO 61-80", "COCO All", "VOC 61-80"]
    assert table["rows"] == [
        ["FT", "Pixel", "1.9", "41.7", "12.7", "–"],  # no VOC-val run: a dash
        ["WILSON", "Image", "40.0 ± 0.3", "41.5 ± 0.7", "40.8 ± 0.3", "55.8 ± 0.1"],
    ]
    orphan = [m("mib_voc", "mib", 1, 0.0, 0.5, 0.3, val_split="val_voc")]
    with pytest.raises(ValueError, match="mib_voc.json.*without its COCO-val run"):
        coco_voc_tables(runs, orphan)
    assert coco_voc_tables([], []) == []


# ------------------------------------------------------------------------------------------
# the backbone and the dry runs


def test_coco_backbone_is_the_configured_wide_resnet_at_stride_8():
    import torch
    import yaml

    from pipeline.models.segmenter import build_backbone

    cfg = yaml.safe_load((REPO / "config/coco-voc.yaml").read_text())["model"]
    assert cfg["backbone"].startswith("wide_resnet50_2") and cfg["output_stride"] == 8
    backbone = build_backbone(cfg["backbone"], cfg["output_stride"], "none")
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 96))
    assert features[-1].shape[-2:] == (8, 12)  # output stride 8
    assert features[-1].shape[1] == 2048


def test_a_wrn38_checkpoint_is_refused_by_the_configured_backbone(tmp_path):
    """The authors' converted WRN-38 file (inplace_abn ``wider_resnet38_a2`` naming: mod1..mod7,
    bn_out) does not fit timm's Wide ResNet-50-2: refused, naming the file and the model."""
    import torch

    from pipeline.models.segmenter import build_backbone

    path = tmp_path / "wide_resnet38_ipabn_lr_256.pth"
    state = {
        "mod1.conv1.weight": torch.zeros(64, 3, 3, 3),
        "mod2.block1.convs.conv1.weight": torch.zeros(128, 64, 3, 3),
    }
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=r"wide_resnet38_ipabn_lr_256\.pth.*does not fit timm's wide_resnet50_2"):
        build_backbone("wide_resnet50_2.tv_in1k", 8, str(path))


def test_dry_run_lists_the_coco_to_voc_dag_for_every_method(tmp_path):
    import yaml

    methods = yaml.safe_load((REPO / "config/coco-voc.yaml").read_text())["experiments"]["methods"]
    out = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", *CONFIGS).stdout
    counts = job_counts(out)
    runs = 1 + len(methods)  # step 0 + every method at step 1
    assert counts["coco_labels"] == 2 and counts["coco_voc_prepare"] == 1
    assert counts["train_base"] == 1 and counts["train_step"] == len(methods)
    assert counts["evaluate"] == runs and counts["evaluate_second"] == runs
    assert counts["train_cam"] == 3 and counts["pseudo_labels"] == 3  # cam, vwe, iscam
    assert "download_coco" not in counts and "prepare_data" not in counts and "make_coco_voc_fixture" not in counts
    for method in methods:
        assert f"results/coco-voc/coco-voc-overlap/seed0/step1/{method}/val_voc/metrics.json" in out
    assert "results/coco-voc/dataset.json" in out
    asked = job_counts(snakemake(tmp_path, "-n", "--cores", "1", "download_coco", "--configfile", *CONFIGS).stdout)
    assert asked == {"download_coco": 1}


def test_voc_dag_has_no_coco_job(tmp_path):
    counts = job_counts(
        snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(REPO / "config/demo.yaml")).stdout
    )
    assert "coco_labels" not in counts and "evaluate_second" not in counts and "coco_voc_prepare" not in counts
    assert counts["prepare_data"] == 1 and counts["evaluate"] == counts["train_step"] + counts["train_base"]


# ------------------------------------------------------------------------------------------
# the fixture DAG end to end, and the real maps of shared/coco-mini


@pytest.mark.long  # ~1.5 min alone: pytest -m long
def test_fixture_dag_runs_end_to_end(tmp_path):
    proc = snakemake(tmp_path, "--cores", "2", "--configfile", *FIXTURE)
    assert "steps (100%) done" in proc.stderr
    results = tmp_path / "results/coco-voc-fixture"
    coco_root, voc_root = tmp_path / "data/coco-voc-fixture/coco", tmp_path / "data/coco-voc-fixture/voc"
    # step 0: the COCO train images without a VOC thing pixel and with a COCO-only one (computed here)
    expected0 = []
    for path in sorted((coco_root / "stuffthingmaps_trainval2017/train2017").glob("*.png")):
        ids = _raw_coco_ids(np.array(Image.open(path)))
        if not ids & set(VOC_IN_COCO) and ids & set(NON_VOC):
            expected0.append(path.stem)
    split0 = json.loads((results / "splits/coco-voc-overlap/step0.json").read_text())
    split1 = json.loads((results / "splits/coco-voc-overlap/step1.json").read_text())
    assert split0["ids"] == expected0 and split0["task_table"] == "coco80"
    assert split1["ids"] == read_ids(voc_root / "ImageSets/Segmentation/train_aug.txt")
    coco_val = sorted(p.stem for p in (coco_root / "val2017").glob("*.jpg"))
    voc_val = read_ids(voc_root / "ImageSets/Segmentation/val.txt")
    for method in ("ft", "joint", "wilson", "fmwiss_oracle"):
        run = results / f"coco-voc-overlap/seed0/step1/{method}"
        first, second = (json.loads((run / p).read_text()) for p in ("metrics.json", "val_voc/metrics.json"))
        assert first["val_ids"] == coco_val and second["val_ids"] == voc_val
        assert (first["val_split"], second["val_split"]) == ("val", "val_voc")
        assert len(first["per_class_iou"]) == 81 and first["new_classes"] == list(range(61, 81))
        assert len(list((run / "val_voc/predictions").glob("*.png"))) == len(voc_val)
    table3 = (tmp_path / "results/report/table3_coco-voc-fixture_coco-voc_overlap.md").read_text()
    assert "| Method | Sup | COCO 1-60 | COCO 61-80 | COCO All | VOC 61-80 |" in table3
    for label in ("FT", "Joint", "WILSON", "fmwiss_oracle"):
        assert f"| {label} |" in table3
    assert "COCO-to-VOC (WILSON / FMWISS Table 3)" in (tmp_path / "results/report/summary.md").read_text()


@pytest.mark.long  # ~1.5 min alone: pytest -m long
@needs_coco_mini
def test_real_coco_mini_maps_through_the_dag(tmp_path):
    """The 44 real COCO-Stuff maps of shared/coco-mini as COCO val: converted, checked (images
    decoded and sized), indexed, assembled and evaluated (models trained on the fixture)."""
    overlay = tmp_path / "abs.yaml"
    overlay.write_text(f"coco: {{val_root: {COCO_MINI}}}\nexperiments: {{methods: []}}\n")
    snakemake(tmp_path, "--cores", "2", "--configfile", *FIXTURE, str(REPO / "config/coco-mini.yaml"), str(overlay))
    maps = sorted(p.stem for p in (COCO_MINI / "stuffthingmaps_trainval2017/val2017").glob("*.png"))
    assert len(maps) == 44
    index = json.loads((tmp_path / "results/coco-mini/coco/index_val.json").read_text())["index"]
    assert sorted(index) == maps
    for image_id in maps[:5]:  # the class index against the raw maps, computed here
        raw = np.array(Image.open(COCO_MINI / "stuffthingmaps_trainval2017/val2017" / f"{image_id}.png"))
        assert index[image_id]["classes"] == sorted(_raw_coco_ids(raw))
    metrics = json.loads((tmp_path / "results/coco-mini/coco-voc-overlap/seed0/step0/base/metrics.json").read_text())
    assert metrics["val_ids"] == maps and np.asarray(metrics["confusion_matrix"]).sum() > 0
    conf = np.asarray(metrics["confusion_matrix"])
    assert conf.shape == (61, 61)  # step 0: background + classes 1-60
