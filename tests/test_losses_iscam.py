"""ISCAM (Jonnarth and Felsberg, ICASSP 2022) Eq. 1-8, against values computed by hand."""

import math

import pytest
import torch
from scipy import stats

from pipeline.wsss.iscam import (
    FeatureSimilarity,
    binary_cross_entropy,
    cam_probabilities,
    classification_loss,
    dissimilarity_response,
    feature_similarity_loss,
    importance_sample,
    max_pool_prediction,
    prediction_gap,
    rgb_dissimilarity,
    sampled_prediction,
    spatial_weights,
)
from pipeline.wsss.objectives import IsCamObjective

# 1 image, background + 1 class, 1x2 pixels: background (0.2, 0.6), class (0.8, 0.4)
PROBS = torch.tensor([[[[0.2, 0.6]], [[0.8, 0.4]]]])


def test_cam_probabilities_eq1_is_a_softmax_over_channels():
    scores = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])
    probs = cam_probabilities(scores)
    assert torch.allclose(probs.flatten(), torch.tensor([0.25, 0.75]))


def test_max_pool_prediction_and_bce_eq2_eq3_by_hand():
    pred = max_pool_prediction(PROBS)
    assert torch.allclose(pred, torch.tensor([[0.6, 0.8]]))
    # background present, class absent: -(1/2)[log 0.6 + log(1 - 0.8)]
    loss = binary_cross_entropy(pred, torch.tensor([[1.0, 0.0]]), eps=0.0)
    assert math.isclose(float(loss), -(math.log(0.6) + math.log(0.2)) / 2, rel_tol=1e-6)
    # the default squeeze (authors' code: (1e-3 + 0.999 p) / 1.001) by hand, and log(0) stays finite
    s = lambda p: (1e-3 + 0.999 * p) / 1.001
    squeezed = -(math.log(s(0.6)) + math.log(1 - s(0.8))) / 2
    assert math.isclose(float(binary_cross_entropy(pred, torch.tensor([[1.0, 0.0]]))), squeezed, rel_tol=1e-6)
    assert math.isfinite(float(binary_cross_entropy(torch.tensor([[0.0]]), torch.tensor([[1.0]]))))


def test_bce_averages_over_samples():
    samples = torch.tensor([[[0.5, 0.25], [0.5, 0.5]]])  # (B=1, C=2, S=2)
    loss = binary_cross_entropy(samples, torch.tensor([[1.0, 0.0]]), eps=0.0)
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.5) + math.log(0.5)) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-6)


def test_importance_sampling_draws_from_the_cam_distribution_eq4():
    # class 0 ∝ (1, 2, 3, 4), class 1 ∝ (0, 0, 1, 1): Z_k normalises
    probs = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, 1.0]]]]) / 10.0
    generator = torch.Generator().manual_seed(0)
    index = importance_sample(probs, num_samples=20000, generator=generator)
    assert index.shape == (1, 2, 20000) and index.dtype == torch.int64
    counts = torch.bincount(index[0, 0], minlength=4).numpy()
    expected = [2000.0, 4000.0, 6000.0, 8000.0]
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    assert stats.chisquare(counts, [5000.0] * 4).pvalue < 1e-6  # the test can tell the wrong law
    zero_mass = torch.bincount(index[0, 1], minlength=4).numpy()
    assert zero_mass[0] == zero_mass[1] == 0
    assert stats.chisquare(zero_mass[2:], [10000.0, 10000.0]).pvalue > 1e-3


def test_sampled_prediction_reads_the_cam_at_the_samples_with_gradient():
    probs = PROBS.clone().requires_grad_()
    index = torch.tensor([[[1, 1, 0], [0, 0, 0]]])
    values = sampled_prediction(probs, index)
    assert torch.allclose(values, torch.tensor([[[0.6, 0.6, 0.2], [0.8, 0.8, 0.8]]]))
    values.sum().backward()
    assert probs.grad.tolist() == [[[[1.0, 2.0]], [[3.0, 0.0]]]]


def test_classification_loss_eq5_mix():
    assert float(classification_loss(torch.tensor(2.0), torch.tensor(4.0), 0.25)) == 0.75 * 2 + 0.25 * 4
    assert float(classification_loss(torch.tensor(2.0), torch.tensor(4.0), 1.0)) == 4.0
    with pytest.raises(ValueError, match="lambda"):
        classification_loss(torch.tensor(2.0), torch.tensor(4.0), 1.5)


def test_spatial_weights_and_response_eq7_eq8():
    sigma = 2.0
    weights = spatial_weights(1, 2, sigma)
    diagonal, off = 1 / (2 * math.pi * sigma**2), math.exp(-1 / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    assert torch.allclose(weights, torch.tensor([[diagonal, off], [off, diagonal]]))
    mu = 0.7
    crossover = torch.tensor(1 / (1 + math.exp(mu)))
    assert abs(float(dissimilarity_response(crossover, mu))) < 1e-6
    assert float(dissimilarity_response(torch.tensor(0.0), mu)) < -0.999
    assert float(dissimilarity_response(torch.tensor(1.0), mu)) > 0.999


def test_prediction_gap_and_rgb_dissimilarity_by_brute_force():
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 2, 3).softmax(1)
    gap = prediction_gap(probs)
    flat = probs.flatten(2)
    brute = 0.5 * ((flat[:, :, :, None] - flat[:, :, None, :]) ** 2).sum(1)
    assert torch.allclose(gap, brute, atol=1e-6)
    rgb = torch.rand(2, 3, 2, 3)
    flat = rgb.flatten(2)
    brute = (flat[:, :, :, None] - flat[:, :, None, :]).abs().sum(1) / 3
    assert torch.allclose(rgb_dissimilarity(rgb), brute, atol=1e-6)


def test_feature_similarity_loss_two_pixels_eq6_by_hand():
    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # opposite one-hot predictions: g = 1
    rgb = torch.tensor([[[[0.0, 0.3]], [[0.0, 0.6]], [[0.0, 0.0]]]])  # δ = (0.3 + 0.6 + 0) / 3 = 0.3
    sigma, mu = 1.0, 0.5
    w = math.exp(-0.5) / (2 * math.pi)
    f = math.tanh(mu + math.log(0.3 / 0.7))
    # two ordered pairs (0, 1) and (1, 0); diagonal g = 0; (HW)^2 = 4
    expected = -(2 * w * 1.0 * f) / 4
    assert math.isclose(float(feature_similarity_loss(probs, rgb, sigma, mu)), expected, rel_tol=1e-5)
    assert math.isclose(float(feature_similarity_loss(probs, rgb, sigma, mu, "pixels")), expected * 2, rel_tol=1e-5)
    # equal predictions: no loss whatever the pixels
    assert float(feature_similarity_loss(torch.full((1, 2, 1, 2), 0.5), rgb, sigma, mu)) == 0.0


def test_sigma_and_mu_can_be_learned():
    module = FeatureSimilarity(sigma=1.0, mu=0.5, learn=True)
    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    rgb = torch.tensor([[[[0.0, 0.3]], [[0.0, 0.6]], [[0.0, 0.0]]]])
    module(probs, rgb).backward()
    assert module.log_sigma.grad is not None and float(module.log_sigma.grad) != 0.0
    # dL/dμ = -(1/4) * 2 * w * g * (1 - f²) < 0: descent can only raise μ
    w, f = math.exp(-0.5) / (2 * math.pi), math.tanh(0.5 + math.log(0.3 / 0.7))
    assert math.isclose(float(module.mu.grad), -(2 * w * (1 - f**2)) / 4, rel_tol=1e-4)
    assert math.isclose(float(module.sigma.detach()), 1.0, rel_tol=1e-6)
    fixed = FeatureSimilarity(sigma=1.0, mu=0.5)
    assert not any(p.requires_grad for p in fixed.parameters())


def test_iscam_objective_labels_background_present():
    # λ = 0: only Eq. 2-3 over background (label 1) and the class (label 1)
    objective = IsCamObjective(lam=0.0, fs_weight=0.0)
    out = {"probs": PROBS}
    losses = objective.losses({"labels": torch.tensor([[1.0]]), "image": torch.zeros(1, 3, 1, 2)}, out, 0)
    assert set(losses) == {"cls"}
    s = lambda p: (1e-3 + 0.999 * p) / 1.001  # the authors' squeeze before the log
    assert math.isclose(float(losses["cls"]), -(math.log(s(0.6)) + math.log(s(0.8))) / 2, rel_tol=1e-5)
    # λ = 1: importance-sampled term over background (present) and the class (absent here)
    torch.manual_seed(0)
    sampled = IsCamObjective(lam=1.0, num_samples=4000, fs_weight=0.0).losses(
        {"labels": torch.tensor([[0.0]]), "image": torch.zeros(1, 3, 1, 2)}, out, 0
    )["cls"]
    # background ∝ (0.2, 0.6): E[-log a] with a = 0.2 w.p. 1/4, 0.6 w.p. 3/4;
    # class ∝ (0.8, 0.4): E[-log(1 - a)] with a = 0.8 w.p. 2/3, 0.4 w.p. 1/3; mean of the two
    background = -(1 / 4) * math.log(0.2) - (3 / 4) * math.log(0.6)
    absent = -(2 / 3) * math.log(0.2) - (1 / 3) * math.log(0.6)
    assert math.isclose(float(sampled), (background + absent) / 2, rel_tol=0.05)


def test_iscam_objective_feature_similarity_on_the_image_rgb():
    from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from pipeline.wsss.objectives import rgb_at

    # 2x4 RGB image whose 2x2 cells average to black (left) and (0.3, 0.6, 0) (right)
    rgb = torch.zeros(1, 3, 2, 4)
    rgb[0, 0, :, 2:] = torch.tensor([[0.2, 0.4], [0.3, 0.3]])
    rgb[0, 1, :, 2:] = 0.6
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    image = (rgb - mean) / std
    assert torch.allclose(rgb_at(image, (1, 2)), torch.tensor([[[[0.0, 0.3]], [[0.0, 0.6]], [[0.0, 0.0]]]]), atol=1e-6)
    objective = IsCamObjective(lam=1.0, fs_weight=2.0, sigma=1.0, mu=0.5, normalisation="pixels")
    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    losses = objective.losses({"labels": torch.tensor([[1.0]]), "image": image}, {"probs": probs}, 0)
    w, f = math.exp(-0.5) / (2 * math.pi), math.tanh(0.5 + math.log(0.3 / 0.7))
    # "pixels": -(1/HW) * (two ordered pairs) * w * g * f, g = 1, HW = 2; times fs_weight 2
    assert math.isclose(float(losses["fs"].detach()), 2.0 * -(2 * w * f) / 2, rel_tol=1e-4)


def test_squeeze_is_the_authors_affine_map():
    """(1e-3 + (1 - 1e-3) p) / (1 + 1e-3), by hand at p = 0, 1/2, 1; the BCE of a saturated wrong
    prediction is then -log(1e-3 / 1.001)."""
    from pipeline.wsss.iscam import squeeze_probability

    p = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(squeeze_probability(p), torch.tensor([1e-3 / 1.001, 0.5005 / 1.001, 1.0 / 1.001]))
    loss = binary_cross_entropy(torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert math.isclose(float(loss), -math.log(1e-3 / 1.001), rel_tol=1e-6)
