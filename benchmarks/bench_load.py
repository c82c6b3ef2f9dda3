"""Load benchmark: the dry run of a large experiment matrix and the report over many finished runs.

(a) ``snakemake -n`` of the full VOC workflow (config.yaml) with a generated overlay that widens
    the matrix to every task of the VOC table (15-5, 15-1, 10-10, 10-5-5, 10-2, 19-1, 2-2), both
    protocols, the eight incremental methods and ``--seeds`` seeds (4: 4,559 jobs), in an empty
    working directory (nothing exists yet, so every job is listed, as on a first run). The
    workflow layer imports no torch.
(b) ``python -m pipeline report`` over ``--runs`` finished runs (500) whose files are generated:
    ``metrics.json`` as the evaluate stage writes it (``pipeline.metrics.miou.summarize`` of a
    random confusion matrix over the seen classes, the 1,449 VOC val ids, valid for
    ``pipeline.report.runs.load_metrics``), ``history.csv`` of ``--epochs`` epochs, and the
    predictions of the first ``--qualitative`` val ids (64 px PNGs) for the qualitative figures.
    The runs are the first ``--runs`` of the matrix 15-5, 10-10, 10-5-5, 15-1 x both protocols x
    seeds x the eight methods and the ``fmwiss_oracle`` variant, in the order of
    ``pipeline.workflow.targets.runs`` (base model at step 0, every method at every step t >= 1).

Each command runs in its own process under GNU time (``/usr/bin/time``): wall time around it, and
its peak resident set size (``%M``). Prints a table and writes ``benchmarks/results/load.json``
(git-ignored).

Run: ``python benchmarks/bench_load.py [--seeds 4] [--runs 500] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, uninstalled

from pipeline.data.classes import VOC_CLASSES, voc_palette  # noqa: E402
from pipeline.data.tasks import num_steps, task_steps  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.metrics.miou import summarize  # noqa: E402
from pipeline.workflow.targets import runs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
DRY_RUN_TASKS = ["15-5", "15-1", "10-10", "10-5-5", "10-2", "19-1", "2-2"]
METHODS = ["ft", "joint", "mib", "wilson", "fmwiss", "cam", "vwe", "iscam"]
REPORT_TASKS = ["15-5", "10-10", "10-5-5", "15-1"]
REPORT_METHODS = [*METHODS, "fmwiss_oracle"]
VARIANTS = {"fmwiss_oracle": {"method": "fmwiss", "changes": {"coseg.source": "oracle"}}}
VOC_VAL_IMAGES = 1449
GNU_TIME = "/usr/bin/time"


def measured(command: list[str], cwd: Path, log: Path) -> dict:
    """Run ``command`` in ``cwd`` (stdout and stderr to ``log``) under GNU time.

    The peak RSS is GNU time's ``%M`` (KiB) of the command's process. It is not read from
    ``os.wait4`` here: Linux keeps a process's RSS high-water mark across ``execve``, and a child
    forked from this process (which holds torch, via ``pipeline.metrics``) would start with this
    process's RSS; ``/usr/bin/time`` is small, so its child starts from almost nothing.

    Returns:
        ``{"rc", "wall_s", "peak_rss_mib"}``: the exit status, the wall time and the peak
        resident set size.
    Raises:
        FileNotFoundError: no GNU time at /usr/bin/time (``apt-get install time``).
    """
    if not Path(GNU_TIME).is_file():
        raise FileNotFoundError(f"{GNU_TIME} not found: the benchmark needs GNU time (apt-get install time)")
    stats = log.with_suffix(".time")
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.run(
            [GNU_TIME, "-f", "%e %M", "-o", str(stats), *command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        wall = time.perf_counter() - start
    peak_kib = int(stats.read_text().split()[-1])
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mib": peak_kib / 1024}


def job_total(text: str) -> int:
    """The ``total`` of the last "Job stats" table Snakemake prints.

    Raises:
        ValueError: no such table in ``text``.
    """
    totals = re.findall(r"^total\s+(\d+)\s*$", text, flags=re.MULTILINE)
    if not totals:
        raise ValueError("no 'Job stats' total in the snakemake output")
    return int(totals[-1])


def dry_run(workdir: Path, seeds: int) -> dict:
    """(a): ``snakemake -n`` of the widened matrix in an empty ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "matrix.yaml"
    experiments = {"tasks": DRY_RUN_TASKS, "protocols": ["disjoint", "overlap"], "methods": METHODS}
    overlay.write_text(json.dumps({"experiments": {**experiments, "seeds": list(range(seeds))}}) + "\n")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n"]
    command += ["--cores", "1", "--configfile", str(REPO / "config.yaml"), str(overlay)]
    log = workdir / "dry_run.log"
    result = measured(command, workdir, log)
    if result["rc"] != 0:
        raise RuntimeError(f"snakemake -n failed (exit {result['rc']}), see {log}")
    return {"jobs": job_total(log.read_text()), "seeds": seeds, "tasks": len(DRY_RUN_TASKS), **result}


def report_matrix(n_runs: int) -> list[tuple[str, str, int, int, str]]:
    """The first ``n_runs`` runs (task, protocol, seed, step, method) of the report's matrix."""
    per_seed = sum(2 * (1 + len(REPORT_METHODS) * (num_steps(t) - 1)) for t in REPORT_TASKS)
    seeds = math.ceil(n_runs / per_seed)
    config = {
        "dataset": {"name": "demo", "kind": "voc"},
        "experiments": {
            "tasks": REPORT_TASKS,
            "protocols": ["disjoint", "overlap"],
            "methods": REPORT_METHODS,
            "seeds": list(range(seeds)),
        },
    }
    return list(runs(config))[:n_runs]


def _label_png(labels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().tobytes())
    image.save(path)


def generate_runs(
    root: Path, n_runs: int, epochs: int, qualitative: int, confusion: bool = True, seed: int = 0
) -> tuple[list, list]:
    """(b)'s inputs under ``root``: a val set of ``qualitative`` images (JPEG + mask), and per run
    ``results/demo/{task}-{protocol}/seed{s}/step{t}/{method}/`` with ``metrics.json``,
    ``history.csv`` and ``predictions/`` of those images; ``confusion``: with the confusion matrix
    (the evaluate stage always writes it; without it the report draws no confusion figures).

    Returns:
        (metrics paths, history paths), relative to ``root``.
    """
    rng = np.random.default_rng(seed)
    val_ids = [f"val_{i:06d}" for i in range(VOC_VAL_IMAGES)]
    data = root / "data"
    (data / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for image_id in val_ids[:qualitative]:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / "JPEGImages" / f"{image_id}.jpg")
        _label_png(rng.integers(0, 21, (64, 64)), data / "SegmentationClassAug" / f"{image_id}.png")
    metrics, histories = [], []
    for task, protocol, run_seed, step, method in report_matrix(n_runs):
        folder = Path(f"results/demo/{task}-{protocol}/seed{run_seed}/step{step}/{method}")
        steps = task_steps(task)
        seen = sorted(c for s in steps[: step + 1] for c in s)
        old = [c for c in steps[0] if c != 0]
        new = [c for s in steps[1 : step + 1] for c in s]
        # a confusion matrix over the seen classes with a heavy diagonal: IoUs spread over (0, 1)
        conf = rng.integers(0, 2000, (len(seen), len(seen))) + np.diag(rng.integers(0, 200_000, len(seen)))
        summary = summarize(conf, seen, old, new, class_names=[VOC_CLASSES[c] for c in seen])
        for image_id in val_ids[:qualitative]:
            _label_png(rng.choice(seen, (64, 64)), root / folder / "predictions" / f"{image_id}.png")
        write_json(
            root / folder / "metrics.json",
            {
                "dataset": "demo",
                "task": task,
                "protocol": protocol,
                "step": step,
                "num_steps": len(steps),
                "method": method,
                "seed": run_seed,
                "seen_classes": seen,
                "old_classes": old,
                "new_classes": new,
                **summary,
                **({"confusion_matrix": conf.tolist()} if confusion else {}),
                "predictions_dir": str(folder / "predictions"),
                "image_root": "data",
                "mask_dir": "data/SegmentationClassAug",
                "val_ids": val_ids,
                "model": str(folder / "model.pt"),
            },
        )
        with open(root / folder / "history.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "loss", "ce", "lr", "time_s"])
            for epoch in range(1, epochs + 1):
                loss = 2.0 / epoch + 0.05 * rng.random()
                writer.writerow(
                    [epoch, f"{loss:.6f}", f"{loss:.6f}", f"{1e-3 * (1 - epoch / (epochs + 1)) ** 0.9:.3e}", 60.0]
                )
        metrics.append(str(folder / "metrics.json"))
        histories.append(str(folder / "history.csv"))
    return metrics, histories


def report(root: Path, n_runs: int, epochs: int, qualitative: int, confusion: bool = True) -> dict:
    """(b): generate the runs under ``root``, then time ``python -m pipeline report`` over them."""
    start = time.perf_counter()
    metrics, histories = generate_runs(root, n_runs, epochs, qualitative, confusion)
    generated = time.perf_counter() - start
    command = [sys.executable, "-m", "pipeline", "report", "--metrics", *metrics, "--histories", *histories]
    command += ["--outdir", "results/report", "--figures-dir", "results/report/figures"]
    command += ["--qualitative", str(qualitative), "--variants", json.dumps(VARIANTS)]
    env_root = root / "report.log"
    result = measured(command, root, env_root)
    if result["rc"] != 0:
        raise RuntimeError(f"the report failed (exit {result['rc']}), see {env_root}")
    files = json.loads((root / "results/report/index.json").read_text())["files"]
    figures = len(list((root / "results/report/figures").glob("*.png")))
    return {
        "runs": len(metrics),
        "confusion_matrices": confusion,
        "files_written": len(files),
        "figures": figures,
        "generate_s": generated,
        **result,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds of the dry-run matrix (4: 4,559 jobs)")
    parser.add_argument("--runs", type=int, default=500, help="finished runs the report reads")
    parser.add_argument("--epochs", type=int, default=40, help="rows of each history.csv")
    parser.add_argument("--qualitative", type=int, default=4, help="val images of the qualitative figures")
    parser.add_argument(
        "--no-confusion-matrix",
        dest="confusion",
        action="store_false",
        help="metrics.json without confusion_matrix: the report without its per-run confusion figures",
    )
    parser.add_argument("--skip-dry-run", action="store_true")
    parser.add_argument("--skip-report", action="store_true")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        work = args.keep or Path(tmp)
        result = {
            "host": {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
        }
        if not args.skip_dry_run:
            result["dry_run"] = dry_run(work / "dry_run", args.seeds)
        if not args.skip_report:
            result["report"] = report(work / "report", args.runs, args.epochs, args.qualitative, args.confusion)
    rows = []
    if "dry_run" in result:
        d = result["dry_run"]
        rows.append(
            ("snakemake -n", f"{d['jobs']} jobs ({d['tasks']} tasks x 2 protocols x 8 methods x {d['seeds']} seeds)", d)
        )
    if "report" in result:
        r = result["report"]
        what = "" if r["confusion_matrices"] else ", no confusion matrices"
        rows.append(("python -m pipeline report", f"{r['runs']} runs{what}: {r['figures']} figures", r))
    print(f"{'command':<26} {'size':<58} {'wall s':>8} {'peak RSS MiB':>13}")
    for name, size, values in rows:
        print(f"{name:<26} {size:<58} {values['wall_s']:>8.1f} {values['peak_rss_mib']:>13.0f}")
    print(f"load average before: {', '.join(f'{x:.2f}' for x in result['load_average'])}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
