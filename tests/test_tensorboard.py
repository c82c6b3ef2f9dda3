"""TensorBoard event files of the training loop (issue 18): read back with tensorboard's
EventAccumulator, they hold each loss term, the learning rates, val mIoU all/old/new and images."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from pipeline.__main__ import main
from pipeline.data.splits import build_splits
from pipeline.data.synthetic import generate
from pipeline.io import read_json, write_json
from pipeline.objective import Objective
from pipeline.train.loop import LoopConfig, Trainer, held_poly_factor
from pipeline.train.tensorboard import scalar_tags

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

EPOCHS, BATCH, IMAGES, LR = 3, 2, 6, 0.1


class Pixelwise(nn.Module):
    """A 1x1 convolution segmenter: ``{"out": (B, 2, H, W)}``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


class TwoTerms(Objective):
    """Two named loss terms, so the event file must hold loss/ce and loss/l2 apart."""

    name = "two-terms"

    def losses(self, batch, out, epoch):
        ce = nn.functional.cross_entropy(out["out"], batch["gt"])
        return {"ce": ce, "l2": 0.1 * out["out"].pow(2).mean()}


def _samples(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"id": f"img{i}", "image": torch.randn(3, 8, 8, generator=g), "gt": torch.randint(0, 2, (8, 8), generator=g)}
        for i in range(n)
    ]


def _accumulator(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _fit(run_dir, tensorboard: bool, validate=None) -> list[dict]:
    torch.manual_seed(0)
    cfg = LoopConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, eval_every=2, tensorboard=tensorboard, precision="float32")
    trainer = Trainer(
        Pixelwise(), TwoTerms(), _samples(IMAGES, 1), cfg, run_dir, torch.device("cpu"), validate=validate
    )
    return trainer.fit()


def test_event_file_holds_losses_lrs_val_miou_and_images(tmp_path):
    val = _samples(5, 2)
    calls = []

    def validate(model):
        calls.append(len(calls))
        return {"val_miou": 0.5 + 0.1 * len(calls), "val_miou_old": 0.25, "val_miou_new": None}

    validate.dataset = val
    history = _fit(tmp_path / "run", True, validate)
    assert list((tmp_path / "run").glob("events.out.tfevents.*")), "no event file in the run folder"
    acc = _accumulator(tmp_path / "run")
    scalars = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/ce", "loss/l2", "lr/group0", "time/epoch_s", "val/miou_all", "val/miou_old"} <= scalars
    assert "val/miou_new" not in scalars  # None (no new classes) is not logged
    for tag, column in (("loss/total", "loss"), ("loss/ce", "ce"), ("loss/l2", "l2")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([row[column] for row in history], rel=1e-6)
    # the total is the sum of the terms (each a mean over the epoch's iterations)
    totals = [e.value for e in acc.Scalars("loss/total")]
    sums = [a.value + b.value for a, b in zip(acc.Scalars("loss/ce"), acc.Scalars("loss/l2"))]
    assert totals == pytest.approx(sums, rel=1e-5)
    # lr at the end of epoch e: the poly schedule after e * (IMAGES // BATCH) iterations
    iters = IMAGES // BATCH
    expected_lr = [LR * held_poly_factor(e * iters, 0, EPOCHS * iters, 0.9) for e in (1, 2, 3)]
    assert [e.value for e in acc.Scalars("lr/group0")] == pytest.approx(expected_lr, rel=1e-6, abs=1e-12)
    # evaluations after epochs 2 (eval_every) and 3 (the last): the values the callback returned
    assert [(e.step, e.value) for e in acc.Scalars("val/miou_all")] == [
        (2, pytest.approx(0.6)),
        (3, pytest.approx(0.7)),
    ]
    assert [e.step for e in acc.Scalars("val/miou_old")] == [2, 3]
    images = acc.Tags()["images"]
    assert sorted(images) == [f"qualitative/img{i}" for i in range(4)]  # the first 4 val images
    first = acc.Images("qualitative/img0")
    assert [e.step for e in first] == [2, 3]
    assert (first[0].width, first[0].height) == (3 * 8, 8)  # image | prediction | ground truth


def test_switch_off_writes_no_event_file_and_same_weights(tmp_path):
    on = _fit(tmp_path / "on", True)
    off = _fit(tmp_path / "off", False)
    assert not list((tmp_path / "off").glob("events.out.tfevents.*"))
    assert [r["loss"] for r in on] == [r["loss"] for r in off]  # logging changes no result


def test_a_rerun_purges_the_events_of_the_epochs_it_trains_again(tmp_path):
    _fit(tmp_path / "run", True)
    _fit(tmp_path / "run", True)  # the checkpoint is complete: nothing to train, nothing logged
    torch.manual_seed(0)
    cfg = LoopConfig(epochs=2, batch_size=BATCH, lr=LR, tensorboard=True, precision="float32")
    Trainer(Pixelwise(), TwoTerms(), _samples(IMAGES, 1), cfg, tmp_path / "run", torch.device("cpu")).fit()
    # other settings: starts over from epoch 1; the first run's epochs 1-3 are purged
    assert [e.step for e in _accumulator(tmp_path / "run").Scalars("loss/total")] == [1, 2]


def test_a_run_from_scratch_replaces_event_files_that_sort_after_its_own(tmp_path):
    """TensorBoard reads a folder's event files in name order; one named as if written later (a
    later second, or a process counter that sorts after as text) must not survive a fresh run."""
    _fit(tmp_path / "first", True)
    (stale,) = (tmp_path / "first").glob("events.out.tfevents.*")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(stale, run / "events.out.tfevents.9999999999.host.1.9")
    torch.manual_seed(0)
    cfg = LoopConfig(epochs=2, batch_size=BATCH, lr=LR, tensorboard=True, precision="float32")
    Trainer(Pixelwise(), TwoTerms(), _samples(IMAGES, 1), cfg, run, torch.device("cpu")).fit()
    assert not (run / "events.out.tfevents.9999999999.host.1.9").exists()
    assert [e.step for e in _accumulator(run).Scalars("loss/total")] == [1, 2]


def test_scalar_tags_maps_history_columns():
    row = {"epoch": 4, "loss": 1.5, "unce": 1.0, "lr": 0.01, "time_s": 3.0, "val_miou": 0.4, "val_miou_new": None}
    assert scalar_tags(row) == {"loss/total": 1.5, "loss/unce": 1.0, "time/epoch_s": 3.0, "val/miou_all": 0.4}


def test_train_base_stage_logs_val_miou_old_new_all(tmp_path):
    """config train_base.tensorboard reaches the loop through --params, as precision does."""
    generate(tmp_path / "data", n_train=16, n_val=4, size=32, seed=3)
    main(["prepare-data", "--root", str(tmp_path / "data"), "--output", str(tmp_path / "dataset.json")])
    index = read_json(tmp_path / "dataset.json")
    steps = build_splits({i: index["index"][i] for i in index["splits"]["train"]}, "15-5", "overlap", dataset="tiny")
    write_json(tmp_path / "step0.json", steps[0])
    train = {
        "loss": "ce",
        "epochs": 1,
        "batch_size": 4,
        "lr": 0.01,
        "head_lr_mult": 1.0,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "crop_size": 32,
        "scale_range": [1.0, 1.0],
        "precision": "float32",
        "compile": False,
        "eval_every": 1,
        "eval_batch_size": 4,
        "tensorboard": True,
    }
    params = {"model": {"backbone": "test_resnet", "output_stride": 16, "pretrained": "none", "head_channels": 16}}
    params["train"] = train
    outdir = tmp_path / "run"
    main(
        ["train-base", "--split", str(tmp_path / "step0.json"), "--data", str(tmp_path / "dataset.json")]
        + ["--params", json.dumps(params), "--outdir", str(outdir), "--device", "cpu", "--threads", "1"]
    )
    acc = _accumulator(outdir)
    scalars = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/ce", "val/miou_all", "val/miou_old"} <= scalars
    assert "val/miou_new" not in scalars  # step 0 has no new classes
    history = (outdir / "history.csv").read_text().splitlines()
    header, values = history[0].split(","), history[1].split(",")
    assert "val_miou_old" in header
    logged = acc.Scalars("val/miou_old")[0].value
    assert logged == pytest.approx(float(values[header.index("val_miou_old")]), rel=1e-6)
    assert len(acc.Tags()["images"]) == 4
