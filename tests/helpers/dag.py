"""Running the Snakemake DAG from tests: the command, its job table, the tiny demo overlays, and the
processes and logs of a run (for the scheduler and kill tests)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
#: The tiny demo DAG of tests/test_workflow.py: step 0 of 15-5, disjoint and overlap, 64 + 16 images.
TINY = ["--configfile", str(REPO / "config/demo.yaml"), str(REPO / "tests/data/tiny.yaml")]
#: The same DAG for the scheduler and kill tests: CPU, float32, 3 epochs, distinct per-kind resources.
CLUSTER_OVERLAY = REPO / "tests/data/tiny-cluster.yaml"
TINY_CLUSTER = [*TINY, str(CLUSTER_OVERLAY)]
#: The jobs of the tiny DAG (the target rule `all` runs in Snakemake itself, not as a job).
TINY_JOBS = {"make_demo_data": 1, "prepare_data": 1, "splits": 2, "split_summary": 2, "train_base": 2, "evaluate": 2}
PROTOCOLS = ("disjoint", "overlap")


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run ``snakemake -s Snakefile -d workdir *args`` to the end; stdout and stderr are captured.

    Raises:
        AssertionError: ``check`` and a non-zero exit (the message holds the end of both streams).
    """
    proc = subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def start_snakemake(workdir: Path, *args: str, log: Path) -> subprocess.Popen:
    """Start ``snakemake`` in the background, stdout and stderr to ``log``, in a new process group
    (so that :func:`kill_group` can end the jobs it leaves behind)."""
    with open(log, "w") as handle:
        return subprocess.Popen(
            [*SNAKEMAKE, "-d", str(workdir), *args], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


class BackgroundRun:
    """A ``snakemake`` run started now and collected later (:meth:`result`), so that a test can do
    its own run meanwhile: the tiny DAG's uninterrupted reference runs beside a SLURM run, which
    mostly waits for the scheduler.
    """

    def __init__(self, workdir: Path, *args: str):
        self.workdir = workdir
        self.log = workdir.parent / f"{workdir.name}.snakemake.log"
        self.proc = start_snakemake(workdir, *args, log=self.log)

    def result(self, timeout: float = 1800) -> Path:
        """Wait for the run; return its working directory.

        Raises:
            AssertionError: it exited non-zero (the message holds the end of its log).
        """
        if self.proc.wait(timeout=timeout) != 0:
            raise AssertionError(
                f"snakemake in {self.workdir} exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            )
        return self.workdir

    def stop(self) -> None:
        """End the run and its jobs if it is still going (a test that failed before collecting it)."""
        if self.proc.poll() is None:
            kill_group(self.proc)
            self.proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of ``proc``'s process group (a test's orphaned jobs); no error if none."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def job_counts(output: str) -> dict[str, int]:
    """The 'job count' table Snakemake prints for a (dry) run: {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises:
        AssertionError: ``timeout`` seconds passed first (names ``what``).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def base_run(workdir: Path, protocol: str) -> Path:
    """The step-0 run directory of the tiny DAG (model.pt, history.csv, checkpoint.pt, metrics.json)."""
    return workdir / f"results/demo/15-5-{protocol}/seed0/step0/base"


def train_log(workdir: Path, protocol: str) -> Path:
    """The log of the tiny DAG's ``train_base`` job of ``protocol`` (rules/base.smk ``log:``)."""
    return workdir / f"logs/train_base/demo/15-5-{protocol}/seed0.log"


RESUMED = re.compile(r"resumed from (\S+) after epoch (\d+)/(\d+)")


def resumed_epoch(log: Path) -> int | None:
    """The epoch a training job resumed after, from its log (pipeline/train/loop.py ``try_resume``),
    or None where it started from scratch."""
    match = RESUMED.search(log.read_text())
    return int(match.group(2)) if match else None


def per_class_iou(workdir: Path) -> dict[str, list[float]]:
    """``per_class_iou`` of the tiny DAG's evaluated runs: {protocol: IoU of each class}."""
    return {p: json.loads((base_run(workdir, p) / "metrics.json").read_text())["per_class_iou"] for p in PROTOCOLS}


def job_processes(workdir: Path, needle: str) -> list[int]:
    """PIDs of the Python processes working in ``workdir`` whose command line contains ``needle``
    (a job's ``python -m pipeline ...``; Linux /proc). Processes that end while being read are skipped."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if Path(argv[0].decode(errors="replace")).name.startswith("python") and needle in " ".join(
            a.decode(errors="replace") for a in argv
        ):
            if Path(cwd) == workdir.resolve():
                pids.append(int(proc.name))
    return pids


def unfinished_outputs(workdir: Path) -> list[str]:
    """The outputs Snakemake marked incomplete (a job started and did not finish in its eyes):
    ``.snakemake/incomplete/`` holds one marker per output, named by the base64 of its path."""
    import base64

    markers = workdir / ".snakemake/incomplete"
    if not markers.is_dir():
        return []
    return sorted(base64.urlsafe_b64decode(m.name).decode() for m in markers.iterdir() if m.is_file())
