"""The CL4WSIS stages on a tiny generated demo set: ``train-instance`` (step 0, then step 1's two
phases) and ``evaluate-instance`` (mask AP, VOC protocol, and semantic mIoU); the evaluation of a
model that reproduces the ground truth scores AP 1."""

import argparse
import csv
import json

import numpy as np
import pytest
import torch
import yaml
from helpers.cl4wsis import INSTANCE, MODEL, one_thread  # noqa: F401 (one_thread: an autouse fixture)

from pipeline.data.instances import load_instance_map
from pipeline.data.synthetic import generate
from pipeline.data.voc import load_mask
from pipeline.io import write_json
from pipeline.models.instance import load_instance_model
from pipeline.models.panoptic import panoptic_targets
from pipeline.stages import evaluate_instance, train_instance

TASK, SIZE = "10-10", 64


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cl4wsis_stage_demo")
    generate(root, n_train=2, n_val=2, size=SIZE, seed=0, n_train_inst=6, n_val_inst=3)
    train = [f"demo_inst_{j:06d}" for j in range(6)]
    val = [f"demo_inst_{j:06d}" for j in range(6, 9)]
    index = root / "index.json"
    write_json(index, {"root": str(root), "mask_dir": "SegmentationClassAug", "splits": {"train": train, "val": val}})
    return root, index, train, val


def _config():
    with open("config.yaml") as f:
        config = yaml.safe_load(f)
    method = {**config["methods"]["cl4wsis"], "instance": INSTANCE, "sigma": 4.0, "pamr_iterations": 2}
    method["warmup_epochs"] = 0
    for phase in ("base", "phase1", "phase2"):
        method["schedule"][phase] = {**method["schedule"][phase], "epochs": 1, "batch_size": 3}
    train = {**config["train_step"], "crop_size": SIZE, "scale_range": [1.0, 1.0], "precision": "float32"}
    return method, train


def _split(tmp_path, demo, step):
    root, _, ids, _ = demo
    seen = list(range(11)) if step == 0 else list(range(21))
    new = list(range(1, 11)) if step == 0 else list(range(11, 21))
    labels = {}
    for i in ids:
        present = set(np.unique(load_mask(root / "SegmentationClassAug" / f"{i}.png")).tolist())
        labels[i] = [c for c in new if c in present]
    split = {
        "dataset": "demo",
        "task": TASK,
        "protocol": "overlap",
        "step": step,
        "ids": ids,
        "labels": labels,
        "seen_classes": seen,
        "new_classes": new,
        "old_classes": [] if step == 0 else list(range(1, 11)),
        "relaxed": False,
    }
    path = tmp_path / f"step{step}.json"
    write_json(path, split)
    return path


def _train(demo, split, outdir, previous=None):
    method, train = _config()
    parser = argparse.ArgumentParser()
    train_instance.add_arguments(parser)
    argv = ["--split", str(split), "--data", str(demo[1]), "--outdir", str(outdir), "--device", "cpu"]
    argv += ["--params", json.dumps({"model": MODEL, "train": train, "method": method})]
    if previous:
        argv += ["--previous", str(previous)]
    train_instance.run(parser.parse_args(argv))


def _evaluate(demo, split, model, out):
    parser = argparse.ArgumentParser()
    evaluate_instance.add_arguments(parser)
    argv = ["--model", str(model), "--data", str(demo[1]), "--split", str(split), "--out", str(out), "--device", "cpu"]
    evaluate_instance.run(parser.parse_args(argv))
    return json.loads(out.read_text())


def test_train_and_evaluate_step0_then_step1(demo, tmp_path):
    split0, split1 = _split(tmp_path, demo, 0), _split(tmp_path, demo, 1)
    _train(demo, split0, tmp_path / "step0")
    model0, meta0 = load_instance_model(tmp_path / "step0" / "model.pt")
    assert meta0["step"] == 0 and meta0["classes_per_step"] == [11] and meta0["instance"] == INSTANCE
    assert not (tmp_path / "step0" / "checkpoint.pt").exists()

    _train(demo, split1, tmp_path / "step1", previous=tmp_path / "step0" / "model.pt")
    model1, meta1 = load_instance_model(tmp_path / "step1" / "model.pt")
    assert meta1["classes_per_step"] == [11, 10] and meta1["previous"].endswith("model.pt")
    with open(tmp_path / "step1" / "history.csv") as f:
        phases = [row["phase"] for row in csv.DictReader(f)]
    assert phases == ["phase1", "phase2"]
    for phase in ("phase1", "phase2"):
        assert not (tmp_path / "step1" / phase / "checkpoint.pt").exists()
    # Phase 2 trained the instance branch (it starts from step 0's)
    instance0 = {k: v for k, v in model0.state_dict().items() if k.startswith("instance.")}
    assert any(not torch.equal(v, model1.state_dict()[k]) for k, v in instance0.items())

    metrics = _evaluate(demo, split1, tmp_path / "step1" / "model.pt", tmp_path / "metrics.json")
    assert metrics["step"] == 1 and metrics["old_classes"] == list(range(1, 11))
    for key in ("ap50_all", "ap_all"):
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
    assert len(metrics["iou_thresholds"]) == 10 and metrics["semantic"]["miou_all"] is not None
    # every ground-truth instance of the val images is counted once
    root, _, _, val = demo
    n_gt = sum(
        len(np.setdiff1d(np.unique(load_instance_map(root / "SegmentationObject" / f"{i}.png")), [0, 255])) for i in val
    )
    assert sum(metrics["n_gt"]) == n_gt


class _Oracle(torch.nn.Module):
    """Answers each image, in evaluation order, with the ground truth's semantic logits, center
    heatmap and offsets."""

    def __init__(self, root, ids, num_classes):
        super().__init__()
        self.outputs = []
        for i in ids:
            gt = torch.from_numpy(load_mask(root / "SegmentationClassAug" / f"{i}.png").astype(np.int64))
            inst = torch.from_numpy(load_instance_map(root / "SegmentationObject" / f"{i}.png").astype(np.int64))
            logits = torch.nn.functional.one_hot(gt.masked_fill(gt == 255, 0), num_classes).permute(2, 0, 1) * 10.0
            targets = panoptic_targets(inst, sigma=4.0)
            self.outputs.append(
                {"out": logits[None].float(), "center": targets["center"][None], "offset": targets["offset"][None]}
            )
        self.num_classes = num_classes

    def forward(self, x):
        return self.outputs.pop(0)


def test_a_ground_truth_oracle_scores_ap_one(demo):
    root, index, _, val = demo
    oracle = _Oracle(root, val, 21)
    result, matrix = evaluate_instance.evaluate_instance_model(oracle, str(index), val, TASK, 1, torch.device("cpu"))
    has_gt = result["n_gt"] > 0
    assert has_gt.sum() >= 1
    assert np.allclose(result["ap"][:, has_gt], 1.0)  # every threshold, every class with ground truth
    assert np.trace(matrix) == matrix.sum()  # the semantic argmax is the ground truth
