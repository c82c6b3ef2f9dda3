"""Data parallelism of the shared loop: 2 gloo processes on the CPU train like one process with the
same global batch (losses and weights to float tolerance), and a run resumes on another number of
processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.train.distributed import SINGLE, EpochSampler, World, sample_seed

WORKER = Path(__file__).parent / "helpers" / "distributed_worker.py"
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp: Path, name: str, processes: int, run_dir: Path | None = None, stop_after: int = 0) -> int:
    out = tmp / f"{name}.pt"
    command = [sys.executable]
    if processes > 1:
        command += [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
        ]
    command += [
        str(WORKER),
        "--run-dir",
        str(run_dir or tmp / name),
        "--out",
        str(out),
        "--stop-after",
        str(stop_after),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0 and not stop_after:
        raise AssertionError(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.returncode


def _result(tmp: Path, name: str):
    return torch.load(tmp / f"{name}.pt", weights_only=True), json.loads((tmp / f"{name}.pt.json").read_text())


def test_epoch_sampler_splits_each_global_batch_between_processes():
    halves = [EpochSampler(10, 4, seed=1, world=World(rank, 2)) for rank in (0, 1)]
    for sampler in [*halves]:
        sampler.set_epoch(0, 99)
    one = EpochSampler(10, 4, seed=1)
    one.set_epoch(0, 99)
    alone = list(one)
    parts = [list(s) for s in halves]
    assert len(alone) == 8 and all(len(p) == 4 for p in parts)  # 2 global batches, the last 2 images dropped
    for i in range(2):  # global batch i = rank 0's i-th half + rank 1's i-th half
        assert alone[4 * i : 4 * i + 4] == parts[0][2 * i : 2 * i + 2] + parts[1][2 * i : 2 * i + 2]
    assert all(seed == sample_seed(1, 0, index) for index, seed in alone)
    with pytest.raises(ValueError, match="not divisible"):
        EpochSampler(10, 3, seed=1, world=World(0, 2))
    assert SINGLE.is_main and not SINGLE.distributed


def test_two_gloo_processes_match_one_process(tmp_path):
    _run(tmp_path, "one", 1)
    _run(tmp_path, "two", 2)
    (w1, r1), (w2, r2) = _result(tmp_path, "one"), _result(tmp_path, "two")
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6)
    assert [row["epoch"] for row in r2["history"]] == [1, 2, 3]
    for a, b in zip(r1["history"], r2["history"]):
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-5)


def test_a_run_killed_with_two_processes_resumes_with_one(tmp_path):
    _run(tmp_path, "one", 1)
    shared = tmp_path / "shared_run"
    assert _run(tmp_path, "killed", 2, run_dir=shared, stop_after=2) != 0  # rank 0 dies in epoch 3's validation
    assert (shared / "checkpoint.pt").is_file()  # epoch 2's, written by rank 0
    _run(tmp_path, "resumed", 1, run_dir=shared)
    (w1, _), (w3, r3) = _result(tmp_path, "one"), _result(tmp_path, "resumed")
    assert r3["resumed_at"] == 2  # epochs 1-2 with two processes, epoch 3 with one
    for key in w1:
        torch.testing.assert_close(w3[key], w1[key], rtol=1e-5, atol=1e-6)
