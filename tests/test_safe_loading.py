"""Checkpoints load with the safe unpickler only, damaged files are named, saved bytes are reproducible,
and train-step refuses a previous model of another protocol or class count."""

import hashlib
import json
import os
import pathlib
import zipfile

import numpy as np
import pytest
import torch

import pipeline.io
from pipeline.__main__ import main
from pipeline.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.data.splits import build_splits
from pipeline.data.synthetic import generate
from pipeline.foundation.attention import load_ssl
from pipeline.io import read_json, write_json
from pipeline.models import build_segmenter, load_model, save_model
from pipeline.models.segmenter import build_backbone
from pipeline.stages.train_step import check_previous
from pipeline.wsss.networks import build_cam_model, load_cam_model, save_cam_model

SMALL = {"backbone": "resnet18", "output_stride": 16, "pretrained": "none"}
CAM = {"backbone": "resnet18", "output_stride": 16, "pretrained": "none", "freeze_bn": True, "dropout": 0.5}
META = {"model": SMALL, "task": "15-5", "protocol": "overlap", "step": 0, "train": {"lr": 0.01, "scale": [0.5, 2.0]}}


class Payload:
    """Pickles as ``pathlib.Path.touch(marker)``: loading it with the full unpickler runs that call."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PAYLOAD_RAN"


def test_the_payload_runs_code_under_the_full_unpickler(tmp_path, marker):
    """The attack of the tests below is live: ``weights_only=False`` (the old loaders) runs it."""
    torch.save({"state_dict": {}, "meta": Payload(marker)}, tmp_path / "model.pt")
    torch.load(tmp_path / "model.pt", weights_only=False)
    assert marker.exists()


def _refused(error: pytest.ExceptionInfo, path: pathlib.Path) -> None:
    message = str(error.value)
    assert isinstance(error.value, UnsafeCheckpointError) and isinstance(error.value, ValueError)
    assert str(path) in message and "global '" in message and "may run code" in message


def test_a_model_file_that_would_run_code_is_refused(tmp_path, marker):
    torch.save({"state_dict": {}, "meta": Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "model.pt")
    _refused(error, tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as error:
        load_cam_model(tmp_path / "model.pt")
    _refused(error, tmp_path / "model.pt")
    assert not marker.exists()


def test_a_pretrained_backbone_that_would_run_code_is_refused(tmp_path, marker):
    state = dict(build_backbone("resnet18").state_dict())
    state["payload"] = Payload(marker)
    torch.save(state, tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError) as error:
        build_segmenter(dict(SMALL, pretrained=str(tmp_path / "resnet18.pth")), [2])
    _refused(error, tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError) as error:
        build_cam_model("cam", dict(CAM, pretrained=str(tmp_path / "resnet18.pth")), 2)
    _refused(error, tmp_path / "resnet18.pth")
    assert not marker.exists()


def test_an_ssl_checkpoint_that_would_run_code_is_refused(tmp_path, marker):
    torch.save({"teacher": {"cls_token": torch.zeros(1, 1, 192)}, "args": Payload(marker)}, tmp_path / "ibot.pth")
    with pytest.raises(CheckpointError) as error:
        load_ssl("vit_tiny_patch16_224", "ibot", tmp_path / "ibot.pth")
    _refused(error, tmp_path / "ibot.pth")
    assert "checkpoint_teacher.pth" in str(error.value)  # the hint for iBOT's full checkpoints stays
    assert not marker.exists()


def _saved_model(tmp_path) -> pathlib.Path:
    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", build_segmenter(SMALL, [16]), META)
    return tmp_path / "model.pt"


def test_truncated_and_empty_files_are_named(tmp_path):
    data = _saved_model(tmp_path).read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for loader in (load_model, load_cam_model):
        with pytest.raises(CheckpointError, match=r"half\.pt: .* is truncated or corrupt \(\d+ bytes; torch: .*rerun"):
            loader(tmp_path / "half.pt")
        with pytest.raises(CheckpointError, match=r"empty\.pt: .* is empty \(0 bytes"):
            loader(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"empty\.pt: model\.pretrained checkpoint is empty"):
        build_segmenter(dict(SMALL, pretrained=str(tmp_path / "empty.pt")), [2])
    with pytest.raises(CheckpointError, match=r"half\.pt: model\.pretrained checkpoint is truncated"):
        build_segmenter(dict(SMALL, pretrained=str(tmp_path / "half.pt")), [2])
    with pytest.raises(CheckpointError, match=r"empty\.pt: coseg\.ssl\.checkpoint is empty"):
        load_ssl("vit_tiny_patch16_224", "dino", tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"half\.pt: coseg\.ssl\.checkpoint is truncated"):
        load_ssl("vit_tiny_patch16_224", "dino", tmp_path / "half.pt")


def test_missing_and_foreign_files_are_named(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=r"nothing\.pt: model file not found") as error:
        load_model(tmp_path / "nothing.pt")
    assert isinstance(error.value, FileNotFoundError)  # callers catching the old error still do
    (tmp_path / "notes.pt").write_text("not a model")
    with pytest.raises(CheckpointError, match=r"notes\.pt: CAM model file is not a torch checkpoint"):
        load_cam_model(tmp_path / "notes.pt")
    save_checkpoint({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a wilss-pipeline model"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a CAM network"):
        load_cam_model(tmp_path / "other.pt")


def test_equal_models_give_equal_bytes_whatever_the_temporary_name(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_segmenter(SMALL, [16])
    save_model(tmp_path / "a" / "model.pt", model, META)
    save_model(tmp_path / "one.pt", model, META)
    monkeypatch.setattr(pipeline.io.os, "getpid", lambda: 424242)  # another job's temporary name
    save_model(tmp_path / "b" / "model.pt", model, META)
    save_model(tmp_path / "two.pt", model, dict(META))
    monkeypatch.undo()
    digests = {sha256(tmp_path / name) for name in ("a/model.pt", "b/model.pt", "one.pt", "two.pt")}
    assert len(digests) == 1
    assert all(name.startswith("archive/") for name in zipfile.ZipFile(tmp_path / "one.pt").namelist())
    assert not list(tmp_path.rglob("*.tmp-*"))

    net = build_cam_model("cam", CAM, 3)
    save_cam_model(tmp_path / "cam1.pt", net, {"cam_cfg": CAM, "task": "15-5"})
    save_cam_model(tmp_path / "cam2.pt", net, {"cam_cfg": CAM, "task": "15-5"})
    assert sha256(tmp_path / "cam1.pt") == sha256(tmp_path / "cam2.pt")

    obj = {"x": torch.arange(6.0).reshape(2, 3), "meta": {"a": [1, 2.5, None, "s"], "b": (True, {"c": 3})}}
    save_checkpoint(obj, tmp_path / "first.pt")
    save_checkpoint(obj, tmp_path / "second.ckpt")
    assert sha256(tmp_path / "first.pt") == sha256(tmp_path / "second.ckpt")


def test_round_trip_keeps_weights_and_meta(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter(SMALL, [16])
    model.classifier.add_step(5)
    save_model(tmp_path / "model.pt", model, META)
    loaded, meta = load_model(tmp_path / "model.pt")
    assert meta == {**META, "classes_per_step": [16, 5]}
    original, restored = model.state_dict(), loaded.state_dict()
    assert list(original) == list(restored)
    assert all(torch.equal(original[key], restored[key]) for key in original)


def test_saving_converts_to_plain_types_or_refuses_before_writing(tmp_path):
    obj = {
        "numpy": np.arange(3, dtype=np.int64),
        "scalar": np.float32(0.5),
        "path": pathlib.Path("a/b"),
        "labels": {"b", "a"},
        "rng": np.random.RandomState(0).get_state(),
    }
    save_checkpoint(obj, tmp_path / "plain.pt")
    loaded = load_checkpoint(tmp_path / "plain.pt")
    assert torch.equal(loaded["numpy"], torch.arange(3)) and loaded["scalar"] == 0.5 and type(loaded["scalar"]) is float
    assert loaded["path"] == os.path.join("a", "b") and loaded["labels"] == ["a", "b"]
    np.random.RandomState().set_state(loaded["rng"])  # numpy accepts the stored generator state
    with pytest.raises(TypeError, match=r"checkpoint\['meta'\]\['bad'\]: builtins.object"):
        save_checkpoint({"meta": {"bad": object()}}, tmp_path / "bad.pt")
    assert not list(tmp_path.glob("bad*"))


def test_wrapped_local_backbone_checkpoint_is_loaded(tmp_path):
    torch.manual_seed(1)
    reference = build_backbone("resnet18")
    state = {f"module.{key}": value for key, value in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    model = build_segmenter(dict(SMALL, pretrained=str(tmp_path / "wrapped.pth")), [2])
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    assert "state_dict" not in model.backbone.pretrained_cfg  # timm keeps no second copy of the tensors


# --- train-step: the previous model must fit the split ------------------------------------------------


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    root = tmp_path_factory.mktemp("previous")
    generate(root / "data", n_train=40, n_val=2, size=48, seed=7)
    main(["prepare-data", "--root", str(root / "data"), "--output", str(root / "dataset.json")])
    index = read_json(root / "dataset.json")
    train = {i: index["index"][i] for i in index["splits"]["train"]}
    for protocol in ("overlap", "disjoint"):
        write_json(root / f"{protocol}-step1.json", build_splits(train, "15-5", protocol)[1])
    return root


def _train_step(root, previous, split):
    params = {"train": {}, "method": {"loss": "ce", "head_lr_mult": 1.0}}
    main(
        [
            "train-step",
            "--method",
            "ft",
            "--previous",
            str(previous),
            "--split",
            str(root / split),
            "--data",
            str(root / "dataset.json"),
            "--params",
            json.dumps(params),
            "--outdir",
            str(root / "run"),
        ]
    )


def test_train_step_refuses_a_previous_model_of_another_protocol(steps, tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "overlap.pt", build_segmenter(SMALL, [16]), META)
    with pytest.raises(ValueError, match=r"overlap\.pt is a model of the overlap protocol; .*15-5 disjoint"):
        _train_step(steps, tmp_path / "overlap.pt", "disjoint-step1.json")
    assert not (steps / "run" / "model.pt").exists()


def test_train_step_refuses_a_previous_model_of_another_class_count(steps, tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "eleven.pt", build_segmenter(SMALL, [11]), META)
    with pytest.raises(ValueError, match=r"eleven\.pt has 11 output classes .* from the 16 classes seen before"):
        _train_step(steps, tmp_path / "eleven.pt", "overlap-step1.json")


def test_a_fitting_previous_model_passes_the_check(steps):
    split = read_json(steps / "overlap-step1.json")
    check_previous("model.pt", {**META, "classes_per_step": [16]}, split)
    with pytest.raises(ValueError, match="starts from step 0"):
        check_previous("model.pt", {**META, "step": 1, "classes_per_step": [16]}, split)
