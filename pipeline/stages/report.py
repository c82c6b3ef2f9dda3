"""Stage ``report``: result tables, per-class IoU charts, learning curves and qualitative figures.

The stage's command line; what it computes is documented in :mod:`pipeline.report.build`.
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
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON {method: {"method": base, "changes": {...}, "relaxed_labels": ..., "data_fraction": ..., '
        '"pixel_labels": ...}} for the tables of the papers\' remaining experiments',
    )

    parser.add_argument(
        "--second-eval",
        nargs="*",
        default=[],
        help="metrics.json of the runs on a second evaluation set (COCO-to-VOC: VOC val, Table 3's VOC column)",
    )


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
        settings=json.loads(args.settings),
        second_eval=args.second_eval,
    )
