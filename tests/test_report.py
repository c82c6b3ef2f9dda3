"""Tests of the ``report`` stage: tables against the input numbers, figures, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.__main__ import main
from pipeline.data.classes import VOC_CLASSES, voc_palette
from pipeline.report import Table, load_metrics, read_history, step_series, summary_order

IDS = ["2007_000001", "2007_000002", "2007_000003"]
OLD = list(range(1, 16))
NEW = list(range(16, 21))


def _label_png(path: Path, labels: np.ndarray) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _dataset(root: Path, with_images: bool = True) -> tuple[Path, Path]:
    mask_dir = root / "SegmentationClassAug"
    rng = np.random.default_rng(0)
    for image_id in IDS:
        _label_png(mask_dir / f"{image_id}.png", rng.integers(0, 21, (6, 8)))
        if with_images:
            (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(
                root / "JPEGImages" / f"{image_id}.jpg"
            )
    return root, mask_dir


def _run(
    tmp: Path,
    name: str,
    *,
    method,
    protocol,
    seed,
    old,
    new,
    all_,
    step=1,
    task="15-5",
    dataset="voc",
    root=None,
    mask_dir=None,
    history=None,
    drop=None,
    num_steps=2,
    classes=None,
) -> Path:
    """One fake run; ``classes`` = (old, new, seen) class lists (default those of 15-5)."""
    run_dir = tmp / "runs" / name
    pred_dir = run_dir / "predictions"
    rng = np.random.default_rng(seed)
    for image_id in IDS:
        _label_png(pred_dir / f"{image_id}.png", rng.integers(0, 21, (6, 8)))
    seen = list(range(0, 16 if step == 0 else 21))
    old_classes, new_classes = OLD, [] if step == 0 else NEW
    if classes is not None:
        old_classes, new_classes, seen = classes
    per_class = {VOC_CLASSES[k]: round(0.5 + 0.02 * k, 4) for k in range(21)}
    per_class["tvmonitor"] = None
    data = {
        "dataset": dataset,
        "task": task,
        "protocol": protocol,
        "step": step,
        "num_steps": num_steps,
        "method": method,
        "seed": seed,
        "old_classes": old_classes,
        "new_classes": new_classes,
        "seen_classes": seen,
        "per_class_iou": per_class,
        "miou_old": old,
        "miou_new": new,
        "miou_all": all_,
        "pixel_accuracy": 0.9,
        "predictions_dir": str(pred_dir),
        "image_root": str(root),
        "mask_dir": str(mask_dir),
        "val_ids": IDS,
    }
    if drop:
        del data[drop]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(data))
    if history is not None:
        (run_dir / "history.csv").write_text(history)
    return run_dir / "metrics.json"


HISTORY = "epoch,loss,lr,time_s,val_miou\n1,1.5,0.01,3.0,\n2,1.1,0.009,3.1,0.41\n3,0.9,0.008,3.0,0.47\n"
# No val_miou; an extra non-numeric column is tolerated.
HISTORY_NO_VAL = "epoch,loss,lr,time_s,phase\n1,2.0,0.01,1.0,warmup\n2,1.7,0.01,1.0,main\n"


@pytest.fixture()
def runs(tmp_path):
    root, mask_dir = _dataset(tmp_path / "voc")
    kw = dict(root=root, mask_dir=mask_dir)
    paths = [
        # WILSON disjoint, two seeds: old 70/60 -> 65.0 ± 7.1 (sample std sqrt(50)),
        # new 40/44 -> 42.0 ± 2.8, all 62.34/62.34 -> 62.3 ± 0.0
        _run(
            tmp_path,
            "wilson_d0",
            method="wilson",
            protocol="disjoint",
            seed=0,
            old=0.70,
            new=0.40,
            all_=0.6234,
            history=HISTORY,
            **kw,
        ),
        _run(
            tmp_path,
            "wilson_d1",
            method="wilson",
            protocol="disjoint",
            seed=1,
            old=0.60,
            new=0.44,
            all_=0.6234,
            history=HISTORY_NO_VAL,
            **kw,
        ),
        _run(tmp_path, "mib_d0", method="mib", protocol="disjoint", seed=0, old=0.6543, new=0.4321, all_=0.6049, **kw),
        _run(tmp_path, "mib_o0", method="mib", protocol="overlap", seed=0, old=0.7512, new=None, all_=0.6908, **kw),
        _run(tmp_path, "abc_o0", method="abc", protocol="overlap", seed=0, old=0.1, new=0.2, all_=0.3, **kw),
        _run(
            tmp_path,
            "base_d0",
            method="wilson",
            protocol="disjoint",
            seed=0,
            old=0.7777,
            new=None,
            all_=0.7611,
            step=0,
            history=HISTORY,
            **kw,
        ),
    ]
    return tmp_path, paths


def _table_rows(md: Path) -> list[list[str]]:
    lines = [line for line in md.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def _report(tmp_path, paths, histories=(), extra=()):
    outdir = tmp_path / "report"
    args = ["report", "--metrics", *map(str, paths), "--outdir", str(outdir), *extra]
    if histories:
        args += ["--histories", *map(str, histories)]
    assert main(args) == 0
    return outdir


def test_tables_match_inputs(runs):
    tmp_path, paths = runs
    outdir = _report(tmp_path, paths)
    rows = _table_rows(outdir / "table_voc_15-5_step1.md")
    assert rows[0] == [
        "Method",
        "Disjoint 1-15",
        "Disjoint 16-20",
        "Disjoint All",
        "Overlap 1-15",
        "Overlap 16-20",
        "Overlap All",
    ]
    body = {r[0]: r[1:] for r in rows[2:]}
    # Order: paper methods first (mib before wilson), others alphabetically after.
    assert [r[0] for r in rows[2:]] == ["MiB", "WILSON", "abc"]
    assert body["MiB"] == ["65.4", "43.2", "60.5", "75.1", "–", "69.1"]
    assert body["WILSON"] == ["65.0 ± 7.1", "42.0 ± 2.8", "62.3 ± 0.0", "–", "–", "–"]
    assert body["abc"] == ["–", "–", "–", "10.0", "20.0", "30.0"]

    # Step 0: one "base" row, no new classes, only the Disjoint protocol present.
    rows0 = _table_rows(outdir / "table_voc_15-5_step0.md")
    assert rows0[0] == ["Method", "Disjoint 1-15", "Disjoint –", "Disjoint All"]
    assert rows0[2] == ["Base (step 0)", "77.8", "–", "76.1"]

    with (outdir / "table_voc_15-5_step1.csv").open(newline="", encoding="utf-8") as fh:
        assert list(csv.reader(fh)) == [rows[0]] + rows[2:]
    tex = (outdir / "table_voc_15-5_step1.tex").read_text(encoding="utf-8")
    assert r"\multicolumn{3}{c}{Disjoint} & \multicolumn{3}{c}{Overlap}" in tex
    assert r"WILSON & 65.0 $\pm$ 7.1 & 42.0 $\pm$ 2.8 & 62.3 $\pm$ 0.0 & -- & -- & -- \\" in tex

    summary = (outdir / "summary.md").read_text(encoding="utf-8")
    assert "| MiB | 65.4 | 43.2 | 60.5 | 75.1 | – | 69.1 |" in summary
    # The final step (the papers' table) comes before step 0.
    assert summary.index("## voc 15-5, step 1") < summary.index("## voc 15-5, step 0")
    assert "(per_class_iou_voc_15-5_step1.png)" in summary
    assert "(qualitative_voc_15-5_step1.png)" in summary


def _assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file(), path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_figures_and_index(runs):
    tmp_path, paths = runs
    histories = [tmp_path / "runs" / n / "history.csv" for n in ("wilson_d0", "wilson_d1", "base_d0")]
    outdir = _report(tmp_path, paths, histories)
    sizes = {}
    for name in (
        "per_class_iou_voc_15-5_step0.png",
        "per_class_iou_voc_15-5_step1.png",
        "qualitative_voc_15-5_step0.png",
        "qualitative_voc_15-5_step1.png",
        "learning_curves_voc_15-5.png",
        "steps_voc_15-5.png",
    ):
        sizes[name] = width, height = _assert_png(outdir / name)
        assert width > 100 and height > 100
    index = json.loads((outdir / "index.json").read_text())
    listed = {entry["path"] for entry in index["files"]}
    produced = {p.name for p in outdir.iterdir()} - {"index.json"}
    assert listed == produced
    assert not [p for p in outdir.iterdir() if ".tmp-" in p.name]
    assert "(learning_curves_voc_15-5.png)" in (outdir / "summary.md").read_text(encoding="utf-8")

    # As the Snakemake rule calls it: figures in their own folder, 2 qualitative rows (not 3).
    figures = tmp_path / "report" / "figures"
    _report(tmp_path, paths, histories, ["--figures-dir", str(figures), "--qualitative", "2"])
    index = json.loads((outdir / "index.json").read_text())
    pngs = sorted(e["path"] for e in index["files"] if e["path"].endswith(".png"))
    assert pngs == sorted(f"figures/{p.name}" for p in figures.iterdir())
    assert "(figures/qualitative_voc_15-5_step1.png)" in (outdir / "summary.md").read_text(encoding="utf-8")
    width2, height2 = _assert_png(figures / "qualitative_voc_15-5_step1.png")
    assert height2 < sizes["qualitative_voc_15-5_step1.png"][1]


def test_qualitative_without_images_and_missing_prediction(tmp_path):
    # Label-only dataset (no JPEGImages): the image column is skipped, not an error.
    root, mask_dir = _dataset(tmp_path / "labels_only", with_images=False)
    p = _run(
        tmp_path,
        "a",
        method="wilson",
        protocol="overlap",
        seed=0,
        old=0.5,
        new=0.5,
        all_=0.5,
        root=root,
        mask_dir=mask_dir,
    )
    outdir = _report(tmp_path, [p])
    _assert_png(outdir / "qualitative_voc_15-5_step1.png")
    # With JPEGImages present the image is required: a missing one is an error naming it.
    (root / "JPEGImages").mkdir()
    with pytest.raises(ValueError, match=r"2007_000001\.jpg"):
        _report(tmp_path, [p])
    (root / "JPEGImages").rmdir()
    (p.parent / "predictions" / "2007_000002.png").unlink()
    with pytest.raises(ValueError, match=r"predictions.2007_000002\.png"):
        _report(tmp_path, [p])


def test_missing_key_names_file_and_key(runs):
    tmp_path, paths = runs
    root, mask_dir = _dataset(tmp_path / "voc")
    bad = _run(
        tmp_path,
        "bad",
        method="ft",
        protocol="disjoint",
        seed=0,
        old=0.1,
        new=0.1,
        all_=0.1,
        root=root,
        mask_dir=mask_dir,
        drop="miou_new",
    )
    with pytest.raises(ValueError, match=r"bad.metrics\.json: missing key 'miou_new'"):
        _report(tmp_path, [*paths, bad])


def test_bad_values_and_duplicates(runs):
    tmp_path, paths = runs
    root, mask_dir = _dataset(tmp_path / "voc")
    pct = _run(
        tmp_path,
        "pct",
        method="ft",
        protocol="disjoint",
        seed=0,
        old=65.4,
        new=0.1,
        all_=0.1,
        root=root,
        mask_dir=mask_dir,
    )
    with pytest.raises(ValueError, match=r"pct.metrics\.json: key 'miou_old' must be a fraction"):
        _report(tmp_path, [pct])
    dup = _run(
        tmp_path,
        "dup",
        method="mib",
        protocol="disjoint",
        seed=0,
        old=0.1,
        new=0.1,
        all_=0.1,
        root=root,
        mask_dir=mask_dir,
    )
    with pytest.raises(ValueError, match="given twice"):
        _report(tmp_path, [paths[2], dup])


def test_history_needs_metrics_beside_it_and_columns(tmp_path, runs):
    _, paths = runs
    lonely = tmp_path / "lonely" / "history.csv"
    lonely.parent.mkdir()
    lonely.write_text(HISTORY)
    with pytest.raises(ValueError, match="no metrics.json beside it"):
        _report(tmp_path, paths[:1], [lonely])
    broken = paths[0].parent / "history.csv"
    broken.write_text("epoch,lr\n1,0.1\n")
    with pytest.raises(ValueError, match="missing column 'loss'"):
        _report(tmp_path, paths[:1], [broken])


def test_read_history_parses_empty_cells(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HISTORY_NO_VAL.replace("1.7", "") + "3,,0.01,1.0,x\n")
    hist = read_history(path)
    np.testing.assert_array_equal(hist["epoch"], [1, 2, 3])
    assert hist["loss"][0] == 2.0 and math.isnan(hist["loss"][1]) and math.isnan(hist["loss"][2])
    assert "phase" not in hist  # non-numeric extra column dropped
    path.write_text(HISTORY.replace("0.47", "n/a"))
    with pytest.raises(ValueError, match="line 4, column 'val_miou'"):
        read_history(path)


# ----------------------------------------------------------------------------- mIoU per step
# 10-5-5: base classes 1-10 at step 0, then 11-15 and 16-20; old = base classes, new = the
# classes of steps 1..t (as the evaluate stage reports them).
CLASSES_10_5_5 = {
    0: (list(range(1, 11)), [], list(range(0, 11))),
    1: (list(range(1, 11)), list(range(11, 16)), list(range(0, 16))),
    2: (list(range(1, 11)), list(range(11, 21)), list(range(0, 21))),
}
# (protocol, row, step, seed) -> (old, new, all) fractions; row "base" is the step-0 run.
VALUES_10_5_5 = {
    ("disjoint", "base", 0, 0): (0.80, None, 0.78),
    ("disjoint", "base", 0, 1): (0.76, None, 0.74),
    ("overlap", "base", 0, 0): (0.82, None, 0.80),
    ("overlap", "base", 0, 1): (0.70, None, 0.68),
    ("disjoint", "wilson", 1, 0): (0.60, 0.40, 0.55),
    ("disjoint", "wilson", 1, 1): (0.64, 0.30, 0.57),
    ("disjoint", "wilson", 2, 0): (0.50, 0.35, 0.45),
    ("disjoint", "wilson", 2, 1): (0.52, 0.25, 0.43),
    ("disjoint", "mib", 1, 0): (0.30, 0.20, 0.28),
    ("disjoint", "mib", 2, 0): (0.10, 0.15, 0.12),
    # overlap: MiB with seed 1 only (starts at the seed-1 base), WILSON with seed 0 only.
    ("overlap", "mib", 1, 1): (0.35, 0.22, 0.31),
    ("overlap", "mib", 2, 1): (0.15, None, 0.14),
    ("overlap", "wilson", 1, 0): (0.66, 0.44, 0.60),
    ("overlap", "wilson", 2, 0): (0.58, 0.41, 0.52),
}


@pytest.fixture()
def runs_10_5_5(tmp_path):
    root, mask_dir = _dataset(tmp_path / "voc")
    paths = []
    for (protocol, row, step, seed), (old, new, all_) in VALUES_10_5_5.items():
        method = "wilson" if row == "base" else row  # the base run's method does not matter
        paths.append(
            _run(
                tmp_path,
                f"{row}_{protocol}_s{step}_seed{seed}",
                method=method,
                protocol=protocol,
                seed=seed,
                old=old,
                new=new,
                all_=all_,
                step=step,
                task="10-5-5",
                num_steps=3,
                classes=CLASSES_10_5_5[step],
                root=root,
                mask_dir=mask_dir,
            )
        )
    return tmp_path, paths


def _mean_pct(*keys, metric):
    index = {"old": 0, "new": 1, "all": 2}[metric]
    values = [VALUES_10_5_5[k][index] for k in keys if VALUES_10_5_5[k][index] is not None]
    return 100.0 * sum(values) / len(values) if values else math.nan


def _assert_series(actual, expected):
    assert list(actual) == ["step", "all", "old", "new"]
    assert actual["step"] == expected["step"]
    for metric in ("all", "old", "new"):
        assert actual[metric] == pytest.approx(expected[metric], nan_ok=True), metric


def test_step_series_equals_inputs(runs_10_5_5):
    _, paths = runs_10_5_5
    series = step_series([load_metrics(p) for p in paths])
    # Protocols Disjoint then Overlap, methods in table order (MiB before WILSON).
    assert list(series) == [("disjoint", "mib"), ("disjoint", "wilson"), ("overlap", "mib"), ("overlap", "wilson")]

    def expected(protocol, method, seeds):
        groups = [[(protocol, "base", 0, s) for s in seeds]]
        groups += [[(protocol, method, t, s) for s in seeds] for t in (1, 2)]
        return {"step": [0, 1, 2], **{m: [_mean_pct(*g, metric=m) for g in groups] for m in ("all", "old", "new")}}

    # Seeds averaged, step 0 = the base runs of the method's seeds (both for disjoint WILSON).
    _assert_series(series[("disjoint", "wilson")], expected("disjoint", "wilson", (0, 1)))
    wilson = series[("disjoint", "wilson")]
    assert wilson["all"] == pytest.approx([76.0, 56.0, 44.0])
    assert wilson["old"] == pytest.approx([78.0, 62.0, 51.0])
    assert math.isnan(wilson["new"][0]) and wilson["new"][1:] == pytest.approx([35.0, 30.0])
    # Disjoint MiB has seed 0 only: its line starts at the seed-0 base (not the 2-seed mean).
    _assert_series(series[("disjoint", "mib")], expected("disjoint", "mib", (0,)))
    assert series[("disjoint", "mib")]["all"][0] == pytest.approx(78.0)
    # Overlap MiB has seed 1 only: starts at the seed-1 overlap base; null new at step 2 -> NaN.
    _assert_series(series[("overlap", "mib")], expected("overlap", "mib", (1,)))
    assert series[("overlap", "mib")]["all"][0] == pytest.approx(68.0)
    assert math.isnan(series[("overlap", "mib")]["new"][2])
    _assert_series(series[("overlap", "wilson")], expected("overlap", "wilson", (0,)))
    assert series[("overlap", "wilson")]["all"] == pytest.approx([80.0, 60.0, 52.0])


def test_step_series_without_base_and_errors(runs_10_5_5):
    tmp_path, paths = runs_10_5_5
    runs = [load_metrics(p) for p in paths]
    no_base = step_series([r for r in runs if r.data["step"] > 0])
    assert no_base[("disjoint", "wilson")]["step"] == [1, 2]
    assert no_base[("disjoint", "wilson")]["all"] == pytest.approx([56.0, 44.0])
    other = load_metrics(
        _run(tmp_path, "other_task", method="ft", protocol="disjoint", seed=0, old=0.1, new=0.1, all_=0.1)
    )
    with pytest.raises(ValueError, match="several"):
        step_series([*runs, other])


def test_steps_figure_and_summary_order(runs_10_5_5):
    tmp_path, paths = runs_10_5_5
    outdir = _report(tmp_path, paths)
    width, height = _assert_png(outdir / "steps_voc_10-5-5.png")
    assert width > 300 and height > 200
    index = json.loads((outdir / "index.json").read_text())
    captions = {e["path"]: e["caption"] for e in index["files"]}
    assert captions["steps_voc_10-5-5.png"] == "mIoU per step, voc 10-5-5"
    assert {p.name for p in outdir.iterdir()} - {"index.json"} == set(captions)

    summary = (outdir / "summary.md").read_text(encoding="utf-8")
    heading = summary.index("## mIoU per step")
    assert summary.index("(steps_voc_10-5-5.png)") > heading
    # Final step first (the papers' table), then the intermediate step, then step 0.
    positions = [summary.index(f"## voc 10-5-5, step {t}") for t in (2, 1, 0)]
    assert positions == sorted(positions)
    assert positions[-1] < heading
    # The final-step table: rows methods, old / new / all per protocol.
    final = summary[positions[0] : positions[1]]
    assert (
        "| Method | Disjoint 1-10 | Disjoint 11-20 | Disjoint All | Overlap 1-10 | Overlap 11-20 | Overlap All |"
        in final
    )
    assert "| MiB | 10.0 | 15.0 | 12.0 | 15.0 | – | 14.0 |" in final
    assert "| WILSON | 51.0 ± 1.4 | 30.0 ± 7.1 | 44.0 ± 1.4 | 58.0 | 41.0 | 52.0 |" in final

    # With the figures in their own folder the figure goes there.
    figures = outdir / "figures"
    _report(tmp_path, paths, extra=["--figures-dir", str(figures), "--qualitative", "0"])
    _assert_png(figures / "steps_voc_10-5-5.png")
    assert "(figures/steps_voc_10-5-5.png)" in (outdir / "summary.md").read_text(encoding="utf-8")


def test_single_step_task_has_no_steps_figure(runs):
    tmp_path, paths = runs
    outdir = _report(tmp_path, [p for p in paths if "base" not in str(p)])
    assert not list(outdir.glob("steps_*.png"))
    assert "mIoU per step" not in (outdir / "summary.md").read_text(encoding="utf-8")


def test_summary_order_of_a_long_task():
    tables = [
        Table(d, task, t, [], [], {}) for d, task, n in (("voc", "15-1", 6), ("ade", "100-50", 2)) for t in range(n)
    ]
    order = [(t.dataset, t.task, t.step) for t in summary_order(tables)]
    assert order == [("ade", "100-50", 1), ("ade", "100-50", 0)] + [("voc", "15-1", t) for t in (5, 1, 2, 3, 4, 0)]


def _cam_quality(root: Path, cam: str, protocol: str, seed: int, **entries) -> Path:
    """A ``pseudo_labels`` quality JSON at its place in the results layout."""
    path = root / f"demo/15-5-{protocol}/seed{seed}/step1/pseudo/{cam}_quality.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"miou": 0.5, "contour_f": 0.4, "n_images": 3, **entries}))
    return path


def test_learned_table_shows_the_codebook_drift_and_learned_scalars(tmp_path):
    from pipeline.report.pseudo_quality import learned_tables

    drift = lambda change, norm: {"codebook": {"norm_initial": norm, "norm_final": 2.0, "relative_change": change}}  # noqa: E731
    paths = [
        _cam_quality(tmp_path, "vwe", "overlap", 0, parameter_drift=drift(0.30, 4.0), learned={}),
        _cam_quality(tmp_path, "vwe", "overlap", 1, parameter_drift=drift(0.50, 6.0), learned={}),
        _cam_quality(tmp_path, "vwe", "disjoint", 0, parameter_drift=drift(0.10, 4.0), learned={}),
        _cam_quality(tmp_path, "iscam", "overlap", 0, parameter_drift={}, learned={"sigma": 5.0, "mu": 2.5}),
        _cam_quality(tmp_path, "cam", "overlap", 0),  # a model saved before the drift was recorded: no row
    ]
    (table,) = learned_tables(paths)
    assert table["title"] == "What the CAM networks learned, demo 15-5, step 1"
    assert table["header"] == ["Method", "Quantity", "Disjoint", "Overlap"]
    # the drift first, then the norms it is relative to
    assert [r[1] for r in table["rows"] if r[0] == "VWE"] == [
        "codebook: ‖P − P₀‖ / ‖P₀‖ (%)",
        "codebook: ‖P₀‖",
        "codebook: ‖P‖",
    ]
    rows = {(r[0], r[1]): r[2:] for r in table["rows"]}
    # two overlap seeds: mean 40.0 %, sample std sqrt(((30-40)² + (50-40)²) / 1) = 14.1 %
    assert rows[("VWE", "codebook: ‖P − P₀‖ / ‖P₀‖ (%)")] == ["10.0", "40.0 ± 14.1"]
    assert rows[("VWE", "codebook: ‖P₀‖")] == ["4", "5 ± 1.41"]
    assert rows[("IS-CAM", "sigma")] == ["–", "5"] and rows[("IS-CAM", "mu")] == ["–", "2.5"]
    assert not any(method == "CAM" for method, _ in rows)
