"""The papers' remaining experiments: relaxed labels per variant (WILSON Table 5), WILSON with pixel
labels (FMWISS Table 9), a seeded fraction of the step's images (FMWISS Table 10), their tables."""

import csv
import hashlib
import json
import random

import pytest
import torch
import yaml
from helpers.dag import REPO, job_counts, snakemake
from helpers.report import metrics_run
from test_workflow_torch_free import load_config, wildcards

import pipeline.workflow as wf
from pipeline.__main__ import main
from pipeline.config import data_settings
from pipeline.data.splits import build_splits
from pipeline.data.subsets import apply_data_fraction, data_fraction_ids, fraction_size, selection_order
from pipeline.data.synthetic import generate
from pipeline.io import read_json, write_json
from pipeline.methods import build_method
from pipeline.methods.base import StepContext, StepInputs
from pipeline.methods.wilson.method import pixel_label_target
from pipeline.models import build_segmenter
from pipeline.report.paper_tables import paper_tables

SCHEMA = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())
PAPERS = yaml.safe_load((REPO / "config/demo-papers.yaml").read_text())

# --------------------------------------------------------------------------- relaxed labels
# 10-5-5, step 1: old 1-10, new 11-15, future 16-20. Overlap keeps a, b, c (a class of 11-15).
HAND_INDEX = {"a": [1, 12], "b": [3, 11, 18], "c": [12, 16], "d": [2], "e": [14, 15, 7]}


def test_relaxed_labels_are_the_seen_classes_present():
    standard = build_splits(HAND_INDEX, "10-5-5", "overlap")[1]
    relaxed = build_splits(HAND_INDEX, "10-5-5", "overlap", relaxed=True)[1]
    assert relaxed["ids"] == standard["ids"] == ["a", "b", "c", "e"]
    # by hand: every present class of 1..15 (future 16, 18 never), background never
    assert relaxed["labels"] == {"a": [1, 12], "b": [3, 11], "c": [12], "e": [7, 14, 15]}
    assert standard["labels"] == {"a": [12], "b": [11], "c": [12], "e": [14, 15]}
    assert relaxed["relaxed"] is True and standard["relaxed"] is False


def test_a_relaxed_variant_trains_on_a_relaxed_split_beside_the_standard_one():
    config = load_config(PAPERS)
    wc = wildcards("wilson_relaxed", 1, task="15-5")
    assert wf.method_split(config, wc) == "results/voc/splits/15-5-overlap/relaxed/step1.json"
    assert wf.method_split(config, wildcards("wilson", 1, task="15-5")) == "results/voc/splits/15-5-overlap/step1.json"
    assert wf.split_variant_options("relaxed") == "--relaxed"
    assert json.loads(wf.step_params(config, "wilson_relaxed"))["method"]["relaxed"] is True
    assert json.loads(wf.step_params(config, "wilson"))["method"]["relaxed"] is False
    # the data keys never reach the method's class
    assert "relaxed_labels" not in wf.method_settings(config, "wilson_relaxed")
    # with every split relaxed, a variant may ask for the standard labels
    relaxed_everywhere = load_config(PAPERS, {"experiments": {"relaxed_labels": True}})
    assert wf.method_split(relaxed_everywhere, wc) == "results/voc/splits/15-5-overlap/step1.json"
    standard = load_config(
        PAPERS,
        {"experiments": {"relaxed_labels": True}, "methods": {"w": {"method": "wilson", "relaxed_labels": False}}},
    )
    assert wf.method_split(standard, wildcards("w", 1, task="15-5")).endswith("15-5-overlap/standard/step1.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A generated dataset of 40 images (48 px) with its prepare-data index."""
    root = tmp_path_factory.mktemp("papers")
    generate(root / "data", n_train=40, n_val=4, size=48, seed=7)
    main(["prepare-data", "--root", str(root / "data"), "--output", str(root / "dataset.json")])
    return root


def _wilson(cfg_changes, context=None):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["methods"]["wilson"]
    cfg = {**cfg, "relaxed": False, "warmup_epochs": 0, **cfg_changes}
    segmenter = {"backbone": "resnet18", "output_stride": 16, "pretrained": "none"}
    torch.manual_seed(0)
    old, model = build_segmenter(segmenter, [16]), build_segmenter(segmenter, [16])
    model.load_state_dict(old.state_dict())
    model.classifier.add_step(5)
    return old, model, build_method("wilson", cfg, context or StepContext.build("15-5", 1, old), model)


TRAIN = {"crop_size": 48, "scale_range": [1.0, 1.0]}


def test_wilson_relaxed_sees_the_relaxed_labels_and_refuses_the_others(tiny):
    index = read_json(tiny / "dataset.json")
    train = {i: index["index"][i] for i in index["splits"]["train"]}
    out = tiny / "relaxed_step1.json"
    main(
        ["splits", "--index", str(tiny / "dataset.json"), "--task", "15-5", "--protocol", "overlap"]
        + ["--step", "1", "--relaxed", "--out", str(out)]
    )  # what the split_variant rule runs
    split = read_json(out)
    assert split["relaxed"] is True
    _, _, wilson = _wilson({"relaxed": True})
    data = wilson.dataset(StepInputs(split, str(tiny / "dataset.json"), 21, TRAIN))
    assert len(data) == len(split["ids"]) > 0
    old_labelled = 0
    for i in range(len(data)):
        sample = data[i]
        present = set(train[sample["id"]]["classes"]) - {0, 255}
        expected = torch.zeros(21)
        expected[sorted(present)] = 1  # 15-5 step 1 sees every class: the union of the present ones
        assert torch.equal(sample["labels"], expected), sample["id"]
        old_labelled += int(sample["labels"][1:16].sum() > 0)
    assert old_labelled > 0  # the relaxed labels do name old classes on this data
    _, _, standard = _wilson({"relaxed": False})
    with pytest.raises(ValueError, match="relaxed=True labels, the objective relaxed=False"):
        standard.dataset(StepInputs(split, str(tiny / "dataset.json"), 21, TRAIN))


# --------------------------------------------------------------------------- data fraction
IDS = [f"img{i:03d}" for i in range(100)]


def test_fraction_sizes_by_hand():
    assert [fraction_size(10, f) for f in (0.3, 0.5, 1.0)] == [3, 5, 10]
    assert fraction_size(5, 0.5) == 3  # 2.5 rounds half up
    assert fraction_size(3, 0.1) == 1  # never empty
    assert fraction_size(0, 0.5) == 0
    for bad in (0.0, 1.5, True, "0.3"):
        with pytest.raises(ValueError, match="expected a number in"):
            fraction_size(10, bad)


def test_fraction_subsets_are_nested_seeded_and_order_free():
    for seed in (0, 1):
        s30, s50 = set(data_fraction_ids(IDS, 0.3, seed)), set(data_fraction_ids(IDS, 0.5, seed))
        assert len(s30) == 30 and len(s50) == 50 and s30 < s50 < set(IDS)
        shuffled = random.Random(3).sample(IDS, len(IDS))
        assert set(data_fraction_ids(shuffled, 0.3, seed)) == s30
        # the documented rule, computed independently: the 30 smallest sha256("<seed>:<id>")
        by_digest = sorted(IDS, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
        assert s30 == set(by_digest[:30]) and selection_order(IDS, seed) == by_digest
    assert set(data_fraction_ids(IDS, 0.3, 0)) != set(data_fraction_ids(IDS, 0.3, 1))
    kept = data_fraction_ids(IDS, 0.3, 0)
    assert kept == [i for i in IDS if i in set(kept)]  # in the split's order
    with pytest.raises(ValueError, match="appears twice"):
        data_fraction_ids(["a", "b", "a"], 0.5, 0)
    with pytest.raises(ValueError, match="seed"):
        data_fraction_ids(IDS, 0.5, -1)


def test_the_split_records_the_fraction_and_step_0_keeps_every_image(tmp_path):
    index = {i: {"classes": [16 if k % 2 else 3]} for k, i in enumerate(IDS)}
    write_json(tmp_path / "dataset.json", {"splits": {"train": IDS}, "index": index})
    common = ["splits", "--index", str(tmp_path / "dataset.json"), "--task", "15-5", "--protocol", "overlap"]
    for step in (0, 1):
        out = tmp_path / f"step{step}.json"
        main([*common, "--step", str(step), "--data-fraction", "0.3", "--fraction-seed", "4", "--out", str(out)])
    step0, step1 = read_json(tmp_path / "step0.json"), read_json(tmp_path / "step1.json")
    assert "data_fraction" not in step0 and len(step0["ids"]) == 50  # the shared base model: all images
    full = [i for k, i in enumerate(IDS) if k % 2]  # the 50 images holding class 16
    assert step1["ids"] == data_fraction_ids(full, 0.3, 4) and len(step1["ids"]) == 15
    assert set(step1["labels"]) == set(step1["ids"])
    record = step1["data_fraction"]
    assert (record["fraction"], record["seed"], record["images"], record["kept"]) == (0.3, 4, 50, 15)
    with pytest.raises(ValueError, match="already restricted"):
        apply_data_fraction(step1, 0.5, 4)


def test_one_subset_for_every_method_with_the_same_seed_and_fraction():
    config = load_config(PAPERS, {"methods": {"wilson_30": {"method": "wilson", "data_fraction": 0.3}}})
    paths = {
        m: wf.method_split(config, wildcards(m, 1, task="15-5", seed=2)) for m in ("wilson_30", "fmwiss_oracle_30")
    }
    assert set(paths.values()) == {"results/voc/splits/15-5-overlap/standard-fraction0.3-seed2/step1.json"}
    assert wf.split_variant_options("standard-fraction0.3-seed2") == "--data-fraction 0.3 --fraction-seed 2"
    fixed = load_config(PAPERS, {"methods": {"f": {"method": "fmwiss", "data_fraction": 0.5, "data_fraction_seed": 7}}})
    assert {wf.method_split(fixed, wildcards("f", 1, task="15-5", seed=s)) for s in (0, 1)} == {
        "results/voc/splits/15-5-overlap/standard-fraction0.5-seed7/step1.json"
    }
    assert data_settings(fixed["methods"], "f", False) == {
        "relaxed_labels": False,
        "data_fraction": 0.5,
        "data_fraction_seed": 7,
    }
    for bad in ("relaxed-fraction1.0-seed0", "partial", "relaxed-fraction0.3"):
        with pytest.raises(ValueError, match="split variant"):
            wf.split_variant_options(bad)


@pytest.mark.parametrize(
    "variant, message",
    [
        ({"method": "cam", "relaxed_labels": True}, "reads caches"),
        ({"method": "mib", "relaxed_labels": True}, "learns from pixel labels"),
        ({"method": "cam", "data_fraction": 0.5}, "trained on the full split"),
        ({"method": "joint", "data_fraction": 0.5}, "every step's images"),
        ({"method": "wilson", "data_fraction_seed": 3}, "changes nothing"),
        ({"method": "wilson", "data_fraction": 0.0}, "expected a number in"),
    ],
)
def test_data_settings_only_where_they_change_something(variant, message):
    config = load_config(PAPERS, {"methods": {"bad": variant}})
    with pytest.raises(ValueError, match=message):
        wf.check_methods(config, SCHEMA)


def test_demo_papers_overlay_passes_the_checks():
    config = load_config(yaml.safe_load((REPO / "config/demo.yaml").read_text()), PAPERS)
    wf.check_methods(config, SCHEMA)
    settings = json.loads(wf.report_settings(config))
    assert settings["fmwiss_oracle_30"]["changes"] == {"coseg.source": "oracle", "data_fraction": 0.3}
    assert settings["wilson_pixel"]["pixel_labels"] == "new" and settings["wilson"]["pixel_labels"] is None
    assert settings["wilson_relaxed"]["relaxed_labels"] is True and settings["wilson"]["relaxed_labels"] is False


# --------------------------------------------------------------------------- pixel labels
def test_pixel_label_targets_are_the_ground_truth_on_new_class_pixels():
    # a toy step: channels 0 background, 1 old, 2-3 new; one image of 1 x 4 pixels
    gt = torch.tensor([[[2, 0, 3, 255]]])
    old_logits = torch.tensor([[[[0.5, 1.0, -2.0, 0.0]], [[-1.0, 2.0, 0.3, 1.0]]]])
    sig = torch.sigmoid(old_logits[0, :, 0])  # (2, 4)
    target = pixel_label_target(gt, old_logits, [2, 3], "new")[0, :, 0]  # (4, 4): channel x pixel
    # pixel 0 (new class 2) and 2 (new class 3): one-hot over background and new classes
    assert target[[0, 2, 3], 0].tolist() == [0.0, 1.0, 0.0] and target[[0, 2, 3], 2].tolist() == [0.0, 0.0, 1.0]
    # old channel: the old model (Eq. 7); background pixel: min(σ(old_b), 1) = σ(old_b)
    torch.testing.assert_close(target[1], sig[1])
    torch.testing.assert_close(target[0, 1], sig[0, 1])
    assert target[2:, 1].tolist() == [0.0, 0.0]
    assert target[[0, 2, 3], 3].tolist() == [0.0, 0.0, 0.0]  # void: nothing (the loss skips it)
    seen = pixel_label_target(torch.tensor([[[2, 1, 0, 255]]]), old_logits, [2, 3], "seen")[0, :, 0]
    expected = torch.tensor([[0.0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(seen, expected)
    with pytest.raises(ValueError, match="ground-truth value 1 with pixel_labels='new'"):
        pixel_label_target(torch.tensor([[[1]]]), old_logits[..., :1], [2, 3], "new")


def test_wilson_with_pixel_labels_learns_from_the_gt_not_the_localizer(tiny):
    old, model, wilson = _wilson({"pixel_labels": "new"})
    index = read_json(tiny / "dataset.json")
    split = build_splits({i: index["index"][i] for i in index["splits"]["train"]}, "15-5", "overlap")[1]
    data = wilson.dataset(StepInputs(split, str(tiny / "dataset.json"), 21, TRAIN))
    sample = data[0]
    assert set(sample) == {"id", "image", "gt", "valid", "labels"}
    assert set(torch.unique(sample["gt"]).tolist()) <= {0, 16, 17, 18, 19, 20, 255}
    samples = [data[i] for i in range(2)]  # each draw is a new random crop: draw once
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "gt", "valid", "labels")}
    assert torch.equal(batch["valid"], batch["gt"] != 255)
    model.eval()  # a deterministic forward (no dropout), so the two losses below see the same logits
    out = model(batch["image"])
    seg = wilson.losses(batch, out, epoch=0)["seg"]
    # by hand: Eq. 8 summed over classes, mean over valid pixels, against the gt-built target
    with torch.no_grad():
        old_logits = old(batch["image"])["out"]
        sig = torch.sigmoid(old_logits)
        one_hot = (
            torch.nn.functional.one_hot(batch["gt"].clamp(max=20) * batch["valid"], 21).permute(0, 3, 1, 2).float()
        )
        expected = torch.cat([sig, one_hot[:, 16:]], dim=1)
        expected[:, 0] = torch.minimum(sig[:, 0], one_hot[:, 0])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out["out"], expected, reduction="none").sum(1)
    torch.testing.assert_close(seg.detach(), bce[batch["valid"]].mean())
    with torch.no_grad():  # the localizer does not enter the target
        for p in wilson.localizer.parameters():
            p.add_(1.0)
    torch.testing.assert_close(wilson.losses(batch, model(batch["image"]), epoch=0)["seg"].detach(), seg.detach())
    with pytest.raises(ValueError, match="pixel_labels='all'"):
        _wilson({"pixel_labels": "all"})


# --------------------------------------------------------------------------- tables
def _metrics(method, seed, new, protocol="overlap", step=1):
    return metrics_run(method, new, old=0.6, all_=0.5, seed=seed, protocol=protocol, step=step)


SETTINGS = {
    "wilson": {"method": "wilson", "changes": {}},
    "wilson_relaxed": {"method": "wilson", "changes": {"relaxed_labels": True}, "relaxed_labels": True},
    "wilson_pixel": {"method": "wilson", "changes": {"pixel_labels": "new"}, "pixel_labels": "new"},
    "fmwiss_oracle": {"method": "fmwiss", "changes": {"coseg.source": "oracle"}},
    "fmwiss_oracle_30": {
        "method": "fmwiss",
        "changes": {"coseg.source": "oracle", "data_fraction": 0.3},
        "data_fraction": 0.3,
    },
    "fmwiss_oracle_50": {
        "method": "fmwiss",
        "changes": {"coseg.source": "oracle", "data_fraction": 0.5},
        "data_fraction": 0.5,
    },
    "joint": {"method": "joint", "changes": {}},
}


def test_paper_tables_layouts_rows_and_mean_std_over_seeds():
    runs = [_metrics(m, s, 0.3 + 0.1 * s) for m in SETTINGS for s in (0, 1)] + [_metrics("base", 0, 0.0, step=0)]
    tables = {t["stem"]: t for t in paper_tables(runs, SETTINGS)}
    assert sorted(tables) == [
        "paper_data_fraction_demo_15_5_step1",
        "paper_relaxed_demo_15_5_step1",
        "paper_supervision_demo_15_5_step1",
    ]
    # new mIoU 30 and 40 over two seeds: mean 35.0, sample std 7.1
    cells = ["60.0 ± 0.0", "35.0 ± 7.1", "50.0 ± 0.0"]  # old and all equal over the seeds: std 0
    relaxed = tables["paper_relaxed_demo_15_5_step1"]
    assert relaxed["header"] == ["Method", "Image labels", "Overlap 1-15", "Overlap 16-20", "Overlap All"]
    assert relaxed["rows"] == [["WILSON", "new classes", *cells], ["WILSON", "all seen classes", *cells]]
    supervision = tables["paper_supervision_demo_15_5_step1"]
    assert supervision["header"][:2] == ["Method", "Sup"]
    assert [r[:2] for r in supervision["rows"]] == [
        ["WILSON", "I"],
        ["WILSON", "P (new classes)"],
        ["fmwiss_oracle", "I"],
    ]
    fraction = tables["paper_data_fraction_demo_15_5_step1"]
    assert [r[:2] for r in fraction["rows"]] == [
        ["WILSON", "100%"],
        ["fmwiss_oracle", "100%"],
        ["fmwiss_oracle", "50%"],
        ["fmwiss_oracle", "30%"],
    ]  # joint (pixel labels) is no reference row; the fraction copies follow their reference
    assert paper_tables(runs, {"wilson": SETTINGS["wilson"]}) == []  # no copy: no table
    # a copy whose reference is not in the matrix leads its own group, labelled by its base
    alone = paper_tables([_metrics("wilson_relaxed", 0, 0.3)], SETTINGS)
    assert [r[:2] for r in alone[0]["rows"]] == [["WILSON", "all seen classes"]]


# --------------------------------------------------------------------------- the DAG
@pytest.mark.long  # a tiny DAG with five variants, ~40 s: pytest -m long
def test_tiny_dag_runs_the_papers_variants_and_reports_their_tables(tmp_path):
    (tmp_path / "fast.yaml").write_text(
        "methods: {fmwiss: {warmup_epochs: 1}}\ntrain_step: {batch_size: 4}\nmemory: {per_class: 5, min_area: 4, seed: 0}\n"
    )
    overlays = [
        "--configfile",
        *(str(REPO / p) for p in ("config/demo.yaml", "tests/data/tiny.yaml", "tests/data/tiny-incremental.yaml")),
        str(REPO / "config/demo-papers.yaml"),
        str(tmp_path / "fast.yaml"),
    ]
    counts = job_counts(snakemake(tmp_path, "-n", "--cores", "2", *overlays).stdout)
    assert counts["split_variant"] == 3 and counts["train_step"] == 7  # relaxed, 50 %, 30 %
    snakemake(tmp_path, "--cores", "2", *overlays)
    splits = tmp_path / "results/demo/splits/15-5-overlap"
    index = read_json(tmp_path / "results/demo/dataset.json")["index"]
    standard, relaxed = read_json(splits / "step1.json"), read_json(splits / "relaxed/step1.json")
    assert relaxed["ids"] == standard["ids"] and relaxed["relaxed"] is True
    for i in relaxed["ids"]:
        assert relaxed["labels"][i] == sorted(set(index[i]["classes"]) - {0, 255})
    f30, f50 = (read_json(splits / f"standard-fraction{f}-seed0/step1.json") for f in (0.3, 0.5))
    assert set(f30["ids"]) < set(f50["ids"]) < set(standard["ids"])
    assert f30["data_fraction"]["kept"] == fraction_size(len(standard["ids"]), 0.3) == len(f30["ids"])
    run = tmp_path / "results/demo/15-5-overlap/seed0/step1"
    meta = torch.load(run / "wilson_relaxed/model.pt", weights_only=True)["meta"]
    assert meta["method_cfg"]["relaxed"] is True and meta["method_cfg"]["method"] == "wilson"
    for method in PAPERS["experiments"]["methods"]:
        assert read_json(run / f"{method}/metrics.json")["method"] == method
    report = tmp_path / "results/report"

    def rows(stem):
        with open(report / f"paper_{stem}_demo_15_5_step1.csv") as handle:
            return [row[:2] for row in csv.reader(handle)]

    assert rows("relaxed") == [["Method", "Image labels"], ["WILSON", "new classes"], ["WILSON", "all seen classes"]]
    assert rows("supervision") == [
        ["Method", "Sup"],
        ["WILSON", "I"],
        ["WILSON", "P (new classes)"],
        ["WILSON", "P (all classes)"],
        ["fmwiss_oracle", "I"],
    ]
    assert rows("data_fraction") == [
        ["Method", "Train Data"],
        ["WILSON", "100%"],
        ["fmwiss_oracle", "100%"],
        ["fmwiss_oracle", "50%"],
        ["fmwiss_oracle", "30%"],
    ]
    summary = (report / "summary.md").read_text()
    assert "The papers' remaining experiments" in summary and "FMWISS Table 10" in summary
