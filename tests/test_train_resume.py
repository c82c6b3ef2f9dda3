"""train-base end to end on a tiny generated dataset: determinism, SIGKILL + resume, evaluation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.__main__ import main
from pipeline.data.splits import build_splits
from pipeline.data.synthetic import generate
from pipeline.io import read_json, write_json
from pipeline.metrics.miou import confusion_matrix, iou_per_class

PARAMS = {
    "model": {"backbone": "resnet18", "output_stride": 16, "pretrained": "none"},
    "train": {
        "loss": "ce",
        "epochs": 6,
        "batch_size": 8,
        "lr": 0.01,
        "head_lr_mult": 1.0,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "crop_size": 64,
        "scale_range": [0.75, 1.25],
        "precision": "auto",
        "compile": False,
        "eval_every": 2,
        "eval_batch_size": 16,
    },
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    generate(root / "data", n_train=48, n_val=16, size=64, seed=3)
    main(["prepare-data", "--root", str(root / "data"), "--output", str(root / "dataset.json")])
    index = read_json(root / "dataset.json")
    steps = build_splits({i: index["index"][i] for i in index["splits"]["train"]}, "15-5", "overlap", dataset="tiny")
    write_json(root / "step0.json", steps[0])
    return root


def _train_cmd(tiny: Path, outdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "train-base",
        "--split",
        str(tiny / "step0.json"),
        "--data",
        str(tiny / "dataset.json"),
        "--params",
        json.dumps(PARAMS),
        "--outdir",
        str(outdir),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--seed",
        "5",
    ]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _evaluate(tiny: Path, run: Path) -> dict:
    main(
        [
            "evaluate",
            "--model",
            str(run / "model.pt"),
            "--data",
            str(tiny / "dataset.json"),
            "--split",
            str(tiny / "step0.json"),
            "--out",
            str(run / "metrics.json"),
            "--pred-dir",
            str(run / "predictions"),
            "--device",
            "cpu",
            "--batch-size",
            "8",
        ]
    )
    return read_json(run / "metrics.json")


@pytest.fixture(scope="module")
def straight(tiny):
    """An uninterrupted run, trained and evaluated."""
    run = tiny / "straight"
    subprocess.run(_train_cmd(tiny, run), check=True, capture_output=True)
    _evaluate(tiny, run)
    return run


def test_sigkill_then_rerun_resumes_and_matches_uninterrupted_run(tiny, straight):

    killed = tiny / "killed"
    proc = subprocess.Popen(_train_cmd(tiny, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None, "training ended before writing its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # nothing that looks finished is left behind
    assert not (killed / "model.pt").exists() and not (killed / "history.csv").exists()
    done_epochs = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"] + 1
    assert 1 <= done_epochs < PARAMS["train"]["epochs"]
    # the learning curve so far: written before each checkpoint, so the kill may fall between the two
    partial_rows = len((killed / "history.partial.csv").read_text().splitlines()) - 1
    assert partial_rows in (done_epochs, done_epochs + 1)

    resumed = subprocess.run(_train_cmd(tiny, killed), check=True, capture_output=True, text=True)
    assert f"resumed from {killed / 'checkpoint.pt'} after epoch {done_epochs}" in resumed.stderr
    assert not (killed / "checkpoint.pt").exists()  # removed once model.pt is written
    assert not (killed / "history.partial.csv").exists()  # renamed history.csv at the end

    a, b = _weights(straight / "model.pt"), _weights(killed / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history_a = (straight / "history.csv").read_text().splitlines()
    history_b = (killed / "history.csv").read_text().splitlines()
    assert len(history_a) == len(history_b) == PARAMS["train"]["epochs"] + 1
    header = history_a[0].split(",")
    assert header[:2] == ["epoch", "loss"] and "val_miou" in header

    # the same per-epoch losses, and the same metrics from the evaluate stage
    column = header.index("loss")
    assert [r.split(",")[column] for r in history_a] == [r.split(",")[column] for r in history_b]
    metrics_a, metrics_b = read_json(straight / "metrics.json"), _evaluate(tiny, killed)
    assert metrics_a["per_class_iou"] == metrics_b["per_class_iou"]
    assert metrics_a["confusion_matrix"] == metrics_b["confusion_matrix"]


def test_metrics_agree_with_saved_predictions(tiny, straight):
    run = straight
    metrics = read_json(run / "metrics.json")
    index = read_json(tiny / "dataset.json")
    seen = metrics["seen_classes"]
    conf = np.zeros((len(seen), len(seen)), dtype=np.int64)
    for image_id in index["splits"]["val"]:
        pred = np.asarray(Image.open(run / "predictions" / f"{image_id}.png"))
        gt = np.asarray(Image.open(Path(index["mask_dir"]) / f"{image_id}.png")).astype(np.int64)
        gt[(gt > max(seen)) & (gt != 255)] = 0  # classes not seen at step 0 count as background
        assert pred.shape == gt.shape and pred.max() <= max(seen)
        conf += confusion_matrix(pred, gt, len(seen))
    assert conf.tolist() == metrics["confusion_matrix"]
    iou = iou_per_class(conf)
    valid = ~np.isnan(iou)
    assert metrics["miou_all"] == pytest.approx(float(iou[valid].mean()))
    old = [c for c in range(1, 16) if valid[c]]
    assert metrics["miou_old"] == pytest.approx(float(iou[old].mean()))
    assert metrics["miou_new"] is None


def test_validation_does_not_change_what_is_trained(tiny, tmp_path):
    """A validation pass draws from the global RNG (the DataLoader's base seed); the loop keeps the
    training RNG as it was, so ``eval_every`` changes the learning curve only, not the weights
    (dropout masks of the next epochs included)."""
    runs = {}
    for every in (0, 1):
        train = {**PARAMS["train"], "epochs": 2, "eval_every": every, "tensorboard": True}
        params = {**PARAMS, "train": train}
        command = _train_cmd(tiny, tmp_path / f"every{every}")
        command[command.index("--params") + 1] = json.dumps(params)
        subprocess.run(command, check=True, capture_output=True)
        runs[every] = _weights(tmp_path / f"every{every}" / "model.pt")
    assert "val_miou" in (tmp_path / "every1" / "history.csv").read_text().splitlines()[0]
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
