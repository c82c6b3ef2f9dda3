"""The CL4WSIS Segmenter (pipeline.models.instance): DeepLabV3 + Panoptic-DeepLab instance branch on
timm's feature levels; freezing for Phase 2; saving and loading."""

import pytest
import torch
from helpers.cl4wsis import INSTANCE, MODEL, one_thread  # noqa: F401 (one_thread: an autouse fixture)

from pipeline.checkpoint import CheckpointError
from pipeline.models import build_segmenter, save_model
from pipeline.models.instance import (
    build_instance_segmenter,
    load_instance_model,
    low_level_indices,
    save_instance_model,
)


def test_outputs_at_input_resolution_and_levels_from_feature_info():
    torch.manual_seed(0)
    model = build_instance_segmenter(MODEL, [11], INSTANCE).eval()
    # resnet18 at output stride 8: levels act1 (2), layer1 (4), layer2 (8), layer3 (8), layer4 (8, the last)
    assert model.levels == [3, 1]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 48, 40))
    assert out["out"].shape == (2, 11, 48, 40)
    assert out["center"].shape == (2, 1, 48, 40) and out["offset"].shape == (2, 2, 48, 40)
    assert out["features"].shape == (2, 512, 6, 5)
    assert model.instance.project[0][0].in_channels == 256  # layer3's channels (feature_info)
    assert model.instance.project[1][0].in_channels == 64  # layer1's


def test_low_level_strides_at_output_stride_16_and_a_missing_stride():
    seg16 = build_segmenter(dict(MODEL, output_stride=16), [2])
    assert low_level_indices(seg16.backbone, [16, 8, 4]) == [3, 2, 1]  # the authors' res4, res3, res2
    seg8 = build_segmenter(MODEL, [2])
    with pytest.raises(ValueError, match="stride 16"):
        low_level_indices(seg8.backbone, [16])


def test_freeze_semantic_trains_the_instance_branch_alone():
    torch.manual_seed(0)
    model = build_instance_segmenter(MODEL, [3], INSTANCE)
    model.train()
    model.freeze_semantic(True)
    running = model.backbone.get_submodule("bn1").running_mean.clone()
    out = model(torch.randn(2, 3, 32, 32))
    (out["center"].sum() + out["offset"].sum()).backward()
    assert all(p.grad is None for p in model.segmenter.parameters())
    assert all(p.grad is not None for p in model.instance.parameters())
    assert not out["out"].requires_grad
    assert torch.equal(model.backbone.get_submodule("bn1").running_mean, running)  # eval mode: BN kept
    model.freeze_semantic(False)
    model.zero_grad()
    model.train()
    model(torch.randn(2, 3, 32, 32))["center"].sum().backward()
    assert model.backbone.get_submodule("conv1").weight.grad is not None  # step 0: the encoder learns from it


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_instance_segmenter(MODEL, [11], INSTANCE)
    model.classifier.add_step(5, init="prior")
    save_instance_model(tmp_path / "model.pt", model, {"model": MODEL, "task": "10-10", "step": 1})
    loaded, meta = load_instance_model(tmp_path / "model.pt")
    assert meta["classes_per_step"] == [11, 5] and meta["instance"] == INSTANCE
    model.eval(), loaded.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for key in ("out", "center", "offset"):
        assert torch.equal(a[key], b[key])


def test_a_semantic_model_is_not_an_instance_model(tmp_path):
    save_model(tmp_path / "semantic.pt", build_segmenter(MODEL, [11]), {"model": MODEL})
    with pytest.raises(CheckpointError, match="not an instance model"):
        load_instance_model(tmp_path / "semantic.pt")


def test_bad_instance_settings_are_named():
    with pytest.raises(ValueError, match="missing keys"):
        build_instance_segmenter(MODEL, [2], {k: v for k, v in INSTANCE.items() if k != "aspp_channels"})
    with pytest.raises(ValueError, match="low_level_project"):
        build_instance_segmenter(MODEL, [2], dict(INSTANCE, low_level_project=[16]))


def test_a_deep_copy_reads_its_own_lower_levels():
    import copy

    torch.manual_seed(0)
    model = build_instance_segmenter(MODEL, [3], INSTANCE).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.segmenter.backbone.get_submodule("layer1").parameters():
            p.add_(1.0)  # the copy's layer1 differs: its instance outputs must follow its own features
        x = torch.randn(1, 3, 32, 32)
        a, b = model(x), twin(x)
        again = model(x)
    assert torch.equal(a["center"], again["center"])
    assert not torch.equal(a["center"], b["center"])
