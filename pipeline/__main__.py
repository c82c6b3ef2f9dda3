"""Command line: ``python -m pipeline <stage> [options]`` (also installed as ``wilss``).

Each stage lives in its own module, which defines ``add_arguments(parser)`` and ``run(args)``;
the Snakemake rules call these commands, and a user can call them by hand to re-run one stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

STAGES: dict[str, tuple[str, str]] = {
    "make-demo-data": ("pipeline.stages.make_demo_data", "generate the synthetic demo dataset"),
    "download": ("pipeline.stages.download", "download PASCAL VOC 2012 + SBD (checksums verified)"),
    "prepare-data": ("pipeline.stages.prepare_data", "check every image/mask pair and index class presence"),
    "splits": ("pipeline.stages.splits", "incremental splits: ids and image-level labels per step"),
    "train-base": ("pipeline.stages.train_base", "step-0 training with pixel labels"),
    "train-step": ("pipeline.stages.train_step", "incremental step t >= 1 of one method"),
    "memory-bank": ("pipeline.stages.memory_bank", "FMWISS memory bank: B old-class instances per class (HDF5)"),
    "coseg": ("pipeline.stages.coseg", "FMWISS co-segmentation: CLIP initial masks + SSL seed attention (HDF5)"),
    "train-cam": ("pipeline.stages.train_cam", "offline WSSS baseline classifier (cam, vwe, iscam) on image labels"),
    "pseudo-labels": ("pipeline.stages.pseudo_labels", "hard pseudo-labels from a CAM network (HDF5) + their quality"),
    "evaluate": ("pipeline.stages.evaluate", "confusion matrix, per-class IoU, old/new/all mIoU"),
    "report": ("pipeline.stages.report", "tables, charts, learning curves, qualitative figures"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module_name, help_text) in STAGES.items():
        module = importlib.import_module(module_name)
        stage_parser = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the module of the requested stage, so one stage's imports never slow another.
    if argv and argv[0] in STAGES:
        module = importlib.import_module(STAGES[argv[0]][0])
        parser = argparse.ArgumentParser(prog=f"python -m pipeline {argv[0]}", description=module.__doc__)
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        module.run(args)
        return 0
    build_parser().parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
