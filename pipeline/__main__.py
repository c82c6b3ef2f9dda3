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
    # After the DAG (issue 18): apply a model to any images; list the registry.
    "predict": ("pipeline.stages.predict", "segment any images with a model.pt: label maps, overlays, JSON"),
    "list": ("pipeline.stages.listing", "list the registry: methods, tasks or datasets"),
    # COCO-to-VOC (issue 15): COCO-Stuff labels, the assembled two-dataset root, its fixture, COCO's download.
    "coco-labels": ("pipeline.stages.coco_labels", "COCO-Stuff stuffthingmaps -> COCO-id maps + class index"),
    "coco-voc-prepare": ("pipeline.stages.coco_voc_prepare", "assemble COCO-to-VOC (paper numbering) + its index"),
    "make-coco-voc-fixture": ("pipeline.stages.make_coco_voc_fixture", "generate a COCO + VOC layout fixture"),
    "download-coco": ("pipeline.stages.download_coco", "download COCO 2017 + COCO-Stuff stuffthingmaps"),
    # CL4WSIS (issue 16): instance segmentation, step 0 and the two phases of a step; mask AP.
    "train-instance": ("pipeline.stages.train_instance", "CL4WSIS step: step 0 or Phase 1 + Phase 2 (instance model)"),
    "evaluate-instance": ("pipeline.stages.evaluate_instance", "mask AP (VOC) + semantic mIoU of an instance model"),
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
