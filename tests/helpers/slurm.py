"""The single-node SLURM of shared/slurm-local for tests: start and stop it, read what SLURM knows
of a job (``scontrol show job``), and what Snakemake's log says it submitted.

The cluster (shared/slurm-local/README.md): slurm-wlm 22.05 with munge, one node ``localhost`` of
2 CPUs and two dummy gres/gpu, partition ``debug``, no accounting database (so ``squeue`` is the
status command), ``MinJobAge=600`` (finished jobs stay visible for 10 minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import shared_dir

SLURM_LOCAL = shared_dir() / "slurm-local"


def cluster_up() -> bool:
    """Whether a slurmctld answers and the node can take jobs (idle, mixed or allocated)."""
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None:
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20).stdout
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "UP" in ping and bool({"idle", "mixed", "allocated"} & set(states.split()))


def start_cluster() -> tuple[bool, str | None]:
    """Start the cluster with shared/slurm-local/start.sh (it apt-installs slurm-wlm and munge when
    missing), unless one already runs.

    Returns:
        ``(started, None)`` where the cluster is up (``started``: this call started it, so the
        caller stops it), or ``(False, reason)`` where slurmctld cannot be started here (not root,
        no start.sh, the install or the daemons failed): the reason to skip with.
    """
    if cluster_up():
        return False, None
    start = SLURM_LOCAL / "start.sh"
    if not start.is_file():
        return False, f"no SLURM test cluster: {start} not found"
    if os.geteuid() != 0:
        return False, f"slurmctld cannot start: {start} needs root (it installs packages and starts daemons)"
    try:
        proc = subprocess.run(["bash", str(start)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return False, f"slurmctld cannot start: {start} ran past 900 s"
    if proc.returncode != 0 or not cluster_up():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return False, f"slurmctld cannot start: {start} exited {proc.returncode}: " + " | ".join(tail)
    return True, None


def stop_cluster() -> None:
    """Stop the daemons start.sh started (shared/slurm-local/stop.sh: by their recorded PIDs)."""
    subprocess.run(["bash", str(SLURM_LOCAL / "stop.sh")], capture_output=True, text=True, timeout=120)


def scontrol_jobs() -> dict[str, dict[str, str]]:
    """Every job slurmctld still holds, as ``scontrol show job --oneliner`` prints it:
    {job id: {field: value}} (``JobState``, ``NumCPUs``, ``MinMemoryNode``, ``TimeLimit``,
    ``TresPerJob``, ``Comment``, ``WorkDir``, ``Restarts``, ``ExitCode`` ...)."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, timeout=30).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def minutes(time_limit: str) -> int:
    """A SLURM time limit (``[D-]HH:MM:SS`` or ``MM:SS``) in whole minutes: ``"00:12:00"`` -> 12.

    Raises:
        ValueError: another format (e.g. ``UNLIMITED``), naming the value.
    """
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", time_limit)
    if not match:
        raise ValueError(f"SLURM time limit {time_limit!r}: expected [D-]HH:MM:SS")
    days, hours, mins, secs = (int(g or 0) for g in match.groups())
    return days * 1440 + hours * 60 + mins + (1 if secs else 0)


def megabytes(memory: str) -> int:
    """A SLURM memory size (``1800M``, ``2G``) in MB (SLURM's M is MiB, as Snakemake's mem_mb is
    passed to ``--mem`` unchanged).

    Raises:
        ValueError: another format, naming the value.
    """
    match = re.fullmatch(r"(\d+)([KMGT]?)", memory)
    if not match:
        raise ValueError(f"SLURM memory {memory!r}: expected a number with K, M, G or T")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2)]
    return int(int(match.group(1)) * scale)


def gpus(tres_per_job: str | None) -> int:
    """GPUs a job asked for, from its ``TresPerJob`` (``gres:gpu:1``, ``gres:gpu:a100:2``); 0 if none."""
    if not tres_per_job or tres_per_job == "(null)":
        return 0
    match = re.search(r"gres:gpu(?::[A-Za-z0-9_.]+)?:(\d+)", tres_per_job)
    return int(match.group(1)) if match else 0


@dataclass
class SnakemakeJob:
    """A job block of Snakemake's log (``rule NAME:`` ... ``resources: ...``)."""

    jobid: int
    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    resources: dict[str, str] = field(default_factory=dict)


def parse_snakemake_log(text: str) -> tuple[dict[int, SnakemakeJob], dict[str, int]]:
    """What a Snakemake run with the SLURM executor printed: its job blocks and its submissions.

    Returns:
        ``(jobs, submitted)``: {Snakemake jobid: the last block printed for it (a retried job is
        printed again)}, and {SLURM job id: Snakemake jobid} from "Job N has been submitted with
        SLURM jobid M".
    """
    jobs: dict[int, SnakemakeJob] = {}
    block: dict | None = None
    for line in text.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            block = {"rule": match.group(1)}
        elif block is not None and (match := re.match(r"^    (\w+): (.*)$", line)):
            block[match.group(1)] = match.group(2)
            if match.group(1) == "resources" and "jobid" in block:
                jobs[int(block["jobid"])] = SnakemakeJob(
                    jobid=int(block["jobid"]),
                    rule=block["rule"],
                    wildcards=dict(re.findall(r"(\w+)=([^,\s]+)", block.get("wildcards", ""))),
                    threads=int(block.get("threads", 1)),
                    resources=dict(re.findall(r"(\w+)=([^,]*)", match.group(2))),
                )
        else:
            block = None
    submitted = {
        m.group(2): int(m.group(1)) for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+)", text)
    }
    return jobs, submitted


class JobWatcher:
    """Polls slurmctld while a Snakemake run is going, keeping the last view of each of its jobs
    (those whose ``WorkDir`` is the run's directory), and calls ``on_poll(watcher)`` after each poll.

    Use as a context manager around the run; ``jobs`` then holds {SLURM job id: scontrol fields},
    ``log_text()`` the run's log so far.
    """

    def __init__(
        self, workdir: Path, log: Path, on_poll: Callable[[JobWatcher], None] | None = None, interval: float = 0.5
    ):
        self.workdir = str(workdir.resolve())
        self.log = log
        self.on_poll = on_poll
        self.interval = interval
        self.jobs: dict[str, dict[str, str]] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def poll(self) -> None:
        """One look: refresh the run's jobs, then the hook."""
        for jobid, fields in scontrol_jobs().items():
            if fields.get("WorkDir") == self.workdir:
                self.jobs[jobid] = fields
        if self.on_poll is not None:
            self.on_poll(self)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as error:  # reported by __exit__, not lost in the thread
                self.errors.append(error)
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if not self.errors:
            self.poll()  # the final states
        if self.errors and exc[0] is None:
            raise AssertionError(f"the SLURM job watcher failed: {self.errors[0]!r}") from self.errors[0]
