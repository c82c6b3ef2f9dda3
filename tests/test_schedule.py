"""The shared loop's learning-rate schedule: poly decay (WILSON Sec. 4.3), optionally after epochs
held at the base rate (a warm-up run before the training epochs, FMWISS Sec. 4.2)."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.objective import Objective
from pipeline.train.loop import LoopConfig, Trainer, held_poly_factor


def test_held_poly_factor_by_hand():
    # no hold: (1 - it / total) ** power, torch's PolynomialLR
    assert held_poly_factor(0, 0, 10, 0.9) == 1.0
    assert held_poly_factor(5, 0, 10, 0.9) == pytest.approx(0.5**0.9)
    assert held_poly_factor(10, 0, 10, 0.9) == 0.0
    # 4 held iterations of 10: 1 up to iteration 3, then the decay over the other 6
    assert [held_poly_factor(i, 4, 10, 1.0) for i in range(4)] == [1.0] * 4
    assert held_poly_factor(4, 4, 10, 1.0) == 1.0
    assert held_poly_factor(7, 4, 10, 1.0) == pytest.approx(0.5)
    assert held_poly_factor(7, 4, 10, 2.0) == pytest.approx(0.25)
    assert held_poly_factor(10, 4, 10, 1.0) == 0.0
    assert held_poly_factor(12, 4, 10, 1.0) == 0.0  # past the end: stays at 0


def test_no_hold_matches_torch_polynomial_lr():
    params = [nn.Parameter(torch.zeros(1))]
    reference = torch.optim.lr_scheduler.PolynomialLR(torch.optim.SGD(params, lr=0.1), total_iters=7, power=0.9)
    for it in range(8):
        assert held_poly_factor(it, 0, 7, 0.9) * 0.1 == pytest.approx(reference.get_last_lr()[0], rel=1e-6)
        reference.optimizer.step()
        reference.step()


class _Points(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"id": str(i), "image": torch.full((3, 2, 2), float(i)), "mask": torch.zeros(2, 2, dtype=torch.long)}


class _Objective(Objective):
    name = "probe"

    def __init__(self):
        self.lrs = []

    def param_groups(self, model, lr):
        return [{"params": list(model.parameters())}]

    def losses(self, batch, out, epoch):
        return {"l2": (out["out"] ** 2).mean()}


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_loop_holds_the_lr_for_hold_epochs_then_decays(tmp_path):
    objective = _Objective()
    cfg = LoopConfig(epochs=3, batch_size=2, lr=0.1, hold_epochs=1, poly_power=1.0, precision="float32")
    trainer = Trainer(_Model(), objective, _Points(), cfg, tmp_path, torch.device("cpu"))
    seen = []  # the lr each optimizer step uses (torch's step pre-hook, no monkeypatching)
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    trainer.fit()
    # 2 iterations per epoch: 2 held at 0.1, then 1 - k/4 over the last 4 iterations
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.075, 0.05, 0.025])
    with pytest.raises(ValueError, match="hold_epochs"):
        Trainer(
            _Model(),
            objective,
            _Points(),
            LoopConfig(epochs=2, batch_size=2, lr=0.1, hold_epochs=3),
            tmp_path,
            torch.device("cpu"),
        )
