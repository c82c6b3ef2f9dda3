"""Fault injection: SIGKILL each long stage of a tiny DAG at three points, re-run it, check the result.

Issue 14, part 3; how to run it and the numbers measured: docs/reliability.md, "Fault injection".
Used by ``scripts/fault_harness.py`` (every stage at every point) and
``tests/test_fault_injection.py`` (a reduced set; the full set under ``-m slow``).

Procedure (:class:`Harness`):

1. **Reference.** The DAG of a :class:`Scenario` (Snakemake, CPU, fixed seed, float32) runs once
   uninterrupted; every file with a final name under ``results/`` is checked (:func:`scan_final_files`).
2. **Per fault** (:class:`Fault`: a :class:`Stage` and a point), in a copy of the reference
   workdir: ``snakemake --forcerun <rule> <target>`` with the kill, then ``snakemake <target>``
   again, as a user re-runs the same command; ``<target>`` is the ``metrics.json`` downstream of
   the stage.

Points (:data:`POINTS`):

- ``early``: the harness SIGKILLs the job's process (``python -m pipeline <stage>``, found below
  the ``snakemake`` process by its command line) as soon as the job's log has its first line:
  the stage has started and finished nothing.
- ``middle``: ``WILSS_FAULT=after:...`` (:mod:`pipeline.faultpoint`): the process kills itself
  right after the first epoch's ``checkpoint.pt``, after half the images (or memory-bank
  instances) of a cache, after half the predicted PNGs.
- ``writing``: ``WILSS_FAULT=during:...``: killed while a file is incomplete: the last epoch's
  ``checkpoint.pt`` (train_base: ``model.pt``) cut to half its bytes under its temporary name; an
  HDF5 cache inside the group of the image three quarters through; ``metrics.json``.

Checks (each failure is a line of :attr:`FaultResult.problems`):

- *injected*: the job died of the kill (the hook's line in its log, or the harness's own
  ``SIGKILL``) and ``snakemake`` failed;
- *no partial final file*: every file with a final name written since the fault run started
  parses (checkpoint loads with the safe loader, HDF5 opens and every image group is complete with
  the stage's datasets, JSON, CSV/TSV, PNG decodes) — after the kill and after the re-run;
- *recovered*: the re-run exits 0 and does not redo finished work: a training stage logs
  ``resumed from .../checkpoint.pt after epoch k/E`` and trains epochs k+1..E only, with k the
  epochs of the checkpoint on disk after the kill (and k the point's: 1 after the first
  checkpoint, E-1 when the last one was cut, E when ``model.pt`` was); a cache stage logs
  ``resuming, c images already cached`` with c the complete groups of its ``.partial.h5`` after
  the kill (N//2 in the middle, the image before the cut one when writing; 0 for a partial file
  killed while h5py created it, which the writer discards, logged ``starting over``);
- *identical*: the target ``metrics.json`` equals the reference's to the last digit (the workdir's
  path normalised) and the stage's outputs equal the reference's (``.pt`` byte for byte, HDF5
  dataset by dataset and attribute by attribute, JSON, CSV without the wall-clock ``time_s``
  column, PNG pixels).

A SIGKILL leaves its temporary file (``*.tmp-<pid>.*``, never a final name); they are listed as
:attr:`FaultResult.stale_temporaries`, not counted as failures.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import psutil
from PIL import Image

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.faultpoint import VARIABLE
from pipeline.workflow import paths

REPO = Path(__file__).resolve().parents[2]
POINTS = ("early", "middle", "writing")
#: Every stage of :meth:`Scenario.stages`, in DAG order.
STAGE_NAMES = (
    "train_base",
    "train_step[ft]",
    "train_step[wilson]",
    "train_step[fmwiss]",
    "train_step[cam]",
    "coseg",
    "memory_bank",
    "train_cam",
    "pseudo_labels",
    "evaluate",
)
#: Datasets every image group of a cache must hold, by path pattern (``pipeline.foundation.compute``,
#: ``pipeline.methods.fmwiss.memory``, ``pipeline.wsss.pseudo_labels``).
CACHE_DATASETS = {
    "*/coseg/*.h5": {"classes", "clip", "attention", "seeds"},
    "*memory_bank*.h5": {"image", "mask"},
    "*/pseudo/*.h5": {"cams", "label"},
}
#: Names that are never final: temporaries of atomic writes, unfinished caches, set-aside checkpoints.
TEMPORARY = re.compile(r"\.tmp-\d+(\.|$)|\.partial\.(h5|csv)$|\.unreadable$")
_RESUMED = re.compile(r"resumed from (\S*checkpoint\.pt) after epoch (\d+)/(\d+)")
_EPOCH = re.compile(r"INFO pipeline\.train\.loop: epoch (\d+)/(\d+) ")
_CACHED = re.compile(r"resuming, (\d+) images already cached")


@dataclass(frozen=True)
class Stage:
    """One job of the DAG that the harness kills.

    Attributes:
        name: ``train_base``, ``train_step[wilson]``, ...
        rule: its Snakemake rule (``--forcerun``).
        command: its ``python -m pipeline`` sub-command (finds the job's process).
        outputs: its declared outputs relative to the workdir; ``outputs[0]`` is the main one
            (``model.pt``, the ``.h5``, ``metrics.json``).
        log: the job's log (relative to the workdir).
        target: the ``metrics.json`` the harness re-runs and compares.
        kind: ``train`` (the shared loop: checkpoints), ``cache`` (an HDF5 cache) or ``evaluate``.
        writing: the file a ``writing`` kill cuts (train stages: ``checkpoint.pt`` or ``model.pt``).
    """

    name: str
    rule: str
    command: str
    outputs: tuple[str, ...]
    log: str
    target: str
    kind: str
    writing: str = ""

    @property
    def marker(self) -> str:
        """A string of the job's command line that tells it from other jobs of its rule."""
        return os.path.dirname(self.outputs[0]) if self.kind == "train" else self.outputs[0]


@dataclass(frozen=True)
class Scenario:
    """The DAG the harness runs: Snakemake config files and the wildcards of its one experiment.

    The config files must define one task/protocol/seed with the methods ``ft``, ``wilson``,
    ``fmwiss`` and ``cam`` (``tests/data/tiny-faults.yaml`` on the tiny overlays).
    """

    configfiles: tuple[Path, ...]
    dataset: str = "demo"
    task: str = "15-5"
    protocol: str = "overlap"
    seed: int = 0
    cache: str = "default"
    cam: str = "cam"
    cores: int = 2

    def _fmt(self, pattern: str, **extra) -> str:
        values = {
            "dataset": self.dataset,
            "task": self.task,
            "protocol": self.protocol,
            "seed": self.seed,
            "cache": self.cache,
            "cam": self.cam,
            "step": 1,
        }
        return pattern.format(**{**values, **extra})

    def stages(self) -> dict[str, Stage]:
        """Every stage the harness kills (:data:`STAGE_NAMES`), with its paths in this scenario."""
        f = self._fmt
        base_metrics = f(paths.RUN_METRICS, step=0, method="base")
        metrics = {m: f(paths.RUN_METRICS, method=m) for m in ("ft", "wilson", "fmwiss", self.cam)}
        run_log = "{task}-{protocol}/seed{seed}/step{step}/{method}"
        stages = [
            Stage(
                "train_base",
                "train_base",
                "train-base",
                (f(paths.BASE_MODEL), f(paths.BASE_HISTORY)),
                f(paths.log_path("train_base", "{task}-{protocol}/seed{seed}")),
                base_metrics,
                "train",
                "model.pt",
            )
        ]
        for method in ("ft", "wilson", "fmwiss", self.cam):
            stages.append(
                Stage(
                    f"train_step[{method}]",
                    "train_step",
                    "train-step",
                    (f(paths.RUN_MODEL, method=method), f(paths.RUN_HISTORY, method=method)),
                    f(paths.log_path("train_step", run_log), method=method),
                    metrics[method],
                    "train",
                    "checkpoint.pt",
                )
            )
        stages += [
            Stage(
                "coseg",
                "coseg",
                "coseg",
                (f(paths.COSEG_CACHE),),
                f(paths.log_path("coseg", "{task}-{protocol}/step{step}/{cache}")),
                metrics["fmwiss"],
                "cache",
            ),
            Stage(
                "memory_bank",
                "memory_bank",
                "memory-bank",
                (f(paths.MEMORY0),),
                f(paths.log_path("memory_bank", "{task}-{protocol}/step0")),
                metrics["fmwiss"],
                "cache",
            ),
            Stage(
                "train_cam",
                "train_cam",
                "train-cam",
                (f(paths.WSSS_MODEL), f(paths.WSSS_HISTORY)),
                f(paths.log_path("train_cam", "{task}-{protocol}/seed{seed}/step{step}/{cam}")),
                metrics[self.cam],
                "train",
                "checkpoint.pt",
            ),
            Stage(
                "pseudo_labels",
                "pseudo_labels",
                "pseudo-labels",
                (f(paths.PSEUDO_CACHE), f(paths.PSEUDO_QUALITY), f(paths.PSEUDO_FIGURE)),
                f(paths.log_path("pseudo_labels", "{task}-{protocol}/seed{seed}/step{step}/{cam}")),
                metrics[self.cam],
                "cache",
            ),
            Stage(
                "evaluate",
                "evaluate",
                "evaluate",
                (
                    base_metrics,
                    f(paths.RUN_PER_CLASS, step=0, method="base"),
                    f(paths.RUN_PREDICTIONS, step=0, method="base"),
                ),
                f(paths.log_path("evaluate", run_log), step=0, method="base"),
                base_metrics,
                "evaluate",
            ),
        ]
        return {stage.name: stage for stage in stages}


@dataclass(frozen=True)
class Fault:
    """One kill: a stage, a point of :data:`POINTS`, and optionally another ``target`` to re-run
    (default: the stage's ``metrics.json``; the reduced test re-runs a cache stage's own output)."""

    stage: Stage
    point: str
    target: str = ""

    def __post_init__(self):
        if self.point not in POINTS:
            raise ValueError(f"fault point {self.point!r}: expected one of {POINTS}")

    @property
    def name(self) -> str:
        return f"{self.stage.name}@{self.point}"

    @property
    def rerun_target(self) -> str:
        return self.target or self.stage.target


@dataclass
class FaultResult:
    """What one fault did (:meth:`Harness.inject`); ``problems`` empty means every check passed."""

    fault: str
    spec: str
    injected: bool = False
    recovered: bool = False
    identical: bool = False
    kept: str = ""
    seconds: float = 0.0
    checked_files: int = 0
    stale_temporaries: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Checks of files


def _cache_datasets(relative: str) -> set[str] | None:
    for pattern, names in CACHE_DATASETS.items():
        if fnmatch.fnmatch(relative, pattern):
            return names
    return None


def check_h5(path: Path, relative: str) -> None:
    """Raise ValueError unless ``path`` is a finished cache: readable, with provenance, every image
    group complete and holding the datasets of :data:`CACHE_DATASETS` (each read in full), and as
    many groups as its root attributes say (``n_images``/``num_images``, a bank's ``counts``)."""
    expected = _cache_datasets(relative)
    with h5py.File(path, "r") as handle:
        if "provenance" not in handle.attrs:
            raise ValueError("no provenance attribute")
        images = handle["images"]
        for key, group in images.items():
            if not group.attrs.get("_complete", False):
                raise ValueError(f"group {key!r} is not marked complete")
            names = set(group)
            if expected is not None and names != expected:
                raise ValueError(f"group {key!r} holds {sorted(names)}, expected {sorted(expected)}")
            for name in names:
                group[name][()]
        declared = handle.attrs.get("n_images", handle.attrs.get("num_images"))
        if declared is None and "counts" in handle.attrs:
            declared = int(np.sum(handle.attrs["counts"]))
        if declared is not None and int(declared) != len(images):
            raise ValueError(f"{len(images)} image groups, its root attributes say {int(declared)}")


def check_table(path: Path, delimiter: str) -> None:
    """Raise ValueError unless ``path`` is a CSV/TSV with a header and rows of the header's width."""
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter=delimiter))
    if not rows or not rows[0]:
        raise ValueError("no header")
    widths = {len(row) for row in rows[1:] if row}
    if widths - {len(rows[0])}:
        raise ValueError(f"rows of {sorted(widths)} fields under a header of {len(rows[0])}")


def check_file(path: Path, relative: str) -> str | None:
    """Check one file with a final name by its type; returns its type, or None when not checked.

    Raises:
        ValueError / CheckpointError / OSError: the file is partial or does not parse (names why).
    """
    suffix = path.suffix.lower()
    if suffix == ".pt":
        load_checkpoint(path, what="final file")
    elif suffix == ".h5":
        check_h5(path, relative)
    elif suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix in (".csv", ".tsv"):
        check_table(path, "," if suffix == ".csv" else "\t")
    elif suffix == ".png":
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    elif suffix in (".md", ".tex", ".txt"):
        path.read_text(encoding="utf-8")
    else:
        return None
    return suffix[1:]


def scan_final_files(root: Path, since: float | None = None) -> tuple[Counter, list[str]]:
    """Check every file with a final name under ``root/results`` (modified at or after ``since``,
    a ``time.time()``; None: all).

    Returns:
        ``(files checked per type, problems)``; a problem names the file and why it is partial.
    """
    counts: Counter = Counter()
    problems = []
    results = root / "results"
    for path in sorted(results.rglob("*")) if results.is_dir() else []:
        if not path.is_file() or TEMPORARY.search(path.name):
            continue
        if since is not None and path.stat().st_mtime < since - 1.0:
            continue
        relative = str(path.relative_to(root))
        try:
            kind = check_file(path, relative)
        except (ValueError, OSError, KeyError, CheckpointError, UnicodeDecodeError) as error:
            problems.append(f"{relative}: partial or unreadable under its final name ({str(error)[:200]})")
            continue
        if kind:
            counts[kind] += 1
    return counts, problems


def temporaries(root: Path) -> list[str]:
    """Files under ``root/results`` whose names are temporary (:data:`TEMPORARY`)."""
    results = root / "results"
    found = results.rglob("*") if results.is_dir() else []
    return sorted(str(p.relative_to(root)) for p in found if p.is_file() and TEMPORARY.search(p.name))


def normalised_json(path: Path) -> object:
    """A JSON file parsed with every absolute path's workdir part replaced by ``{workdir}``
    (``/tmp/x/fault/results/...`` → ``{workdir}/results/...``; a copied workdir reads the data of
    the one it was copied from, so both prefixes occur)."""
    text = re.sub(r'"/[^"]*?/(results|data|logs)/', r'"{workdir}/\1/', path.read_text(encoding="utf-8"))
    return json.loads(text)


def _h5_difference(a: Path, b: Path) -> str | None:
    def attrs(obj) -> dict:
        return {k: np.asarray(v).tolist() if not isinstance(v, str) else v for k, v in obj.attrs.items()}

    with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
        if attrs(ha) != attrs(hb):
            return "root attributes differ"
        ia, ib = ha["images"], hb["images"]
        if sorted(ia) != sorted(ib):
            return f"image groups differ ({len(ia)} vs {len(ib)})"
        for key in ia:
            if attrs(ia[key]) != attrs(ib[key]) or sorted(ia[key]) != sorted(ib[key]):
                return f"group {key!r} differs"
            for name in ia[key]:
                x, y = ia[key][name][()], ib[key][name][()]
                if x.dtype != y.dtype or not np.array_equal(x, y):
                    return f"dataset {key}/{name} differs"
    return None


def _csv_rows(path: Path) -> list[dict]:
    """CSV rows without the wall-clock column ``time_s`` (a history's epoch duration)."""
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


def file_difference(ours: Path, reference: Path) -> str | None:
    """Why ``ours`` differs from the reference's file of the same name, or None when equal
    (module docstring: .pt bytes, HDF5 contents, JSON, CSV without ``time_s``, PNG pixels; a
    folder: the same files, each equal)."""
    if reference.is_dir():
        if not ours.is_dir():
            return "missing"
        names = sorted(p.name for p in reference.iterdir() if not p.name.startswith("."))
        if sorted(p.name for p in ours.iterdir() if not p.name.startswith(".")) != names:
            return "other files in the folder"
        for name in names:
            problem = file_difference(ours / name, reference / name)
            if problem:
                return f"{name}: {problem}"
        return None
    if not ours.is_file():
        return "missing"
    suffix = ours.suffix.lower()
    if suffix == ".pt":
        same = hashlib.sha256(ours.read_bytes()).digest() == hashlib.sha256(reference.read_bytes()).digest()
        return None if same else "bytes differ"
    if suffix == ".h5":
        return _h5_difference(ours, reference)
    if suffix == ".json":
        return None if normalised_json(ours) == normalised_json(reference) else "values differ"
    if suffix == ".csv":
        return None if _csv_rows(ours) == _csv_rows(reference) else "rows differ"
    if suffix == ".png":
        with Image.open(ours) as a, Image.open(reference) as b:
            same = a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
        return None if same else "pixels differ"
    return None if ours.read_bytes() == reference.read_bytes() else "bytes differ"


# ----------------------------------------------------------------------------------------------
# Running snakemake


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link checkpoints and caches (written only by atomic rename, never in place), copy the
    rest (logs and benchmarks are rewritten in place)."""
    if src.endswith((".pt", ".h5")):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def copy_workdir(src: Path, dst: Path) -> None:
    """A copy of a finished workdir (mtimes kept, so Snakemake sees it finished)."""
    ignore = shutil.ignore_patterns("log", "locks", "incomplete", "harness-*.log")
    shutil.copytree(src, dst, copy_function=_link_or_copy, ignore=ignore, symlinks=True)


def _job_process(snakemake: psutil.Process, stage: Stage) -> psutil.Process | None:
    """The stage's ``python -m pipeline <command>`` process below ``snakemake``, if running."""
    try:
        children = snakemake.children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        for i in range(len(cmd) - 2):
            if cmd[i : i + 3] == ["-m", "pipeline", stage.command] and any(stage.marker in part for part in cmd):
                return child
    return None


def _first_log_line(path: Path) -> bool:
    try:
        return " INFO " in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


class Harness:
    """Runs the reference and the faults of a :class:`Scenario` under ``base_dir``.

    Args:
        scenario: the DAG.
        base_dir: where ``reference/`` and one folder per fault are made.
        keep: keep each fault's workdir (default: removed after its checks).
        timeout: seconds one ``snakemake`` call may run.
        echo: print one line per step (the script); tests leave it off.
    """

    def __init__(self, scenario: Scenario, base_dir: Path, keep: bool = False, timeout: float = 1800, echo=False):
        self.scenario, self.base = scenario, Path(base_dir)
        self.keep, self.timeout, self.echo = keep, timeout, echo
        self.reference_dir = self.base / "reference"
        self.stages = scenario.stages()
        self.sizes: dict[str, int] = {}
        self.reference_files: Counter = Counter()

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)

    def snakemake(
        self, workdir: Path, args: Sequence[str], log: Path, fault: str | None = None, kill: Stage | None = None
    ) -> tuple[int, str]:
        """Run ``snakemake`` in ``workdir``; returns ``(exit code, what was killed)``.

        ``fault``: the ``WILSS_FAULT`` of the jobs. ``kill``: SIGKILL that stage's job process once
        its log has a first line (the ``early`` point). Jobs run with ``WILSS_CPU_BF16=0``
        (float32 on the CPU: the same precision in every run, no probe).
        """
        env = {k: v for k, v in os.environ.items() if k != VARIABLE}
        env["WILSS_CPU_BF16"] = "0"
        if fault:
            env[VARIABLE] = fault
        configs = [str(path) for path in self.scenario.configfiles]
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
        # targets and options first: --configfile (and --forcerun) take every word up to the next option
        cmd += [*args, "--cores", str(self.scenario.cores), "--configfile", *configs]
        killed = ""
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
            parent = psutil.Process(proc.pid)
            deadline = time.monotonic() + self.timeout
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    for child in parent.children(recursive=True):
                        child.kill()
                    proc.kill()
                    proc.wait()
                    raise TimeoutError(f"snakemake {' '.join(args)} in {workdir} ran over {self.timeout:.0f} s")
                if kill is not None and not killed:
                    job = _job_process(parent, kill)
                    if job is not None and _first_log_line(workdir / kill.log):
                        job.send_signal(signal.SIGKILL)
                        killed = f"SIGKILL from the harness (pid {job.pid}) after the log's first line"
                time.sleep(0.01)
        return proc.returncode, killed

    # -- the reference ---------------------------------------------------------------------
    def reference(self, targets: Iterable[str]) -> None:
        """Run the DAG of ``targets`` uninterrupted, check its files and measure the stages
        (epochs per training stage, images per cache, predictions of evaluate).

        Raises:
            RuntimeError: the run failed or a file is partial (names the log or the file).
        """
        self.base.mkdir(parents=True, exist_ok=True)
        self.reference_dir.mkdir(exist_ok=True)
        targets = sorted(set(targets))
        self._say(f"reference: {len(targets)} targets in {self.reference_dir}")
        log = self.reference_dir / "harness-reference.log"
        code, _ = self.snakemake(self.reference_dir, targets, log)
        if code != 0:
            raise RuntimeError(f"the reference run failed (exit {code}); see {log}")
        self.reference_files, problems = scan_final_files(self.reference_dir)
        if problems:
            raise RuntimeError("the reference run left partial files: " + "; ".join(problems))
        for stage in self.stages.values():
            main = self.reference_dir / stage.outputs[0]
            if not main.exists():
                continue
            if stage.kind == "train":
                self.sizes[stage.name] = len(_csv_rows(self.reference_dir / stage.outputs[1]))
            elif stage.kind == "cache":
                with h5py.File(main, "r") as handle:
                    self.sizes[stage.name] = len(handle["images"])
            else:
                self.sizes[stage.name] = len(list((self.reference_dir / stage.outputs[2]).glob("*.png")))

    # -- one fault -------------------------------------------------------------------------
    def unfinish(self, workdir: Path, stage: Stage, target: str) -> list[str]:
        """Delete the outputs of ``stage``'s job and of every job between it and ``target`` (read
        from ``snakemake -n --forcerun <rule>``): the workdir is then as a first run of ``target``
        finds it when it reaches the stage, and a re-run is the same ``snakemake <target>``.

        Raises:
            RuntimeError: the dry run failed or does not list the stage's outputs.
        """
        log = workdir / "harness-dry-run.log"
        code, _ = self.snakemake(workdir, [target, "--forcerun", stage.rule, "--dry-run"], log)
        outputs = [
            name.strip()
            for match in re.finditer(r"^\s+output: (.+)$", _read(log), flags=re.MULTILINE)
            for name in match.group(1).split(",")
        ]
        if code != 0 or stage.outputs[0] not in outputs:
            raise RuntimeError(f"the dry run of {target} does not list {stage.outputs[0]} (exit {code}); see {log}")
        for name in outputs:
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return outputs

    def plan(self, fault: Fault) -> tuple[str | None, int | None]:
        """``(WILSS_FAULT, finished work the kill must leave)`` of a fault: epochs of the
        checkpoint, complete cache groups; None where the point implies nothing (``early``,
        evaluate, which starts over)."""
        stage, size = fault.stage, self.sizes.get(fault.stage.name)
        if size is None:
            raise RuntimeError(f"{stage.name}: not in the reference run (give its target to reference())")
        if fault.point == "early":
            return None, None
        if stage.kind == "train":
            if size < 2:
                raise RuntimeError(f"{stage.name}: {size} epoch(s); the harness needs >= 2 to kill in the middle")
            if fault.point == "middle":
                return "after:checkpoint.pt@1", 1
            if stage.writing == "model.pt":
                return "during:model.pt@1", size
            return f"during:checkpoint.pt@{size}", size - 1
        if stage.kind == "cache":
            if size < 4:
                raise RuntimeError(f"{stage.name}: {size} cached items; the harness needs >= 4")
            name = Path(stage.outputs[0]).name
            if fault.point == "middle":
                return f"after:{name}@{size // 2}", size // 2
            cut = size - size // 4
            return f"during:{name}@{cut}", cut - 1
        if fault.point == "middle":
            return f"after:*.png@{max(1, size // 2)}", None
        return f"during:{Path(stage.outputs[0]).name}@1", None

    def inject(self, fault: Fault) -> FaultResult:
        """Kill, check, re-run, check (module docstring); never raises for a failed check."""
        started = time.monotonic()
        spec, expected = self.plan(fault)
        result = FaultResult(fault.name, spec or "external SIGKILL")
        stage, workdir = fault.stage, self.base / fault.name.replace("[", "-").replace("]", "")
        if workdir.exists():
            shutil.rmtree(workdir)
        copy_workdir(self.reference_dir, workdir)
        (workdir / stage.log).unlink(missing_ok=True)  # the early kill waits for the job's first log line
        since = time.time()
        try:
            self._inject(fault, spec, expected, workdir, since, result)
        except (TimeoutError, OSError, RuntimeError) as error:
            result.problems.append(f"harness: {error}")
        result.seconds = time.monotonic() - started
        if not self.keep and not result.problems:
            shutil.rmtree(workdir, ignore_errors=True)
        status = "ok" if not result.problems else "FAILED: " + " | ".join(result.problems)
        self._say(f"{fault.name:28s} {result.spec:28s} {result.kept:34s} {result.seconds:6.0f} s  {status}")
        return result

    def _inject(
        self, fault: Fault, spec: str | None, expected: int | None, workdir: Path, since: float, result: FaultResult
    ) -> None:
        stage, target = fault.stage, fault.rerun_target
        problems = result.problems
        self.unfinish(workdir, stage, target)
        code, killed = self.snakemake(
            workdir,
            [target],
            workdir / "harness-killed.log",
            fault=spec,
            kill=stage if spec is None else None,
        )
        log_text = _read(workdir / stage.log)
        (workdir / "harness-killed-job.log").write_text(log_text, encoding="utf-8")  # the re-run overwrites it
        hooked = spec is not None and f"{VARIABLE}={spec}: SIGKILL" in log_text
        result.injected = code != 0 and (hooked or bool(killed))
        if not result.injected:
            problems.append(f"no kill injected (snakemake exit {code}); see {workdir / 'harness-killed.log'}")
            return
        _, partial = scan_final_files(workdir, since)
        problems += [f"after the kill: {p}" for p in partial]

        kept = self._finished_work(stage, workdir)
        if expected is not None and kept != expected:
            problems.append(f"the kill left {kept} finished {self._unit(stage)}, the point implies {expected}")
        result.kept = self._describe(stage, kept)

        code, _ = self.snakemake(workdir, [target], workdir / "harness-rerun.log")
        if code != 0:
            problems.append(f"the re-run failed (exit {code}); see {workdir / 'harness-rerun.log'}")
            return
        rerun = _read(workdir / stage.log)
        redone = self._redone(stage, kept, rerun)
        problems += redone
        result.recovered = not redone

        checked, partial = scan_final_files(workdir, since)
        result.checked_files = sum(checked.values())
        problems += [f"after the re-run: {p}" for p in partial]
        differences = []
        for output in {target, *stage.outputs}:
            problem = file_difference(workdir / output, self.reference_dir / output)
            if problem:
                differences.append(f"{output} differs from the reference: {problem}")
        problems += differences
        result.identical = not differences
        result.stale_temporaries = temporaries(workdir)
        left = [p for p in result.stale_temporaries if p.endswith((".partial.h5", ".unreadable"))]
        if left:
            problems.append(f"left after a successful re-run: {left}")

    @staticmethod
    def _unit(stage: Stage) -> str:
        return {"train": "epochs", "cache": "items"}.get(stage.kind, "items")

    def _describe(self, stage: Stage, kept: int) -> str:
        size = self.sizes[stage.name]
        if stage.kind == "train":
            return f"checkpoint kept {kept}/{size} epochs"
        if stage.kind == "cache":
            return f"partial cache kept {kept}/{size}"
        return "starts over (no resume)"

    def _finished_work(self, stage: Stage, workdir: Path) -> int:
        """Epochs in the checkpoint / complete groups of the partial cache left by the kill (a
        partial file h5py cannot open, killed while being created, holds none)."""
        if stage.kind == "train":
            checkpoint = workdir / os.path.dirname(stage.outputs[0]) / "checkpoint.pt"
            if not checkpoint.exists():
                return 0
            return int(load_checkpoint(checkpoint, what="checkpoint left by the kill")["epoch"]) + 1
        if stage.kind == "cache":
            main = workdir / stage.outputs[0]
            partial = main.with_name(f"{main.stem}.partial{main.suffix}")
            if not partial.exists():
                return 0
            try:
                with h5py.File(partial, "r") as handle:
                    groups = handle["images"].values() if "images" in handle else []
                    return sum(bool(g.attrs.get("_complete", False)) for g in groups)
            except OSError:  # killed while h5py created it (nothing flushed yet): the writer starts over
                return 0
        return 0

    def _redone(self, stage: Stage, kept: int, log_text: str) -> list[str]:
        """Problems if the re-run's log shows finished work redone or an unexpected resume."""
        size = self.sizes[stage.name]
        if stage.kind == "train":
            resumed = [(int(m.group(2)), int(m.group(3))) for m in _RESUMED.finditer(log_text)]
            epochs = sorted(int(m.group(1)) for m in _EPOCH.finditer(log_text))
            problems = []
            if kept and resumed != [(kept, size)]:
                problems.append(f"re-run logged resume {resumed}, expected after epoch {kept}/{size}")
            if not kept and resumed:
                problems.append(f"re-run resumed {resumed} though the kill left no checkpoint")
            if epochs != list(range(kept + 1, size + 1)):
                problems.append(f"re-run trained epochs {epochs}, expected {list(range(kept + 1, size + 1))}")
            if "cannot be read" in log_text:
                problems.append("re-run found an unreadable checkpoint")
            return problems
        if stage.kind == "cache":
            cached = [int(m.group(1)) for m in _CACHED.finditer(log_text)]
            problems = []
            if kept and cached != [kept]:
                problems.append(f"re-run logged {cached} images already cached, expected {kept}")
            if kept and "starting over" in log_text:
                problems.append(f"re-run discarded the partial cache of {kept} images (starting over)")
            return problems
        return []


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def faults(
    stages: Mapping[str, Stage], names: Iterable[str] = STAGE_NAMES, points: Iterable[str] = POINTS
) -> list[Fault]:
    """Every (stage, point) pair of ``names`` × ``points``.

    Raises:
        ValueError: an unknown stage name (lists the known ones).
    """
    chosen = []
    points = list(points)
    for name in names:
        if name not in stages:
            raise ValueError(f"unknown stage {name!r}; expected one of {sorted(stages)}")
        chosen += [Fault(stages[name], point) for point in points]
    return chosen


def summary(results: Sequence[FaultResult], seconds: float | None = None) -> str:
    """The table and the totals line: kills injected, recovered, identical."""
    lines = [f"{'fault':28s} {'WILSS_FAULT':28s} {'finished work at the kill':34s} {'time':>6s}  result"]
    for r in results:
        state = "ok" if not r.problems else "FAILED"
        lines.append(f"{r.fault:28s} {r.spec:28s} {r.kept:34s} {r.seconds:5.0f}s  {state}")
        lines += [f"    - {p}" for p in r.problems]
    n = len(results)
    injected = sum(r.injected for r in results)
    recovered = sum(r.recovered for r in results)
    identical = sum(r.identical for r in results)
    stale = sum(len(r.stale_temporaries) for r in results)
    partial = sum("partial or unreadable under its final name" in p for r in results for p in r.problems)
    total = f"; {seconds / 60:.1f} min" if seconds is not None else ""
    lines.append(
        f"{n} faults: {injected} kills injected, {recovered} recovered, {identical} identical to the reference; "
        f"{partial} partial files under a final name; {stale} stale temporaries left by the kills{total}"
    )
    return "\n".join(lines)


__all__ = [
    "POINTS",
    "STAGE_NAMES",
    "Fault",
    "FaultResult",
    "Harness",
    "Scenario",
    "Stage",
    "check_file",
    "copy_workdir",
    "faults",
    "file_difference",
    "scan_final_files",
    "summary",
]
