"""The GPU benchmark's code, in its reduced CPU mode (its numbers are not a benchmark)."""

import importlib.util
from pathlib import Path

import pytest

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


LOADER = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_loader.py"
MINI = Path(__file__).resolve().parents[2] / "shared" / "voc-mini"


@pytest.mark.skipif(not MINI.is_dir(), reason=f"{MINI} not found (the real VOC images)")
def test_loader_benchmark_reads_real_jpegs_and_sizes_the_workers(tmp_path):
    spec = importlib.util.spec_from_file_location("loader_bench", LOADER)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.workers_needed(150.0, 40.0) == 4 and bench.workers_needed(150.0, 50.0) == 3
    out = tmp_path / "loader.json"
    result = bench.main(["--images", "6", "--batch-size", "2", "--crop-size", "128", "--workers", "0", "1",
                         "--model-images-per-s", "1000", "--out", str(out)])  # fmt: skip
    assert out.is_file() and result["images_per_s"]["0"] > 0 and result["images_per_s"]["1"] > 0
    assert result["workers_needed"] == bench.workers_needed(1000.0, result["per_worker_images_per_s"])
