"""CL4WSIS (Hsieh et al. ICCV 2023) losses: the Peak Generator's, FLAC (Eq. 1), random dropout
(Eq. 2-4), the synthetic center/offset losses (Eq. 5-6) and the selective distillation (Eq. 7-8),
against values worked out by hand."""

import math

import pytest
import torch
from handcalc import bce, close, sigmoid

from pipeline.methods.cl4wsis.losses import (
    augmentation_consistency_loss,
    center_distillation_loss,
    class_mean_probability,
    current_class_score,
    dropout_region,
    flip_view,
    offset_distillation_loss,
    old_class_weight,
    peak_generator_loss,
    peak_stimulation,
    random_dropout_loss,
    random_old_classes,
    rotate_view,
    weighted_center_loss,
    weighted_offset_loss,
)
from pipeline.methods.cl4wsis.modules import PeakGenerator

LN3 = math.log(3.0)


# --- Peak Generator -------------------------------------------------------------------------------


def test_peak_stimulation_keeps_core_pixels_per_image_and_channel():
    # image 0, channel 0: ReLU -> (0, 2, 1.5, 1), max 2, tau = 1.4: keeps 2 and 1.5
    # image 0, channel 1: max 10, tau = 7: keeps only 10
    # image 1, channel 0: max 0.5, tau = 0.35: keeps 0.5 and 0.4
    z = torch.tensor(
        [
            [[[-1.0, 2.0], [1.5, 1.0]], [[10.0, 6.9], [7.0, -3.0]]],
            [[[0.5, 0.4], [0.3, -1.0]], [[0.0, 0.0], [0.0, 0.0]]],
        ],
        requires_grad=True,
    )
    out = peak_stimulation(z, gamma=0.7)
    expected = torch.tensor(
        [
            [[[0.0, 2.0], [1.5, 0.0]], [[10.0, 0.0], [7.0, 0.0]]],
            [[[0.5, 0.4], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
        ]
    )
    assert torch.equal(out.detach(), expected)
    out.sum().backward()  # gradient 1 through the kept values, 0 elsewhere
    assert torch.equal(z.grad, (expected > 0).float())


def test_peak_stimulation_rejects_bad_gamma():
    with pytest.raises(ValueError, match="gamma"):
        peak_stimulation(torch.zeros(1, 1, 2, 2), gamma=1.5)


def test_peak_generator_loss_single_channel_by_hand():
    # one channel: softmax = 1 everywhere, nGWP = sum z / (1 + HW) = 10 / 5 = 2; focal penalty 0
    z = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    close(peak_generator_loss(z, torch.tensor([[1.0]])), bce(1.0, 2.0))
    close(peak_generator_loss(z, torch.tensor([[0.0]])), bce(0.0, 2.0))
    close(peak_generator_loss(z, torch.tensor([[0.0]]), focal=True), bce(0.0, 2.0))


def test_peak_generator_loss_two_channels_with_and_without_focal_penalty():
    # pixel 0: z = (0, ln 3) -> m = (1/4, 3/4); pixel 1: z = (0, 0) -> m = (1/2, 1/2)
    z = torch.tensor([[[[0.0, 0.0]], [[LN3, 0.0]]]])
    ngwp = [0.0, (0.75 * LN3) / (1.0 + 1.25)]  # sum m z / (1 + sum m)
    mbar = [(0.25 + 0.5) / 2, (0.75 + 0.5) / 2]
    focal = [(1 - m) ** 3 * math.log(0.01 + m) for m in mbar]
    labels = torch.tensor([[0.0, 1.0]])
    close(peak_generator_loss(z, labels), (bce(0.0, ngwp[0]) + bce(1.0, ngwp[1])) / 2)
    with_focal = (bce(0.0, ngwp[0] + focal[0]) + bce(1.0, ngwp[1] + focal[1])) / 2
    close(peak_generator_loss(z, labels, focal=True), with_focal)


def test_peak_generator_reads_the_new_channels_and_is_bias_outside_the_core():
    pg = PeakGenerator(num_new=2, gamma=0.7)
    scores = torch.zeros(1, 5, 3, 3)
    scores[0, 3, 1, 1] = 4.0  # the only core pixel of new channel 0 (channel 3 of 5)
    scores[0, 4, 0, 0] = 2.0  # ... of new channel 1
    scores[0, 0] = 100.0  # background/old channels are not read
    out = pg(scores)
    assert out.shape == (1, 2, 3, 3)
    bias = pg.conv.bias.detach()
    w = pg.conv.weight.detach()[:, :, 0, 0]
    # a pixel where both inputs are 0 gives the bias; the core pixels give W x + b
    assert torch.allclose(out[0, :, 2, 2], bias)
    assert torch.allclose(out[0, :, 1, 1], w[:, 0] * 4.0 + bias)
    assert torch.allclose(out[0, :, 0, 0], w[:, 1] * 2.0 + bias)


# --- FLAC, Eq. 1 ----------------------------------------------------------------------------------


def test_class_mean_probability_logit_and_probability():
    z = torch.tensor([[[[9.0]], [[0.0]], [[LN3]]]])  # channel 0 not averaged
    close(class_mean_probability(z, [1, 2], "logit"), sigmoid(LN3 / 2))  # authors: σ(mean z)
    close(class_mean_probability(z, [1, 2], "probability"), (0.5 + 0.75) / 2)  # paper: mean σ(z)
    with pytest.raises(ValueError, match="average"):
        class_mean_probability(z, [1], "median")


def test_augmentation_consistency_loss_by_hand():
    mean = torch.tensor([[[0.2, 0.6]]], requires_grad=True)
    flip = torch.tensor([[[0.4, 0.5]]])
    rot = torch.tensor([[[0.1, 0.9]]])
    # target = pixel-wise max = (0.4, 0.9); each term is ||.||^2 / HW
    terms = [((0.2 - 0.4) ** 2 + (0.6 - 0.9) ** 2) / 2, (0.0 + (0.5 - 0.9) ** 2) / 2, ((0.1 - 0.4) ** 2 + 0.0) / 2]
    loss = augmentation_consistency_loss(mean, flip, rot)
    close(loss.detach(), sum(terms) / 3)
    loss.backward()  # the target is a constant: d/dZ̄ = 2 (Z̄ - Z̃) / (HW K)
    assert torch.allclose(mean.grad, torch.tensor([[[2 * (0.2 - 0.4) / 6, 2 * (0.6 - 0.9) / 6]]]))


def test_views_invert_on_non_square_maps_and_pointwise_decoders_are_consistent():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    for k in (1, 2, 3):
        assert torch.equal(rotate_view(rotate_view(x, k), -k), x)
        assert rotate_view(x, k).shape[-2:] == ((5, 4) if k % 2 else (4, 5))
    assert torch.equal(flip_view(flip_view(x)), x)
    decode = torch.nn.Conv2d(3, 4, 1)  # a pixel-wise Decoder commutes with flips and rotations
    with torch.no_grad():
        mean = class_mean_probability(decode(x), [2, 3])
        mean_flip = flip_view(class_mean_probability(decode(flip_view(x)), [2, 3]))
        mean_rot = rotate_view(class_mean_probability(decode(rotate_view(x, 3)), [2, 3]), -3)
    assert torch.allclose(mean, mean_flip) and torch.allclose(mean, mean_rot, atol=1e-6)
    close(augmentation_consistency_loss(mean, mean_flip, mean_rot), 0.0)


# --- Random dropout, Eq. 2-4 ------------------------------------------------------------------------


def test_current_class_score_and_region():
    # channels: background, one old class, two new classes; 3 pixels
    z = torch.tensor([[[[5.0, 5.0, 5.0]], [[5.0, 5.0, 5.0]], [[2.0, -1.0, -3.0]], [[-2.0, -2.0, 0.5]]]])
    score = current_class_score(z, [2, 3])  # Eq. 2: max over Y^t only
    assert torch.equal(score, torch.tensor([[[2.0, -1.0, 0.5]]]))
    assert torch.equal(dropout_region(score), torch.tensor([[[True, False, True]]]))  # Eq. 3: σ > 0.5
    assert torch.equal(dropout_region(torch.sigmoid(score), probability=True), dropout_region(score))


def test_random_dropout_loss_by_hand():
    # 3 classes (background, old, new), 3 pixels; P = {0, 2}; C = (1, -, 0)
    z = torch.tensor([[[[1.0, 7.0, LN3]], [[0.0, 7.0, 7.0]], [[2.0, -1.0, 0.5]]]], requires_grad=True)
    region = torch.tensor([[[True, False, True]]])
    old = torch.tensor([[[1, 1, 0]]])
    loss = random_dropout_loss(z, region, old)
    close(loss.detach(), -(math.log(sigmoid(0.0)) + math.log(sigmoid(LN3))) / 2)
    loss.backward()  # only the chosen logits of the pixels of P get a gradient: -(1 - σ(z)) / |P|
    expected = torch.zeros_like(z)
    expected[0, 1, 0, 0] = -(1 - sigmoid(0.0)) / 2
    expected[0, 0, 0, 2] = -(1 - sigmoid(LN3)) / 2
    assert torch.allclose(z.grad, expected)
    close(random_dropout_loss(z, torch.zeros_like(region), old).detach(), 0.0)  # empty P


def test_random_old_classes_draws_every_old_channel_only():
    torch.manual_seed(0)
    draws = random_old_classes((4, 32, 32), 3)
    assert draws.dtype == torch.int64 and set(draws.unique().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="num_old_channels"):
        random_old_classes((1, 2, 2), 0)


# --- Eq. 5-8 --------------------------------------------------------------------------------------

CENTER = torch.tensor([[[[0.5, 0.2], [0.0, 1.0]]]])
WEIGHT = torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])


def test_weighted_center_loss_eq5_by_hand():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]])
    # sum W (C - C^syn)^2 = 1 * 0.25 + 0.5 * 0.04 + 0 + 1 * 0.25, N = 3 pixels with W > 0
    close(weighted_center_loss(CENTER, target, WEIGHT), (0.25 + 0.02 + 0.25) / 3)
    close(weighted_center_loss(CENTER, target, WEIGHT[:, None]), (0.25 + 0.02 + 0.25) / 3)
    close(weighted_center_loss(CENTER, target, torch.zeros_like(WEIGHT)), 0.0)


def test_weighted_offset_loss_eq6_by_hand():
    offset = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 2.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    # per pixel W (|dy - t| + |dx - t|): 1 * 2, 0.5 * 1, 0 * 4, 1 * 5; N = 3
    loss = weighted_offset_loss(offset, target, WEIGHT)
    close(loss.detach(), (2.0 + 0.5 + 5.0) / 3)
    loss.backward()
    assert offset.grad[0, 0, 1, 0] == 0 and math.isclose(float(offset.grad[0, 1, 0, 1]), -0.5 / 3, rel_tol=1e-6)
    with pytest.raises(ValueError, match="B, 2, H, W"):
        weighted_offset_loss(offset[:, :1], target[:, :1], WEIGHT)


def test_selective_distillation_eq7_eq8_by_hand():
    semantic = torch.tensor([[[0, 3], [5, 16]]])  # background, old 3, old 5, new 16
    w_old = old_class_weight(semantic, range(1, 16))
    assert torch.equal(w_old, torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]]))  # M = 2
    center = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])
    old_center = torch.tensor([[[[0.0, 0.5], [0.1, 0.0]]]])
    close(center_distillation_loss(center, old_center, w_old), ((0.2 - 0.5) ** 2 + (0.3 - 0.1) ** 2) / 2)
    offset = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    old_offset = torch.tensor([[[[0.0, 3.0], [1.0, 0.0]], [[0.0, -1.0], [2.0, 0.0]]]])
    close(offset_distillation_loss(offset, old_offset, w_old), ((2.0 + 1.0) + (0.0 + 2.0)) / 2)
    with pytest.raises(ValueError, match="background"):
        old_class_weight(semantic, [0, 1])
