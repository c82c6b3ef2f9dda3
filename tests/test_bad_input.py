"""The bad-input catalogue's items not covered elsewhere (docs/reliability.md maps every item to
its test): each stops with an error naming the file, id, key or step and what was expected,
exits non-zero, and leaves no file that looks finished.

Data: a generated demo set of 40 + 4 images (48 px, seed 7), whose class counts give these
splits (overlap): 15-5 34 + 15 images, 10-10 28 + 23, 10-5-5 28 + 12 + 15."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.__main__ import main
from pipeline.cache import CacheError, CacheWriter
from pipeline.checkpoint import CheckpointError
from pipeline.config import DEFAULTS_PATH, validated_section
from pipeline.data.splits import build_splits
from pipeline.data.synthetic import generate
from pipeline.data.voc import DatasetError
from pipeline.io import read_json, write_json
from pipeline.methods.fmwiss.data import coseg_dataset
from pipeline.methods.pseudo.data import pseudo_label_provenance
from pipeline.models import build_segmenter, save_model
from pipeline.train.loop import DivergenceError

REPO = Path(__file__).resolve().parents[1]
SMALL = {"backbone": "resnet18", "output_stride": 16, "pretrained": "none"}
ORACLE = {"source": "oracle"}
#: Enough of train_step's section for a stage that stops while building its data.
DATA_ONLY = {"crop_size": 48, "scale_range": [1.0, 1.0]}
#: (task, protocol, step) of every split the tests write.
SPLITS = [
    ("15-5", "overlap", 0),
    ("15-5", "overlap", 1),
    ("15-5", "disjoint", 1),
    ("15-1", "overlap", 0),
    ("10-10", "overlap", 0),
    ("10-10", "overlap", 1),
    ("10-5-5", "overlap", 1),
    ("10-5-5", "overlap", 2),
]


def split_path(root: Path, task: str, protocol: str, step: int) -> Path:
    return root / "splits" / f"{task}-{protocol}-step{step}.json"


def final_files(folder: Path) -> list[str]:
    """Files in ``folder`` (recursively) that are not temporary or partial: what would look finished.
    TensorBoard event files are logs written as training goes, not outputs, and are left out."""
    if not folder.exists():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and ".tmp-" not in p.name and ".partial." not in p.name and "tfevents" not in p.name
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    generate(root / "data", n_train=40, n_val=4, size=48, seed=7)
    main(["prepare-data", "--root", str(root / "data"), "--output", str(root / "dataset.json")])
    index = read_json(root / "dataset.json")
    train = {i: index["index"][i] for i in index["splits"]["train"]}
    for task, protocol, step in SPLITS:
        write_json(split_path(root, task, protocol, step), build_splits(train, task, protocol)[step])
    return root


def method_settings(name: str, **changes) -> dict:
    """``methods.<name>`` of config.yaml (the rules pass the full section) with ``changes``."""
    return {**yaml.safe_load(DEFAULTS_PATH.read_text())["methods"][name], **changes}


def base_model(folder: Path, task: str, protocol: str, step: int, classes_per_step: list[int]) -> Path:
    """A saved random model whose meta says it is ``step`` of ``task`` ``protocol``."""
    import torch

    torch.manual_seed(0)
    model = build_segmenter(SMALL, classes_per_step[:1])
    for n in classes_per_step[1:]:
        model.classifier.add_step(n)
    path = folder / f"{task}-{protocol}-step{step}.pt"
    save_model(path, model, {"model": SMALL, "task": task, "protocol": protocol, "step": step})
    return path


def train_step(demo: Path, outdir: Path, method: str, settings: dict, previous: Path, split: Path, *caches: str):
    main(
        [
            "train-step",
            "--method",
            method,
            "--previous",
            str(previous),
            "--split",
            str(split),
            "--data",
            str(demo / "dataset.json"),
            "--params",
            json.dumps({"train": DATA_ONLY, "method": settings}),
            "--outdir",
            str(outdir),
            "--device",
            "cpu",
            *caches,
        ]
    )


def coseg_cache(demo: Path, task: str, protocol: str, step: int, params: dict = ORACLE) -> Path:
    """The coseg stage's oracle cache of a split (computed once per split and settings)."""
    name = f"{task}-{protocol}-step{step}-{'-'.join(f'{k}{v}' for k, v in sorted(params.items()))}"
    out = demo / "coseg" / f"{name}.h5"
    if not out.exists():
        split = split_path(demo, task, protocol, step)
        main(
            ["coseg", "--split", str(split), "--data", str(demo / "dataset.json")]
            + ["--out", str(out), "--params", json.dumps(params), "--no-progress"]
        )
    return out


def memory_bank(demo: Path, task: str, protocol: str) -> Path:
    """The step-0 memory bank of ``task`` ``protocol`` (memory-bank stage, B = 3)."""
    out = demo / "banks" / f"{task}-{protocol}-step0.h5"
    if not out.exists():
        main(
            ["memory-bank", "--split", str(split_path(demo, task, protocol, 0)), "--data", str(demo / "dataset.json")]
            + ["--out", str(out), "--params", '{"per_class": 3, "min_area": 4, "seed": 0}', "--no-progress"]
        )
    return out


# --- an empty id list ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["train", "val"])
def test_an_empty_id_list_stops_prepare_data_naming_the_list(demo, tmp_path, which):
    empty = tmp_path / f"{which}_empty.txt"
    empty.write_text("\n  \n")  # blank lines only: no id
    lists = {"train": "ImageSets/Segmentation/train_aug.txt", "val": "ImageSets/Segmentation/val.txt", which: empty}
    output = tmp_path / "out" / "dataset.json"
    command = [sys.executable, "-m", "pipeline", "prepare-data", "--root", str(demo / "data")]
    command += ["--train-list", str(lists["train"]), "--val-list", str(lists["val"]), "--output", str(output)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{empty}: {which} id list holds no ids; expected one image id per line" in last
    assert f"dataset.{which}_list" in last
    assert final_files(tmp_path / "out") == []


def test_an_empty_train_split_stops_the_splits_stage_naming_the_file(demo, tmp_path):
    doc = read_json(demo / "dataset.json")
    write_json(tmp_path / "dataset.json", {**doc, "splits": {**doc["splits"], "train": []}})
    with pytest.raises(ValueError, match=r"dataset\.json: split 'train' lists no ids; expected the ids of a non-empty"):
        main(
            ["splits", "--index", str(tmp_path / "dataset.json"), "--task", "15-5", "--protocol", "overlap"]
            + ["--outdir", str(tmp_path / "splits")]
        )
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DatasetError, match=r"empty\.txt: training id list holds no ids"):
        main(
            ["splits", "--labels-root", str(demo / "data"), "--train-list", str(tmp_path / "empty.txt")]
            + ["--task", "15-5", "--protocol", "overlap", "--step", "0", "--out", str(tmp_path / "splits/step0.json")]
        )
    assert final_files(tmp_path / "splits") == []


# --- a step with no images after filtering ---------------------------------------------------------------


def test_a_step_without_images_stops_the_splits_stage_naming_task_protocol_and_step(demo, tmp_path):
    doc = read_json(demo / "dataset.json")
    # keep only the training images without a class of 16-20: step 1 of 15-5 keeps none of them
    kept = [i for i in doc["splits"]["train"] if not set(doc["index"][i]["classes"]) & set(range(16, 21))]
    assert 0 < len(kept) < len(doc["splits"]["train"])
    write_json(tmp_path / "dataset.json", {**doc, "splits": {**doc["splits"], "train": kept}})
    expected = (
        rf"task '15-5', protocol 'overlap', step 1: no training image contains a class of this step "
        rf"\(\[16, 17, 18, 19, 20\]\) among the {len(kept)} indexed images; expected at least one"
    )
    for output in (["--outdir", str(tmp_path / "splits")], ["--step", "0", "--out", str(tmp_path / "splits/s0.json")]):
        with pytest.raises(ValueError, match=expected):
            main(
                ["splits", "--index", str(tmp_path / "dataset.json"), "--task", "15-5", "--protocol", "overlap"]
                + output
            )
    assert final_files(tmp_path / "splits") == []  # not even step 0, which has images


# --- a misspelt key inside a variant override (snakemake -n) ----------------------------------------------


def dry_run(workdir: Path, overlay: str) -> subprocess.CompletedProcess:
    (workdir / "overlay.yaml").write_text(overlay + "\n")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n"]
    command += ["--cores", "1", "--configfile", str(REPO / "config/demo.yaml"), str(workdir / "overlay.yaml")]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.parametrize(
    "overlay, expected",
    [
        ("methods: {fmwiss_oracle: {coseg: {n_seed: 5}}}", ["methods.fmwiss_oracle", "'n_seed' was unexpected"]),
        (
            "methods: {fmwiss: {coseg: {fusoin: none}}}",
            ["'fusoin' was unexpected", "['fmwiss']['properties']['coseg']"],
        ),
        (
            "methods: {fmwiss_x: {method: fmwiss, coseg: {clip: {modle: ViT-B-16}}}}",
            ["methods.fmwiss_x (a variant of fmwiss): coseg.clip", "'modle' was unexpected"],
        ),
        ("methods: {fmwiss_oracle: {coseg: {top_k: high}}}", ["methods.fmwiss_oracle", "coseg.top_k", "'high'"]),
    ],
)
def test_a_misspelt_or_mistyped_variant_override_fails_the_dry_run(tmp_path, overlay, expected):
    proc = dry_run(tmp_path, overlay)
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stdout + proc.stderr, text
    assert not (tmp_path / "results").exists()


def test_a_valid_partial_variant_override_passes_the_dry_run(tmp_path):
    overlay = (
        "methods: {fmwiss_b16: {method: fmwiss, coseg: {clip: {model: ViT-B-16}, top_k: 0.5}}}\n"
        "experiments: {methods: [fmwiss_b16]}"
    )
    proc = dry_run(tmp_path, overlay)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "results/demo/15-5-overlap/seed0/step1/fmwiss_b16/model.pt" in proc.stdout + proc.stderr


# --- a cache of another task, protocol, step or class set ------------------------------------------------

FOREIGN_COSEG = {  # (the cache's split, the split it is read for, the previous model's classes, expected text)
    "task": (("10-10", "overlap", 1), ("15-5", "overlap", 1), [16], "task: cache has '10-10', expected '15-5'"),
    "protocol": (
        ("15-5", "disjoint", 1),
        ("15-5", "overlap", 1),
        [16],
        "protocol: cache has 'disjoint', expected 'overlap'",
    ),
    "step": (("10-5-5", "overlap", 1), ("10-5-5", "overlap", 2), [11, 5], "step: cache has 1, expected 2"),
}


@pytest.mark.parametrize("case", sorted(FOREIGN_COSEG))
def test_train_step_refuses_a_coseg_cache_of_another_split(demo, tmp_path, case):
    cache_of, read_for, classes, expected = FOREIGN_COSEG[case]
    task, protocol, step = read_for
    cache = coseg_cache(demo, *cache_of)
    previous = base_model(tmp_path, task, protocol, step - 1, classes)
    settings = method_settings("fmwiss", coseg=ORACLE, paste_prob=0.0)
    with pytest.raises(CacheError) as error:
        train_step(
            demo, tmp_path / "run", "fmwiss", settings, previous, split_path(demo, *read_for), "--coseg", str(cache)
        )
    message = str(error.value)
    assert str(cache) in message and expected in message
    assert f"not the co-segmentation cache of {task} {protocol} step {step}" in message
    assert final_files(tmp_path / "run") == []


def test_the_coseg_cache_of_the_step_is_accepted(demo):
    split = read_json(split_path(demo, "15-5", "overlap", 1))
    cache = coseg_cache(demo, "15-5", "overlap", 1)
    dataset = coseg_dataset(str(demo / "dataset.json"), split, DATA_ONLY, 21, str(cache), ORACLE, None, 0.0)
    assert len(dataset) == len(split["ids"]) == 15


def test_train_step_refuses_a_coseg_cache_computed_with_other_settings(demo, tmp_path):
    cache = coseg_cache(demo, "15-5", "overlap", 1)  # n_seeds 9 (config.yaml)
    previous = base_model(tmp_path, "15-5", "overlap", 0, [16])
    settings = method_settings("fmwiss", coseg={**ORACLE, "n_seeds": 3}, paste_prob=0.0)
    with pytest.raises(CacheError, match=r"is stale, produced with other settings: n_seeds: cache has 9, expected 3"):
        train_step(
            demo,
            tmp_path / "run",
            "fmwiss",
            settings,
            previous,
            split_path(demo, "15-5", "overlap", 1),
            "--coseg",
            str(cache),
        )
    assert final_files(tmp_path / "run") == []


def test_train_step_refuses_a_memory_bank_of_another_task(demo, tmp_path):
    bank = memory_bank(demo, "10-10", "overlap")
    previous = base_model(tmp_path, "15-5", "overlap", 0, [16])
    settings = method_settings("fmwiss", coseg=ORACLE, paste_prob=0.5)
    split = split_path(demo, "15-5", "overlap", 1)
    cache = coseg_cache(demo, "15-5", "overlap", 1)
    with pytest.raises(CacheError, match=r"10-10-overlap-step0\.h5 .*task: cache has '10-10', expected '15-5'"):
        train_step(
            demo, tmp_path / "run", "fmwiss", settings, previous, split, "--coseg", str(cache), "--memory", str(bank)
        )
    assert final_files(tmp_path / "run") == []
    # the bank of this task and protocol is accepted
    dataset = coseg_dataset(
        str(demo / "dataset.json"),
        read_json(split),
        DATA_ONLY,
        21,
        str(cache),
        ORACLE,
        str(memory_bank(demo, "15-5", "overlap")),
        0.5,
    )
    assert len(dataset) == 15


def test_the_memory_bank_stage_refuses_a_previous_bank_or_coseg_cache_of_another_split(demo, tmp_path):
    split = split_path(demo, "15-5", "overlap", 1)
    own_bank, own_cache = memory_bank(demo, "15-5", "overlap"), coseg_cache(demo, "15-5", "overlap", 1)
    cases = [
        (memory_bank(demo, "10-10", "overlap"), own_cache, "task: cache has '10-10', expected '15-5'"),
        (own_bank, coseg_cache(demo, "15-5", "disjoint", 1), "protocol: cache has 'disjoint', expected 'overlap'"),
    ]
    for previous, cache, expected in cases:
        with pytest.raises(CacheError, match=expected):
            main(
                ["memory-bank", "--split", str(split), "--data", str(demo / "dataset.json")]
                + ["--out", str(tmp_path / "bank1.h5"), "--params", '{"per_class": 3, "min_area": 4, "seed": 0}']
                + ["--previous", str(previous), "--coseg", str(cache), "--coseg-params", json.dumps(ORACLE)]
                + ["--no-progress"]
            )
    assert final_files(tmp_path) == []


def test_coseg_quality_refuses_the_cache_of_another_step(demo, tmp_path):
    cache = coseg_cache(demo, "10-5-5", "overlap", 1)
    with pytest.raises(CacheError, match=r"step: cache has 1, expected 2"):
        main(
            ["coseg", "--split", str(split_path(demo, "10-5-5", "overlap", 2)), "--data", str(demo / "dataset.json")]
            + ["--out", str(cache), "--params", json.dumps(ORACLE), "--quality-only"]
            + ["--quality", str(tmp_path / "quality.json"), "--no-progress"]
        )
    assert final_files(tmp_path) == []


def test_train_step_refuses_a_pseudo_label_cache_of_another_task(demo, tmp_path):
    read_for = read_json(split_path(demo, "15-5", "overlap", 1))
    other = read_json(split_path(demo, "10-10", "overlap", 1))
    cache = tmp_path / "cam.h5"
    with CacheWriter(cache, {**pseudo_label_provenance(other), "model_sha256": "0" * 64}) as writer:
        for image_id in other["ids"]:  # a superset of the 15-5 step-1 ids, so only the provenance can tell
            writer.put(image_id, {"label": np.zeros((48, 48), np.uint8)})
        writer.finish()
    assert set(read_for["ids"]) <= set(other["ids"])
    previous = base_model(tmp_path, "15-5", "overlap", 0, [16])
    with pytest.raises(CacheError) as error:
        train_step(
            demo,
            tmp_path / "run",
            "cam",
            method_settings("cam"),
            previous,
            split_path(demo, "15-5", "overlap", 1),
            "--pseudo",
            str(cache),
        )
    message = str(error.value)
    assert "cam.h5" in message and "task: cache has '10-10', expected '15-5'" in message
    assert "new_classes: cache has [11, 12, 13, 14, 15, 16, 17, 18, 19, 20], expected [16, 17, 18, 19, 20]" in message
    assert final_files(tmp_path / "run") == []


# --- a model of another task as --previous (protocol and class count: tests/test_safe_loading.py) -------


def test_train_step_refuses_a_previous_model_of_another_task(demo, tmp_path):
    previous = base_model(tmp_path, "15-1", "overlap", 0, [16])  # same classes as 15-5's step 0, another task
    with pytest.raises(
        ValueError, match=r"15-1-overlap-step0\.pt is task 15-1 step 0; step 1 of 15-5 starts from step 0"
    ):
        train_step(
            demo, tmp_path / "run", "ft", method_settings("ft"), previous, split_path(demo, "15-5", "overlap", 1)
        )
    assert final_files(tmp_path / "run") == []


# --- an empty or unreadable model.pretrained; a diverging loss, at the stage -----------------------------


def train_base(demo: Path, outdir: Path, model: dict, **train) -> None:
    settings = validated_section(
        "train_base", {"epochs": 1, "batch_size": 4, "crop_size": 48, "precision": "float32", **train}
    )
    main(
        ["train-base", "--split", str(split_path(demo, "15-5", "overlap", 0)), "--data", str(demo / "dataset.json")]
        + ["--params", json.dumps({"model": model, "train": settings}), "--outdir", str(outdir), "--device", "cpu"]
        + ["--threads", "1"]
    )


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("resnet18 weights\n")


def _folder(path: Path) -> None:
    path.mkdir()


PRETRAINED = {  # make the file, error type, expected text ({path}: the configured path)
    "empty": (_empty, CheckpointError, "{path}: model.pretrained checkpoint is empty (0 bytes"),
    "not-a-checkpoint": (_text, CheckpointError, "{path}: model.pretrained checkpoint is not a torch checkpoint"),
    "a-folder": (_folder, CheckpointError, "{path}: model.pretrained checkpoint is not a file"),
    "missing": (lambda path: None, FileNotFoundError, "model.pretrained='{path}': no such checkpoint file"),
}


@pytest.mark.parametrize("case", sorted(PRETRAINED))
def test_train_base_stops_on_an_unusable_pretrained_file(demo, tmp_path, case):
    make, error_type, expected = PRETRAINED[case]
    path = tmp_path / "resnet18.pth"
    make(path)
    with pytest.raises(error_type) as error:
        train_base(demo, tmp_path / "run", {**SMALL, "pretrained": str(path)})
    assert expected.format(path=path) in str(error.value)
    assert final_files(tmp_path / "run") == []


def test_train_base_stops_on_a_diverging_loss_saying_what_to_change(demo, tmp_path):
    # lr 1e8: the first update makes the logits explode (the loop's own guards: tests/test_loop_guards.py)
    with pytest.raises(DivergenceError) as error:
        train_base(demo, tmp_path / "run", SMALL, lr=1e8)
    message = str(error.value)
    assert "in epoch 1, iterations 0-7" in message  # 34 images / batch 4: 8 iterations, checked at the epoch's end
    assert "no checkpoint was written yet" in message and "Lower the learning rate (train_*.lr" in message
    assert final_files(tmp_path / "run") == []


# --- a missing or wrong dataset.root (the DAG's hint: tests/test_workflow.py) ------------------------------


def _prepare(root: Path, output: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", "prepare-data", "--root", str(root), "--output", str(output)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO)


def test_a_missing_dataset_root_is_named_with_how_to_fix_it(tmp_path):
    proc = _prepare(tmp_path / "VOC2012", tmp_path / "out/dataset.json")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{tmp_path / 'VOC2012'}/ImageSets/Segmentation/train_aug.txt: train id list not found" in last
    assert f"(dataset.root {tmp_path / 'VOC2012'} does not exist)" in last
    assert "Point dataset.root" in last and "snakemake --cores 2 download" in last
    assert final_files(tmp_path / "out") == []


def test_a_dataset_root_one_folder_too_high_names_the_right_one(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    voc.mkdir(parents=True)
    (voc / "train_aug.txt").write_text("2007_000032\n")
    (voc / "val.txt").write_text("2007_000033\n")
    for root in (tmp_path, tmp_path / "VOCdevkit"):  # the parent of VOCdevkit, and VOCdevkit itself
        proc = _prepare(root, tmp_path / "out/dataset.json")
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert f"{root}/ImageSets/Segmentation/train_aug.txt: train id list not found" in last
        assert f"(it is under {tmp_path / 'VOCdevkit' / 'VOC2012'}: set dataset.root: " in last
    assert final_files(tmp_path / "out") == []


# --- deterministic artifacts -------------------------------------------------------------------------------


def test_two_identical_cpu_runs_write_byte_identical_models(demo, tmp_path):
    """The same train-base command twice (CPU, float32, fixed seed): the same model.pt bytes, so the
    resume fingerprints and the caches' model hashes are reusable across runs."""
    for name in ("a", "b"):
        train_base(demo, tmp_path / name, SMALL)
    first, second = (tmp_path / "a/model.pt").read_bytes(), (tmp_path / "b/model.pt").read_bytes()
    assert len(first) > 10_000 and first == second
    assert final_files(tmp_path / "a") == ["history.csv", "model.pt"]  # the checkpoint is removed
