"""Stage ``report``: result tables, per-class IoU charts, learning curves and qualitative figures.

Reads the ``metrics.json`` of evaluated runs (and optionally their ``history.csv``) and writes
under ``--outdir``, for every (dataset, task, step):

- ``table_{dataset}_{task}_step{t}.md|.csv|.tex``: rows methods, columns old / new / all mIoU %
  for each protocol (Disjoint then Overlap), as in WILSON (Cermelli et al., CVPR 2022) Tables
  1-2; mean ± sample std when several seeds;
- ``per_class_iou_{dataset}_{task}_step{t}.png``: grouped bars per seen class;
- ``qualitative_{dataset}_{task}_step{t}.png``: image | ground truth | each method's prediction;

plus ``learning_curves_{dataset}_{task}.png`` (one line per run), for every (dataset, task) whose
runs cover more than one step ``steps_{dataset}_{task}.png`` (mIoU % per step, one panel per
protocol, one colour per method whose line starts at the shared step-0 "base" run; solid all,
dashed old, dotted new; seeds averaged; values from :func:`pipeline.report.step_series`), ``summary.md`` (all
tables, per task the final step first (the papers' table), then the intermediate steps, then
step 0; links to the figures) and ``index.json`` (every file written, path relative to
``--outdir``, with a caption). The PNGs go to ``--figures-dir`` when given (the Snakemake rule declares that folder
as a ``report()`` directory output). Figures are drawn on matplotlib's Agg canvas (no pyplot).

Usage: ``python -m pipeline report --metrics runs/*/metrics.json --histories runs/*/history.csv
--outdir results/report [--figures-dir results/report/figures] [--qualitative 4]``
"""

from __future__ import annotations

import argparse
import json

from pipeline.report import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json files of evaluated runs")
    parser.add_argument(
        "--histories", nargs="*", default=[], help="history.csv files, each beside the metrics.json of its run"
    )
    parser.add_argument(
        "--outdir", default="results/report", help="output folder of the tables, summary.md and index.json"
    )
    parser.add_argument("--figures-dir", default=None, help="folder of the PNG figures (default: --outdir)")
    parser.add_argument(
        "--qualitative",
        "--num-examples",
        dest="num_examples",
        type=int,
        default=4,
        help="val images (rows) in the qualitative figures; 0 for none",
    )
    parser.add_argument(
        "--variants",
        default="{}",
        help='JSON {variant: {"method": base, "changes": {key: value}}} for the ablation tables',
    )
    parser.add_argument("--quality", nargs="*", default=[], help="pseudo-label quality JSONs (coseg, CAM baselines)")
    parser.add_argument("--examples", nargs="*", default=[], help="pseudo-label example figures to include")


def run(args: argparse.Namespace) -> None:
    build_report(
        args.metrics,
        args.histories,
        args.outdir,
        args.num_examples,
        args.figures_dir,
        variants=json.loads(args.variants),
        quality=args.quality,
        examples=args.examples,
    )
