"""WILSON (Cermelli et al. CVPR 2022) Eq. 1-8, the localizer, its self-supervision (PAMR, pseudo
ground truth, balanced CE) and the feature distillation, against values computed by hand."""

import math

import pytest
import torch
from handcalc import bce as _bce
from handcalc import close as _close
from handcalc import sigmoid as _sigmoid

from pipeline.methods.wilson.localizer import Localizer
from pipeline.methods.wilson.losses import (
    balanced_mask_cross_entropy,
    classification_loss,
    feature_distillation_loss,
    focal_penalty,
    hard_pseudo_labels,
    image_scores,
    localization_prior_loss,
    ngwp_pool,
    pseudo_gt_mask,
    restrict_to_image_labels,
    segmentation_loss,
    soft_pseudo_labels,
    wilson_target,
)
from pipeline.methods.wilson.pamr import pamr_affinity, pamr_refine

LN2, LN3 = math.log(2.0), math.log(3.0)


# 1 image, 2 classes, 1x2 pixels. Pixel 0: z = (1, 1 + ln 3) -> m = (1/4, 3/4);
# pixel 1: z = (2, 2) -> m = (1/2, 1/2).
SCORES_1x2 = torch.tensor([[[[1.0, 2.0]], [[1.0 + LN3, 2.0]]]])


def test_ngwp_pool_by_hand():
    # class 0: sum m z = 1/4 * 1 + 1/2 * 2 = 1.25, sum m = 0.75
    # class 1: sum m z = 3/4 * (1 + ln 3) + 1/2 * 2, sum m = 1.25
    pooled = ngwp_pool(SCORES_1x2)
    assert pooled.shape == (1, 2)
    _close(pooled[0, 0], 1.25 / (1.0 + 0.75))
    _close(pooled[0, 1], (0.75 * (1.0 + LN3) + 1.0) / (1.0 + 1.25))
    # eps = 0: the plain m-weighted mean of z
    _close(ngwp_pool(SCORES_1x2, eps=0.0)[0, 0], 1.25 / 0.75)


def test_focal_penalty_by_hand():
    # mean mask over |I| = 2 pixels: class 0 (1/4 + 1/2) / 2 = 0.375, class 1 0.625
    foc = focal_penalty(SCORES_1x2, lam=0.01, gamma=3.0)
    assert foc.shape == (1, 2)
    _close(foc[0, 0], (1 - 0.375) ** 3 * math.log(0.01 + 0.375))
    _close(foc[0, 1], (1 - 0.625) ** 3 * math.log(0.01 + 0.625))
    _close(focal_penalty(SCORES_1x2, lam=0.5, gamma=1.0)[0, 0], (1 - 0.375) * math.log(0.5 + 0.375))


def test_image_scores_are_ngwp_plus_focal_logits():
    expected = (0.75 * (1.0 + LN3) + 1.0) / 2.25 + 0.375**3 * math.log(0.635)
    _close(image_scores(SCORES_1x2)[0, 1], expected)


def test_pooling_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ngwp_pool(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        ngwp_pool(SCORES_1x2, eps=-1.0)
    with pytest.raises(ValueError):
        focal_penalty(SCORES_1x2, lam=-0.1)


# 1 image, 4 channels (background, old, new a, new b), 2x2 identical pixels:
# z = (0, 0, ln 2, 0) everywhere -> m = (1/5, 1/5, 2/5, 1/5), |I| = 4.
SCORES_4 = torch.tensor([0.0, 0.0, LN2, 0.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2).contiguous()


def _pooled_logit(z, m, n=4, lam=0.01, gamma=3.0):
    return n * m * z / (1.0 + n * m) + (1.0 - m) ** gamma * math.log(lam + m)


def test_classification_loss_by_hand():
    labels = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # image has new class a, not b
    s_a = _pooled_logit(LN2, 0.4)
    s_b = _pooled_logit(0.0, 0.2)
    # Eq. 3 over K = {a, b}: -1/2 [log σ(s_a) + log(1 - σ(s_b))]
    expected = -0.5 * (math.log(_sigmoid(s_a)) + math.log(1.0 - _sigmoid(s_b)))
    _close(classification_loss(SCORES_4, labels, [2, 3]), expected)
    # labels outside K are not read
    _close(classification_loss(SCORES_4, torch.tensor([[0.0, 0.0, 1.0, 0.0]]), [2, 3]), expected)
    # K = {a} only (|K| = 1, no averaging with b)
    _close(classification_loss(SCORES_4, labels, [2]), -math.log(_sigmoid(s_a)))


def test_classification_loss_averages_over_batch():
    scores = torch.cat([SCORES_4, SCORES_4])
    labels = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    s_a, s_b = _pooled_logit(LN2, 0.4), _pooled_logit(0.0, 0.2)
    first = 0.5 * (_bce(1.0, s_a) + _bce(0.0, s_b))
    second = 0.5 * (_bce(0.0, s_a) + _bce(1.0, s_b))
    _close(classification_loss(scores, labels, [2, 3]), 0.5 * (first + second))


def test_classification_loss_rejects_bad_classes_and_labels():
    labels = torch.zeros(1, 4)
    for classes in ([], [2, 2], [4], [-1]):
        with pytest.raises(ValueError):
            classification_loss(SCORES_4, labels, classes)
    with pytest.raises(ValueError):
        classification_loss(SCORES_4, torch.zeros(1, 2), [0])


def test_localization_prior_loss_by_hand():
    # z: 3 channels (background, old, new), 1x2 pixels; the old model has 2 channels.
    scores = torch.tensor([[[[0.0, LN3]], [[LN3, -1.0]], [[100.0, -100.0]]]])
    old_logits = torch.tensor([[[[0.0, LN3]], [[-LN3, 0.0]]]])  # ω = (1/2, 3/4), (1/4, 1/2)
    omega = [[0.5, 0.75], [0.25, 0.5]]
    z = [[0.0, LN3], [LN3, -1.0]]
    expected = sum(_bce(omega[c][i], z[c][i]) for c in range(2) for i in range(2)) / (2 * 2)
    _close(localization_prior_loss(scores, old_logits), expected)
    # the new channel is not supervised
    other_new = scores.clone()
    other_new[:, 2] = 0.0
    _close(localization_prior_loss(other_new, old_logits), expected)


def test_localization_prior_loss_detaches_old_model_and_checks_shapes():
    scores = torch.randn(1, 3, 2, 2, requires_grad=True)
    old_logits = torch.randn(1, 2, 2, 2, requires_grad=True)
    localization_prior_loss(scores, old_logits).backward()
    assert old_logits.grad is None
    assert scores.grad[:, :2].abs().sum() > 0 and scores.grad[:, 2].abs().sum() == 0
    with pytest.raises(ValueError, match="interpolate"):
        localization_prior_loss(scores, torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError):
        localization_prior_loss(scores, torch.randn(1, 4, 2, 2))


# One 3-class pixel per column: column 0 z = (0, ln 2, ln 3) -> m = (1/6, 2/6, 3/6);
# column 1 z = (ln 5, 0, ln 2) -> m = (5/8, 1/8, 2/8).
MASKS_3 = torch.tensor([[[[0.0, math.log(5.0)]], [[LN2, 0.0]], [[LN3, LN2]]]]).softmax(dim=1)


def test_hard_pseudo_labels_by_hand():
    hard = hard_pseudo_labels(MASKS_3)
    assert hard.dtype == MASKS_3.dtype
    torch.testing.assert_close(hard, torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]], [[1.0, 0.0]]]]))
    # a tie goes to the lowest index, still one-hot
    tie = hard_pseudo_labels(torch.tensor([0.4, 0.4, 0.2]).view(1, 3, 1, 1))
    assert tie.flatten().tolist() == [1.0, 0.0, 0.0]


def test_soft_pseudo_labels_by_hand():
    q = soft_pseudo_labels(MASKS_3, alpha=0.5)
    # column 0: 0.5 * (0, 0, 1) + 0.5 * (1/6, 2/6, 3/6); column 1: 0.5 * (1, 0, 0) + 0.5 * (5/8, 1/8, 2/8)
    expected = torch.tensor([[[[1 / 12, 0.5 + 5 / 16]], [[2 / 12, 1 / 16]], [[0.5 + 3 / 12, 2 / 16]]]])
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(soft_pseudo_labels(MASKS_3, alpha=1.0), hard_pseudo_labels(MASKS_3))
    torch.testing.assert_close(soft_pseudo_labels(MASKS_3, alpha=0.0), MASKS_3)
    with pytest.raises(ValueError):
        soft_pseudo_labels(MASKS_3, alpha=1.5)


def test_wilson_target_by_hand():
    # channels: background, old, new; 1x2 pixels; old model: background, old.
    q = torch.tensor([[[[0.4, 0.9]], [[0.3, 0.05]], [[0.3, 0.05]]]])
    old_logits = torch.tensor([[[[LN3, -LN3]], [[0.0, math.log(4.0)]]]])  # σ: (3/4, 1/4), (1/2, 4/5)
    target = wilson_target(q, old_logits, new_classes=[2])
    expected = torch.tensor(
        [
            [
                [[0.4, 0.25]],  # background: pixel 0 min(3/4, 0.4) picks q, pixel 1 min(1/4, 0.9) picks the old model
                [[0.5, 0.8]],  # old class: σ(old), q ignored
                [[0.3, 0.05]],  # new class: q
            ]
        ]
    )
    torch.testing.assert_close(target, expected)
    assert q[0, 0, 0, 1] == 0.9  # input untouched


def test_wilson_target_checks_new_classes_and_shapes():
    q = torch.rand(1, 4, 2, 2)
    old_logits = torch.randn(1, 2, 2, 2)
    assert wilson_target(q, old_logits, [2, 3]).shape == (1, 4, 2, 2)
    for new_classes in ([1, 2], [3, 2], [2], [2, 3, 4], []):
        with pytest.raises(ValueError):
            wilson_target(q, old_logits, new_classes)
    with pytest.raises(ValueError):
        wilson_target(q, old_logits, [2, 3], background=2)
    with pytest.raises(ValueError):
        wilson_target(q, torch.randn(1, 2, 3, 3), [2, 3])


def test_segmentation_loss_by_hand():
    # 2 classes, 1x2 pixels
    logits = torch.tensor([[[[0.0, LN3]], [[LN3, -1.0]]]])
    target = torch.tensor([[[[0.25, 1.0]], [[0.5, 0.0]]]])
    pixel0 = _bce(0.25, 0.0) + _bce(0.5, LN3)
    pixel1 = _bce(1.0, LN3) + _bce(0.0, -1.0)
    _close(segmentation_loss(logits, target), (pixel0 + pixel1) / 2)  # sum over classes, mean over pixels
    valid = torch.tensor([[[True, False]]])
    _close(segmentation_loss(logits, target, valid), pixel0)


def test_segmentation_loss_detaches_target_and_handles_no_valid_pixel():
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    target = torch.rand(2, 3, 2, 2, requires_grad=True)
    segmentation_loss(logits, target).backward()
    assert target.grad is None and logits.grad.abs().sum() > 0
    loss = segmentation_loss(logits, target.detach(), torch.zeros(2, 2, 2, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    with pytest.raises(ValueError):
        segmentation_loss(logits, target[:, :2])
    with pytest.raises(ValueError):
        segmentation_loss(logits, target, torch.ones(2, 3, 3, dtype=torch.bool))


def test_restrict_to_image_labels_zeroes_every_unlabelled_object_channel():
    # 2 images, channels: background, old, new a, new b; 1x1 pixel
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]).view(2, 4, 1, 1)
    labels = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])  # image 2: relaxed, old class labelled
    out = restrict_to_image_labels(q, labels)
    expected = torch.tensor([[0.1, 0.0, 0.3, 0.0], [0.5, 0.6, 0.0, 0.8]]).view(2, 4, 1, 1)
    torch.testing.assert_close(out, expected)  # background always kept; old channel only where labelled
    assert q[0, 3, 0, 0] == 0.4  # input untouched
    with pytest.raises(ValueError):
        restrict_to_image_labels(q, labels[:, :3])
    with pytest.raises(ValueError):
        restrict_to_image_labels(q, labels, background=4)


def test_pseudo_label_where_the_localizer_prefers_an_old_class():
    """Authors' masking (train.py: int_masks_orig[:, 1:] *= l1h) on a pixel whose localizer argmax is
    an old class: the labelled new class wins Eq. 5 and gets the α = 0.5 hard part, so the target is
    new = 0.5 + 0.5 m_new and background = min(σ(old_bg), 0.5 m_bg). Computed by hand."""
    # channels: background 0, old 1, new 2, new 3; the image is labelled with new class 2 only.
    m = torch.tensor([0.2, 0.5, 0.25, 0.05]).view(1, 4, 1, 1)  # localizer softmax: argmax = old class
    labels = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    masked = restrict_to_image_labels(m, labels)  # [0.2, 0, 0.25, 0]: argmax = new class 2
    q = soft_pseudo_labels(masked, alpha=0.5)
    old_logits = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    target = wilson_target(q, old_logits, new_classes=[2, 3])
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    expected = [min(sigmoid(1.0), 0.5 * 0.2), sigmoid(0.0), 0.5 + 0.5 * 0.25, 0.0]
    torch.testing.assert_close(target.view(4), torch.tensor(expected))


def test_localizer_shape_and_layers():
    torch.manual_seed(0)
    localizer = Localizer(16, num_classes=5).eval()
    assert localizer(torch.randn(2, 16, 7, 9)).shape == (2, 5, 7, 9)
    convs = [m for m in localizer.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3), (1, 1)]
    assert [c.out_channels for c in convs] == [256, 256, 5]
    assert all(c.stride == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in localizer.modules()) == 2
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in localizer.modules()) == 2
    with pytest.raises(ValueError):
        Localizer(16, num_classes=0)


def test_gradients_reach_every_localizer_parameter():
    torch.manual_seed(0)
    localizer = Localizer(8, num_classes=4, channels=16).train()
    scores = localizer(torch.randn(2, 8, 4, 4))
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    loss = classification_loss(scores, labels, [2, 3]) + localization_prior_loss(scores, torch.randn(2, 2, 4, 4))
    loss.backward()
    for name, param in localizer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# --- self-supervision of the localizer (Araslanov & Roth's PAMR, pseudo_gtmask, balanced CE) ---


def test_pamr_on_a_uniform_image_averages_the_neighbours():
    """Flat image: σ = 0 and every difference 0, so the affinity is uniform over the 8 neighbours
    of each dilation and one step replaces each pixel by their mean (replicate padding)."""
    a, b, c = 0.9, 0.3, 0.6
    masks = torch.tensor([a, b, c]).view(1, 1, 1, 3)
    image = torch.zeros(1, 3, 1, 3)
    # dilation 1 on a 1x3 row: pixel 0 sees (rows above/below replicated) a, a, b, a, b, a, a, b
    one = [(5 * a + 3 * b) / 8, (3 * a + 2 * b + 3 * c) / 8, (3 * b + 5 * c) / 8]
    torch.testing.assert_close(pamr_refine(image, masks, iterations=1, dilations=[1]).flatten(), torch.tensor(one))
    # dilation 2: pixel 0 sees columns 0, 0, 2 -> (5a + 3c) / 8; pixel 1 columns -1->0, 1, 3->2
    two = [(5 * a + 3 * c) / 8, (3 * a + 2 * b + 3 * c) / 8, (3 * a + 5 * c) / 8]
    both = pamr_refine(image, masks, iterations=1, dilations=[1, 2]).flatten()  # 16 neighbours, equal weights
    torch.testing.assert_close(both, (torch.tensor(one) + torch.tensor(two)) / 2)
    # two steps = the one-step map applied twice
    twice = pamr_refine(image, pamr_refine(image, masks, 1, [1]), 1, [1])
    torch.testing.assert_close(pamr_refine(image, masks, iterations=2, dilations=[1]), twice)
    assert torch.equal(pamr_refine(image, masks, iterations=0, dilations=[1]), masks)


def test_pamr_affinity_by_hand():
    """1x2 image (0, 1), dilation 1. Pixel 0's 9 taps hold six 0s and three 1s: unbiased σ =
    sqrt((6/9 + 3 * 4/9) / 8) = 1/2, so a differing neighbour gets -1 / (1e-8 + 0.05) and the 5
    equal ones 0, softmax over the 8 (authors' tap order: the differing ones are taps 2, 4, 7)."""
    image = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    far = math.exp(-1.0 / (1e-8 + 0.05))
    same, other = 1 / (5 + 3 * far), far / (5 + 3 * far)
    aff = pamr_affinity(image, [1])
    assert aff.shape == (1, 1, 8, 1, 2)
    s, o = same, other
    expected0 = torch.tensor([s, s, o, s, o, s, s, o], dtype=torch.float64)
    expected1 = torch.tensor([o, s, s, o, s, o, s, s], dtype=torch.float64)  # pixel 1, mirrored
    torch.testing.assert_close(aff[0, 0, :, 0, 0], expected0, rtol=1e-12, atol=0)
    torch.testing.assert_close(aff[0, 0, :, 0, 1], expected1, rtol=1e-12, atol=0)
    # a second, flat channel adds 0 to the logits: the channel mean halves them
    flat = torch.cat([image, torch.full_like(image, 5.0)], dim=1)
    half = math.exp(-0.5 / (1e-8 + 0.05))
    torch.testing.assert_close(
        pamr_affinity(flat, [1])[0, 0, 2, 0, 0], torch.tensor(half / (5 + 3 * half), dtype=torch.float64)
    )
    # one step on masks (m0, m1): pixel 0 becomes (5 m0 + 3 far m1) / (5 + 3 far)
    masks = torch.tensor([0.25, 0.75], dtype=torch.float64).view(1, 1, 1, 2)
    refined = pamr_refine(image, masks, iterations=1, dilations=[1])
    torch.testing.assert_close(refined[0, 0, 0, 0], torch.tensor(5 * s * 0.25 + 3 * o * 0.75, dtype=torch.float64))
    # invariant to a per-channel affine map of the image (a normalised image gives the same)
    torch.testing.assert_close(pamr_affinity(3.0 * image - 2.0, [1]), aff)


def test_pamr_keeps_two_flat_regions_apart():
    """Two flat colour regions differing in every channel: masks constant inside each region stay
    so (the other region's weight is below e^-18), whereas on a flat image the boundary blurs."""
    image = torch.zeros(1, 3, 6, 6)
    image[:, :, :, :3] = torch.tensor([0.8, 0.8, 0.8]).view(3, 1, 1)
    image[:, :, :, 3:] = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    masks = torch.zeros(1, 2, 6, 6)
    masks[:, 0, :, :3], masks[:, 1, :, :3] = 0.9, 0.1
    masks[:, 0, :, 3:], masks[:, 1, :, 3:] = 0.2, 0.8
    refined = pamr_refine(image, masks, iterations=10, dilations=[1, 2, 4, 8, 12])
    torch.testing.assert_close(refined, masks, atol=1e-6, rtol=0)
    blurred = pamr_refine(torch.zeros_like(image), masks, iterations=10, dilations=[1, 2, 4, 8, 12])
    assert (blurred - masks).abs().max() > 0.1
    torch.testing.assert_close(blurred.sum(dim=1), torch.ones(1, 6, 6))  # convex combinations


def test_pamr_rejects_bad_arguments():
    image, masks = torch.zeros(1, 3, 4, 4), torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="resize"):
        pamr_refine(torch.zeros(1, 3, 8, 8), masks)
    for dilations in ([], [0], [1.5]):
        with pytest.raises(ValueError):
            pamr_refine(image, masks, dilations=dilations)
    with pytest.raises(ValueError):
        pamr_refine(image, masks, iterations=-1)
    with pytest.raises(ValueError):
        pamr_refine(image, masks[0])


# 1 image, channels (background, c1, c2), 1x4 pixels. Thresholds: background 0.7 * 0.9 = 0.63,
# c1 0.6 * 0.8 = 0.48, c2 max(0.6 * 0.3, 0.2) = 0.2 (the floor).
MASKS_GT = torch.tensor([[[[0.9, 0.5, 0.1, 0.7]], [[0.05, 0.4, 0.8, 0.5]], [[0.05, 0.25, 0.1, 0.3]]]])


def test_pseudo_gt_mask_by_hand():
    # pixel 0: background; pixel 1: c2 (0.25 > floor 0.2); pixel 2: c1; pixel 3: all three -> ambiguous
    expected = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0, 0.0]]]])
    gt = pseudo_gt_mask(MASKS_GT, cutoff_top=0.6, cutoff_bkg=0.7, cutoff_low=0.2)
    assert gt.dtype == MASKS_GT.dtype
    torch.testing.assert_close(gt, expected)
    kept = expected.clone()
    kept[..., 3] = 1.0  # without the ambiguity rule pixel 3 keeps its three classes
    torch.testing.assert_close(pseudo_gt_mask(MASKS_GT, 0.6, 0.7, 0.2, ambiguous=False), kept)
    # floor 0.3: c2 needs > 0.3, none of its pixels; pixel 3 is then background + c1, still ambiguous
    higher = expected.clone()
    higher[0, 2] = 0.0
    torch.testing.assert_close(pseudo_gt_mask(MASKS_GT, 0.6, 0.7, 0.3), higher)
    # a channel zeroed by the image labels never passes the floor
    zeroed = MASKS_GT.clone()
    zeroed[:, 2] = 0.0
    assert pseudo_gt_mask(zeroed)[:, 2].sum() == 0
    for bad in ({"cutoff_top": 1.5}, {"cutoff_low": -0.1}, {"background": 3}):
        with pytest.raises(ValueError):
            pseudo_gt_mask(MASKS_GT, **bad)


# Pseudo GT on 1x4 pixels: background, background, c1, none. Logits: pixel 0 (0, 0, 0) -> CE ln 3;
# pixel 1 (ln 2, 0, 0) -> p_bg = 1/2, CE ln 2; pixel 2 (0, ln 3, 0) -> p_c1 = 3/5, CE ln 5/3; pixel 3 ignored.
PSEUDO_GT = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]]])
LOGITS_GT = torch.tensor([[[[0.0, LN2, 0.0, 5.0]], [[0.0, 0.0, LN3, -5.0]], [[0.0, 0.0, 0.0, 1.0]]]])


def test_balanced_mask_cross_entropy_by_hand():
    labels = torch.tensor([[0.0, 1.0, 0.0]])  # c1 only: 1 + 1 classes expected, both found
    # N_bg = 2, N_c1 = 1, N = 3: weights (3 - 2) / 4 = 1/4 for background, (3 - 1) / 4 = 1/2 for c1
    expected = (0.25 * LN3 + 0.25 * LN2 + 0.5 * math.log(5 / 3)) / 4
    _close(balanced_mask_cross_entropy(LOGITS_GT, PSEUDO_GT, labels), expected)
    # the background entry of the labels is not read
    _close(balanced_mask_cross_entropy(LOGITS_GT, PSEUDO_GT, torch.tensor([[1.0, 1.0, 0.0]])), expected)
    # c2 labelled but absent from the pseudo GT: the image is dropped
    assert float(balanced_mask_cross_entropy(LOGITS_GT, PSEUDO_GT, torch.tensor([[0.0, 1.0, 1.0]]))) == 0.0
    # batch of two, the second dropped: mean over the batch halves the loss
    two = balanced_mask_cross_entropy(
        torch.cat([LOGITS_GT, LOGITS_GT]), torch.cat([PSEUDO_GT, PSEUDO_GT]), torch.tensor([[0, 1, 0], [0, 1, 1.0]])
    )
    _close(two, expected / 2)
    # pixel 1 not valid: N_bg = 1, N = 2, weights 1/3 each; the mean still over the 4 pixels
    valid = torch.tensor([[[True, False, True, True]]])
    _close(balanced_mask_cross_entropy(LOGITS_GT, PSEUDO_GT, labels, valid), (LN3 / 3 + math.log(5 / 3) / 3) / 4)
    # a single class (background only, no label) gives weight 0
    only_bg = PSEUDO_GT.clone()
    only_bg[:, 1] = 0.0
    assert float(balanced_mask_cross_entropy(LOGITS_GT, only_bg, torch.zeros(1, 3))) == 0.0


def test_balanced_mask_cross_entropy_gradient_and_shapes():
    logits = LOGITS_GT.clone().requires_grad_(True)
    pseudo = PSEUDO_GT.clone().requires_grad_(True)
    balanced_mask_cross_entropy(logits, pseudo, torch.tensor([[0.0, 1.0, 0.0]])).backward()
    assert pseudo.grad is None
    assert logits.grad[..., :3].abs().sum() > 0 and logits.grad[..., 3].abs().sum() == 0  # ignored pixel
    with pytest.raises(ValueError):
        balanced_mask_cross_entropy(LOGITS_GT, PSEUDO_GT[:, :2], torch.zeros(1, 3))
    with pytest.raises(ValueError):
        balanced_mask_cross_entropy(LOGITS_GT, PSEUDO_GT, torch.zeros(1, 2))
    with pytest.raises(ValueError):
        balanced_mask_cross_entropy(LOGITS_GT, PSEUDO_GT, torch.zeros(1, 3), torch.ones(1, 2, 2, dtype=torch.bool))


def test_feature_distillation_loss_is_the_mse_by_hand():
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    old = torch.tensor([[[[1.0, 0.0], [3.0, 1.0]]]], requires_grad=True)
    loss = feature_distillation_loss(features, old)
    _close(loss.detach(), (0 + 4 + 0 + 9) / 4)
    loss.backward()
    assert old.grad is None
    torch.testing.assert_close(features.grad, torch.tensor([[[[0.0, 1.0], [0.0, 1.5]]]]))  # 2 (f - f_old) / 4
    with pytest.raises(ValueError):
        feature_distillation_loss(features, torch.zeros(1, 1, 2, 3))
