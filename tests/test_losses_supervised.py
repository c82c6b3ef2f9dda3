"""Pixel losses against values computed by hand."""

import math

import torch

from pipeline.methods.pixel.losses import pixel_binary_cross_entropy, pixel_cross_entropy


def _softplus(x):
    return math.log1p(math.exp(x))


def test_binary_cross_entropy_by_hand():
    # 1 image, 2 classes, 1x2 pixels; second pixel void
    logits = torch.tensor([[[[2.0, 5.0]], [[-1.0, 7.0]]]])
    target = torch.tensor([[[1, 255]]])
    # pixel 0, target class 1: -log(1 - s(2)) - log(s(-1)) = softplus(2) + softplus(1)
    expected = _softplus(2.0) + _softplus(1.0)
    assert math.isclose(float(pixel_binary_cross_entropy(logits, target)), expected, rel_tol=1e-6)


def test_cross_entropy_ignores_void():
    logits = torch.tensor([[[[0.0, 9.0]], [[math.log(3.0), -9.0]]]])
    target = torch.tensor([[[1, 255]]])
    # p(class 1) = 3 / (1 + 3)
    assert math.isclose(float(pixel_cross_entropy(logits, target)), -math.log(0.75), rel_tol=1e-6)


def test_binary_cross_entropy_all_void_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = pixel_binary_cross_entropy(logits, torch.full((1, 2, 2), 255))
    assert float(loss.detach()) == 0.0
    loss.backward()
