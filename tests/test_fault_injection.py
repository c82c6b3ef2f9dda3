"""Fault injection (issue 14, part 3): the WILSS_FAULT kill points, the harness's file checks, and
SIGKILL + re-run of the tiny DAG's stages (pipeline/devtools/faults.py; docs/reliability.md).

The reduced set (marked long, as the full set) kills one stage of each family — the training loop (train_base, in the middle:
after the first epoch's checkpoint), an HDF5 cache (memory_bank, while writing an instance's
group) and evaluate (early, an external SIGKILL) — so the three points are covered once. The
full set (every stage × early/middle/writing, as scripts/fault_harness.py runs it) is marked long.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cache import CacheWriter
from pipeline.checkpoint import save_checkpoint
from pipeline.devtools.faults import (
    POINTS,
    STAGE_NAMES,
    Fault,
    Harness,
    Scenario,
    faults,
    scan_final_files,
    summary,
)
from pipeline.faultpoint import parse_fault

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = tuple(
    REPO / name
    for name in (
        "config/demo.yaml",
        "tests/data/tiny.yaml",
        "tests/data/tiny-incremental.yaml",
        "tests/data/tiny-weak.yaml",
        "tests/data/tiny-faults.yaml",
    )
)


def _python(code: str, cwd: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WILSS_FAULT"}
    if fault:
        env["WILSS_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


# -- the kill points ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["checkpoint.pt@1", "during:x.json", "during:x.json@0", "later:x.json@1", ""])
def test_malformed_fault_spec_names_the_variable(spec):
    with pytest.raises(ValueError, match="WILSS_FAULT"):
        parse_fault(spec)


WRITE_THREE = """
from pipeline.io import write_json
for i in range(3):
    write_json(f"out{i}.json", {"values": list(range(1000)), "i": i})
"""


def test_unset_variable_is_inert(tmp_path):
    proc = _python(WRITE_THREE, tmp_path, None)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out0.json", "out1.json", "out2.json"]


def test_kill_during_an_atomic_write_leaves_only_a_cut_temporary(tmp_path):
    proc = _python(WRITE_THREE, tmp_path, "during:out*.json@2")
    assert proc.returncode == -signal.SIGKILL
    assert "SIGKILL during write #2" in proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    # the first file is complete, the second never got its final name, the third was never begun
    assert names[0] == "out0.json" and json.loads((tmp_path / "out0.json").read_text())["i"] == 0
    assert len(names) == 2 and names[1].startswith("out1.tmp-") and names[1].endswith(".json")
    full = len(json.dumps({"values": list(range(1000)), "i": 1}, indent=2)) + 1
    assert (tmp_path / names[1]).stat().st_size == full // 2


def test_the_re_run_after_a_kill_removes_the_killed_writers_temporary(tmp_path):
    proc = _python(WRITE_THREE, tmp_path, "during:out*.json@2")
    assert proc.returncode == -signal.SIGKILL
    (stale,) = tmp_path.glob("out1.tmp-*.json")
    # a temporary of a writer that is still running (this test's process) is not touched
    live = tmp_path / f"out1.tmp-{os.getpid()}.json"
    live.write_text("{}")
    other = tmp_path / "out10.tmp-1.json"  # another file's temporary
    other.write_text("{}")
    proc = _python(WRITE_THREE, tmp_path, None)
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and f"removed {stale.name}" in proc.stderr
    assert live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out0.json", "out1.json", "out2.json", live.name, other.name]
    )


def test_kill_after_a_write_keeps_it_complete(tmp_path):
    proc = _python(WRITE_THREE, tmp_path, "after:out1.json@1")
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out0.json", "out1.json"]
    assert json.loads((tmp_path / "out1.json").read_text())["i"] == 1


CACHE_SIX = """
import logging
import numpy as np
logging.basicConfig(level=logging.INFO)
from pipeline.cache import CacheWriter
rng = np.random.default_rng(0)
arrays = [{"a": rng.random((2, 9, 9)), "b": np.arange(i + 1)} for i in range(6)]
with CacheWriter("c.h5", {"kind": "test"}) as writer:
    for i, entry in enumerate(arrays):
        if str(i) not in writer.done:
            writer.put(str(i), entry)
    writer.finish({"n_images": 6})
"""


@pytest.mark.parametrize("spec, kept", [("during:c.h5@4", 3), ("after:c.h5@4", 4)])
def test_killed_cache_resumes_with_the_complete_images(tmp_path, spec, kept):
    proc = _python(CACHE_SIX, tmp_path, spec)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "c.h5").exists() and (tmp_path / "c.partial.h5").exists()
    with CacheWriter(tmp_path / "c.h5", {"kind": "test"}) as writer:
        assert writer.done == {str(i) for i in range(kept)}
    resumed = _python(CACHE_SIX, tmp_path, None)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {kept} images already cached" in resumed.stderr
    straight = tmp_path / "straight"
    straight.mkdir()
    assert _python(CACHE_SIX, straight, None).returncode == 0
    with h5py.File(tmp_path / "c.h5") as a, h5py.File(straight / "c.h5") as b:
        assert sorted(a["images"]) == sorted(b["images"]) == [str(i) for i in range(6)]
        for key in a["images"]:
            for name in ("a", "b"):
                assert np.array_equal(a["images"][key][name][()], b["images"][key][name][()])


# -- the harness's file checks can fail --------------------------------------------------------


def test_scan_finds_each_kind_of_partial_file(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    save_checkpoint({"w": torch.arange(10000.0)}, results / "good.pt")
    data = (results / "good.pt").read_bytes()
    (results / "cut.pt").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(results / "good.png")
    png = (results / "good.png").read_bytes()
    (results / "cut.png").write_bytes(png[: len(png) // 2])
    (results / "good.json").write_text('{"a": [1, 2]}')
    (results / "cut.json").write_text('{"a": [1, ')
    (results / "good.csv").write_text("epoch,loss\n1,0.5\n2,0.25\n")
    (results / "cut.csv").write_text("epoch,loss\n1,0.5\n2")
    with CacheWriter(results / "pseudo" / "x.h5", {"kind": "test"}) as writer:
        writer.put("a", {"cams": np.zeros((1, 4, 4)), "label": np.zeros((4, 4), np.uint8)})
        writer.finish({"num_images": 2})  # says 2, holds 1
    (results / "model.tmp-123.pt").write_bytes(data[:100])  # a temporary: never a final name
    counts, problems = scan_final_files(tmp_path)
    bad = sorted(p.split(":")[0] for p in problems)
    assert bad == [f"results/{n}" for n in ("cut.csv", "cut.json", "cut.png", "cut.pt", "pseudo/x.h5")]
    assert counts == {"pt": 1, "png": 1, "json": 1, "csv": 1}


def test_full_set_is_every_stage_at_every_point():
    stages = Scenario(OVERLAYS).stages()
    chosen = faults(stages)
    assert len(chosen) == len(STAGE_NAMES) * len(POINTS) == 30
    assert {(f.stage.name, f.point) for f in chosen} == {(s, p) for s in STAGE_NAMES for p in POINTS}
    with pytest.raises(ValueError, match="train_stepp"):
        faults(stages, ["train_stepp"])


# -- the DAG -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return Harness(Scenario(OVERLAYS), tmp_path_factory.mktemp("faults"))


def reduced_set(harness: Harness) -> list[Fault]:
    stages = harness.stages
    return [
        Fault(stages["train_base"], "middle"),
        Fault(stages["memory_bank"], "writing", target=stages["memory_bank"].outputs[0]),
        Fault(stages["evaluate"], "early"),
    ]


@pytest.mark.long  # a reference DAG and three re-runs, ~1 min: pytest -m long
def test_reduced_set_recovers_to_the_reference(harness):
    chosen = reduced_set(harness)
    harness.reference(f.rerun_target for f in chosen)
    results = [harness.inject(f) for f in chosen]
    report = summary(results)
    for result in results:
        assert not result.problems, report
        assert result.injected and result.recovered and result.identical
    # what the points imply: 1 of the 2 epochs kept; the instances before the cut one (the n-th) kept
    size, cut = harness.sizes["memory_bank"], int(results[1].spec.rsplit("@", 1)[1])
    assert results[0].kept == "checkpoint kept 1/2 epochs"
    assert 1 < cut <= size and results[1].kept == f"partial cache kept {cut - 1}/{size}"
    assert "3 faults: 3 kills injected, 3 recovered, 3 identical" in report


@pytest.mark.long  # 30 kills, each re-running part of the DAG: pytest -m long
def test_every_stage_at_every_point_recovers_to_the_reference(harness):
    chosen = faults(harness.stages)
    harness.reference(f.rerun_target for f in chosen)
    results = [harness.inject(f) for f in chosen]
    report = summary(results)
    print(report)
    assert all(not r.problems for r in results), report
    assert f"{len(chosen)} faults: {len(chosen)} kills injected, {len(chosen)} recovered" in report
