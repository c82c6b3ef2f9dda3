"""Incremental tasks, MiB's disjoint/overlap filters, image-level labels and target LUTs.

Every expectation here is worked out by hand from the definitions (MiB ``filter_images``;
WILSON Sec. 3.1 and Table 5), on a hand-made index of a dozen images.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from pipeline.data import splits, tasks
from pipeline.io import read_json, write_json
from pipeline.stages import splits as splits_stage

# The task table as stated by the papers (MiB tasks.py, WILSON Sec. 4.1), written independently
# of the module: step 0 includes background.
EXPECTED_VOC_TASKS = {
    "15-5": [list(range(16)), [16, 17, 18, 19, 20]],
    "15-1": [list(range(16)), [16], [17], [18], [19], [20]],
    "10-10": [list(range(11)), list(range(11, 21))],
    "10-5-5": [list(range(11)), [11, 12, 13, 14, 15], [16, 17, 18, 19, 20]],
    "10-2": [list(range(11)), [11, 12], [13, 14], [15, 16], [17, 18], [19, 20]],
    "19-1": [list(range(20)), [20]],
    "2-2": [[0, 1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16], [17, 18], [19, 20]],
}

# Hand-made index: id -> object classes present (some entries carry 0/255, which never matter).
TINY = {
    "a": [1],
    "b": [15],
    "c": [16],
    "d": [1, 16],
    "e": [16, 20],
    "f": [11],
    "g": [5, 12],
    "h": [12, 17],
    "i": [3, 18, 20],
    "j": [],  # background only: never kept
    "k": [10, 11],
    "l": [20],
    "m": [2, 15, 19],
    "n": [0, 4, 7, 255],
}

# Worked out by hand. 15-5: step 0 = 1..15, step 1 = 16..20.
#   step 0 overlap: any of 1..15 -> a b d g h i k m n (+ f: 11); disjoint also no class > 15.
#   step 1: any of 16..20; disjoint = overlap at the last step (nothing is in the future).
EXPECTED_15_5 = {
    ("overlap", 0): ["a", "b", "d", "f", "g", "h", "i", "k", "m", "n"],
    ("disjoint", 0): ["a", "b", "f", "g", "k", "n"],
    ("overlap", 1): ["c", "d", "e", "h", "i", "l", "m"],
    ("disjoint", 1): ["c", "d", "e", "h", "i", "l", "m"],
}
# 10-5-5: step 0 = 1..10, step 1 = 11..15, step 2 = 16..20.
EXPECTED_10_5_5 = {
    ("overlap", 0): ["a", "d", "g", "i", "k", "m", "n"],
    ("disjoint", 0): ["a", "n"],  # d:16 g:12 i:18 k:11 m:15 are future
    ("overlap", 1): ["b", "f", "g", "h", "k", "m"],
    ("disjoint", 1): ["b", "f", "g", "k"],  # h has 17, m has 19
    ("overlap", 2): ["c", "d", "e", "h", "i", "l", "m"],
    ("disjoint", 2): ["c", "d", "e", "h", "i", "l", "m"],
}


# --------------------------------------------------------------------------------------------
# task table


@pytest.mark.parametrize("task", sorted(EXPECTED_VOC_TASKS))
def test_table_matches_papers_and_naming_rule(task):
    assert tasks.task_steps(task) == EXPECTED_VOC_TASKS[task]
    assert tasks.build_task(task) == EXPECTED_VOC_TASKS[task]
    assert tasks.num_steps(task) == len(EXPECTED_VOC_TASKS[task])


def test_table_has_exactly_the_standard_voc_tasks():
    assert set(tasks.TASKS["voc"]) == set(EXPECTED_VOC_TASKS)
    assert set(tasks.NUM_CLASSES) == set(tasks.TASKS) and tasks.NUM_CLASSES["voc"] == 20


@pytest.mark.parametrize("task", sorted(EXPECTED_VOC_TASKS))
def test_every_task_partitions_background_and_the_20_classes(task):
    steps = tasks.task_steps(task)
    flat = [c for step in steps for c in step]
    assert sorted(flat) == list(range(21))
    assert len(flat) == len(set(flat))
    assert steps[0][0] == 0


def test_build_task_generic_names():
    # PLOP's 10-1: 10 base classes then ten steps of one class.
    assert tasks.build_task("10-1") == [list(range(11))] + [[c] for c in range(11, 21)]
    assert tasks.build_task("5-5-10") == [list(range(6)), [6, 7, 8, 9, 10], list(range(11, 21))]
    # another class count (COCO-like, 80 classes): 40 base then two steps of 20
    steps = tasks.build_task("40-20", num_classes=80)
    assert [len(s) for s in steps] == [41, 20, 20] and steps[-1][-1] == 80


@pytest.mark.parametrize("bad", ["15-3", "15-5-5", "15", "0-20", "10-0", "a-b", "15_5", "21-1", ""])
def test_build_task_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="task"):
        tasks.build_task(bad)


def test_task_steps_returns_a_copy():
    steps = tasks.task_steps("15-5")
    steps[1].append(99)
    assert tasks.task_steps("15-5")[1] == [16, 17, 18, 19, 20]


def test_class_sets_per_step_10_5_5():
    assert tasks.seen_classes("10-5-5", 0) == list(range(11))
    assert tasks.new_classes("10-5-5", 0) == list(range(1, 11))
    assert tasks.old_classes("10-5-5", 0) == []
    assert tasks.future_classes("10-5-5", 0) == list(range(11, 21))

    assert tasks.seen_classes("10-5-5", 1) == list(range(16))
    assert tasks.new_classes("10-5-5", 1) == [11, 12, 13, 14, 15]
    assert tasks.old_classes("10-5-5", 1) == list(range(1, 11))
    assert tasks.future_classes("10-5-5", 1) == [16, 17, 18, 19, 20]

    assert tasks.seen_classes("10-5-5", 2) == list(range(21))
    assert tasks.old_classes("10-5-5", 2) == list(range(1, 16))
    assert tasks.future_classes("10-5-5", 2) == []


def test_class_sets_15_1_last_step():
    assert tasks.new_classes("15-1", 5) == [20]
    assert tasks.old_classes("15-1", 5) == list(range(1, 20))
    assert tasks.future_classes("15-1", 3) == [19, 20]


def test_unknown_task_error_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        tasks.task_steps("15-3")
    message = str(err.value)
    assert "'15-3'" in message
    for valid in EXPECTED_VOC_TASKS:
        assert valid in message


def test_unknown_dataset_error():
    with pytest.raises(ValueError, match=r"'coco'.*voc"):
        tasks.task_steps("15-5", dataset="coco")


@pytest.mark.parametrize("func", [tasks.seen_classes, tasks.new_classes, tasks.old_classes, tasks.future_classes])
@pytest.mark.parametrize("step", [2, -1, 1.0, True])
def test_step_out_of_range(func, step):
    with pytest.raises(ValueError) as err:
        func("15-5", step)
    assert "'15-5'" in str(err.value)
    assert f"step {step!r}" in str(err.value)
    assert "0..1" in str(err.value)


# --------------------------------------------------------------------------------------------
# filters


@pytest.mark.parametrize("key", sorted(EXPECTED_15_5))
def test_filter_15_5(key):
    protocol, step = key
    assert tasks.filter_ids(TINY, "15-5", step, protocol) == EXPECTED_15_5[key]


@pytest.mark.parametrize("key", sorted(EXPECTED_10_5_5))
def test_filter_10_5_5(key):
    protocol, step = key
    assert tasks.filter_ids(TINY, "10-5-5", step, protocol) == EXPECTED_10_5_5[key]


def test_filter_accepts_prepare_data_entries_and_keeps_index_order():
    index = {i: {"height": 10, "width": 12, "classes": c} for i, c in reversed(list(TINY.items()))}
    kept = tasks.filter_ids(index, "10-5-5", 1, "disjoint")
    assert kept == ["k", "g", "f", "b"]


def test_filter_unknown_protocol():
    with pytest.raises(ValueError, match=r"'mixed'.*disjoint.*overlap"):
        tasks.filter_ids(TINY, "15-5", 0, "mixed")


@pytest.mark.parametrize(
    "entry, pattern",
    [
        ({"height": 3}, "no 'classes'"),
        ([1, 21], r"\[21\]"),
        ([1, "dog"], "not an integer"),
        ("1,2", "expected a list"),
    ],
)
def test_filter_bad_index_entry_names_the_id(entry, pattern):
    index = {"a": [1], "2008_000123": entry}
    with pytest.raises(ValueError, match=pattern) as err:
        tasks.filter_ids(index, "15-5", 0, "overlap")
    assert "'2008_000123'" in str(err.value)


# --------------------------------------------------------------------------------------------
# image-level labels


def test_image_labels_standard_and_relaxed():
    present = [0, 3, 12, 18, 255]
    # 10-5-5: step 0 = 1..10, step 1 = 11..15, step 2 = 16..20
    assert tasks.image_labels(present, "10-5-5", 0) == [3]
    assert tasks.image_labels(present, "10-5-5", 0, relaxed=True) == [3]
    assert tasks.image_labels(present, "10-5-5", 1) == [12]
    assert tasks.image_labels(present, "10-5-5", 1, relaxed=True) == [3, 12]  # 18 is future
    assert tasks.image_labels(present, "10-5-5", 2) == [18]
    assert tasks.image_labels(present, "10-5-5", 2, relaxed=True) == [3, 12, 18]
    # an old-classes-only image has no standard label but relaxed ones
    assert tasks.image_labels([1, 2], "15-5", 1) == []
    assert tasks.image_labels([2, 1], "15-5", 1, relaxed=True) == [1, 2]


# --------------------------------------------------------------------------------------------
# target lookup tables

MASK = np.array([[0, 3, 12], [18, 255, 11]], dtype=np.uint8)


def test_pixel_target_lut_current_and_seen():
    lut = tasks.pixel_target_lut("10-5-5", 1)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    np.testing.assert_array_equal(lut[MASK], [[0, 0, 12], [0, 255, 11]])
    np.testing.assert_array_equal(tasks.pixel_target_lut("10-5-5", 1, learned="seen")[MASK], [[0, 3, 12], [0, 255, 11]])
    np.testing.assert_array_equal(tasks.pixel_target_lut("10-5-5", 0)[MASK], [[0, 3, 0], [0, 255, 0]])
    np.testing.assert_array_equal(tasks.pixel_target_lut("10-5-5", 2)[MASK], [[0, 0, 0], [18, 255, 0]])


def test_eval_target_lut_masks_unseen_classes():
    np.testing.assert_array_equal(tasks.eval_target_lut("10-5-5", 0)[MASK], [[0, 3, 0], [0, 255, 0]])
    np.testing.assert_array_equal(tasks.eval_target_lut("10-5-5", 1)[MASK], [[0, 3, 12], [0, 255, 11]])
    np.testing.assert_array_equal(tasks.eval_target_lut("15-5", 1)[MASK], MASK)


def test_lut_out_of_range_values_are_ignored_not_background():
    lut = tasks.pixel_target_lut("15-5", 1, learned="seen")
    assert lut[21] == 255 and lut[200] == 255 and lut[255] == 255 and lut[0] == 0


def test_pixel_target_lut_bad_learned():
    with pytest.raises(ValueError, match="'old'"):
        tasks.pixel_target_lut("15-5", 1, learned="old")


# --------------------------------------------------------------------------------------------
# splits on the tiny index


def test_build_splits_10_5_5_disjoint_relaxed():
    steps = splits.build_splits(TINY, "10-5-5", "disjoint", relaxed=True, dataset="tiny")
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert [s["ids"] for s in steps] == [EXPECTED_10_5_5[("disjoint", t)] for t in range(3)]
    assert steps[1]["labels"] == {"b": [15], "f": [11], "g": [5, 12], "k": [10, 11]}
    assert steps[2]["labels"]["i"] == [3, 18, 20] and steps[2]["labels"]["d"] == [1, 16]
    assert steps[1]["old_classes"] == list(range(1, 11))
    assert steps[1]["seen_classes"] == list(range(16))
    assert steps[2]["new_classes"] == [16, 17, 18, 19, 20]
    assert all(s["dataset"] == "tiny" and s["relaxed"] is True and s["protocol"] == "disjoint" for s in steps)


def test_build_splits_standard_labels_are_new_classes_present():
    steps = splits.build_splits(TINY, "15-5", "overlap")
    assert steps[0]["labels"]["m"] == [2, 15]  # step 0: base classes present
    assert steps[1]["labels"] == {"c": [16], "d": [16], "e": [16, 20], "h": [17], "i": [18, 20], "l": [20], "m": [19]}


def test_build_splits_empty_step_is_an_error():
    index = {"x": [1], "y": [2, 16]}  # no image with 3..15 or 17..20 matters; 2-2 step 1 = {3, 4}
    with pytest.raises(ValueError, match=r"'2-2'.*'overlap'.*step 1"):
        splits.build_splits(index, "2-2", "overlap")


def test_summarize_splits_counts_by_hand():
    steps = splits.build_splits(TINY, "15-5", "overlap")
    summary = splits.summarize_splits(steps, TINY)
    s0, s1 = summary["steps"]
    assert (s0["images"], s1["images"]) == (10, 7)
    # step 1 ids c d e h i l m: class 16 in c d e; 20 in e i l; 1 in d; 15 in m; 12 in h
    assert s1["class_images"]["16"] == 3 and s1["class_images"]["20"] == 3
    assert s1["class_images"]["1"] == 1 and s1["class_images"]["15"] == 1
    assert s1["class_images"]["12"] == 1 and s1["class_images"]["5"] == 0
    assert len(s1["class_images"]) == 20
    # step 0: only seen classes 1..15 counted; 1 in a d; 15 in b m; 11 in f k
    assert set(s0["class_images"]) == {str(c) for c in range(1, 16)}
    assert (s0["class_images"]["1"], s0["class_images"]["15"], s0["class_images"]["11"]) == (2, 2, 2)
    # without the index only labelled classes are counted
    by_labels = splits.summarize_splits(steps)["steps"][1]["class_images"]
    assert set(by_labels) == {"16", "17", "18", "19", "20"} and by_labels["16"] == 3


def test_summary_csv_columns():
    steps = splits.build_splits(TINY, "15-5", "overlap")
    rows = splits.summary_csv(splits.summarize_splits(steps, TINY)).splitlines()
    header = rows[0].split(",")
    assert header[:4] == ["step", "images", "aeroplane", "bicycle"] and header[-1] == "tvmonitor"
    assert len(header) == 22
    step0 = rows[1].split(",")
    assert step0[:3] == ["0", "10", "2"] and step0[-5:] == [""] * 5  # 16..20 not yet seen


def _cli_args(**overrides):
    args = dict(
        index=None,
        split="train",
        labels_root=None,
        train_list=None,
        mask_dir="auto",
        task="15-5",
        protocol="overlap",
        dataset="voc",
        task_table="voc",
        relaxed=False,
        workers=0,
        outdir=None,
        step=None,
        out=None,
        summary=None,
        data_fraction=None,
        fraction_seed=0,
    )
    args.update(overrides)
    return types.SimpleNamespace(**args)


def test_cli_with_index_json(tmp_path, capsys):
    index_file = tmp_path / "index.json"
    index_file.write_text(
        json.dumps(
            {
                "splits": {"train": list(TINY), "val": ["v"]},
                "index": {
                    **{i: {"height": 4, "width": 4, "classes": c} for i, c in TINY.items()},
                    "v": {"height": 4, "width": 4, "classes": [21]},
                },
            }
        )
    )
    out = tmp_path / "splits"
    splits_stage.run(_cli_args(index=index_file, task="10-5-5", protocol="disjoint", outdir=out))
    assert sorted(p.name for p in out.iterdir()) == [
        "step0.json",
        "step1.json",
        "step2.json",
        "summary.csv",
        "summary.json",
    ]
    step1 = json.loads((out / "step1.json").read_text())
    assert step1["ids"] == EXPECTED_10_5_5[("disjoint", 1)]
    assert step1["labels"] == {"b": [15], "f": [11], "g": [12], "k": [11]}
    summary = json.loads((out / "summary.json").read_text())
    assert [s["images"] for s in summary["steps"]] == [2, 4, 7]
    assert "disjoint" in capsys.readouterr().out


def test_cli_failure_leaves_no_file(tmp_path):
    index_file = tmp_path / "index.json"
    # 2-2: step 0 (1, 2) has images, step 1 (3, 4) has none
    index_file.write_text(
        json.dumps({"splits": {"train": ["x", "y"]}, "index": {"x": {"classes": [1]}, "y": {"classes": [2, 16]}}})
    )
    out = tmp_path / "splits"
    with pytest.raises(ValueError, match="step 1"):
        splits_stage.run(_cli_args(index=index_file, task="2-2", outdir=out))
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_failure_while_writing_leaves_no_file(tmp_path, monkeypatch):
    index_file = tmp_path / "index.json"
    index_file.write_text(
        json.dumps({"splits": {"train": list(TINY)}, "index": {i: {"classes": c} for i, c in TINY.items()}})
    )
    out = tmp_path / "splits"

    def broken_csv(summary):
        raise RuntimeError("disk full")

    monkeypatch.setattr(splits_stage, "summary_csv", broken_csv)  # the name the stage calls
    with pytest.raises(RuntimeError, match="disk full"):
        splits_stage.run(_cli_args(index=index_file, task="10-5-5", outdir=out))
    assert list(out.iterdir()) == []  # step files were written, then removed, never renamed


def test_cli_index_missing_ids(tmp_path):
    index_file = tmp_path / "index.json"
    index_file.write_text(json.dumps({"splits": {"train": ["x", "zz"]}, "index": {"x": {"classes": [1]}}}))
    with pytest.raises(ValueError, match=r"index\.json.*'zz'"):
        splits_stage.run(_cli_args(index=index_file, outdir=tmp_path / "o"))


def test_cli_needs_a_source(tmp_path):
    with pytest.raises(ValueError, match="--index"):
        splits_stage.run(_cli_args(outdir=tmp_path / "o"))


def test_cli_writes_one_step_or_the_summary_alone(tmp_path):
    """The modes the Snakemake rules use: one step{t}.json per job, and the summary."""
    index_file = tmp_path / "index.json"
    write_json(index_file, {"splits": {"train": list(TINY)}, "index": {i: {"classes": c} for i, c in TINY.items()}})
    splits_stage.run(_cli_args(index=index_file, task="10-5-5", protocol="disjoint", step=1, out=tmp_path / "s1.json"))
    step1 = read_json(tmp_path / "s1.json")
    assert step1["step"] == 1 and step1["ids"] == tasks.filter_ids(TINY, "10-5-5", 1, "disjoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "s1.json"]
    splits_stage.run(_cli_args(index=index_file, task="10-5-5", summary=tmp_path / "sum.json"))
    assert (tmp_path / "sum.csv").is_file() and read_json(tmp_path / "sum.json")["task"] == "10-5-5"
    with pytest.raises(ValueError, match="steps 0..2, not 3"):
        splits_stage.run(_cli_args(index=index_file, task="10-5-5", step=3, out=tmp_path / "s3.json"))
    assert not (tmp_path / "s3.json").exists()
