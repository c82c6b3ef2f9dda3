"""A killed ``snakemake`` (SIGKILL of the parent process, not of its jobs) and the recovery README
"Reliability and resume" gives: ``--unlock``, keep what a finished orphan wrote
(``--touch`` its model.pt), re-run the same command (the profiles set ``rerun-incomplete``).

The tiny DAG runs locally through profiles/local with both training jobs at once. Once one has
written its first checkpoint, snakemake is killed; its jobs live on as orphans. One orphan is then
killed as a user would (its checkpoint stays), the other is left to finish. Checked: the re-run
without ``--unlock`` is refused and changes nothing; no final-named file of the killed job exists
(only its per-epoch ``history.csv``, which Snakemake marks incomplete); after the recovery the killed
job resumes from its checkpoint, the finished one is not redone, and the metrics equal an
uninterrupted run's to the last digit.
"""

from __future__ import annotations

import os
import signal

import pytest
from helpers.dag import (
    PROTOCOLS,
    REPO,
    TINY_CLUSTER,
    base_run,
    job_counts,
    job_processes,
    kill_group,
    per_class_iou,
    resumed_epoch,
    snakemake,
    start_snakemake,
    train_log,
    unfinished_outputs,
    wait_for,
)

from pipeline.checkpoint import load_checkpoint
from pipeline.io import file_sha256

# Both training jobs at once (each declares gpu: 1 in the overlay; profiles/local has 1 GPU).
ARGS = ["--profile", str(REPO / "profiles/local"), *TINY_CLUSTER, "--resources", "gpu=2"]


@pytest.mark.long  # two tiny DAG runs, ~4 min: pytest -m long
def test_killed_snakemake_parent_recovers_and_keeps_finished_work(tiny_cluster_reference, tmp_path):
    workdir = tmp_path / "dag"
    workdir.mkdir()
    parent = start_snakemake(workdir, *ARGS, log=tmp_path / "killed.log")
    try:
        check_recovery(workdir, parent, tiny_cluster_reference)
    finally:
        kill_group(parent)  # orphans left by a failed assertion


def trainings(workdir):
    """{protocol: PIDs of its running ``train-base`` job}."""
    return {p: job_processes(workdir, f"--outdir results/demo/15-5-{p}/") for p in PROTOCOLS}


def check_recovery(workdir, parent, reference):
    def one_checkpointed_other_running():
        running = trainings(workdir)
        for killed, other in (PROTOCOLS, PROTOCOLS[::-1]):
            if (
                running[killed]
                and running[other]
                and (base_run(workdir, killed) / "checkpoint.pt").exists()
                and not (base_run(workdir, other) / "model.pt").exists()
            ):
                return killed, other, running
        return None

    killed, finished, running = wait_for(one_checkpointed_other_running, 900, "both train_base jobs, one checkpointed")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    # The orphans live on. The user stops one of them (kill PID); the other finishes on its own.
    for pid in running[killed]:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not trainings(workdir)[killed], 60, f"the killed {killed} job to end")

    run = base_run(workdir, killed)
    assert not (run / "model.pt").exists()  # a killed job leaves no final model ...
    epoch = int(load_checkpoint(run / "checkpoint.pt")["epoch"])  # ... but a complete checkpoint
    assert 0 <= epoch < 3  # 0-based: after epoch 1, 2 (or 3, killed while writing model.pt) of 3
    rel = run.relative_to(workdir)
    assert {f"{rel}/model.pt", f"{rel}/history.csv"} <= set(unfinished_outputs(workdir))

    # The same command again is refused (the dead run's lock) and changes nothing.
    proc = snakemake(workdir, *ARGS, check=False)
    assert proc.returncode != 0
    assert "LockException" in proc.stdout + proc.stderr and "--unlock" in proc.stdout + proc.stderr
    assert not (run / "model.pt").exists() and (run / "checkpoint.pt").exists()

    wait_for(lambda: not trainings(workdir)[finished], 600, f"the orphaned {finished} job to finish")
    done = base_run(workdir, finished)
    load_checkpoint(done / "model.pt", what="model file")  # complete (written last, atomically)
    assert not (done / "checkpoint.pt").exists()
    done_rel = done.relative_to(workdir)
    assert f"{done_rel}/model.pt" in unfinished_outputs(workdir)  # Snakemake never saw it finish

    # The recovery (README "Reliability and resume").
    snakemake(workdir, *ARGS, "--unlock")
    # model.pt is written last and atomically: where it exists, the training job finished
    touched = snakemake(workdir, *ARGS, "--touch", f"{done_rel}/model.pt")
    assert job_counts(touched.stdout + touched.stderr) == {"train_base": 1}
    # Without the profile's rerun-incomplete, Snakemake lists the incomplete files that exist: the
    # killed job's per-epoch history.csv (it has no model.pt), no longer the finished job's files.
    listing = snakemake(workdir, "-n", "--cores", "1", *TINY_CLUSTER, check=False)
    text = listing.stdout + listing.stderr
    assert listing.returncode != 0 and "IncompleteFilesException" in text
    assert text.split("Incomplete files:", 1)[1].split() == [f"{rel}/history.csv"], text[-2000:]
    model_sha = file_sha256(done / "model.pt")
    finished_log = train_log(workdir, finished).read_text()

    # split_summary (for the report) shares the cores with the trainings: under load it may not
    # have run before the kill, and then the re-run does it, once per missing summary
    missing = [p for p in PROTOCOLS if not (workdir / f"results/demo/splits/15-5-{p}/summary.json").exists()]
    rerun = snakemake(workdir, *ARGS)
    counts = job_counts(rerun.stdout + rerun.stderr)
    expected = {"train_base": 1, "evaluate": 2, "report": 1, "all": 1} | (
        {"split_summary": len(missing)} if missing else {}
    )
    assert counts == expected, counts
    # the killed job resumed from its checkpoint (epoch 0-based in the file, 1-based in the log) ...
    assert resumed_epoch(train_log(workdir, killed)) == epoch + 1
    # ... the finished one was not redone
    assert file_sha256(done / "model.pt") == model_sha
    assert train_log(workdir, finished).read_text() == finished_log

    assert per_class_iou(workdir) == per_class_iou(reference.result())
    assert unfinished_outputs(workdir) == []
    leftovers = [p for p in (workdir / "results").rglob("*") if ".tmp-" in p.name or p.name == "checkpoint.pt"]
    assert not leftovers, leftovers
