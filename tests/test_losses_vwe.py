"""VWE (Ru et al. IJCAI 2021) Eq. 1-12, against values computed by hand."""

import math

import pytest
import torch
from torch.nn import functional as F

from pipeline.wsss.networks import build_cam_model
from pipeline.wsss.vwe import (
    class_activation_maps,
    fuse_cams,
    global_average_pool,
    hspp,
    multilabel_soft_margin_loss,
    pyramid_max_pool,
    vwe_loss,
    word_activation_maps,
    word_frequency,
    word_labels,
    word_probabilities,
    word_similarity,
)

# 1 image, d = 2, 1x2 pixels: pixel 0 = (3, 4), pixel 1 = (1, 0)
FEATURES = torch.tensor([[[[3.0, 1.0]], [[4.0, 0.0]]]])
# k = 3 words: (1, 0), (0, 2), (-1, -1)
CODEBOOK = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
# cosines by hand: pixel 0: 3/5, 8/10, -7/(5√2); pixel 1: 1, 0, -1/√2
COSINES = [[0.6, 0.8, -7.0 / (5.0 * math.sqrt(2.0))], [1.0, 0.0, -1.0 / math.sqrt(2.0)]]


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_word_similarity_is_the_cosine_eq1():
    similarity = word_similarity(FEATURES, CODEBOOK)
    assert similarity.shape == (1, 3, 1, 2)
    for pixel in range(2):
        for word in range(3):
            assert math.isclose(float(similarity[0, word, 0, pixel]), COSINES[pixel][word], abs_tol=1e-6)


def test_word_probabilities_labels_and_frequency_eq2_to_4():
    probabilities = word_probabilities(word_similarity(FEATURES, CODEBOOK))
    expected = [_softmax(COSINES[0]), _softmax(COSINES[1])]
    for pixel in range(2):
        for word in range(3):
            assert math.isclose(float(probabilities[0, word, 0, pixel]), expected[pixel][word], abs_tol=1e-6)
    # Eq. 3: pixel 0 -> word 1 (0.8), pixel 1 -> word 0 (1.0); word 2 wins nowhere
    assert word_labels(probabilities).tolist() == [[1.0, 1.0, 0.0]]
    # Eq. 4 as printed: mean over the 2 pixels
    frequency = word_frequency(probabilities, "mean")
    for word in range(3):
        assert math.isclose(float(frequency[0, word]), (expected[0][word] + expected[1][word]) / 2, abs_tol=1e-6)
    assert math.isclose(float(frequency.sum()), 1.0, abs_tol=1e-6)


def test_word_frequency_sums_over_the_pixels_by_default_as_the_authors_code():
    probabilities = word_probabilities(word_similarity(FEATURES, CODEBOOK))
    expected = [_softmax(COSINES[0]), _softmax(COSINES[1])]
    summed = word_frequency(probabilities)  # the default: rulixiang/vwe torch.sum(x_corr, [2, 3])
    assert torch.equal(summed, word_frequency(probabilities, "sum"))
    for word in range(3):
        assert math.isclose(float(summed[0, word]), expected[0][word] + expected[1][word], abs_tol=1e-6)
    # sum of P over 2 pixels, each summing to 1 over the words
    assert math.isclose(float(summed.sum()), 2.0, abs_tol=1e-6)
    # by hand, word 0: e^0.6 / (e^0.6 + e^0.8 + e^(-7/(5√2))) + e^1 / (e^1 + e^0 + e^(-1/√2))
    word0 = math.exp(0.6) / (math.exp(0.6) + math.exp(0.8) + math.exp(-7 / (5 * math.sqrt(2)))) + math.e / (
        math.e + 1 + math.exp(-1 / math.sqrt(2))
    )
    assert math.isclose(float(summed[0, 0]), word0, rel_tol=1e-6)
    # the two reductions differ by the number of pixels hw, on a bigger map too
    torch.manual_seed(0)
    maps = torch.randn(2, 5, 3, 4).softmax(dim=1)
    torch.testing.assert_close(word_frequency(maps, "sum"), 12 * word_frequency(maps, "mean"))
    torch.testing.assert_close(word_frequency(maps, "sum"), maps.flatten(2).sum(-1))
    with pytest.raises(ValueError, match="reduction"):
        word_frequency(maps, "max")


def test_word_labels_carry_no_gradient():
    probabilities = word_probabilities(word_similarity(FEATURES, CODEBOOK.clone().requires_grad_()))
    assert not word_labels(probabilities).requires_grad


GRID = torch.arange(16.0).view(1, 1, 4, 4)  # rows 0-3, 4-7, 8-11, 12-15


def test_pyramid_max_pool_eq5_by_hand():
    assert float(pyramid_max_pool(GRID, 1)) == 15.0
    # 2x2 divisions: maxima 5, 7, 13, 15
    assert float(pyramid_max_pool(GRID, 2)) == (5 + 7 + 13 + 15) / 4
    # 4x4 divisions: every pixel is its own maximum
    assert float(pyramid_max_pool(GRID, 4)) == 7.5
    # 3x3 map split in 2: adaptive bins rows/cols {0,1} and {1,2} -> maxima 4, 5, 7, 8
    assert float(pyramid_max_pool(torch.arange(9.0).view(1, 1, 3, 3), 2)) == 6.0
    with pytest.raises(ValueError, match="smaller"):
        pyramid_max_pool(GRID, 5)


def test_hspp_eq6_eq7_by_hand():
    assert float(global_average_pool(GRID)) == 7.5
    # (f1 + f2 + f4 + γ f_gap) / (γ + 3) = (15 + 10 + 7.5 + 2 * 7.5) / 5
    assert math.isclose(float(hspp(GRID, (1, 2, 4), 2.0)), 47.5 / 5)
    assert math.isclose(float(hspp(GRID, (1, 2, 4), 0.0)), 32.5 / 3, rel_tol=1e-6)
    # one vector per channel
    two = torch.cat([GRID, -GRID], dim=1)
    assert hspp(two).shape == (1, 2)
    assert math.isclose(float(hspp(two)[0, 1]), (0 + (-0 - 2 - 8 - 10) / 4 + (-7.5) + 2 * -7.5) / 5)


def test_multilabel_soft_margin_loss_eq8_by_hand():
    # -(1/2)[log σ(0) + log(1 - σ(ln 3))] = (ln 2 + ln 4) / 2
    loss = multilabel_soft_margin_loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0, 0.0]]))
    assert math.isclose(float(loss), 1.5 * math.log(2.0), rel_tol=1e-6)
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 7), (torch.rand(4, 7) > 0.5).float()
    assert torch.allclose(multilabel_soft_margin_loss(logits, targets), F.multilabel_soft_margin_loss(logits, targets))
    with pytest.raises(ValueError, match="equal"):
        multilabel_soft_margin_loss(logits, targets[:, :3])


def test_vwe_loss_eq9_sums_three_terms():
    image_logits, labels = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0, 0.0]])
    word_logits, word_targets = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 1.0, 0.0]])
    w2i = torch.tensor([[1.0, 1.0]])
    terms = vwe_loss(image_logits, labels, word_logits, word_targets, w2i)
    assert set(terms) == {"cls_img", "cls_word", "cls_w2i"}
    assert math.isclose(float(terms["cls_img"]), 1.5 * math.log(2.0), rel_tol=1e-6)
    # words: -(1/3)[log σ(2) + log σ(-1) + log(1 - σ(0.5))]
    sig = lambda x: 1 / (1 + math.exp(-x))
    expected_words = -(math.log(sig(2.0)) + math.log(sig(-1.0)) + math.log(1 - sig(0.5))) / 3
    assert math.isclose(float(terms["cls_word"]), expected_words, rel_tol=1e-6)
    # w2i: -(1/2)[log σ(1) + log(1 - σ(1))]
    assert math.isclose(float(terms["cls_w2i"]), -(math.log(sig(1.0)) + math.log(1 - sig(1.0))) / 2, rel_tol=1e-6)


def test_two_branch_cams_eq10_to_12_by_hand():
    features = torch.tensor([[[[1.0, -1.0]], [[2.0, 0.0]]]])  # pixel 0 = (1, 2), pixel 1 = (-1, 0)
    w_img = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    image_cams = class_activation_maps(features, w_img)
    assert image_cams.tolist() == [[[[1.0, -1.0]], [[-2.0, 0.0]]]]
    probabilities = torch.tensor([[[[0.25, 0.5]], [[0.75, 0.5]]]])
    w_w2i = torch.tensor([[2.0, 0.0], [-1.0, 1.0]]).view(2, 2, 1, 1)  # conv layout accepted
    word_cams = word_activation_maps(probabilities, w_w2i)
    assert word_cams.tolist() == [[[[0.5, 1.0]], [[0.5, 0.0]]]]
    assert fuse_cams(image_cams, word_cams).tolist() == [[[[1.0, 1.0]], [[0.5, 0.0]]]]


NET_CFG = {
    "backbone": "resnet18",
    "output_stride": 16,
    "pretrained": "none",
    "freeze_bn": True,
    "dropout": 0.0,
    "num_words": 8,
    "pyramid_levels": [1, 2, 4],
    "gamma": 2.0,
    "detach_word_features": True,
    "word_frequency_reduction": "sum",
    "detach_after_stage": 2,
    "cams_from": "image",
}


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_vwe_net_composes_the_equations(reduction):
    torch.manual_seed(0)
    net = build_cam_model("vwe", dict(NET_CFG, word_frequency_reduction=reduction, cams_from="fused"), 3).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, cams, features = net(image), net.cams(image), net.features(image)
    assert features.shape[-2:] == (4, 4)
    probabilities = word_probabilities(word_similarity(features, net.codebook))
    assert torch.allclose(out["logits"], hspp(features, (1, 2, 4), 2.0) @ net.classifier.weight.flatten(1).T, atol=1e-5)
    frequency = probabilities.sum(dim=(2, 3)) / (16 if reduction == "mean" else 1)
    assert torch.allclose(out["w2i_logits"], frequency @ net.word_to_image.weight.flatten(1).T, atol=1e-5)
    assert torch.equal(out["word_labels"], word_labels(probabilities))
    expected = torch.maximum(
        F.relu(class_activation_maps(features, net.classifier.weight)),
        F.relu(word_activation_maps(probabilities, net.word_to_image.weight)),
    )
    assert cams.shape == (2, 3, 4, 4) and torch.allclose(cams, expected, atol=1e-6)


def test_vwe_cams_from_the_image_branch_only_as_the_authors_code():
    torch.manual_seed(0)
    net = build_cam_model("vwe", NET_CFG, 3).eval()  # cams_from: image (rulixiang/vwe return_cam)
    with torch.no_grad():
        # make the word branch dominate everywhere: the image-only CAMs must not see it
        net.word_to_image.weight.fill_(100.0)
        image = torch.randn(2, 3, 64, 64)
        cams, features = net.cams(image), net.features(image)
    expected = F.relu(torch.einsum("kd,bdhw->bkhw", net.classifier.weight.flatten(1), features))
    assert cams.shape == (2, 3, 4, 4) and torch.allclose(cams, expected, atol=1e-5)
    with pytest.raises(ValueError, match="cams_from"):
        build_cam_model("vwe", dict(NET_CFG, cams_from="word"), 3)
    with pytest.raises(ValueError, match="word_frequency_reduction"):
        build_cam_model("vwe", dict(NET_CFG, word_frequency_reduction="max"), 3)
    for key in ("word_frequency_reduction", "detach_after_stage", "cams_from"):
        with pytest.raises(ValueError, match=f"missing key.*{key}"):
            build_cam_model("vwe", {k: v for k, v in NET_CFG.items() if k != key}, 3)


@pytest.mark.parametrize("stage", [2, None])
def test_backbone_is_detached_after_stage_2_as_the_authors_code(stage):
    """rulixiang/vwe: x2 = self.stage2(x1).detach(): the stem, layer1 and layer2 never learn."""
    torch.manual_seed(0)
    net = build_cam_model("vwe", dict(NET_CFG, detach_after_stage=stage), 2)
    out = net(torch.randn(2, 3, 64, 64))
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sum(vwe_loss(out["logits"], labels, out["word_logits"], out["word_labels"], out["w2i_logits"]).values()).backward()

    def grad(prefix):
        return sum(
            float(p.grad.abs().sum())
            for name, p in net.backbone.named_parameters()
            if name.startswith(prefix) and p.grad is not None
        )

    assert grad("layer3.") > 0 and grad("layer4.") > 0
    for early in ("conv1.", "layer1.", "layer2."):
        assert (grad(early) == 0) == (stage == 2), early
    with pytest.raises(ValueError, match="no stage 7"):
        build_cam_model("vwe", dict(NET_CFG, detach_after_stage=7), 2)
    with pytest.raises(ValueError, match="detach_after_stage"):
        build_cam_model("vwe", dict(NET_CFG, detach_after_stage=True), 2)


def _codebook_change(reduction: str, steps: int = 3) -> float:
    """Norm of the codebook's change after ``steps`` plain SGD steps of Eq. 9 on random data, with
    a 32 x 32 feature map (as 512-px crops at stride 16) and k = 256 words."""
    torch.manual_seed(0)
    cfg = dict(NET_CFG, backbone="test_resnet", output_stride=8, num_words=256, word_frequency_reduction=reduction)
    net = build_cam_model("vwe", cfg, 3)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 256, 256, generator=generator)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    start = net.codebook.detach().clone()
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)  # the new layers' lr (0.01 x head_lr_mult 10)
    for _ in range(steps):
        out = net(images)
        assert out["w2i_logits"].shape == (2, 3) and net.feature_size(256, 256) == (32, 32)
        losses = vwe_loss(out["logits"], labels, out["word_logits"], out["word_labels"], out["w2i_logits"])
        optimiser.zero_grad()
        sum(losses.values()).backward()
        optimiser.step()
    return float((net.codebook.detach() - start).norm())


def test_codebook_learns_with_the_summed_word_frequency():
    """Eq. 4 averaged over the 1024 pixels leaves the codebook (which learns through p^w2i only)
    nearly frozen; summed as in the authors' code it moves by orders of magnitude more."""
    summed, averaged = _codebook_change("sum"), _codebook_change("mean")
    assert summed > 1e-2  # the codebook's norm at init is 9.2 (k = 256, d = 96)
    assert averaged < 1e-4
    assert summed > 100 * averaged


@pytest.mark.parametrize("detach", [True, False])
def test_word_branch_reaches_the_backbone_only_without_detach(detach):
    torch.manual_seed(0)
    net = build_cam_model("vwe", dict(NET_CFG, detach_word_features=detach), 2)
    out = net(torch.randn(2, 3, 64, 64))
    multilabel_soft_margin_loss(out["w2i_logits"], torch.tensor([[1.0, 0.0], [0.0, 1.0]])).backward()
    assert net.codebook.grad is not None and float(net.codebook.grad.abs().sum()) > 0
    backbone_grad = sum(float(p.grad.abs().sum()) for p in net.backbone.parameters() if p.grad is not None)
    assert (backbone_grad == 0) == detach


def test_detach_after_stage_2_on_efficientnet_lite_freezes_up_to_stride_8():
    """timm's EfficientNet has no ``layer2``: stage 2 is the stride-8 block group (``blocks.2``),
    found through ``feature_info``; the stem and blocks 0-2 get no gradient, blocks 3-6 do."""
    torch.manual_seed(0)
    cfg = dict(NET_CFG, backbone="tf_efficientnet_lite0", output_stride=16, detach_after_stage=2)
    net = build_cam_model("vwe", cfg, 2)
    reductions = {entry["module"]: entry["reduction"] for entry in net.backbone.feature_info.info}
    assert reductions["blocks.2"] == 8
    out = net(torch.randn(2, 3, 64, 64))
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sum(vwe_loss(out["logits"], labels, out["word_logits"], out["word_labels"], out["w2i_logits"]).values()).backward()
    learns = {}
    for name, p in net.backbone.named_parameters():
        part = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else name.split(".")[0]
        learns[part] = learns.get(part, False) or (p.grad is not None and bool(p.grad.abs().sum() > 0))
    assert not learns["conv_stem"] and not any(learns[f"blocks.{i}"] for i in range(3))
    assert all(learns[f"blocks.{i}"] for i in range(3, 7))
