"""MiB's unbiased cross-entropy and distillation against values computed by hand."""

import math

import pytest
import torch
from torch.nn import functional as F

from pipeline.methods.mib.losses import unbiased_cross_entropy, unbiased_knowledge_distillation

# 1 image, 4 classes (0 background, 1 old, 2-3 new: num_old_channels = 2), 1x2 pixels.
# pixel 0: exp(logits) = (1, 2, 3, 4), sum 10; pixel 1: logits (1, 0, 2, -1).
LOGITS = torch.tensor([[[[0.0, 1.0]], [[math.log(2.0), 0.0]], [[math.log(3.0), 2.0]], [[math.log(4.0), -1.0]]]])
Z1 = math.exp(1.0) + 1.0 + math.exp(2.0) + math.exp(-1.0)  # partition function of pixel 1


def _uce_reference(logits, target, num_old_channels, ignore_index=255):
    """Eq. 4-5 written with probabilities (no log-sum-exp), for random small logits."""
    p = logits.double().softmax(1)
    p_tilde = torch.cat([p[:, :num_old_channels].sum(1, keepdim=True), p[:, 1:]], 1)  # channel 0 = bg ∪ old
    valid = target != ignore_index
    labels = target.masked_fill(~valid, 0)
    picked = p_tilde.gather(1, labels.unsqueeze(1)).squeeze(1)
    return -(picked.log() * valid).sum() / valid.sum()


def _ukd_reference(logits, old_logits):
    """Eq. 6-7 written with probabilities, for random small logits."""
    num_old_channels = old_logits.shape[1]
    p = logits.double().softmax(1)
    q = old_logits.double().softmax(1)
    p_hat = torch.cat([p[:, :1] + p[:, num_old_channels:].sum(1, keepdim=True), p[:, 1:num_old_channels]], 1)
    return -(q * p_hat.log()).sum(1).mean()


# ---------------------------------------------------------------- unbiased cross-entropy


def test_unbiased_cross_entropy_by_hand():
    target = torch.tensor([[[0, 3]]])
    # pixel 0, background: p_0 + p_1 (old) = (1 + 2) / 10; pixel 1, new class 3: e^-1 / Z1
    expected = (-math.log(3.0 / 10.0) - math.log(math.exp(-1.0) / Z1)) / 2
    loss = unbiased_cross_entropy(LOGITS, target, num_old_channels=2)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    # ordinary cross-entropy would score pixel 0 with p_0 = 1/10 only
    assert not math.isclose(float(loss), float(F.cross_entropy(LOGITS, target)), rel_tol=1e-3)


def test_unbiased_cross_entropy_three_classes_by_hand():
    # 3 classes: background, old class 1, new class 2 (num_old_channels = 2); both pixels background
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]], [[1.0, math.log(2.0)]]]])
    target = torch.tensor([[[0, 0]]])
    p0 = (math.exp(2.0) + 1.0) / (math.exp(2.0) + 1.0 + math.exp(1.0))
    p1 = (1.0 + 1.0) / (1.0 + 1.0 + 2.0)
    expected = -(math.log(p0) + math.log(p1)) / 2
    assert math.isclose(float(unbiased_cross_entropy(logits, target, num_old_channels=2)), expected, rel_tol=1e-6)


def test_unbiased_cross_entropy_ignores_void():
    target = torch.tensor([[[0, 255]]])
    loss = unbiased_cross_entropy(LOGITS, target, num_old_channels=2)
    assert math.isclose(float(loss), -math.log(0.3), rel_tol=1e-6)
    # a custom ignore_index: 7 is void, 255 would be out of range
    loss7 = unbiased_cross_entropy(LOGITS, torch.tensor([[[7, 3]]]), num_old_channels=2, ignore_index=7)
    assert math.isclose(float(loss7), -math.log(math.exp(-1.0) / Z1), rel_tol=1e-6)


def test_unbiased_cross_entropy_all_void_is_zero_and_differentiable():
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = unbiased_cross_entropy(logits, torch.full((1, 2, 2), 255), num_old_channels=2)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_unbiased_cross_entropy_equals_cross_entropy_without_old_classes():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 4)
    target = torch.randint(0, 5, (2, 3, 4))
    target[0, 0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(unbiased_cross_entropy(logits, target, num_old_channels=1), expected, rtol=1e-6, atol=1e-7)


def test_unbiased_cross_entropy_matches_probability_form():
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    target = torch.randint(3, 6, (2, 3, 3))  # new classes 3..5
    target[:, 0] = 0
    target[1, 2, 2] = 255
    expected = _uce_reference(logits, target, num_old_channels=3)
    assert torch.allclose(unbiased_cross_entropy(logits, target, num_old_channels=3), expected, rtol=1e-12)


def test_unbiased_cross_entropy_background_indifferent_to_old_split():
    # a background pixel is scored with p_0 + p_1: swapping channels 0 and 1 changes nothing,
    # swapping channels 0 and 2 (a new class) does
    target = torch.tensor([[[0, 0]]])
    base = unbiased_cross_entropy(LOGITS, target, num_old_channels=2)
    swapped_old = LOGITS[:, [1, 0, 2, 3]]
    swapped_new = LOGITS[:, [2, 1, 0, 3]]
    assert torch.allclose(unbiased_cross_entropy(swapped_old, target, num_old_channels=2), base, rtol=1e-6)
    assert not torch.allclose(unbiased_cross_entropy(swapped_new, target, num_old_channels=2), base, rtol=1e-3)


def test_unbiased_cross_entropy_invariant_to_per_pixel_shift():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    target = torch.randint(2, 5, (2, 3, 4))
    target[:, 1] = 0
    target[0, 2, 3] = 255
    shift = 50.0 * torch.randn(2, 1, 3, 4, dtype=torch.float64)
    a = unbiased_cross_entropy(logits, target, num_old_channels=2)
    b = unbiased_cross_entropy(logits + shift, target, num_old_channels=2)
    assert torch.allclose(a, b, rtol=1e-10)


def test_unbiased_cross_entropy_stable_for_large_logits():
    # exp(1000) overflows; log-sum-exp does not. pixel 0 (background): old class 1 dominates,
    # loss ≈ 0; pixel 1 (new class 2 at -1000 against 1000): loss ≈ 2000
    logits = torch.tensor([[[[0.0, 1000.0]], [[1000.0, 0.0]], [[-1000.0, -1000.0]]]])
    loss = unbiased_cross_entropy(logits, torch.tensor([[[0, 2]]]), num_old_channels=2)
    assert math.isclose(float(loss), 2000.0 / 2, rel_tol=1e-6)


def test_unbiased_cross_entropy_gradients():
    torch.manual_seed(3)
    logits = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 2, 3], [255, 0, 2]]])
    assert torch.autograd.gradcheck(lambda x: unbiased_cross_entropy(x, target, num_old_channels=2), (logits,))
    unbiased_cross_entropy(logits, target, num_old_channels=2).backward()
    assert torch.all(logits.grad[0, :, 1, 0] == 0)  # void pixel gets no gradient
    assert torch.all(logits.grad[0, :, 0, 1] != 0)
    # background pixel: gradient = p - p·1[c<num_old_channels]/(p_0+p_1); it raises both bg and old
    p = logits.detach().softmax(1)[0, :, 0, 0]
    mass = p[0] + p[1]
    expected = torch.stack([p[0] - p[0] / mass, p[1] - p[1] / mass, p[2], p[3]]) / 5  # 5 labelled pixels
    assert torch.allclose(logits.grad[0, :, 0, 0], expected, rtol=1e-10)


def test_unbiased_cross_entropy_half_precision_computed_in_float32():
    target = torch.tensor([[[0, 3]]])
    loss = unbiased_cross_entropy(LOGITS.half(), target, num_old_channels=2)
    assert loss.dtype == torch.float32
    expected = unbiased_cross_entropy(LOGITS.half().float(), target, num_old_channels=2)
    assert torch.allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize("label", [1, 4, -1])
def test_unbiased_cross_entropy_rejects_old_and_out_of_range_labels(label):
    with pytest.raises(ValueError, match="labels"):
        unbiased_cross_entropy(LOGITS, torch.tensor([[[0, label]]]), num_old_channels=2)


@pytest.mark.parametrize("num_old_channels", [0, 5])
def test_unbiased_cross_entropy_rejects_bad_num_old(num_old_channels):
    with pytest.raises(ValueError, match="num_old_channels"):
        unbiased_cross_entropy(LOGITS, torch.tensor([[[0, 0]]]), num_old_channels=num_old_channels)


def test_unbiased_cross_entropy_rejects_mismatched_target():
    with pytest.raises(ValueError, match="shape"):
        unbiased_cross_entropy(LOGITS, torch.tensor([[0, 3]]), num_old_channels=2)


# ---------------------------------------------------------------- unbiased distillation

# old model (num_old_channels = 2): pixel 0 logits (0, log 3) -> q = (1/4, 3/4);
# pixel 1 logits (log 2, 0) -> q = (2/3, 1/3)
OLD_LOGITS = torch.tensor([[[[0.0, math.log(2.0)]], [[math.log(3.0), 0.0]]]])


def test_unbiased_distillation_by_hand():
    # pixel 0: p̂_0 = p_0 + p_2 + p_3 = (1 + 3 + 4) / 10, p̂_1 = 2 / 10
    loss0 = -(0.25 * math.log(0.8) + 0.75 * math.log(0.2))
    # pixel 1: p̂_0 = (e + e^2 + e^-1) / Z1, p̂_1 = 1 / Z1
    p_hat0 = (math.exp(1.0) + math.exp(2.0) + math.exp(-1.0)) / Z1
    loss1 = -(2.0 / 3.0 * math.log(p_hat0) + 1.0 / 3.0 * math.log(1.0 / Z1))
    loss = unbiased_knowledge_distillation(LOGITS, OLD_LOGITS)
    assert math.isclose(float(loss), (loss0 + loss1) / 2, rel_tol=1e-6)


def test_unbiased_distillation_alpha_scales_old_logits_only():
    # alpha = 2: pixel 0 q ∝ (1, 9) -> (0.1, 0.9); pixel 1 q ∝ (4, 1) -> (0.8, 0.2); p̂ as above
    p_hat0 = (math.exp(1.0) + math.exp(2.0) + math.exp(-1.0)) / Z1
    loss0 = -(0.1 * math.log(0.8) + 0.9 * math.log(0.2))
    loss1 = -(0.8 * math.log(p_hat0) + 0.2 * math.log(1.0 / Z1))
    loss = unbiased_knowledge_distillation(LOGITS, OLD_LOGITS, alpha=2.0)
    assert math.isclose(float(loss), (loss0 + loss1) / 2, rel_tol=1e-6)


def test_unbiased_distillation_equals_distillation_without_new_classes():
    torch.manual_seed(4)
    logits = torch.randn(2, 5, 3, 4)
    old_logits = torch.randn(2, 5, 3, 4)
    q = old_logits.softmax(1)
    expected = -(q * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(unbiased_knowledge_distillation(logits, old_logits), expected, rtol=1e-6)
    # the same thing as cross-entropy with soft targets
    assert torch.allclose(unbiased_knowledge_distillation(logits, old_logits), F.cross_entropy(logits, q), rtol=1e-6)


def test_unbiased_distillation_matches_probability_form():
    torch.manual_seed(5)
    logits = torch.randn(2, 7, 3, 3, dtype=torch.float64)
    old_logits = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    expected = _ukd_reference(logits, old_logits)
    assert torch.allclose(unbiased_knowledge_distillation(logits, old_logits), expected, rtol=1e-12)


def test_unbiased_distillation_background_indifferent_to_new_split():
    # the old background is matched with p_0 + Σ_new p_c: swapping channels 0 and 3 (new)
    # changes nothing, swapping channels 0 and 1 (old) does
    base = unbiased_knowledge_distillation(LOGITS, OLD_LOGITS)
    assert torch.allclose(unbiased_knowledge_distillation(LOGITS[:, [3, 1, 2, 0]], OLD_LOGITS), base, rtol=1e-6)
    assert not torch.allclose(unbiased_knowledge_distillation(LOGITS[:, [1, 0, 2, 3]], OLD_LOGITS), base, rtol=1e-3)


def test_unbiased_distillation_invariant_to_per_pixel_shift():
    torch.manual_seed(6)
    logits = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    old_logits = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    shift = 50.0 * torch.randn(2, 1, 3, 4, dtype=torch.float64)
    old_shift = 50.0 * torch.randn(2, 1, 3, 4, dtype=torch.float64)
    a = unbiased_knowledge_distillation(logits, old_logits)
    assert torch.allclose(unbiased_knowledge_distillation(logits + shift, old_logits), a, rtol=1e-10)
    assert torch.allclose(unbiased_knowledge_distillation(logits, old_logits + old_shift), a, rtol=1e-10)


def test_unbiased_distillation_stable_for_large_logits():
    # one pixel, q = (0, 1) (old class 1 certain); student puts class 1 at -1000 vs new class 2
    # at 1000: −log p̂_1 ≈ 2000. Channel 0 at 1000 too: log p̂_1 = -2000 - log 2
    logits = torch.tensor([[[[1000.0]], [[-1000.0]], [[1000.0]]]])
    old_logits = torch.tensor([[[[-1000.0]], [[1000.0]]]])
    loss = unbiased_knowledge_distillation(logits, old_logits)
    assert math.isclose(float(loss), 2000.0 + math.log(2.0), rel_tol=1e-6)


def test_unbiased_distillation_gradients():
    torch.manual_seed(7)
    logits = torch.randn(1, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    old_logits = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: unbiased_knowledge_distillation(x, old_logits), (logits,))
    unbiased_knowledge_distillation(logits, old_logits).backward()
    assert torch.all(logits.grad != 0)
    assert torch.allclose(logits.grad.sum(1), torch.zeros(1, 2, 3, dtype=torch.float64), atol=1e-12)
    assert old_logits.grad is None  # the teacher is a constant target


def test_unbiased_distillation_half_precision_computed_in_float32():
    loss = unbiased_knowledge_distillation(LOGITS.bfloat16(), OLD_LOGITS.bfloat16())
    assert loss.dtype == torch.float32
    expected = unbiased_knowledge_distillation(LOGITS.bfloat16().float(), OLD_LOGITS.bfloat16().float())
    assert torch.allclose(loss, expected, rtol=1e-6)


def test_unbiased_distillation_rejects_bad_shapes_and_alpha():
    with pytest.raises(ValueError, match="num_old_channels"):
        unbiased_knowledge_distillation(LOGITS[:, :1], OLD_LOGITS)
    with pytest.raises(ValueError, match="differ"):
        unbiased_knowledge_distillation(LOGITS, OLD_LOGITS[..., :1])
    with pytest.raises(ValueError, match="alpha"):
        unbiased_knowledge_distillation(LOGITS, OLD_LOGITS, alpha=0.0)
