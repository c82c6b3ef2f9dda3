"""The ``predict`` stage (issue 18) on real VOC images (shared/voc-mini): the label maps equal the
evaluate stage's for the same model (bit for bit on the CPU), sliding windows equal whole-image
inference when a window covers the image, per-image JSON, and errors that name the bad path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_dir  # tests/ is on sys.path under pytest
from PIL import Image
from torch import nn

from pipeline.__main__ import main
from pipeline.checkpoint import CheckpointError
from pipeline.data.classes import voc_palette
from pipeline.data.splits import build_splits
from pipeline.data.voc import DatasetError
from pipeline.eval.inference import SlidingWindow, list_images, overlay
from pipeline.io import read_json, write_json
from pipeline.models import build_segmenter, save_model

MINI = shared_dir() / "voc-mini"
VAL = 8  # val images used (each costs ~0.3 s per pass on 2 cores)
MODEL = {"backbone": "test_resnet", "output_stride": 16, "pretrained": "none", "head_channels": 32}

pytestmark = pytest.mark.skipif(not (MINI / "JPEGImages").is_dir(), reason="shared/voc-mini not available")


def _calibrated_model(images: list[torch.Tensor]) -> nn.Module:
    """A random-init segmenter whose BatchNorm statistics come from real images, so that its
    argmax varies across each image (with the init statistics it predicts one class)."""
    torch.manual_seed(0)
    model = build_segmenter(MODEL, [16])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.stack([image[:, :256, :256] for image in images]))
    return model.eval()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A base model of 15-5, evaluated on VAL voc-mini val images by the evaluate stage."""
    from pipeline.eval.inference import ImageFiles

    root = tmp_path_factory.mktemp("predict")
    train_ids = (MINI / "train_ids.txt").read_text().split()[:8]
    val_ids = (MINI / "val_ids.txt").read_text().split()[:VAL]
    (root / "train.txt").write_text("\n".join(train_ids) + "\n")
    (root / "val.txt").write_text("\n".join(val_ids) + "\n")
    main(
        ["prepare-data", "--root", str(MINI), "--mask-dir", "SegmentationClass", "--output", str(root / "dataset.json")]
        + ["--train-list", str(root / "train.txt"), "--val-list", str(root / "val.txt")]
    )
    index = read_json(root / "dataset.json")
    steps = build_splits({i: index["index"][i] for i in index["splits"]["train"]}, "15-5", "overlap", dataset="mini")
    write_json(root / "step0.json", steps[0])
    calibration = ImageFiles([(i, MINI / "JPEGImages" / f"{i}.jpg") for i in train_ids[:4]])
    model = _calibrated_model([calibration[k]["image"] for k in range(4)])
    meta = {"model": MODEL, "task": "15-5", "protocol": "overlap", "step": 0, "method": "base", "seed": 0}
    save_model(root / "model.pt", model, dict(meta, seen_classes=list(range(16))))
    main(
        ["evaluate", "--model", str(root / "model.pt"), "--data", str(root / "dataset.json")]
        + ["--split", str(root / "step0.json"), "--out", str(root / "eval" / "metrics.json")]
        + ["--pred-dir", str(root / "eval" / "predictions"), "--device", "cpu", "--batch-size", "1"]
    )
    return root, val_ids


def _predict(root, out, *extra):
    main(
        ["predict", "--model", str(root / "model.pt"), "--images", str(root / "val.txt")]
        + ["--image-root", str(MINI / "JPEGImages"), "--out", str(out), "--device", "cpu", *extra]
    )


def _labels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def test_predict_equals_evaluate_bit_for_bit(evaluated, tmp_path, capsys):
    root, val_ids = evaluated
    _predict(root, tmp_path / "out", "--batch-size", "1", "--json")
    err = capsys.readouterr().err
    assert "16 classes: 0 background, 1 aeroplane" in err and "15 person" in err  # the classes the model knows
    classes = set()
    for image_id in val_ids:
        predicted = _labels(tmp_path / "out" / "labels" / f"{image_id}.png")
        evaluated_map = _labels(root / "eval" / "predictions" / f"{image_id}.png")
        assert predicted.dtype == evaluated_map.dtype and np.array_equal(predicted, evaluated_map), image_id
        classes |= set(np.unique(predicted).tolist())
        with Image.open(tmp_path / "out" / "labels" / f"{image_id}.png") as image:
            palette = np.array(image.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
        assert np.array_equal(palette, voc_palette())
        with (
            Image.open(MINI / "JPEGImages" / f"{image_id}.jpg") as jpeg,
            Image.open(tmp_path / "out" / "overlays" / f"{image_id}.jpg") as blended,
        ):
            assert blended.size == jpeg.size
        summary = read_json(tmp_path / "out" / "json" / f"{image_id}.json")
        counts = np.bincount(predicted.ravel(), minlength=16)
        assert {c["channel"]: c["pixels"] for c in summary["classes"]} == {k: int(n) for k, n in enumerate(counts) if n}
        assert sum(c["area_fraction"] for c in summary["classes"]) == pytest.approx(1.0)
        assert (summary["height"], summary["width"]) == predicted.shape
    assert len(classes) >= 3, "the model predicts too few classes for the comparison to mean anything"
    run = read_json(tmp_path / "out" / "predict.json")
    assert run["images"] == VAL and run["images_per_s"] > 0 and run["precision"] == "float32"


def test_slide_with_window_covering_the_image_equals_whole(evaluated, tmp_path):
    root, val_ids = evaluated
    # every voc-mini image is at most 500 x 500: one window per image, the whole image
    _predict(root, tmp_path / "slide", "--mode", "slide", "--window", "500", "500", "--stride", "250", "250")
    for image_id in val_ids:
        slide = _labels(tmp_path / "slide" / "labels" / f"{image_id}.png")
        assert np.array_equal(slide, _labels(root / "eval" / "predictions" / f"{image_id}.png")), image_id


def test_sliding_window_grid_and_average():
    # mmseg's grid: H = 10, window 4, stride 3 -> rows at 0, 3, 6 (the last ends at 10)
    assert SlidingWindow.starts(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert SlidingWindow.starts(9, 4, 3) == [(0, 4), (3, 7), (5, 9)]  # the last window moved back inside
    assert SlidingWindow.starts(3, 4, 3) == [(0, 3)]  # a window larger than the image is cut to it

    class CropMean(nn.Module):
        """Each window's logit is the mean of its input: the average over windows is checkable."""

        def forward(self, x):
            return {"out": x.mean(dim=(1, 2, 3), keepdim=True).expand(x.shape[0], 1, *x.shape[-2:])}

    x = torch.arange(7.0).view(1, 1, 1, 7).expand(1, 3, 1, 7).contiguous()  # W = 7: window 4, stride 3
    out = SlidingWindow(CropMean(), (1, 4), (1, 3))(x)["out"][0, 0, 0]
    # windows [0, 4) mean 1.5 and [3, 7) mean 4.5: pixel 3 is covered by both
    assert out.tolist() == pytest.approx([1.5, 1.5, 1.5, 3.0, 4.5, 4.5, 4.5])
    pixelwise = nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 13, 17)
    whole = pixelwise(x)
    slide = SlidingWindow(lambda crop: {"out": pixelwise(crop)}, (5, 6), (3, 4))(x)["out"]
    assert torch.allclose(slide, whole, atol=1e-6)
    with pytest.raises(ValueError, match="stride"):
        SlidingWindow(pixelwise, (4, 4), (5, 4))


def test_model_classes_from_meta_and_task_table():
    from pipeline.data.tasks import seen_classes
    from pipeline.eval.inference import model_classes

    voc = model_classes({"task": "15-5", "step": 1}, 21)  # no seen_classes in meta: the task's
    assert voc[0] == (0, 0, "background") and voc[16] == (16, 16, "pottedplant")
    # COCO-to-VOC in COCO ids (step 0: background + the 60 non-VOC classes; 8 = truck)
    coco = model_classes({"task": "coco-voc", "step": 0, "seen_classes": seen_classes("coco-voc", 0, "coco")}, 61)
    assert coco[1] == (1, 8, "truck")
    # the paper's numbering: 1-60 non-VOC, 61-80 the VOC classes in COCO id order (61 = person, id 1)
    paper = model_classes({"task": "coco-voc", "step": 1, "seen_classes": seen_classes("coco-voc", 1, "coco80")}, 81)
    assert paper[61] == (61, 61, "person") and paper[1] == (1, 1, "truck")
    assert model_classes({}, 3) == [(0, 0, "background"), (1, 1, "aeroplane"), (2, 2, "bicycle")]


def test_overlay_blends_only_objects():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    labels = np.array([[0, 1], [15, 0]], dtype=np.uint8)  # VOC colours: 1 (128, 0, 0), 15 (192, 128, 128)
    out = overlay(image, labels, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100] and out[1, 1].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [114, 50, 50] and out[1, 0].tolist() == [146, 114, 114]


def test_errors_name_the_path(evaluated, tmp_path):
    root, _ = evaluated
    missing = tmp_path / "no" / "model.pt"
    with pytest.raises(CheckpointError, match=str(missing)):
        main(["predict", "--model", str(missing), "--images", str(MINI / "JPEGImages"), "--out", str(tmp_path / "o")])
    folder = tmp_path / "images"
    folder.mkdir()
    with pytest.raises(DatasetError, match=f"{folder}: no image files"):
        list_images(folder)
    shutil.copy(MINI / "JPEGImages" / "2007_000123.jpg", folder / "ok.jpg")
    (folder / "notes.png").write_text("not an image")
    with pytest.raises(DatasetError, match=str(folder / "notes.png")):
        main(["predict", "--model", str(root / "model.pt"), "--images", str(folder), "--out", str(tmp_path / "o")])
    (folder / "notes.png").unlink()
    (folder / "readme.txt").write_text("a text file beside the images")
    assert [i for i, _ in list_images(folder)] == ["ok"]  # a folder's other files are skipped
    with pytest.raises(DatasetError, match=str(folder / "readme.txt")):
        list_images(str(folder / "*"))  # a glob names its files: each must be an image
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        list_images(tmp_path / "nothing")
    ids = tmp_path / "ids.txt"
    ids.write_text("ok\nmissing_id\n")
    with pytest.raises(DatasetError, match="missing_id"):
        list_images(ids, folder)
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(DatasetError, match=str(binary)):
        list_images(binary)


def test_list_and_json_cli(evaluated, tmp_path):
    """A glob of images, predicted, with the model's classes in predict.json."""
    root, val_ids = evaluated
    folder = tmp_path / "two"
    folder.mkdir()
    for image_id in val_ids[:2]:
        shutil.copy(MINI / "JPEGImages" / f"{image_id}.jpg", folder / f"{image_id}.jpg")
    main(
        ["predict", "--model", str(root / "model.pt"), "--images", str(folder / "*.jpg"), "--out", str(tmp_path / "o")]
    )
    run = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert run["images"] == 2 and [c["name"] for c in run["classes"]][:2] == ["background", "aeroplane"]
    assert sorted(p.stem for p in (tmp_path / "o" / "labels").iterdir()) == sorted(val_ids[:2])
