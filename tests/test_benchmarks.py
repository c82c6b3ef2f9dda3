"""The GPU benchmark's code, in its reduced CPU mode (its numbers are not a benchmark)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_runs_in_cpu_mode_and_projects_the_matrices(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--cpu", "--skip-compile", "--out", str(tmp_path / "gpu.json")])
    assert (tmp_path / "gpu.json").is_file()
    for part in ("train", "evaluate", "coseg"):
        assert result[part]["images_per_s"] > 0
    assert result["train"]["precision"] in ("bfloat16", "float32")
    # the projection is images / rate: doubling every rate halves it
    doubled = bench.project(
        2 * result["train"]["images_per_s"], 2 * result["evaluate"]["images_per_s"], 2 * result["coseg"]["images_per_s"]
    )
    for key, hours in result["projection"].items():
        assert hours > 0 and abs(doubled[key] - hours / 2) < 1e-9 * hours
