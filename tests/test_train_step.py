"""The data each incremental method trains on, and the step context."""

import pytest
import torch

from pipeline.__main__ import main
from pipeline.data.splits import build_splits
from pipeline.data.synthetic import generate
from pipeline.data.tasks import joint_ids
from pipeline.io import read_json
from pipeline.methods import build_method
from pipeline.methods.base import StepContext, StepInputs
from pipeline.models import build_segmenter

WILSON = {
    "warmup_epochs": 1,
    "alpha": 0.5,
    "focal_lambda": 0.01,
    "focal_gamma": 3.0,
    "ngwp_eps": 1.0,
    "relaxed": False,
    "restrict_to_labels": True,
    "head_lr_mult": 10.0,
    "localizer_self_sup": True,
    "pamr_iterations": 10,
    "pamr_dilations": [1, 2, 4, 8, 12],
    "self_sup_cutoff_top": 0.6,
    "self_sup_cutoff_bkg": 0.7,
    "self_sup_cutoff_low": 0.2,
    "feature_kd_weight": 1.0,
    "pseudo_labels_eval_mode": True,
}
WILSON_NO_EXTRAS = {**WILSON, "localizer_self_sup": False, "feature_kd_weight": 0.0, "pseudo_labels_eval_mode": False}
FMWISS = {
    "warmup_epochs": 1,
    "lambda_dcl": 0.1,
    "tau": 0.1,
    "points_per_class": 10,
    "alpha": 0.5,
    "beta": 0.9,
    "head_lr_mult": 10.0,
    "restrict_to_labels": True,
    "pasted_one_hot": True,
    "suppress_background": True,
    "teacher_prior": 0.01,
    "all_bce_reduction": "sum",
    "paste_prob": 0.5,
    "coseg": {},
}
TRAIN = {"crop_size": 48, "scale_range": [1.0, 1.0]}
SEGMENTER = {"backbone": "resnet18", "output_stride": 16, "pretrained": "none"}
PIXEL = {"loss": "ce", "head_lr_mult": 1.0}


def method_data(name, cfg, split, data, train=TRAIN, **caches):
    """The training set of method ``name`` at step 1 of 15-5, through its data adapter."""
    old = build_segmenter(SEGMENTER, [16])
    model = build_segmenter(SEGMENTER, [16])
    method = build_method(name, cfg, StepContext.build("15-5", 1, old), model)
    return method.dataset(StepInputs(split, data, 21, train, caches))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("step")
    generate(root / "data", n_train=40, n_val=4, size=48, seed=7)
    main(["prepare-data", "--root", str(root / "data"), "--output", str(root / "dataset.json")])
    index = read_json(root / "dataset.json")
    train = {i: index["index"][i] for i in index["splits"]["train"]}
    return root, train


def test_image_supervision_never_shows_ground_truth(tiny):
    root, train = tiny
    step1 = build_splits(train, "15-5", "overlap")[1]
    data = method_data("wilson", WILSON, step1, str(root / "dataset.json"))
    assert len(data) == len(step1["ids"]) > 0
    for i in range(len(data)):
        sample = data[i]
        assert set(sample) == {"id", "image", "valid", "labels"}  # no pixel label at all
        assert sample["valid"].dtype == torch.bool
        expected = torch.zeros(21)
        expected[step1["labels"][sample["id"]]] = 1
        assert torch.equal(sample["labels"], expected)
        assert sample["labels"][16:].sum() >= 1 and sample["labels"][:16].sum() == 0


def test_pixel_supervision_targets(tiny):
    root, train = tiny
    step1 = build_splits(train, "15-5", "overlap")[1]
    ft = method_data("ft", PIXEL, step1, str(root / "dataset.json"))
    for i in range(len(ft)):
        sample = ft[i]  # one draw of the random crop
        assert set(torch.unique(sample["gt"]).tolist()) <= {0, 16, 17, 18, 19, 20, 255}
        assert torch.equal(sample["valid"], sample["gt"] != 255)
    joint = method_data("joint", PIXEL, step1, str(root / "dataset.json"))
    # overlap at the last step: every image holding any object class
    assert len(joint) == sum(1 for entry in train.values() if entry["classes"])


def test_joint_ids_by_hand():
    index = {"a": [1], "b": [16], "c": [1, 16], "d": [12], "e": []}
    # 10-5-5 step 1 (seen 1..15, future 16..20)
    assert joint_ids(index, "10-5-5", 1, "overlap") == ["a", "c", "d"]
    assert joint_ids(index, "10-5-5", 1, "disjoint") == ["a", "d"]
    assert joint_ids(index, "10-5-5", 2, "disjoint") == ["a", "b", "c", "d"]


def test_step_context_freezes_the_old_model():
    old = build_segmenter({"backbone": "resnet18", "output_stride": 16, "pretrained": "none"}, [16]).train()
    context = StepContext.build("15-5", 1, old)
    assert not old.training and not any(p.requires_grad for p in old.parameters())
    assert (context.num_old_channels, context.new_classes, context.num_classes) == (16, [16, 17, 18, 19, 20], 21)
    with pytest.raises(ValueError, match="t >= 1"):
        StepContext.build("15-5", 0, old)
    with pytest.raises(ValueError, match="needs the step context"):
        build_method("wilson", WILSON)


def _wilson_step(cfg):
    """A 15-5 step-1 WILSON on resnet18 (the model starts as the old one) and a batch of two."""
    torch.manual_seed(0)
    segmenter = {"backbone": "resnet18", "output_stride": 16, "pretrained": "none"}
    old = build_segmenter(segmenter, [16])
    model = build_segmenter(segmenter, [16])
    model.load_state_dict(old.state_dict())
    model.classifier.add_step(5)
    context = StepContext.build("15-5", 1, old)
    wilson = build_method("wilson", cfg, context, model)
    labels = torch.zeros(2, 21)
    labels[0, 17] = labels[1, 20] = 1
    batch = {"image": torch.randn(2, 3, 64, 64), "valid": torch.ones(2, 64, 64, dtype=torch.bool), "labels": labels}
    return old, model, wilson, batch


def test_wilson_warmup_trains_only_the_localizer():
    old, model, wilson, batch = _wilson_step(WILSON)
    losses = wilson.losses(batch, model(batch["image"]), epoch=0)
    assert set(losses) == {"cls", "loc"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in wilson.localizer.parameters())
    model.zero_grad(set_to_none=True)
    out = model(batch["image"])
    losses = wilson.losses(batch, out, epoch=1)
    assert set(losses) == {"cls", "loc", "seg", "self_sup", "feature_kd"}
    assert wilson.localizer.training  # the eval-mode pass for the pseudo-labels restored train mode
    with torch.no_grad():
        expected_kd = torch.nn.functional.mse_loss(out["features"], old(batch["image"])["features"])
    torch.testing.assert_close(losses["feature_kd"].detach(), expected_kd)  # weight 1 (--loss_de 1)
    assert torch.isfinite(losses["self_sup"]) and losses["self_sup"] >= 0
    sum(losses.values()).backward()
    assert model.classifier.blocks[1].weight.grad is not None
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    assert all(p.grad is None for p in old.parameters())


def test_wilson_without_the_extras():
    old, model, wilson, batch = _wilson_step(WILSON_NO_EXTRAS)
    assert set(wilson.losses(batch, model(batch["image"]), epoch=0)) == {"cls", "loc"}
    losses = wilson.losses(batch, model(batch["image"]), epoch=1)
    assert set(losses) == {"cls", "loc", "seg"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in old.parameters())


def test_wilson_pseudo_labels_come_from_the_eval_mode_localizer():
    """With running statistics far from the batch's, the eval-mode localizer gives other
    pseudo-labels than the training-mode one, so ℓ_SEG differs; the training pass is unchanged."""
    results = {}
    for eval_mode in (True, False):
        old, model, wilson, batch = _wilson_step({**WILSON, "pseudo_labels_eval_mode": eval_mode})
        for module in wilson.localizer.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.fill_(5.0)
        with torch.no_grad():
            losses = wilson.losses(batch, model(batch["image"]), epoch=1)
        results[eval_mode] = {k: float(v) for k, v in losses.items()}
        assert wilson.localizer.training
    assert results[True]["cls"] == pytest.approx(results[False]["cls"])
    assert results[True]["seg"] != pytest.approx(results[False]["seg"])


def test_fmwiss_data_aligns_coseg_masks_and_pasted_instances(tiny, tmp_path):
    """Oracle co-segmentation masks come back aligned with the image through the augmentation,
    blanked under pasted old-class instances, and the ground truth never reaches the mask."""
    import json
    import os

    import numpy as np

    from pipeline.data.voc import load_mask
    from pipeline.methods.fmwiss.memory import MemoryBank

    root, train = tiny
    splits = build_splits(train, "15-5", "overlap")
    for step in (0, 1):
        (tmp_path / f"step{step}.json").write_text(json.dumps(splits[step]))
    data = str(root / "dataset.json")
    main(
        [
            "memory-bank",
            "--split",
            str(tmp_path / "step0.json"),
            "--data",
            data,
            "--out",
            str(tmp_path / "bank.h5"),
            "--params",
            '{"per_class": 3, "min_area": 4, "seed": 0}',
            "--no-progress",
        ]
    )
    coseg_cfg = {"source": "oracle"}
    main(
        [
            "coseg",
            "--split",
            str(tmp_path / "step1.json"),
            "--data",
            data,
            "--out",
            str(tmp_path / "coseg.h5"),
            "--params",
            json.dumps(coseg_cfg),
            "--no-progress",
        ]
    )
    scale_free = {"crop_size": 48, "scale_range": [1.0, 1.0]}
    fmwiss = {**FMWISS, "coseg": coseg_cfg, "paste_prob": 1.0}
    dataset = method_data(
        "fmwiss",
        fmwiss,
        splits[1],
        data,
        scale_free,
        coseg=str(tmp_path / "coseg.h5"),
        memory=str(tmp_path / "bank.h5"),
    )
    assert MemoryBank(tmp_path / "bank.h5").classes() and set(MemoryBank(tmp_path / "bank.h5").classes()) <= set(
        range(1, 16)
    )
    index = read_json(data)
    torch.manual_seed(0)
    pasted_any = False
    for i in range(len(dataset)):
        sample = dataset[i]
        assert "gt" not in sample and "mask" not in sample  # no ground truth
        pasted = sample["pasted"]
        assert set(torch.unique(pasted).tolist()) <= {0, *range(1, 16)}
        pasted_any |= bool((pasted > 0).any())
        assert (sample["pseudo"][:, pasted > 0] == 0).all()
        # without the pasted pixels, the oracle masks are the ground truth of the labelled new classes
        gt = torch.from_numpy(
            load_mask(os.path.join(index["root"], index["mask_dir"], sample["id"] + ".png")).astype(np.int64)
        )
        h, w = gt.shape
        if (h, w) == tuple(sample["valid"].shape):  # no padding, no crop: compare the whole image
            keep = (pasted == 0) & sample["valid"]
            labelled = splits[1]["labels"][sample["id"]]

            def matches(view, sample=sample, keep=keep, labelled=labelled):  # the sample may be flipped
                return all(
                    torch.equal(sample["pseudo"][k][keep] > 0, ((view == c) & (c in labelled))[keep])
                    for k, c in enumerate(range(16, 21))
                )

            assert matches(gt) or matches(gt.flip(-1))
    assert pasted_any
