"""The tiny demo DAG through a real SLURM (shared/slurm-local, profiles/slurm-local, the SLURM
executor plugin): every rule runs as a SLURM job with the resources it declares, the results are a
local run's, and a training job killed with ``scancel`` is submitted again and resumes from its
checkpoint.

Needs root (start.sh installs slurm-wlm and munge with apt when missing and starts the daemons);
skipped, with the reason, only where slurmctld cannot be started. About 4-5 minutes on 2 CPU cores
(every job re-reads the Snakefile; status polls every 5-25 s). Deselect with ``-m "not slurm"``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from helpers import slurm
from helpers.dag import (
    CLUSTER_OVERLAY,
    PROTOCOLS,
    REPO,
    SNAKEMAKE,
    TINY_CLUSTER,
    TINY_JOBS,
    base_run,
    per_class_iou,
    resumed_epoch,
    train_log,
)

pytestmark = pytest.mark.slurm

#: The config.resources kind each rule of the tiny DAG declares (rules/*.smk: `**res(kind)`).
KIND = {"train_base": "train", "evaluate": "evaluate"}  # every other rule: "light"


@pytest.fixture(scope="module")
def cluster():
    """A running shared/slurm-local cluster: started here (and stopped after) unless one runs."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError as error:  # part of the test extra: a broken install, not a reason to skip
        pytest.fail(f'the SLURM executor plugin is missing ({error}): pip install -e ".[test]" installs it')
    started, reason = slurm.start_cluster()
    if reason:
        print(f"SKIP test_slurm: {reason}")
        pytest.skip(reason)
    yield
    if started:
        slurm.stop_cluster()


def job_list(watcher: slurm.JobWatcher) -> list[dict]:
    """The run's SLURM jobs as SLURM saw them, joined with Snakemake's view (rule, wildcards)."""
    sm_jobs, submitted = slurm.parse_snakemake_log(watcher.log_text())
    rows = []
    for jobid, fields in sorted(watcher.jobs.items(), key=lambda item: int(item[0])):
        sm = sm_jobs.get(submitted.get(jobid, -1))
        rows.append(
            {
                "slurm_jobid": int(jobid),
                "rule": sm.rule if sm else None,
                "wildcards": sm.wildcards if sm else None,
                "comment": fields.get("Comment"),
                "state": fields.get("JobState"),
                "exit_code": fields.get("ExitCode"),
                "cpus": int(fields["NumCPUs"]),
                "mem_mb": slurm.megabytes(fields["MinMemoryNode"]),
                "time_limit_min": slurm.minutes(fields["TimeLimit"]),
                "gpus": slurm.gpus(fields.get("TresPerJob")),
                "tres_per_job": fields.get("TresPerJob"),
                "partition": fields.get("Partition"),
                "snakemake_jobid": submitted.get(jobid),
            }
        )
    return rows


def print_job_list(rows: list[dict]) -> None:
    print(f"\n{'slurm id':>8}  {'rule':<15} {'wildcards':<28} {'state':<10} cpus  mem_mb  time  gpus  partition")
    for r in rows:
        wc = ",".join(f"{v}" for v in (r["wildcards"] or {}).values())
        print(
            f"{r['slurm_jobid']:>8}  {r['rule'] or '?':<15} {wc:<28} {r['state']:<10} {r['cpus']:>4}  {r['mem_mb']:>6}"
            f"  {r['time_limit_min']:>4}  {r['gpus']:>4}  {r['partition']}"
        )


def test_tiny_dag_on_slurm_matches_local_and_resumes_after_scancel(cluster, tiny_cluster_reference, tmp_path):
    workdir = tmp_path / "dag"
    workdir.mkdir()
    log = tmp_path / "snakemake.log"
    cancelled: dict[str, str] = {}  # SLURM job id -> protocol of the train_base job scancel'ed

    def cancel_first_checkpointed_training(watcher: slurm.JobWatcher) -> None:
        """scancel the first running train_base job once its checkpoint.pt exists (after epoch 1 of 3)."""
        if cancelled:
            return
        sm_jobs, submitted = slurm.parse_snakemake_log(watcher.log_text())
        for jobid, fields in watcher.jobs.items():
            sm = sm_jobs.get(submitted.get(jobid, -1))
            if sm is None or sm.rule != "train_base" or fields.get("JobState") != "RUNNING":
                continue
            protocol = sm.wildcards["protocol"]
            if (base_run(workdir, protocol) / "checkpoint.pt").exists():
                subprocess.run(["scancel", jobid], check=True, timeout=30)
                cancelled[jobid] = protocol
                return

    with slurm.JobWatcher(workdir, log, on_poll=cancel_first_checkpointed_training) as watcher:
        with open(log, "w") as handle:
            proc = subprocess.run(
                [*SNAKEMAKE, "-d", str(workdir), "--profile", str(REPO / "profiles/slurm-local"), *TINY_CLUSTER],
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=1200,
            )
    rows = job_list(watcher)
    (tmp_path / "slurm_jobs.json").write_text(json.dumps(rows, indent=1))
    print_job_list(rows)
    print(f"job list: {tmp_path / 'slurm_jobs.json'}; snakemake log: {log}")
    assert proc.returncode == 0, f"snakemake on SLURM exited {proc.returncode}:\n{log.read_text()[-4000:]}"

    # every job of the DAG ran as a SLURM job, once (plus the one cancelled and submitted again)
    assert len(cancelled) == 1, "no train_base job was running with a checkpoint to cancel"
    ((killed_id, killed_protocol),) = cancelled.items()
    completed = [r for r in rows if r["state"] == "COMPLETED"]
    counts = {}
    for r in completed:
        counts[r["rule"]] = counts.get(r["rule"], 0) + 1
    assert counts == {**TINY_JOBS, "report": 1}, counts
    assert [r["state"] for r in rows if r["state"] != "COMPLETED"] == ["CANCELLED"]
    assert all(r["partition"] == "debug" for r in rows)

    # ... with the resources it declares: config.resources of its kind (the overlay), its threads
    declared = yaml.safe_load(CLUSTER_OVERLAY.read_text())["resources"]
    sm_jobs, submitted = slurm.parse_snakemake_log(log.read_text())
    for r in rows:
        want = declared[KIND.get(r["rule"], "light")]
        sm = sm_jobs[r["snakemake_jobid"]]
        assert (r["mem_mb"], r["time_limit_min"], r["gpus"]) == (want["mem_mb"], want["runtime"], want["gpu"]), r
        assert r["cpus"] == sm.threads, (r, sm)
        assert r["tres_per_job"] == ("gres:gpu:1" if want["gpu"] else None), r
    # the data jobs declare threads.data = 2 (overlay), the rest 1: both reach SLURM
    assert {r["rule"]: r["cpus"] for r in completed} == {
        "make_demo_data": 2,
        "prepare_data": 2,
        "splits": 1,
        "split_summary": 1,
        "train_base": 1,
        "evaluate": 1,
        "report": 1,
    }

    # the cancelled training job was submitted again and resumed from its checkpoint
    killed = next(r for r in rows if r["slurm_jobid"] == int(killed_id))
    again = [r for r in completed if r["rule"] == "train_base" and r["wildcards"] == killed["wildcards"]]
    assert len(again) == 1 and again[0]["slurm_jobid"] > killed["slurm_jobid"], rows
    assert f"Trying to restart job {killed['snakemake_jobid']}." in log.read_text()
    epoch = resumed_epoch(train_log(workdir, killed_protocol))
    assert epoch is not None and 1 <= epoch <= 3, train_log(workdir, killed_protocol).read_text()[-2000:]
    other = next(p for p in PROTOCOLS if p != killed_protocol)
    assert resumed_epoch(train_log(workdir, other)) is None

    # the results are those of an uninterrupted local run of the same config, to the last digit
    assert per_class_iou(workdir) == per_class_iou(tiny_cluster_reference.result())
    assert (workdir / "results/report/summary.md").is_file()
    leftovers = [p for p in (workdir / "results").rglob("*") if ".tmp-" in p.name or p.name == "checkpoint.pt"]
    assert not leftovers, leftovers
