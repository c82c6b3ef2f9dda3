"""Incremental splits at full PASCAL VOC scale (10,582 train_aug label maps of VOC 2012 + SBD).

Class presence is computed here independently of the pipeline (``np.unique`` on each decoded
label map; the pipeline's index uses ``np.bincount``), and the expected splits come from a
direct set-based restatement of MiB's ``filter_images`` rule, with the task table restated from
the papers. Skipped when /work/shared/voc-aug-labels is not available.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dir  # noqa: E402  (tests/ is on sys.path under pytest)
from PIL import Image

from pipeline.data import splits, tasks

LABELS_ROOT = shared_dir() / "voc-aug-labels"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (LABELS_ROOT / "train_aug.txt").exists(), reason=f"{LABELS_ROOT} not available")

# The papers' task table (MiB tasks.py; WILSON Sec. 4.1): classes added at each step.
PAPER_TASKS = {
    "15-5": [range(0, 16), range(16, 21)],
    "15-1": [range(0, 16)] + [[c] for c in range(16, 21)],
    "10-10": [range(0, 11), range(11, 21)],
    "10-5-5": [range(0, 11), range(11, 16), range(16, 21)],
    "10-2": [range(0, 11)] + [[c, c + 1] for c in range(11, 21, 2)],
    "19-1": [range(0, 20), [20]],
    "2-2": [[0, 1, 2]] + [[c, c + 1] for c in range(3, 21, 2)],
}
PROTOCOLS = ("disjoint", "overlap")


def _present(image_id: str) -> tuple[str, frozenset[int]]:
    with Image.open(LABELS_ROOT / "SegmentationClassAug" / f"{image_id}.png") as image:
        assert image.mode == "P", image_id
        values = np.unique(np.asarray(image))
    values = {int(v) for v in values}
    assert values <= set(range(21)) | {255}, (image_id, values)
    return image_id, frozenset(values - {0, 255})


@pytest.fixture(scope="session")
def train_ids() -> list[str]:
    return (LABELS_ROOT / "train_aug.txt").read_text().split()


@pytest.fixture(scope="session")
def presence(train_ids) -> dict[str, frozenset[int]]:
    """{id: object classes present} for every train_aug id, in list order."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return dict(pool.map(_present, train_ids, chunksize=128))


def expected_split(presence, task, step, protocol):
    """MiB's rule, restated with sets: a class of this step must be present; for disjoint, no
    class introduced after this step may be present."""
    steps = [set(s) for s in PAPER_TASKS[task]]
    current = steps[step] - {0}
    future = set().union(*steps[step + 1 :])
    return [
        i for i, present in presence.items() if present & current and (protocol == "overlap" or not present & future)
    ]


def test_dataset_scale(train_ids, presence):
    assert len(train_ids) == 10582 == len(set(train_ids)) == len(presence)
    # every object class occurs in the training set
    assert set().union(*presence.values()) == set(range(1, 21))


@pytest.fixture(scope="session")
def all_splits(presence):
    """{(task, protocol, relaxed): build_splits(...)} for every task and protocol."""
    index = {i: {"classes": sorted(c)} for i, c in presence.items()}
    return {
        (task, protocol, relaxed): splits.build_splits(index, task, protocol, relaxed)
        for task in PAPER_TASKS
        for protocol in PROTOCOLS
        for relaxed in (False, True)
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("task", sorted(PAPER_TASKS))
def test_ids_and_class_counts_match_rule(task, protocol, presence, all_splits):
    assert tasks.task_steps(task) == [list(s) for s in PAPER_TASKS[task]]
    steps = all_splits[(task, protocol, False)]
    assert len(steps) == len(PAPER_TASKS[task])
    summary = splits.summarize_splits(steps, presence)
    for step, (split, row) in enumerate(zip(steps, summary["steps"])):
        expected = expected_split(presence, task, step, protocol)
        assert len(split["ids"]) == row["images"] == len(expected), (task, protocol, step)
        assert split["ids"] == expected
        seen = set().union(*(set(s) for s in PAPER_TASKS[task][: step + 1])) - {0}
        counts = {str(c): sum(c in presence[i] for i in expected) for c in sorted(seen)}
        assert row["class_images"] == counts, (task, protocol, step)
        # standard image-level labels: the step's classes present
        current = set(PAPER_TASKS[task][step]) - {0}
        assert split["labels"] == {i: sorted(presence[i] & current) for i in expected}


@pytest.mark.parametrize("task", sorted(PAPER_TASKS))
def test_invariants(task, presence, all_splits):
    disjoint = all_splits[(task, "disjoint", False)]
    overlap = all_splits[(task, "overlap", False)]
    used = set()
    for step, (d, o) in enumerate(zip(disjoint, overlap)):
        d_ids, o_ids = set(d["ids"]), set(o["ids"])
        assert d_ids <= o_ids, (task, step)
        assert not d_ids & used, f"{task}: disjoint step {step} reuses ids of earlier steps"
        used |= d_ids
        new = set(o["new_classes"])
        assert all(presence[i] & new for i in o_ids), (task, step)
        assert all(o["labels"][i] for i in o_ids)  # at least one image-level label
        if step == len(overlap) - 1:
            assert d_ids == o_ids  # nothing is in the future any more
        for protocol in PROTOCOLS:
            standard = all_splits[(task, protocol, False)][step]
            relaxed = all_splits[(task, protocol, True)][step]
            assert relaxed["ids"] == standard["ids"]
            seen = set(relaxed["seen_classes"]) - {0}
            for i in relaxed["ids"]:
                assert set(relaxed["labels"][i]) >= set(standard["labels"][i])
                assert relaxed["labels"][i] == sorted(presence[i] & seen)


def test_report_step_sizes(all_splits, capsys):
    """Prints the step sizes of 15-5 and 10-10 (pytest -s); MiB's 15-5 overlap step 1 is in the
    low thousands of images."""
    sizes = {
        (task, protocol): [len(s["ids"]) for s in all_splits[(task, protocol, False)]]
        for task in ("15-5", "10-10")
        for protocol in PROTOCOLS
    }
    with capsys.disabled():
        for (task, protocol), counts in sizes.items():
            print(f"\n{task} {protocol}: images per step {counts}", end="")
        print()
    assert 1000 <= sizes[("15-5", "overlap")][1] < 5000


def test_cli_on_label_maps(tmp_path, presence):
    out = tmp_path / "voc" / "splits" / "15-5-overlap"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "splits",
            "--labels-root",
            str(LABELS_ROOT),
            "--train-list",
            "train_aug.txt",
            "--task",
            "15-5",
            "--protocol",
            "overlap",
            "--dataset",
            "voc",
            "--workers",
            "2",
            "--outdir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["step0.json", "step1.json", "summary.csv", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["task"], summary["protocol"], summary["dataset"]) == ("15-5", "overlap", "voc")
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for step in (0, 1):
        written = json.loads((out / f"step{step}.json").read_text())
        expected = expected_split(presence, "15-5", step, "overlap")
        assert written["ids"] == expected
        assert written["step"] == step and written["relaxed"] is False
        current = set(PAPER_TASKS["15-5"][step]) - {0}
        assert written["labels"] == {i: sorted(presence[i] & current) for i in expected}
        assert summary["steps"][step]["images"] == len(expected) == int(rows[step]["images"])
        person = sum(15 in presence[i] for i in expected)  # 15 = person, seen at both steps
        assert int(rows[step]["person"]) == person
    assert rows[0]["tvmonitor"] == ""  # class 20 not yet seen at step 0
    assert int(rows[1]["tvmonitor"]) == sum(20 in presence[i] for i in presence)
    # the step table is printed
    assert "15-5" in result.stdout and str(len(expected_split(presence, "15-5", 1, "overlap"))) in result.stdout
