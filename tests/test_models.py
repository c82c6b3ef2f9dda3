"""DeepLabV3 segmenter, incremental classifier and model files."""

import math

import pytest
import torch

from pipeline.models import IncrementalClassifier, build_segmenter, load_model, save_model

SMALL = {"backbone": "resnet18", "output_stride": 16, "pretrained": "none"}


def test_segmenter_shapes_and_strides():
    torch.manual_seed(0)
    model = build_segmenter(SMALL, [16]).eval()
    out = model(torch.randn(2, 3, 64, 80))
    assert out["out"].shape == (2, 16, 64, 80)
    assert out["features"].shape == (2, 512, 4, 5)  # output stride 16
    assert out["head"].shape == (2, 256, 4, 5)
    model8 = build_segmenter(dict(SMALL, output_stride=8), [3]).eval()
    assert model8(torch.randn(1, 3, 64, 64))["features"].shape[-2:] == (8, 8)


def test_add_step_keeps_old_logits_and_splits_background():
    torch.manual_seed(0)
    classifier = IncrementalClassifier(8, [4])
    features = torch.randn(2, 8, 3, 3)
    before = classifier(features)
    classifier.add_step(3, init="background")
    after = classifier(features)
    assert after.shape[1] == 7
    # object classes unchanged
    torch.testing.assert_close(after[:, 1:4], before[:, 1:4])
    # background and the new classes share the old background logit minus log(n_new + 1) (MiB init)
    expected = before[:, :1] - math.log(4)
    torch.testing.assert_close(after[:, :1], expected)
    for c in range(4, 7):
        torch.testing.assert_close(after[:, c : c + 1], expected)
    # so the softmax mass of the old background is split evenly over background + 3 new classes
    p_before = before.softmax(1)[:, 0]
    p_after = after.softmax(1)
    torch.testing.assert_close(p_after[:, 0] * 4, p_before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p_after[:, 1:4], before.softmax(1)[:, 1:4], rtol=1e-5, atol=1e-6)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter(SMALL, [16]).eval()
    model.classifier.add_step(5)
    save_model(tmp_path / "model.pt", model, {"model": SMALL, "task": "15-5", "step": 1})
    loaded, meta = load_model(tmp_path / "model.pt")
    assert meta["classes_per_step"] == [16, 5] and meta["task"] == "15-5"
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(loaded.eval()(x)["out"], model(x)["out"])
    assert not list(tmp_path.glob("*.tmp-*"))


def test_bad_model_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="output_stride=12"):
        build_segmenter(dict(SMALL, output_stride=12), [2])
    with pytest.raises(ValueError, match="not_a_net"):
        build_segmenter(dict(SMALL, backbone="not_a_net"), [2])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_segmenter(dict(SMALL, pretrained=str(tmp_path / "missing.pth")), [2])
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(Exception, match="junk.pt"):
        load_model(tmp_path / "junk.pt")


def test_local_backbone_checkpoint_is_loaded(tmp_path):
    import timm

    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = build_segmenter(dict(SMALL, pretrained=str(tmp_path / "resnet18.pth")), [2])
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)


def test_add_step_prior_init_keeps_every_old_output():
    torch.manual_seed(0)
    classifier = IncrementalClassifier(8, [4])
    features = torch.randn(2, 8, 3, 3)
    before = classifier(features)
    classifier.add_step(2, init="prior", prior=0.01)
    after = classifier(features)
    torch.testing.assert_close(after[:, :4], before)
    torch.testing.assert_close(after[:, 4:].sigmoid(), torch.full((2, 2, 3, 3), 0.01))
    with pytest.raises(ValueError, match="'uniform'"):
        classifier.add_step(1, init="uniform")


def test_head_width_is_a_setting_and_survives_save_load(tmp_path):
    narrow = dict(SMALL, head_channels=32)
    torch.manual_seed(0)
    model = build_segmenter(narrow, [4]).eval()
    assert model(torch.randn(1, 3, 64, 64))["head"].shape == (1, 32, 4, 4)
    # ASPP: 1x1 (512*32) + three 3x3 (512*32*9) + pooling 1x1 (512*32) convs; projection 5*32*32; 3x3 32*32*9
    aspp_and_head = sum(p.numel() for n, p in model.head.named_parameters() if p.dim() == 4)
    assert aspp_and_head == 512 * 32 * (1 + 27 + 1) + 5 * 32 * 32 + 32 * 32 * 9
    save_model(tmp_path / "model.pt", model, {"model": narrow})
    loaded, _ = load_model(tmp_path / "model.pt")
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(loaded.eval()(x)["out"], model(x)["out"])
