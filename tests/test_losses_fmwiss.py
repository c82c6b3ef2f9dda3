"""FMWISS (Yu et al. CVPR 2023) Eq. 6-12 and the ASPP teacher, against values computed by hand."""

import math

import pytest
import torch
from handcalc import bce as _bce
from handcalc import close as _close

from pipeline.methods.fmwiss.losses import (
    IGNORE,
    all_class_bce_loss,
    contrastive_pixel_classes,
    dense_contrastive_loss,
    distillation_targets,
    new_class_bce_loss,
    occlude_pseudo_labels,
    old_class_bce_loss,
    old_class_targets,
    overall_loss_terms,
    sample_class_points,
)
from pipeline.methods.fmwiss.teacher import ASPPTeacher

LN3 = math.log(3.0)


# --- Eq. 6 ----------------------------------------------------------------------------------------

# 1 image, channels (background, old, new a, new b), 2x2 pixels (row-major p0..p3).
T_2x2 = torch.tensor(
    [
        [
            [[5.0, 5.0], [5.0, 5.0]],  # background (not read by Eq. 6)
            [[-5.0, -5.0], [-5.0, -5.0]],  # old (not read by Eq. 6)
            [[LN3, 0.0], [-LN3, 2.0]],  # new a
            [[0.0, -1.0], [LN3, 0.0]],  # new b
        ]
    ]
)
M_2x2 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]]])  # masks of a, b
T_A, T_B = [LN3, 0.0, -LN3, 2.0], [0.0, -1.0, LN3, 0.0]
M_A, M_B = [1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]


def test_new_class_bce_loss_by_hand():
    # 1/(|C^t| |I|) = 1/(2 * 4)
    expected = sum(_bce(M_A[i], T_A[i]) + _bce(M_B[i], T_B[i]) for i in range(4)) / 8
    _close(new_class_bce_loss(T_2x2, M_2x2, [2, 3]), expected)
    # p0 = σ(ln 3) = 3/4 against 1: -log(3/4); p2 of b also -log(3/4); p2 of a: -log(1 - 1/4)
    assert math.isclose(_bce(1.0, LN3), -math.log(0.75))
    # void pixels are not counted: only p0 and p3 -> 1/(2 * 2)
    valid = torch.tensor([[[True, False], [False, True]]])
    expected = sum(_bce(M_A[i], T_A[i]) + _bce(M_B[i], T_B[i]) for i in (0, 3)) / 4
    _close(new_class_bce_loss(T_2x2, M_2x2, [2, 3], valid), expected)
    # background and old channels do not matter
    other = T_2x2.clone()
    other[:, :2] = 0.0
    _close(new_class_bce_loss(other, M_2x2, [2, 3], valid), expected)


def test_new_class_bce_loss_checks():
    with pytest.raises(ValueError):
        new_class_bce_loss(T_2x2, M_2x2, [1, 2])  # new classes must be the last channels
    with pytest.raises(ValueError):
        new_class_bce_loss(T_2x2, M_2x2[:, :1], [2, 3])
    with pytest.raises(ValueError):
        new_class_bce_loss(T_2x2, torch.zeros(1, 2, 4, 4), [2, 3])
    with pytest.raises(ValueError):
        new_class_bce_loss(T_2x2, M_2x2, [2, 3], torch.ones(1, 3, 3, dtype=torch.bool))
    logits = T_2x2.clone().requires_grad_(True)
    new_class_bce_loss(logits, M_2x2, [2, 3]).backward()
    assert logits.grad[:, :2].abs().sum() == 0 and logits.grad[:, 2:].abs().sum() > 0


# --- Eq. 7 ----------------------------------------------------------------------------------------


def _info_nce_by_hand(points, classes, tau):
    """Eq. 7 written out in plain Python: mean over anchors with a positive of the mean over
    positives of -log(e^{i.q+/τ} / (e^{i.q+/τ} + sum_{q-} e^{i.q-/τ}))."""

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))

    per_anchor = []
    for i, (p, c) in enumerate(zip(points, classes)):
        positives = [q for j, (q, d) in enumerate(zip(points, classes)) if j != i and d == c]
        negatives = [q for q, d in zip(points, classes) if d != c]
        if not positives:
            continue
        neg = sum(math.exp(dot(p, q) / tau) for q in negatives)
        terms = [-math.log(math.exp(dot(p, q) / tau) / (math.exp(dot(p, q) / tau) + neg)) for q in positives]
        per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor)


def test_dense_contrastive_loss_closed_form():
    # two points of class 5 at (1, 0), one of class 7 at (0, 1): anchors 0 and 1 each have one
    # positive (i.q+ = 1) and one negative (i.q- = 0); anchor 2 has no positive and is skipped.
    # L = -log(e^{1/τ} / (e^{1/τ} + 1)) = log(1 + e^{-1/τ})
    points = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    classes = torch.tensor([5, 5, 7])
    for tau in (0.1, 0.5, 1.0):
        _close(dense_contrastive_loss(points, classes, tau), math.log(1.0 + math.exp(-1.0 / tau)))


def test_dense_contrastive_loss_against_plain_python():
    s, c = math.sin(0.3), math.cos(0.3)
    points = [[1.0, 0.0, 0.0], [c, s, 0.0], [0.0, 1.0, 0.0], [0.0, c, s]]
    classes = [1, 1, 0, 0]
    for tau in (0.1, 0.7):
        expected = _info_nce_by_hand(points, classes, tau)
        _close(dense_contrastive_loss(torch.tensor(points), torch.tensor(classes), tau), expected)
    # three classes, one of them a single point (only a negative for the others)
    classes = [1, 1, 2, 0]
    expected = _info_nce_by_hand(points, classes, 0.1)
    _close(dense_contrastive_loss(torch.tensor(points), torch.tensor(classes), 0.1), expected)
    # the denominator keeps one positive at a time (not SupCon's sum over every positive)
    three = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    expected = _info_nce_by_hand(three, [3, 3, 3], 0.1)
    assert expected == 0.0  # no negatives: every term is -log(1)
    _close(dense_contrastive_loss(torch.tensor(three), torch.tensor([3, 3, 3]), 0.1), 0.0)


def test_dense_contrastive_loss_degenerate_cases_have_finite_gradients():
    points = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    for classes in ([0, 1, 2, 3], [2, 2, 2, 2]):  # no positive at all / no negative at all
        loss = dense_contrastive_loss(points, torch.tensor(classes), 0.1)
        assert float(loss.detach()) == 0.0
        loss.backward()
        assert torch.isfinite(points.grad).all()
        points.grad = None
    loss = dense_contrastive_loss(points, torch.tensor([0, 0, 1, 1]), 0.1)
    loss.backward()
    assert torch.isfinite(points.grad).all() and points.grad.abs().sum() > 0
    empty = dense_contrastive_loss(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), 0.1)
    assert float(empty) == 0.0
    with pytest.raises(ValueError):
        dense_contrastive_loss(points, torch.tensor([0, 1]), 0.1)
    with pytest.raises(ValueError):
        dense_contrastive_loss(points, torch.tensor([0, 0, 1, 1]), 0.0)


def test_contrastive_pixel_classes():
    # new classes 16, 17 on a 2x3 image; an old class 3 pasted at (1, 2); void at (0, 0).
    pseudo = torch.zeros(1, 2, 2, 3)
    pseudo[0, 0, 0, :2] = 1.0  # class 16 at (0, 0), (0, 1)
    pseudo[0, 1, 0, 1:] = 1.0  # class 17 at (0, 1), (0, 2): (0, 1) is ambiguous
    pseudo[0, 1, 1, 2] = 1.0  # under the pasted instance
    pasted = torch.zeros(1, 2, 3, dtype=torch.long)
    pasted[0, 1, 2] = 3
    valid = torch.ones(1, 2, 3, dtype=torch.bool)
    valid[0, 0, 0] = False
    classes = contrastive_pixel_classes(pseudo, pasted, [16, 17], valid)
    assert classes.tolist() == [[[IGNORE, IGNORE, 17], [0, 0, 3]]]
    assert contrastive_pixel_classes(pseudo, pasted, [16, 17]).tolist() == [[[16, IGNORE, 17], [0, 0, 3]]]
    with pytest.raises(ValueError):
        contrastive_pixel_classes(pseudo, pasted, [16], valid)


def test_sample_class_points_draws_at_most_k_per_class_and_only_that_class():
    classes = torch.full((2, 8, 8), IGNORE, dtype=torch.long)
    classes[0, :4] = 0  # 32 pixels of class 0
    classes[1, :2, :3] = 16  # 6 pixels of class 16
    classes[1, 5:, :] = 3  # 24 pixels of class 3, in the second image only
    classes[0, 7, 7] = 17  # 1 pixel of class 17
    generator = torch.Generator().manual_seed(0)
    index = sample_class_points(classes, 10, generator)
    drawn = classes.flatten()[index]
    assert len(set(index.tolist())) == len(index)  # without replacement
    assert (drawn >= 0).all()  # never an ignored pixel
    counts = {c: int((drawn == c).sum()) for c in (0, 3, 16, 17)}
    assert counts == {0: 10, 3: 10, 16: 6, 17: 1}
    assert drawn.tolist() == sorted(drawn.tolist())  # grouped by class
    # same generator state → same points; another → other points of class 0
    again = sample_class_points(classes, 10, torch.Generator().manual_seed(0))
    assert torch.equal(index, again)
    other = sample_class_points(classes, 10, torch.Generator().manual_seed(1))
    assert set(other[drawn == 0].tolist()) != set(index[drawn == 0].tolist())
    # uniform over all pixels of the class: over many draws every pixel of class 0 is picked
    seen = set()
    for seed in range(30):
        idx = sample_class_points(classes, 10, torch.Generator().manual_seed(seed))
        seen |= set(idx[classes.flatten()[idx] == 0].tolist())
    assert len(seen) == 32
    assert sample_class_points(torch.full((1, 2, 2), IGNORE), 10).numel() == 0
    with pytest.raises(ValueError):
        sample_class_points(classes, 0)


# --- Eq. 8-9 --------------------------------------------------------------------------------------

# old model: background + 3 old classes, 1x2 pixels; pixel 1 carries a pasted instance of class 2.
OLD_LOGITS = torch.tensor([[[[LN3, LN3]], [[0.0, -LN3]], [[-LN3, 0.0]], [[0.0, LN3]]]])
PASTED = torch.tensor([[[0, 2]]])


def test_old_class_targets_by_hand():
    target = old_class_targets(OLD_LOGITS, PASTED)
    # pixel 0 not pasted: σ(old) = (3/4, 1/2, 1/4, 1/2); pixel 1: one-hot of class 2
    expected = torch.tensor([[[[0.75, 0.0]], [[0.5, 0.0]], [[0.25, 1.0]], [[0.5, 0.0]]]])
    torch.testing.assert_close(target, expected)
    # literal Eq. 9: only the pasted class becomes 1, the others keep σ(old)
    literal = old_class_targets(OLD_LOGITS, PASTED, one_hot=False)
    expected = torch.tensor([[[[0.75, 0.75]], [[0.5, 0.25]], [[0.25, 1.0]], [[0.5, 0.75]]]])
    torch.testing.assert_close(literal, expected)
    with pytest.raises(ValueError):
        old_class_targets(OLD_LOGITS, torch.tensor([[[0, 4]]]))  # not an old class
    with pytest.raises(ValueError):
        old_class_targets(OLD_LOGITS, torch.zeros(1, 2, 2, dtype=torch.long))


def test_occlude_pseudo_labels():
    pseudo = torch.ones(1, 2, 1, 2)
    torch.testing.assert_close(occlude_pseudo_labels(pseudo, PASTED), torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]]))


def test_old_class_bce_loss_by_hand():
    # teacher: 5 channels (4 old + 1 new), 1x2 pixels
    teacher = torch.tensor([[[[0.0, 1.0]], [[LN3, -1.0]], [[2.0, 0.0]], [[-LN3, 0.0]], [[9.0, -9.0]]]])
    target = old_class_targets(OLD_LOGITS, PASTED)
    g = [[0.75, 0.0], [0.5, 0.0], [0.25, 1.0], [0.5, 0.0]]
    t = [[0.0, 1.0], [LN3, -1.0], [2.0, 0.0], [-LN3, 0.0]]
    expected = sum(_bce(g[c][i], t[c][i]) for c in range(4) for i in range(2)) / (4 * 2)
    _close(old_class_bce_loss(teacher, target), expected)
    expected = sum(_bce(g[c][1], t[c][1]) for c in range(4)) / 4
    _close(old_class_bce_loss(teacher, target, torch.tensor([[[False, True]]])), expected)
    logits = teacher.clone().requires_grad_(True)
    old_class_bce_loss(logits, target).backward()
    assert logits.grad[:, :4].abs().sum() > 0 and logits.grad[:, 4].abs().sum() == 0  # new channel untouched
    with pytest.raises(ValueError):
        old_class_bce_loss(teacher[:, :4], target)


# --- Eq. 10-12 ------------------------------------------------------------------------------------


def test_distillation_targets_by_hand():
    # channels: background, old, new a, new b; 1x2 pixels; old targets g given.
    teacher = torch.tensor([[[[LN3, -LN3]], [[0.0, -LN3]], [[-LN3, LN3]], [[0.0, 0.0]]]])
    # σ(T): pixel 0 (3/4, 1/2, 1/4, 1/2) argmax background; pixel 1 (1/4, 1/4, 3/4, 1/2) argmax a
    g = torch.tensor([[[[0.9, 0.1]], [[0.0, 0.3]]]])
    q = distillation_targets(teacher, g, [2, 3], alpha=0.5, beta=0.9)
    expected = torch.tensor(
        [
            [
                [[0.9 * 0.9 + 0.1 * 0.75, 0.9 * 0.1 + 0.1 * 0.25]],  # background: β g + (1 - β) σ(T)
                [[0.9 * 0.0 + 0.1 * 0.5, 0.9 * 0.3 + 0.1 * 0.25]],  # old
                [[0.5 * 0 + 0.5 * 0.25, 0.5 * 1 + 0.5 * 0.75]],  # new a: α hard + (1 - α) σ(T)
                [[0.5 * 0 + 0.5 * 0.5, 0.5 * 0 + 0.5 * 0.5]],  # new b: never the argmax
            ]
        ]
    )
    torch.testing.assert_close(q, expected)
    # α = 1: the hard one-hot over all classes (pixel 0's argmax is the background, so no new 1)
    hard = distillation_targets(teacher, g, [2, 3], alpha=1.0, beta=0.9)
    assert hard[0, 2:, 0].flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    # image not labelled with a: q_a = 0 and the argmax goes to b at pixel 1 (3/4 > 1/2 excluded)
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    restricted = distillation_targets(teacher, g, [2, 3], alpha=0.5, beta=0.9, image_labels=labels)
    torch.testing.assert_close(restricted[:, :2], expected[:, :2])  # old channels unchanged
    torch.testing.assert_close(restricted[0, 2], torch.zeros(1, 2))
    torch.testing.assert_close(restricted[0, 3], torch.tensor([[0.25, 0.5 * 1 + 0.5 * 0.5]]))


def test_distillation_targets_checks_and_detaches():
    teacher = torch.randn(1, 4, 2, 2, requires_grad=True)
    g = torch.rand(1, 2, 2, 2)
    assert not distillation_targets(teacher, g, [2, 3]).requires_grad
    for new_classes in ([1, 2], [3], [2, 3, 4]):
        with pytest.raises(ValueError):
            distillation_targets(teacher, g, new_classes)
    with pytest.raises(ValueError):
        distillation_targets(teacher, g, [2, 3], alpha=1.5)
    with pytest.raises(ValueError):
        distillation_targets(teacher, g, [2, 3], beta=-0.1)
    with pytest.raises(ValueError):
        distillation_targets(teacher, g, [2, 3], image_labels=torch.ones(1, 3))


def test_all_class_bce_loss_by_hand():
    logits = T_2x2
    q = torch.tensor(
        [[[[0.9, 0.8], [0.1, 0.0]], [[0.0, 0.1], [0.2, 0.3]], [[1.0, 0.0], [0.5, 0.25]], [[0.0, 0.0], [1.0, 0.75]]]]
    )
    lg = logits[0].flatten(1).tolist()
    qq = q[0].flatten(1).tolist()
    expected = sum(_bce(qq[c][i], lg[c][i]) for c in range(4) for i in range(4)) / (4 * 4)  # 1/(|Y^t| |I|)
    _close(all_class_bce_loss(logits, q), expected)
    valid = torch.tensor([[[False, True], [True, False]]])
    expected = sum(_bce(qq[c][i], lg[c][i]) for c in range(4) for i in (1, 2)) / (4 * 2)
    _close(all_class_bce_loss(logits, q, valid), expected)
    student = logits.clone().requires_grad_(True)
    target = q.clone().requires_grad_(True)
    all_class_bce_loss(student, target).backward()
    assert target.grad is None and student.grad.abs().sum() > 0
    assert float(all_class_bce_loss(logits, q, torch.zeros(1, 2, 2, dtype=torch.bool))) == 0.0
    with pytest.raises(ValueError):
        all_class_bce_loss(logits, q[:, :3])
    # "sum": over the classes per pixel, mean over the counted pixels (WILSON Eq. 8's normalisation)
    expected = sum(_bce(qq[c][i], lg[c][i]) for c in range(4) for i in (1, 2)) / 2
    _close(all_class_bce_loss(logits, q, valid, class_reduction="sum"), expected)
    with pytest.raises(ValueError, match="class_reduction"):
        all_class_bce_loss(logits, q, class_reduction="max")


def test_overall_loss_terms_sum_to_eq12():
    new, dcl, old, all_ = (torch.tensor(v) for v in (0.5, 2.0, 0.25, 0.125))
    terms = overall_loss_terms(new, dcl, old, all_, lambda_dcl=0.1)
    assert set(terms) == {"new_bce", "dcl", "old_bce", "all_bce"}
    _close(sum(terms.values()), 0.5 + 0.1 * 2.0 + 0.25 + 0.125)
    warmup = overall_loss_terms(new, dcl, old, None, lambda_dcl=1.0)
    assert set(warmup) == {"new_bce", "dcl", "old_bce"}
    _close(sum(warmup.values()), 0.5 + 2.0 + 0.25)
    with pytest.raises(ValueError):
        overall_loss_terms(new, dcl, old, all_, lambda_dcl=-1.0)


# --- the teacher ----------------------------------------------------------------------------------


def test_aspp_teacher_shapes_and_unit_embeddings():
    torch.manual_seed(0)
    teacher = ASPPTeacher(16, num_classes=5, atrous_rates=(6, 12, 18), channels=32).eval()
    out = teacher(torch.randn(2, 16, 7, 9))
    assert out["logits"].shape == (2, 5, 7, 9) and out["embedding"].shape == (2, 32, 7, 9)
    norms = out["embedding"].norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-5)
    dilations = [
        m.dilation[0] for m in teacher.aspp.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert dilations == [6, 12, 18]
    with pytest.raises(ValueError):
        ASPPTeacher(16, num_classes=0)
    with pytest.raises(ValueError):
        ASPPTeacher(16, num_classes=5, atrous_rates=(6, 12))
