"""CL4WSIS objectives on a tiny batch of the generated demo's multi-instance images (``demo_inst_*``):
step 0, Phase 1 and Phase 2 each lower their loss over a few iterations on one batch, and each runs
one epoch in the shared loop (Adam for step 0 and Phase 2, SGD for Phase 1) training what it should.

Task 10-10: step 0 learns classes 1-10, step 1 classes 11-20 from image labels."""

import copy

import numpy as np
import pytest
import torch
import yaml
from helpers.cl4wsis import INSTANCE, MODEL, one_thread  # noqa: F401 (one_thread: an autouse fixture)

from pipeline.data.instances import load_instance_map
from pipeline.data.synthetic import generate
from pipeline.data.transforms import pad_collate
from pipeline.io import write_json
from pipeline.methods import build_method
from pipeline.methods.base import StepContext, StepInputs
from pipeline.methods.cl4wsis.data import InstanceTargets
from pipeline.methods.cl4wsis.method import InstanceBase, Phase2
from pipeline.models.instance import build_instance_segmenter
from pipeline.train.loop import LoopConfig, Trainer

TASK, SIZE = "10-10", 64
TRAIN = {"crop_size": SIZE, "scale_range": [1.0, 1.0]}


def _cfg(**changes):
    """methods.cl4wsis of config.yaml, with the tiny model and the given changes."""
    with open("config.yaml") as f:
        cfg = yaml.safe_load(f)["methods"]["cl4wsis"]
    return {**cfg, "instance": INSTANCE, "sigma": 4.0, "pamr_iterations": 2, **changes}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cl4wsis_demo")
    generate(root, n_train=2, n_val=1, size=SIZE, seed=0, n_train_inst=8, n_val_inst=1)
    index = root / "index.json"
    write_json(index, {"root": str(root), "mask_dir": "SegmentationClassAug"})
    return root, index, [f"demo_inst_{j:06d}" for j in range(8)]


def _samples(demo, task_step=0):
    _, index, ids = demo
    torch.manual_seed(0)
    return InstanceTargets(index, ids, TRAIN, TASK, task_step, sigma=4.0)


def _labelled(samples):
    """Pixel-labelled samples with image labels of the step-1 classes present (11..20)."""
    out = []
    for sample in samples:
        labels = torch.zeros(21)
        present = [c for c in torch.unique(sample["gt"]).tolist() if 11 <= c <= 20]
        labels[present] = 1.0
        out.append({**sample, "labels": labels})
    return out


def _step1(seed=0):
    torch.manual_seed(seed)
    old = build_instance_segmenter(MODEL, [11], INSTANCE)
    model = copy.deepcopy(old)
    context = StepContext.build(TASK, 1, old)
    model.classifier.add_step(len(context.new_classes), init="prior")
    return model, context


def _iterate(objective, model, batch, optimizer, steps=6, seed=0):
    totals = []
    for _ in range(steps):
        torch.manual_seed(seed)  # the same random draws (FLAC rotation, dropout classes) every time
        model.train()
        objective.on_epoch_start(0, model)
        out = model(batch["image"])
        total = sum(objective.losses(batch, out, epoch=0).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    return totals


def test_instance_targets_keep_the_step_classes_instances(demo):
    root, _, ids = demo
    dataset = _samples(demo, 0)
    for i in range(len(dataset)):
        sample = dataset[i]
        gt = sample["gt"]
        things = (gt != 0) & (gt != 255)  # step 0: classes 1-10; 11-20 are background in gt
        assert torch.equal(sample["offset_weight"][0] > 0, things)
        assert sample["center"].max() <= 1.0 and sample["offset"][:, ~things].abs().max() == 0
        raw = load_instance_map(root / "SegmentationObject" / f"{ids[i]}.png")
        assert sample["image"].shape[-2:] == raw.shape  # scale 1, crop = image size: only a flip


def test_step0_lowers_its_loss_on_one_batch(demo):
    torch.manual_seed(0)
    model = build_instance_segmenter(MODEL, [11], INSTANCE)
    objective = InstanceBase.from_config(_cfg(), None, model)
    dataset = objective.dataset(StepInputs({"ids": demo[2], "task": TASK, "step": 0}, str(demo[1]), 11, TRAIN))
    batch = pad_collate([dataset[i] for i in range(4)])
    optimizer = torch.optim.Adam(objective.param_groups(model, 1e-3))
    totals = _iterate(objective, model, batch, optimizer)
    assert totals[-1] < 0.8 * totals[0], totals


def test_phase1_lowers_its_loss_on_one_batch(demo):
    model, context = _step1()
    method = build_method("cl4wsis", _cfg(warmup_epochs=0), context, model)
    phase1 = method.phase1()
    samples = _labelled([_samples(demo, 1)[i] for i in range(4)])
    batch = pad_collate([{k: s[k] for k in ("id", "image", "labels", "valid")} for s in samples])
    assert batch["labels"][:, 11:].sum() > 0
    parameters = [*model.segmenter.parameters(), *phase1.decoder.parameters(), *phase1.peak_generator.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    out = model.segmenter(batch["image"])
    names = set(phase1.losses(batch, out, epoch=0))
    assert names == {"cls", "loc", "peak", "flac", "seg", "self_sup", "feature_kd", "random_dropout"}
    totals = _iterate(phase1, model.segmenter, batch, optimizer)
    assert totals[-1] < totals[0], totals


class _GroundTruthPhase2(Phase2):
    """Phase 2 with the ground truth as the semantic map S (a Phase-1 Segmenter this good takes far
    longer to train than a test may run)."""

    def __init__(self, *args, semantic, **kwargs):
        super().__init__(*args, **kwargs)
        self.semantic = semantic

    def semantic_probabilities(self, image, logits, labels):
        gt = self.semantic.masked_fill(self.semantic == 255, 0)
        return torch.nn.functional.one_hot(gt, logits.shape[1]).permute(0, 3, 1, 2).float()


class _PeaksAtInstanceCenters(torch.nn.Module):
    """A Peak Generator answering with the ground-truth center heatmap of the new classes' instances
    in every class channel (a class's peaks count only inside that class's components)."""

    def __init__(self, maps):
        super().__init__()
        self.register_buffer("maps", maps)

    def forward(self, scores):
        return self.maps


def _aligned(demo, count):
    """Step-0 and step-1 views of the same crops (same seed per sample): the old classes' and the new
    classes' ground truth and instance targets."""
    step0, step1 = _samples(demo, 0), _samples(demo, 1)
    pairs = []
    for i in range(count):
        torch.manual_seed(i)
        a = step0[i]
        torch.manual_seed(i)
        b = step1[i]
        assert torch.equal(a["image"], b["image"])
        pairs.append((a, b))
    return pairs


def _phase2_batch(demo, count=4):
    pairs = _aligned(demo, count)
    samples = _labelled([b for _, b in pairs])
    batch = pad_collate([{k: s[k] for k in ("id", "image", "labels", "valid")} for s in samples])
    semantic = torch.stack([torch.where((b["gt"] != 0) & (b["gt"] != 255), b["gt"], a["gt"]) for a, b in pairs])
    centers = torch.stack([b["center"] for _, b in pairs])  # (B, 1, H, W)
    return batch, semantic, centers


def test_phase2_lowers_its_loss_on_one_batch_and_trains_the_instance_branch_only(demo):
    model, context = _step1()
    method = build_method("cl4wsis", _cfg(), context, model)
    batch, semantic, centers = _phase2_batch(demo)
    new = context.new_classes
    phase2 = _GroundTruthPhase2(
        context,
        model,
        method.phase1().decoder,
        _PeaksAtInstanceCenters(centers.expand(-1, len(new), -1, -1).clone()),
        semantic=semantic,
        sigma=4.0,
        min_area=20,
    )
    model.train()
    phase2.on_epoch_start(0, model)
    out = model(batch["image"])
    with torch.no_grad():
        probs = phase2.semantic_probabilities(batch["image"], out["out"], batch["labels"])
        syn = phase2.synthetic_labels(batch, out, probs)
    # the isolated new-class instances get W^syn = 1; every labelled pixel is a new-class pixel
    assert float((syn["weight"] == 1).sum()) > 0
    new_pixels = torch.isin(semantic, torch.tensor(new))[:, None]
    assert not bool((syn["weight"] > 0)[~new_pixels].any())
    assert bool((semantic > 0).logical_and(semantic < 11).any())  # old-class pixels: Eq. 7-8 are exercised
    losses = phase2.losses(batch, out, epoch=0)
    assert set(losses) == {"center_syn", "offset_syn", "center_dist", "offset_dist"}
    assert all(float(v.detach()) > 0 for v in losses.values())
    before = {k: v.clone() for k, v in model.segmenter.state_dict().items()}
    optimizer = torch.optim.Adam(phase2.param_groups(model, 1e-3))
    totals = _iterate(phase2, model, batch, optimizer)
    assert totals[-1] < 0.8 * totals[0], totals
    after = model.segmenter.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics


def test_each_phase_runs_in_the_shared_loop(demo, tmp_path):
    _, index, ids = demo
    torch.manual_seed(0)
    base_model = build_instance_segmenter(MODEL, [11], INSTANCE)
    base = InstanceBase.from_config(_cfg(), None, base_model)
    step0 = base.dataset(StepInputs({"ids": ids, "task": TASK, "step": 0}, str(index), 11, TRAIN))
    loop = {"epochs": 1, "batch_size": 4, "precision": "float32", "seed": 0}
    history = Trainer(
        base_model,
        base,
        step0,
        LoopConfig(lr=5e-4, optimizer="adam", weight_decay=0.0, **loop),
        tmp_path / "base",
        torch.device("cpu"),
    ).fit()
    assert len(history) == 1 and {"seg", "center", "offset"} <= set(history[0])

    model, context = _step1()
    method = build_method("cl4wsis", _cfg(warmup_epochs=0), context, model)
    labels = {i: [c for c in range(11, 21) if c in np.unique(step0.images[k]["mask"])] for k, i in enumerate(ids)}
    split = {"ids": ids, "labels": labels, "task": TASK, "step": 1, "relaxed": False}
    data = method.dataset(StepInputs(split, str(index), 21, TRAIN))
    phase1 = method.phase1()
    history1 = Trainer(
        model.segmenter, phase1, data, LoopConfig(lr=1e-3, **loop), tmp_path / "phase1", torch.device("cpu")
    ).fit()
    assert "random_dropout" in history1[0] and "flac" in history1[0]
    assert (tmp_path / "phase1" / "checkpoint.pt").is_file()

    phase2 = method.phase2(phase1)
    before = copy.deepcopy(model.segmenter.state_dict())
    instance_before = copy.deepcopy(model.instance.state_dict())
    history2 = Trainer(
        model,
        phase2,
        data,
        LoopConfig(lr=5e-4, optimizer="adam", weight_decay=0.0, **loop),
        tmp_path / "phase2",
        torch.device("cpu"),
    ).fit()
    assert "center_dist" in history2[0]
    assert all(torch.equal(before[k], v) for k, v in model.segmenter.state_dict().items())
    assert any(not torch.equal(instance_before[k], v) for k, v in model.instance.state_dict().items())


def test_cl4wsis_refuses_a_semantic_model():
    from pipeline.models import build_segmenter

    torch.manual_seed(0)
    old = build_segmenter(MODEL, [11])
    context = StepContext.build(TASK, 1, old)
    with pytest.raises(TypeError, match="train-instance"):
        build_method("cl4wsis", _cfg(), context, copy.deepcopy(old))
