"""Background shift (issue 18): the four fractions on hand-made confusion matrices, and the
report's table, CSV and confusion figures built from metrics.json files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from pipeline.data.classes import VOC_CLASSES
from pipeline.metrics.background_shift import background_shift, row_normalise
from pipeline.report import build_report, load_metrics
from pipeline.report.confusion import run_matrix, run_shift

# 4 classes: 0 background, 1-2 old, 3 new; rows ground truth, columns prediction.
CONF = np.array(
    [
        [50, 5, 5, 20],  # background: 80 pixels, 20 predicted as the new class
        [4, 30, 2, 4],  # old 1: 40 pixels, 4 as background, 4 as new
        [6, 3, 20, 1],  # old 2: 30 pixels, 6 as background, 1 as new
        [8, 1, 1, 10],  # new 3: 20 pixels, 8 as background
    ]
)


def test_four_fractions_equal_hand_computed_values():
    shift = background_shift(CONF, old_classes=[1, 2], new_classes=[3])
    assert shift["old_as_new"] == pytest.approx((4 + 1) / (40 + 30))
    assert shift["old_as_background"] == pytest.approx((4 + 6) / (40 + 30))
    assert shift["new_as_background"] == pytest.approx(8 / 20)
    assert shift["background_as_new"] == pytest.approx(20 / 80)


def test_background_in_the_class_lists_is_ignored_and_groups_can_be_empty():
    assert background_shift(CONF, [0, 1, 2], [3]) == background_shift(CONF, [1, 2], [3])
    step0 = background_shift(CONF, old_classes=[1, 2, 3], new_classes=[])
    assert step0["old_as_new"] is None and step0["new_as_background"] is None and step0["background_as_new"] is None
    assert step0["old_as_background"] == pytest.approx((4 + 6 + 8) / 90)
    absent = CONF.copy()
    absent[3] = 0  # no ground-truth pixel of the new class in the set
    assert background_shift(absent, [1, 2], [3])["new_as_background"] is None


def test_row_normalise_rows_sum_to_one_and_empty_rows_are_nan():
    conf = CONF.copy()
    conf[2] = 0
    norm = row_normalise(conf)
    assert norm[3].tolist() == pytest.approx([0.4, 0.05, 0.05, 0.5])
    assert np.isnan(norm[2]).all()
    assert norm[[0, 1, 3]].sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    ("conf", "old", "new", "match"),
    [
        (np.zeros((3, 4)), [1], [2], "square"),
        (-CONF, [1], [3], "negative"),
        (CONF, [1, 5], [3], "outside"),
        (CONF, [1, 3], [3], "both old and new"),
    ],
)
def test_bad_input_is_named(conf, old, new, match):
    with pytest.raises(ValueError, match=match):
        background_shift(conf, old, new)


# ----------------------------------------------------------------------------- report
OLD, NEW = list(range(1, 16)), list(range(16, 21))


def _matrix(seed: int) -> np.ndarray:
    """A 21-class confusion matrix with a strong diagonal."""
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, 20, (21, 21))
    conf[np.diag_indices(21)] += 400
    return conf


def _metrics(tmp_path, name, method, seed, conf, step=1, protocol="overlap"):
    run = tmp_path / name
    run.mkdir(parents=True)
    data = {
        "dataset": "voc",
        "task": "15-5",
        "protocol": protocol,
        "step": step,
        "num_steps": 2,
        "method": method,
        "seed": seed,
        "old_classes": OLD,
        "new_classes": NEW if step else [],
        "seen_classes": list(range(21 if step else 16)),
        "per_class_iou": {VOC_CLASSES[k]: 0.5 for k in range(21 if step else 16)},
        "miou_old": 0.5,
        "miou_new": 0.5 if step else None,
        "miou_all": 0.5,
        "pixel_accuracy": 0.9,
        "predictions_dir": str(run / "predictions"),
        "image_root": str(tmp_path),
        "mask_dir": str(tmp_path),
        "val_ids": ["a"],
        "confusion_matrix": conf.tolist(),
    }
    (run / "metrics.json").write_text(json.dumps(data))
    return run / "metrics.json"


def _hand_shift(conf: np.ndarray) -> list[float]:
    old, new = OLD, NEW
    return [
        conf[np.ix_(old, new)].sum() / conf[old].sum(),
        conf[old, 0].sum() / conf[old].sum(),
        conf[new, 0].sum() / conf[new].sum(),
        conf[0, new].sum() / conf[0].sum(),
    ]


def test_report_table_csv_and_confusion_figures(tmp_path):
    mats = {"mib0": _matrix(0), "mib1": _matrix(1), "wilson0": _matrix(2)}
    paths = [
        _metrics(tmp_path / "runs", "mib0", "mib", 0, mats["mib0"]),
        _metrics(tmp_path / "runs", "mib1", "mib", 1, mats["mib1"]),
        _metrics(tmp_path / "runs", "wilson0", "wilson", 0, mats["wilson0"]),
        _metrics(tmp_path / "runs", "base0", "base", 0, _matrix(3)[:16, :16], step=0),
    ]
    outdir = tmp_path / "report"
    build_report(paths, outdir=outdir, num_examples=0, figures_dir=outdir / "figures")

    with open(outdir / "background_shift.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"MiB", "WILSON"}  # step 0 has no background-shift row
    columns = ["old→new", "old→bg", "new→bg", "bg→new"]
    wilson = _hand_shift(mats["wilson0"])
    assert [rows["WILSON"][c] for c in columns] == [f"{100 * v:.1f}" for v in wilson]
    mib = np.array([_hand_shift(mats["mib0"]), _hand_shift(mats["mib1"])]) * 100
    expected = [f"{m:.1f} ± {s:.1f}" for m, s in zip(mib.mean(axis=0), mib.std(axis=0, ddof=1))]
    assert [rows["MiB"][c] for c in columns] == expected
    assert rows["MiB"]["seeds"] == "2"

    table = (outdir / "background_shift_voc_15-5_step1.md").read_text(encoding="utf-8")
    assert "| Method | Overlap old→new | Overlap old→bg | Overlap new→bg | Overlap bg→new |" in table
    summary = (outdir / "summary.md").read_text(encoding="utf-8")
    assert "## Confusion and background shift" in summary
    figures = sorted(p.name for p in (outdir / "figures").glob("confusion_*.png"))
    assert figures == [
        "confusion_voc_15-5_overlap_step0_base_seed0.png",
        "confusion_voc_15-5_overlap_step1_mib_seed0.png",
        "confusion_voc_15-5_overlap_step1_mib_seed1.png",
        "confusion_voc_15-5_overlap_step1_wilson_seed0.png",
    ]
    with Image.open(outdir / "figures" / figures[1]) as image:
        assert image.width > 300 and image.height > 300
    index = json.loads((outdir / "index.json").read_text())
    listed = {e["path"] for e in index["files"]}
    assert {f"figures/{name}" for name in figures} | {"background_shift.csv"} <= listed


def test_run_matrix_maps_rows_to_seen_class_ids(tmp_path):
    """A matrix with one row per seen class (ids not contiguous) is read by position."""
    conf = np.array([[10, 0, 5], [2, 6, 2], [1, 1, 8]])  # classes 0, 5, 9
    path = _metrics(tmp_path, "coco", "ft", 0, _matrix(0))
    data = json.loads(path.read_text())
    data.update(seen_classes=[0, 5, 9], old_classes=[5], new_classes=[9], confusion_matrix=conf.tolist())
    path.write_text(json.dumps(data))
    run = load_metrics(path)
    assert run_matrix(run)[1] == [0, 5, 9]
    shift = run_shift(run)
    assert shift["old_as_new"] == pytest.approx(2 / 10)
    assert shift["background_as_new"] == pytest.approx(5 / 15)
    data["confusion_matrix"] = np.ones((4, 4), dtype=int).tolist()
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=str(path)):
        run_matrix(load_metrics(path))
    assert not math.isnan(shift["new_as_background"])
