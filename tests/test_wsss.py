"""Offline WSSS baselines: CAM networks, pseudo-label rules, the cache contract, and a tiny
train-cam + pseudo-labels run of every baseline on generated data."""

import json

import h5py
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.__main__ import main
from pipeline.cache import CacheError, CacheWriter, open_cache
from pipeline.io import read_json
from pipeline.stages.train_cam import channel_labels
from pipeline.train.loop import seed_everything
from pipeline.wsss import expected_provenance, read_pseudo_label
from pipeline.wsss.networks import build_cam_model, load_cam_model, parameter_drift, save_cam_model
from pipeline.wsss.pseudo_labels import (
    condition_on_labels,
    multiscale_cams,
    normalise_cams,
    pseudo_label,
)

NET = {
    "backbone": "resnet18",
    "output_stride": 16,
    "pretrained": "none",
    "freeze_bn": True,
    "dropout": 0.5,
    "num_words": 8,
    "pyramid_levels": [1, 2, 4],
    "gamma": 2.0,
    "detach_word_features": True,
    "word_frequency_reduction": "sum",
    "detach_after_stage": 2,
    "cams_from": "image",
}


# --- networks -----------------------------------------------------------------------------------


def test_cam_is_classifier_weights_times_features():
    torch.manual_seed(0)
    net = build_cam_model("cam", NET, 3).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features, cams, logits = net.features(image), net.cams(image), net(image)["logits"]
    weight = net.classifier.weight.flatten(1)  # (K, d)
    assert cams.shape == (2, 3, 4, 4)
    assert torch.allclose(cams, torch.einsum("kd,bdhw->bkhw", weight, features).clamp_min(0), atol=1e-5)
    # GAP then the same weights (no bias): the image logit is the mean of the un-rectified CAM
    assert torch.allclose(logits, torch.einsum("kd,bdhw->bkhw", weight, features).mean((2, 3)), atol=1e-5)
    assert not net.has_background and net.classifier.bias is None


def test_iscam_cams_are_probabilities_with_background_first():
    torch.manual_seed(0)
    net = build_cam_model("iscam", NET, 3).eval()
    with torch.no_grad():
        cams = net.cams(torch.randn(1, 3, 64, 64))
    assert net.has_background and cams.shape == (1, 4, 4, 4)
    assert torch.allclose(cams.sum(1), torch.ones(1, 4, 4), atol=1e-6)


def test_frozen_batchnorm_only_for_pretrained_backbones():
    net = build_cam_model("cam", NET, 2)  # random init: nothing to keep frozen
    assert not net.freeze_bn and all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="wsss.vwe: missing key"):
        build_cam_model("vwe", {k: v for k, v in NET.items() if k != "gamma"}, 2)


def test_save_and_load_rebuild_the_same_network(tmp_path):
    torch.manual_seed(0)
    net = build_cam_model("vwe", NET, 2).eval()
    save_cam_model(tmp_path / "model.pt", net, {"cam_cfg": NET, "task": "15-5"})
    loaded, meta = load_cam_model(tmp_path / "model.pt")
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.cams(image), loaded.cams(image))
    assert (meta["cam"], meta["num_classes"], meta["task"]) == ("vwe", 2, "15-5")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        load_cam_model(tmp_path / "bad.pt")


def test_parameter_drift_by_hand():
    initial = {"codebook": torch.tensor([[3.0, 4.0]]), "w": torch.tensor([1.0, 0.0])}
    final = {"codebook": torch.tensor([[3.0, 0.0]]), "w": torch.tensor([1.0, 0.0])}
    drift = parameter_drift(initial, final)
    # ‖(3, 4)‖ = 5, ‖(3, 0)‖ = 3, ‖(0, -4)‖ / 5 = 0.8; w unchanged
    assert drift == {
        "codebook": {"norm_initial": 5.0, "norm_final": 3.0, "relative_change": 0.8},
        "w": {"norm_initial": 1.0, "norm_final": 1.0, "relative_change": 0.0},
    }
    assert build_cam_model("vwe", NET, 2).tracked_parameters().keys() == {"codebook"}
    assert build_cam_model("cam", NET, 2).tracked_parameters() == {}
    with pytest.raises(ValueError, match="names differ"):
        parameter_drift(initial, {"codebook": final["codebook"]})
    with pytest.raises(ValueError, match=r"w has shape \(2,\) → \(1, 2\)"):
        parameter_drift(initial, {**final, "w": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="all zeros"):
        parameter_drift({"w": torch.zeros(2)}, {"w": torch.ones(2)})


def test_multiscale_cams_average_scales_and_flips():
    torch.manual_seed(0)
    net = build_cam_model("cam", NET, 2).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = net.cams(image)[0]
        assert torch.allclose(multiscale_cams(net, image, [1.0], flip=False), plain)
        flipped = net.cams(image.flip(-1))[0].flip(-1)
        assert torch.allclose(multiscale_cams(net, image, [1.0], flip=True), (plain + flipped) / 2, atol=1e-6)
        double = F.interpolate(
            net.cams(F.interpolate(image, size=(128, 128), mode="bilinear", align_corners=False)),
            size=(4, 4),
            mode="bilinear",
            align_corners=False,
        )[0]
        assert torch.allclose(multiscale_cams(net, image, [1.0, 2.0]), (plain + double) / 2, atol=1e-5)


# --- pseudo-label rules -------------------------------------------------------------------------


def test_pseudo_label_threshold_restricted_to_labelled_classes():
    cams = torch.tensor(
        [
            [[0.9, 0.1], [0.3, 0.05]],  # class 16, labelled
            [[1.0, 1.0], [1.0, 1.0]],  # class 17, not labelled: must never appear
            [[0.5, 0.6], [0.1, 0.2]],  # class 18, labelled
        ]
    )
    labelled = torch.tensor([True, False, True])
    label = pseudo_label(cams, labelled, [16, 17, 18], (2, 2), threshold=0.25)
    assert label.dtype == np.uint8
    assert label.tolist() == [[16, 18], [16, 0]]
    # the same scores with a background map instead of a constant
    background = torch.tensor([[0.95, 0.0], [0.0, 0.0]])
    assert pseudo_label(cams, labelled, [16, 17, 18], (2, 2), background=background).tolist() == [[0, 18], [16, 18]]
    with pytest.raises(ValueError, match="exactly one"):
        pseudo_label(cams, labelled, [16, 17, 18], (2, 2))


def test_normalise_cams_by_the_maximum_of_labelled_classes():
    cams = torch.tensor([[[2.0, 1.0]], [[4.0, 0.0]]])
    normalised = normalise_cams(cams, torch.tensor([True, False]), eps=0.0)
    assert normalised.tolist() == [[[1.0, 0.5]], [[0.0, 0.0]]]


def test_condition_on_labels_renormalises_background_and_labelled():
    probs = torch.tensor([[[0.2]], [[0.5]], [[0.3]]])  # background, class a, class b
    conditioned = condition_on_labels(probs, torch.tensor([False, True]))
    assert torch.allclose(conditioned.flatten(), torch.tensor([0.4, 0.0, 0.6]))


def test_channel_labels_follow_new_classes():
    split = {"step": 1, "new_classes": [16, 17, 18], "ids": ["a", "b"], "labels": {"a": [18, 16], "b": [3, 17]}}
    assert channel_labels(split) == {"a": [0, 2], "b": [1]}  # old class 3 (relaxed labels) dropped
    with pytest.raises(ValueError, match="'c'"):
        channel_labels(dict(split, ids=["a", "c"]))


# --- cache contract -----------------------------------------------------------------------------

SPLIT = {"task": "15-5", "protocol": "overlap", "step": 1, "new_classes": [16, 17, 18, 19, 20]}
CFG = {"threshold": 0.2, "scales": [1.0, 0.5], "flip": True}


def test_cache_round_trip_and_provenance_mismatch(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights v1")
    expected = expected_provenance("cam", model, SPLIT, CFG)
    label = np.array([[0, 16], [20, 0]], dtype=np.uint8)
    with CacheWriter(tmp_path / "cam.h5", expected) as writer:
        writer.put("img1", {"label": label, "cams": np.zeros((5, 1, 1), np.float32)})
        writer.finish()
    with open_cache(tmp_path / "cam.h5", expected_provenance("cam", model, SPLIT, CFG)) as reader:
        assert np.array_equal(read_pseudo_label(reader, "img1"), label)
        assert reader.get("img1")["cams"].dtype == np.float16
        with pytest.raises(CacheError, match="img2"):
            read_pseudo_label(reader, "img2")
    with pytest.raises(CacheError, match="threshold"):
        open_cache(tmp_path / "cam.h5", expected_provenance("cam", model, SPLIT, dict(CFG, threshold=0.3)))
    model.write_bytes(b"weights v2")  # retrained network: the cache is stale
    with pytest.raises(CacheError, match="model_sha256"):
        open_cache(tmp_path / "cam.h5", expected_provenance("cam", model, SPLIT, CFG))
    iscam = expected_provenance("iscam", model, SPLIT, {"scales": [1.0], "flip": False})
    assert (iscam["background"], iscam["threshold"]) == ("channel", None)


# --- end to end ---------------------------------------------------------------------------------

TRAIN = {
    "epochs": 1,
    "batch_size": 4,
    "lr": 0.01,
    "head_lr_mult": 10.0,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "poly_power": 0.9,
    "crop_size": 64,
    "scale_range": [0.75, 1.25],
    "precision": "auto",
    "compile": False,
}
CAMS = {
    "cam": dict(NET, threshold=0.2, scales=[1.0, 0.5], flip=True),
    "vwe": dict(NET, dropout=0.0, threshold=0.14, scales=[1.0, 0.5], flip=True),
    "iscam": dict(
        NET,
        lambda_is=1.0,
        num_samples=1,
        fs_weight=1.0,
        sigma_init=5.0,
        mu_init=2.5,
        learn_sigma_mu=False,
        fs_normalisation="pixels",
        scales=[1.0, 0.5],
        flip=True,
    ),
}


@pytest.fixture(scope="module")
def step1(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsss")
    main(
        [
            "make-demo-data",
            "--root",
            str(root / "data"),
            "--n-train",
            "40",
            "--n-val",
            "4",
            "--size",
            "64",
            "--seed",
            "7",
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
    return root, root / "splits/step1.json"


def csv_rows(path):
    """Data rows of a CSV file."""
    return path.read_text().strip().splitlines()[1:]


def _pseudo_labels(root, split_path, cam, out):
    main(
        [
            "pseudo-labels",
            "--cam",
            cam,
            "--model",
            str(root / cam / "model.pt"),
            "--split",
            str(split_path),
            "--data",
            str(root / "dataset.json"),
            "--params",
            json.dumps({"cam": CAMS[cam]}),
            "--out",
            str(out / f"{cam}.h5"),
            "--quality",
            str(out / f"{cam}_quality.json"),
            "--figure",
            str(out / f"{cam}_examples.png"),
            "--figure-images",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
    )


@pytest.mark.parametrize("cam", ["cam", "vwe", "iscam"])
def test_train_cam_then_pseudo_labels(step1, cam):
    root, split_path = step1
    split = read_json(split_path)
    # the rule passes the whole train_cam section (one subsection per baseline)
    train = {name: dict(TRAIN, epochs=1 if name == cam else 99) for name in CAMS}
    main(
        [
            "train-cam",
            "--cam",
            cam,
            "--split",
            str(split_path),
            "--data",
            str(root / "dataset.json"),
            "--params",
            json.dumps({"train": train, "cam": CAMS[cam]}),
            "--outdir",
            str(root / cam),
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
    )
    assert len(csv_rows(root / cam / "history.csv")) == 1  # the baseline's own subsection: 1 epoch
    assert (root / cam / "history.csv").is_file() and not (root / cam / "checkpoint.pt").exists()
    _net, meta = load_cam_model(root / cam / "model.pt")
    assert (meta["cam"], meta["step"], meta["new_classes"], meta["num_classes"]) == (cam, 1, [16, 17, 18, 19, 20], 5)
    if cam == "iscam":
        assert set(meta["learned"]) == {"sigma", "mu"}
    if cam == "vwe":
        # independent expectation: the codebook of a network built as the stage builds it (seeded)
        # against the trained one, norms computed here
        seed_everything(meta["seed"])
        initial = build_cam_model(cam, CAMS[cam], 5).codebook.detach().double()
        trained = _net.codebook.detach().double()
        drift = meta["parameter_drift"]["codebook"]
        assert drift["norm_initial"] == pytest.approx(initial.norm().item(), rel=1e-9)
        assert drift["norm_final"] == pytest.approx(trained.norm().item(), rel=1e-9)
        assert drift["relative_change"] == pytest.approx(((trained - initial).norm() / initial.norm()).item(), rel=1e-9)
        assert drift["relative_change"] > 0  # the summed Eq. 4 lets the codebook learn
    else:
        assert meta["parameter_drift"] == {}

    out = root / "pseudo"
    _pseudo_labels(root, split_path, cam, out)
    expected = expected_provenance(cam, root / cam / "model.pt", split, CAMS[cam])
    with open_cache(out / f"{cam}.h5", expected) as reader:
        assert sorted(reader.ids()) == sorted(split["ids"])
        for image_id in split["ids"]:
            label = read_pseudo_label(reader, image_id)
            assert label.shape == (64, 64)
            assert set(np.unique(label).tolist()) <= {0, *split["labels"][image_id]}
            stored = reader.get(image_id)
            assert stored["cams"].shape == (5, 4, 4) and stored["cams"].dtype == np.float16
            assert ("background" in stored) == (cam == "iscam")
            assert list(reader.attrs(image_id)["classes"]) == sorted(split["labels"][image_id])
    quality = read_json(out / f"{cam}_quality.json")
    assert quality["contour_tolerance"] == 0.008
    assert (quality["learned"], quality["parameter_drift"]) == (meta["learned"], meta["parameter_drift"])
    assert quality["n_images"] == len(split["ids"]) and 0.0 <= quality["miou"] <= 1.0
    assert 0.0 <= quality["contour_f"] <= 1.0
    assert list(quality["per_class_iou"]) == ["background", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert (out / f"{cam}_examples.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(root.rglob("*.tmp-*")) and not list(out.glob("*.partial.h5"))


def test_pseudo_labels_resume_after_a_kill(step1):
    root, split_path = step1
    split = read_json(split_path)
    if not (root / "cam" / "model.pt").exists():
        main(
            [
                "train-cam",
                "--cam",
                "cam",
                "--split",
                str(split_path),
                "--data",
                str(root / "dataset.json"),
                "--params",
                json.dumps({"train": TRAIN, "cam": CAMS["cam"]}),
                "--outdir",
                str(root / "cam"),
                "--device",
                "cpu",
            ]
        )
    out = root / "resume"
    expected = expected_provenance("cam", root / "cam" / "model.pt", split, CAMS["cam"])
    # a killed run left one image in the partial file; a marker label shows whether it is recomputed:
    # a class the image is not labelled with, which a recomputed label can never hold
    first = split["ids"][0]
    other = next(c for c in split["new_classes"] if c not in split["labels"][first])
    marker = np.full((64, 64), other, dtype=np.uint8)
    with CacheWriter(out / "cam.h5", expected) as writer:
        writer.put(first, {"label": marker, "cams": np.zeros((5, 4, 4), np.float32)})
    assert (out / "cam.partial.h5").exists() and not (out / "cam.h5").exists()
    _pseudo_labels(root, split_path, "cam", out)
    with open_cache(out / "cam.h5", expected) as reader:
        assert np.array_equal(read_pseudo_label(reader, first), marker)  # kept, not recomputed
        assert len(reader) == len(split["ids"])
    with h5py.File(out / "cam.h5", "r") as handle:
        assert json.loads(handle.attrs["provenance"])["scales"] == [1.0, 0.5]
