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
    # Eq. 4: mean over the 2 pixels
    frequency = word_frequency(probabilities)
    for word in range(3):
        assert math.isclose(float(frequency[0, word]), (expected[0][word] + expected[1][word]) / 2, abs_tol=1e-6)
    assert math.isclose(float(frequency.sum()), 1.0, abs_tol=1e-6)


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
}


def test_vwe_net_composes_the_equations():
    torch.manual_seed(0)
    net = build_cam_model("vwe", NET_CFG, 3).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, cams, features = net(image), net.cams(image), net.features(image)
    assert features.shape[-2:] == (4, 4)
    probabilities = word_probabilities(word_similarity(features, net.codebook))
    assert torch.allclose(out["logits"], hspp(features, (1, 2, 4), 2.0) @ net.classifier.weight.flatten(1).T, atol=1e-5)
    assert torch.allclose(
        out["w2i_logits"], word_frequency(probabilities) @ net.word_to_image.weight.flatten(1).T, atol=1e-5
    )
    assert torch.equal(out["word_labels"], word_labels(probabilities))
    expected = torch.maximum(
        F.relu(class_activation_maps(features, net.classifier.weight)),
        F.relu(word_activation_maps(probabilities, net.word_to_image.weight)),
    )
    assert cams.shape == (2, 3, 4, 4) and torch.allclose(cams, expected, atol=1e-6)


@pytest.mark.parametrize("detach", [True, False])
def test_word_branch_reaches_the_backbone_only_without_detach(detach):
    torch.manual_seed(0)
    net = build_cam_model("vwe", dict(NET_CFG, detach_word_features=detach), 2)
    out = net(torch.randn(2, 3, 64, 64))
    multilabel_soft_margin_loss(out["w2i_logits"], torch.tensor([[1.0, 0.0], [0.0, 1.0]])).backward()
    assert net.codebook.grad is not None and float(net.codebook.grad.abs().sum()) > 0
    backbone_grad = sum(float(p.grad.abs().sum()) for p in net.backbone.parameters() if p.grad is not None)
    assert (backbone_grad == 0) == detach
