"""The offline baselines' objective: hard pseudo-labels + old-model targets (WILSON Eq. 7-8)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.data.transforms import TrainTransform
from pipeline.methods import build_method
from pipeline.methods.base import StepContext
from pipeline.methods.pseudo.method import hard_pseudo_target


class FixedOld(nn.Module):
    """An 'old model' returning fixed logits (B, 2, 1, 2): background and one old class."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, image):
        return {"out": self.logits.expand(image.shape[0], -1, -1, -1)}


def test_hard_pseudo_target_one_hot():
    pseudo = torch.tensor([[[0, 2, 255]]])  # (1, 1, 3): background, new class 2, void
    q = hard_pseudo_target(pseudo, 3, [2])
    assert q.shape == (1, 3, 1, 3)
    assert q[0, :, 0, 0].tolist() == [1, 0, 0]
    assert q[0, :, 0, 1].tolist() == [0, 0, 1]
    assert q[0, :, 0, 2].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="pseudo-label value 1"):
        hard_pseudo_target(torch.tensor([[[1]]]), 3, [2])


def test_loss_equals_wilson_eq8_on_hand_made_targets():
    # 2 pixels; old model: background logit 2 / -1, old class logit -2 / 1.
    old = torch.tensor([[[[2.0, -1.0]], [[-2.0, 1.0]]]])
    context = StepContext("toy", 1, FixedOld(old).eval(), num_old_channels=2, new_classes=[2], num_classes=3)
    objective = build_method("cam", {"head_lr_mult": 10.0}, context)
    pseudo = torch.tensor([[[0, 2]]])  # pixel 0 background, pixel 1 the new class 2
    logits = torch.tensor([[[[0.5, -0.5]], [[0.0, 0.3]], [[-1.0, 2.0]]]])
    loss = objective.losses(
        {"image": torch.zeros(1, 3, 1, 2), "pseudo": pseudo, "valid": pseudo != 255}, {"out": logits}, 0
    )["seg"]
    s = lambda x: 1 / (1 + math.exp(-x))
    # q̂: background = min(σ(old_b), q_b); old class = σ(old); new class = one-hot of the pseudo-label.
    target = [[min(s(2.0), 1.0), min(s(-1.0), 0.0)], [s(-2.0), s(1.0)], [0.0, 1.0]]
    total = 0.0
    for c in range(3):
        for i in range(2):
            p, t = s(float(logits[0, c, 0, i])), target[c][i]
            total -= t * math.log(p) + (1 - t) * math.log(1 - p)
    assert float(loss) == pytest.approx(total / 2, rel=1e-5)  # summed over classes, mean over pixels


def test_train_transform_moves_extra_maps_with_the_mask():
    torch.manual_seed(3)
    image = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:30] = 7
    extra = np.stack([(mask == 7).astype(np.uint8), np.full_like(mask, 3)])
    out = TrainTransform(48, (0.7, 1.3))({"id": "x", "image": image, "mask": mask, "extra": extra})
    assert out["extra"].shape == (2, 48, 48)
    assert torch.equal(out["mask"] == 7, out["extra"][0] == 1)
    padding = out["mask"] == 255
    assert padding.any() and (out["extra"][1][padding] == 0).all() and (out["extra"][1][~padding] == 3).all()
    with pytest.raises(ValueError, match="extra maps"):
        TrainTransform(48)({"id": "x", "image": image, "mask": mask, "extra": extra[:, :10]})
