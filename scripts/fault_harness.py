#!/usr/bin/env python
"""SIGKILL every long stage of a tiny DAG at three points, re-run, and check the result.

    .venv/bin/python scripts/fault_harness.py                      # every stage x early/middle/writing
    .venv/bin/python scripts/fault_harness.py --stages coseg,evaluate --points writing --keep

Runs the tiny demo DAG (config/demo.yaml + tests/data/tiny*.yaml + tests/data/tiny-faults.yaml)
once uninterrupted, then for each fault a copy of it killed and re-run; prints one line per fault
and the totals: kills injected, recovered, identical. Exit status 1 if any check failed. What is
checked, and the numbers measured: docs/reliability.md, "Fault injection"; the engine:
pipeline/devtools/faults.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pipeline.devtools.faults import POINTS, REPO, STAGE_NAMES, Harness, Scenario, faults, summary

OVERLAYS = (
    REPO / "config/demo.yaml",
    REPO / "tests/data/tiny.yaml",
    REPO / "tests/data/tiny-incremental.yaml",
    REPO / "tests/data/tiny-weak.yaml",
    REPO / "tests/data/tiny-faults.yaml",
)


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"--{what}: unknown {unknown[0]!r}; expected a comma-separated list of {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGE_NAMES), help="comma-separated (default: all)")
    parser.add_argument("--points", default=",".join(POINTS), help="comma-separated of early,middle,writing")
    parser.add_argument("--workdir", help="folder for the reference and the faults (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep each fault's workdir (default: removed if it passed)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one snakemake call may run")
    args = parser.parse_args(argv)
    names = _names(args.stages, STAGE_NAMES, "stages")
    points = _names(args.points, POINTS, "points")
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="wilss-faults-"))

    started = time.monotonic()
    harness = Harness(Scenario(OVERLAYS), base, keep=args.keep, timeout=args.timeout, echo=True)
    chosen = faults(harness.stages, names, points)
    harness.reference(fault.rerun_target for fault in chosen)
    print(f"reference: {sum(harness.reference_files.values())} final files checked, {dict(harness.reference_files)}")
    results = [harness.inject(fault) for fault in chosen]
    print()
    print(summary(results, time.monotonic() - started))
    print(f"workdirs under {base}")
    return 0 if all(not r.problems for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
