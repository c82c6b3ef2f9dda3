"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The default generated demo dataset (600 train + 120 val images, 96 px, seed 0)."""
    from pipeline.data.synthetic import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=0, workers=2)
    return root


def shared_dir() -> Path:
    """The project's shared/ folder: beside the checkout (CI's fresh clone), else /work/shared."""
    beside = Path(__file__).resolve().parents[2] / "shared"
    return beside if beside.is_dir() else Path("/work/shared")


# --- The tiny DAG's uninterrupted local run (tests/test_slurm.py, tests/test_parent_kill.py) ---
@pytest.fixture(scope="session")
def tiny_cluster_reference(tmp_path_factory):
    """One uninterrupted local run (``--cores 2``) of the tiny DAG with tests/data/tiny-cluster.yaml,
    started in the background: what the scheduler and kill tests compare their results with
    (``.result()`` waits for it and returns its working directory)."""
    from helpers.dag import TINY_CLUSTER, BackgroundRun

    workdir = tmp_path_factory.mktemp("reference")
    run = BackgroundRun(workdir, "--cores", "2", *TINY_CLUSTER)
    yield run
    run.stop()
