"""The FMWISS objective (Yu et al. CVPR 2023, Sec. 3.3-3.5, 4.2) on a tiny segmenter: warm-up,
gradients, targets and one run through the shared training loop."""

import math

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from pipeline.data.classes import VOID
from pipeline.methods.base import StepContext
from pipeline.methods.fmwiss.losses import old_class_targets
from pipeline.methods.fmwiss.method import FMWISS, segmenter_atrous_rates
from pipeline.models.segmenter import build_segmenter
from pipeline.train.loop import LoopConfig, fit

MODEL_CFG = {"backbone": "resnet18", "output_stride": 16, "pretrained": "none"}
NUM_OLD, NEW = 16, [16, 17, 18, 19, 20]  # 15-5, step 1


@pytest.fixture(scope="module")
def step():
    """(old model, fresh copy of the step-1 model factory, context) for 15-5 step 1."""
    torch.manual_seed(0)
    old = build_segmenter(MODEL_CFG, [NUM_OLD])
    state = {k: v.clone() for k, v in old.state_dict().items()}
    context = StepContext.build("15-5", 1, old)

    def new_model():
        model = build_segmenter(MODEL_CFG, [NUM_OLD])
        model.load_state_dict(state)
        model.classifier.add_step(len(NEW), init=FMWISS.classifier_init)
        return model

    return old, new_model, context


def _objective(model, context, **kwargs):
    return FMWISS(
        context, model.backbone.feature_info.channels()[-1], atrous_rates=segmenter_atrous_rates(model), **kwargs
    )


def _sample(i: int, size: int = 64) -> dict:
    """One training sample as the data side gives it (supervision 'fmwiss')."""
    g = torch.Generator().manual_seed(i)
    image = torch.randn(3, size, size, generator=g)
    mask = torch.zeros(size, size, dtype=torch.long)
    labels = torch.zeros(NUM_OLD + len(NEW))
    pseudo = torch.zeros(len(NEW), size, size)
    pasted = torch.zeros(size, size, dtype=torch.long)
    new = NEW[i % 2 + 1]  # 17 or 18
    labels[new] = 1.0
    pseudo[NEW.index(new), : size // 2, : size // 2] = 1.0
    pasted[size // 2 + 8 :, size // 2 + 8 :] = 3 + i % 2  # an old class instance pasted
    mask[-4:] = VOID  # crop padding
    return {
        "id": f"img{i}",
        "image": image,
        "valid": mask != VOID,
        "labels": labels,
        "pseudo": pseudo,
        "pasted": pasted,
    }


def _batch(n: int = 2) -> dict:
    samples = [_sample(i) for i in range(n)]
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0] if key != "id"}


def test_warmup_trains_only_the_teacher(step):
    old, new_model, context = step
    model = new_model()
    fmwiss = _objective(model, context, warmup_epochs=1)
    assert fmwiss.classifier_init == "prior"
    batch = _batch()
    losses = fmwiss.losses(batch, model(batch["image"]), epoch=0)
    assert set(losses) == {"new_bce", "dcl", "old_bce"}
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["dcl"].detach()) > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.parameters())  # the segmenter gets nothing
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fmwiss.teacher.parameters())
    assert all(p.grad is None for p in old.parameters())


def test_after_warmup_all_four_losses_train_everything(step):
    old, new_model, context = step
    model = new_model()
    fmwiss = _objective(model, context, warmup_epochs=1)
    batch = _batch()
    losses = fmwiss.losses(batch, model(batch["image"]), epoch=1)
    assert set(losses) == {"new_bce", "dcl", "old_bce", "all_bce"}
    assert all(torch.isfinite(v) and float(v.detach()) > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.classifier.blocks[1].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in fmwiss.teacher.parameters())
    assert all(p.grad is None for p in old.parameters())


def test_student_loss_does_not_train_the_teacher_and_teacher_losses_reach_the_encoder(step):
    _, new_model, context = step
    model = new_model()
    fmwiss = _objective(model, context, warmup_epochs=0)
    batch = _batch()
    losses = fmwiss.losses(batch, model(batch["image"]), epoch=0)
    losses["all_bce"].backward()  # Eq. 11: q is a constant
    assert all(p.grad is None for p in fmwiss.teacher.parameters())
    model.zero_grad(set_to_none=True)
    losses = fmwiss.losses(batch, model(batch["image"]), epoch=0)
    (losses["new_bce"] + losses["old_bce"]).backward()  # teacher features not detached
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.classifier.parameters())


def test_targets_old_channels_come_first_from_the_old_model(step):
    old, new_model, context = step
    model = new_model().eval()
    # the equations as printed (suppress_background is tested below)
    fmwiss = _objective(model, context, alpha=0.5, beta=0.9, suppress_background=False)
    fmwiss.teacher.eval()  # no dropout: the teacher gives the same logits twice
    batch = _batch()
    with torch.no_grad():
        out = model(batch["image"])
        t = fmwiss.targets(batch, out)
        old_logits = old(batch["image"])["out"]
        teacher = F.interpolate(
            fmwiss.teacher(out["features"])["logits"], size=(64, 64), mode="bilinear", align_corners=False
        )
    assert old_logits.shape[1] == context.num_old_channels == NUM_OLD
    assert t["teacher_logits"].shape == t["q"].shape == (2, NUM_OLD + len(NEW), 64, 64)
    torch.testing.assert_close(t["teacher_logits"], teacher)
    g = torch.sigmoid(old_logits)
    pasted = batch["pasted"] > 0
    # Eq. 9: σ(old) off the pasted instances, the pasted class's one-hot on them
    torch.testing.assert_close(t["old_target"].permute(0, 2, 3, 1)[~pasted], g.permute(0, 2, 3, 1)[~pasted])
    on = t["old_target"].permute(0, 2, 3, 1)[pasted]
    assert torch.equal(on.argmax(1), batch["pasted"][pasted]) and torch.equal(on.sum(1), torch.ones(len(on)))
    torch.testing.assert_close(t["old_target"], old_class_targets(old_logits, batch["pasted"]))
    # Eq. 10, old channels = the first |Y^{t-1}|: β g + (1 - β) σ(T)
    torch.testing.assert_close(t["q"][:, :NUM_OLD], 0.9 * t["old_target"] + 0.1 * torch.sigmoid(teacher[:, :NUM_OLD]))
    # new channels: unlabelled classes are 0; labelled ones α |T|_hard + (1 - α) σ(T), |T|_hard in {0, 1}
    for b in range(2):
        for c in NEW:
            q = t["q"][b, c]
            if batch["labels"][b, c] == 0:
                assert q.abs().max() == 0
            else:
                hard = (q - 0.5 * torch.sigmoid(teacher[b, c])) / 0.5
                assert torch.all(
                    torch.isclose(hard, torch.zeros_like(hard), atol=1e-5)
                    | torch.isclose(hard, torch.ones_like(hard), atol=1e-5)
                )


def test_param_groups_and_modules(step):
    _, new_model, context = step
    model = new_model()
    fmwiss = _objective(model, context, head_lr_mult=10.0)
    assert segmenter_atrous_rates(model) == [6, 12, 18]
    assert fmwiss.modules() == {"teacher": fmwiss.teacher}
    groups = fmwiss.param_groups(model, 0.001)
    assert [g.get("lr") for g in groups] == [0.001, pytest.approx(0.01), pytest.approx(0.01)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()} | {id(p) for p in fmwiss.teacher.parameters()}
    with pytest.raises(KeyError, match="pseudo"):
        batch = _batch()
        del batch["pseudo"]
        fmwiss.losses(batch, model(batch["image"]), epoch=9)
    with pytest.raises(ValueError):
        _objective(model, context, tau=0.0)
    with pytest.raises(ValueError):
        _objective(model, context, beta=2.0)


class _Samples(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return _sample(i)


def test_shared_loop_runs_warmup_then_eq12(step, tmp_path):
    _, new_model, context = step
    model = new_model()
    fmwiss = _objective(model, context, warmup_epochs=1)
    before = {k: v.clone() for k, v in model.named_parameters()}
    snapshots = []

    def validate(trained):  # called after every epoch (eval_every=1)
        snapshots.append({k: v.detach().clone() for k, v in trained.named_parameters()})
        return {}

    cfg = LoopConfig(epochs=2, batch_size=2, lr=0.01, precision="float32", seed=0, eval_every=1)
    history = fit(model, fmwiss, _Samples(), cfg, tmp_path, torch.device("cpu"), validate=validate)
    assert "all_bce" not in history[0] and all(math.isfinite(history[0][k]) for k in ("new_bce", "dcl", "old_bce"))
    assert math.isfinite(history[1]["all_bce"]) and math.isfinite(history[1]["loss"])
    # warm-up epoch: no segmenter parameter moved; epoch 2: the new classifier block did
    assert all(torch.equal(before[k], snapshots[0][k]) for k in before)
    assert not torch.equal(before["classifier.blocks.1.weight"], snapshots[1]["classifier.blocks.1.weight"])


def test_suppress_background_inside_new_object_masks():
    """With suppress_background, the teacher's background target is 0 inside the fused masks and
    the student's background target never exceeds 1 - its strongest new-class target."""
    import torch
    from torch import nn

    from pipeline.methods.base import StepContext
    from pipeline.methods.fmwiss.method import FMWISS

    class Old(nn.Module):  # background very sure everywhere (logit 4), one old class
        def forward(self, image):
            b, _, h, w = image.shape
            return {"out": torch.stack([torch.full((b, h, w), 4.0), torch.full((b, h, w), -4.0)], 1)}

    context = StepContext("toy", 1, Old(), num_old_channels=2, new_classes=[2], num_classes=3)
    batch = {
        "image": torch.zeros(1, 3, 4, 4),
        "valid": torch.ones(1, 4, 4, dtype=torch.bool),
        "labels": torch.tensor([[0.0, 0.0, 1.0]]),
        "pasted": torch.zeros(1, 4, 4, dtype=torch.long),
        "pseudo": torch.zeros(1, 1, 4, 4),
    }
    batch["pseudo"][0, 0, :2] = 1.0  # the new object covers the top half
    out = {"features": torch.randn(1, 8, 2, 2), "out": torch.zeros(1, 3, 4, 4)}
    for suppress in (True, False):
        objective = FMWISS(context, 8, atrous_rates=(1, 2, 3), teacher_channels=8, suppress_background=suppress)
        objective.teacher.eval()
        t = objective.targets(batch, out)
        inside, outside = t["old_target"][0, 0, :2], t["old_target"][0, 0, 2:]
        sigma4 = torch.sigmoid(torch.tensor(4.0))
        assert torch.allclose(outside, sigma4.expand_as(outside))
        if suppress:
            assert (inside == 0).all()
            assert (t["q"][:, 0] <= 1 - t["q"][:, 2] + 1e-6).all()
        else:
            assert torch.allclose(inside, sigma4.expand_as(inside))


def test_teacher_starts_at_the_prior_and_warms_up_before_the_training_epochs(step):
    _, new_model, context = step
    model = new_model()
    fmwiss = _objective(model, context, warmup_epochs=3, teacher_prior=0.01)
    bias = fmwiss.teacher.classifier.bias
    assert bias[0] == 0
    assert torch.allclose(torch.sigmoid(bias[1:]), torch.full((NUM_OLD + len(NEW) - 1,), 0.01))
    assert fmwiss.warmup_before_training == 3
    # a batch where the ASPP output is all zero (weights zeroed): the teacher's σ is the prior
    features = model(_batch()["image"])["features"]
    with torch.no_grad():
        fmwiss.teacher.classifier.weight.zero_()
        probs = torch.sigmoid(fmwiss.teacher(features)["logits"])
    assert torch.allclose(probs[:, 0], torch.full_like(probs[:, 0], 0.5))
    assert torch.allclose(probs[:, 1:], torch.full_like(probs[:, 1:], 0.01))
    untouched = _objective(model, context, teacher_prior=None)
    assert untouched.teacher.classifier.bias.abs().max() < 1.0  # PyTorch's default uniform init
    with pytest.raises(ValueError, match="teacher_prior"):
        _objective(model, context, teacher_prior=1.0)


def test_eq11_summed_over_classes_by_default_and_mean_on_request(step):
    """all_bce_reduction="sum" (default, WILSON Eq. 8) is |Y^t| = 21 times the mean of Eq. 11."""
    _, new_model, context = step
    model = new_model().eval()
    fmwiss = _objective(model, context, warmup_epochs=0)
    fmwiss.teacher.eval()
    assert fmwiss.all_bce_reduction == "sum"
    batch = _batch()
    with torch.no_grad():
        out = model(batch["image"])
        summed = fmwiss.losses(batch, out, epoch=0)["all_bce"]
        fmwiss.all_bce_reduction = "mean"
        mean = fmwiss.losses(batch, out, epoch=0)["all_bce"]
    assert float(summed) == pytest.approx(21 * float(mean), rel=1e-5)
    with pytest.raises(ValueError, match="all_bce_reduction"):
        _objective(model, context, all_bce_reduction="max")
