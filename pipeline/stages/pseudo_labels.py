"""Stage ``pseudo-labels``: hard pseudo-labels of step t from a trained CAM network (WILSON
Sec. 4.2: "we generate the hard pseudo-labels offline"), their quality and an example figure.

The stage's command line; what it computes is documented in :mod:`pipeline.wsss.pseudo_labels`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from pipeline.io import read_json, write_json
from pipeline.stages.common import parse_params, set_threads, setup_logging
from pipeline.train.loop import resolve_device
from pipeline.wsss.figure import save_pseudo_label_figure
from pipeline.wsss.networks import load_cam_model
from pipeline.wsss.objectives import CAM_OBJECTIVES
from pipeline.wsss.pseudo_labels import (
    DEFAULT_CONTOUR_TOLERANCE,
    INFERENCE_KEYS,
    expected_provenance,
    log,
    measure_quality,
    write_cache,
)


def check_model_matches(meta: dict, model_path: str, cam: str, split: Mapping, split_path: str) -> None:
    """Raise ValueError if ``model.pt`` is not ``cam``'s network for this task, protocol and step."""
    if meta.get("cam") != cam:
        raise ValueError(f"{model_path} is a {meta.get('cam')!r} network, --cam is {cam!r}")
    mine = (meta.get("task"), meta.get("protocol"), meta.get("step"), [int(c) for c in meta.get("new_classes", [])])
    theirs = (split["task"], split["protocol"], split["step"], [int(c) for c in split["new_classes"]])
    if mine != theirs:
        raise ValueError(
            f"{model_path} was trained for task/protocol/step/new classes {mine}, {split_path} is {theirs}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cam", required=True, choices=sorted(CAM_OBJECTIVES), help="WSSS baseline (its CAM network)")
    parser.add_argument("--model", required=True, help="model.pt written by train-cam")
    parser.add_argument("--split", required=True, help="step{t}.json written by the splits stage")
    parser.add_argument("--data", required=True, help="dataset index JSON written by prepare-data")
    parser.add_argument(
        "--params",
        required=True,
        help='JSON: {"cam": {...}[, "quality": {"contour_tolerance": t}]} (config wsss.<cam>)',
    )
    parser.add_argument("--out", required=True, help="HDF5 cache to write (pseudo/<cam>.h5)")
    parser.add_argument("--quality", required=True, help="quality JSON to write (mIoU, contour F-score)")
    parser.add_argument("--figure", required=True, help="PNG of a few examples to write")
    parser.add_argument("--figure-images", type=int, default=4, help="images in the figure")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")


def run(args: argparse.Namespace) -> None:
    setup_logging()
    set_threads(args.threads)
    params = parse_params(args.params)
    if "cam" not in params:
        raise ValueError('--params: missing section "cam" (config wsss.<cam>)')
    cam_cfg, quality_cfg = params["cam"], params.get("quality", {})
    missing = [key for key in INFERENCE_KEYS if key not in cam_cfg] + (
        ["threshold"] if args.cam != "iscam" and cam_cfg.get("threshold") is None else []
    )
    if missing:
        raise ValueError(f"wsss.{args.cam}: missing key(s) {', '.join(missing)}")
    split = read_json(args.split)
    device = resolve_device(args.device)

    net, meta = load_cam_model(args.model, device)
    check_model_matches(meta, args.model, args.cam, split, args.split)
    provenance = expected_provenance(args.cam, args.model, split, cam_cfg)
    log.info(
        "%s: %d images of %s %s step %d, scales %s, flip %s, device %s",
        args.cam,
        len(split["ids"]),
        split["task"],
        split["protocol"],
        split["step"],
        cam_cfg["scales"],
        cam_cfg["flip"],
        device,
    )
    write_cache(net, split, args.data, args.out, provenance, cam_cfg, device)

    tolerance = quality_cfg.get("contour_tolerance", DEFAULT_CONTOUR_TOLERANCE)
    result = measure_quality(args.out, provenance, split, args.data, tolerance)
    write_json(
        args.quality,
        {
            "cam": args.cam,
            "task": split["task"],
            "protocol": split["protocol"],
            "step": split["step"],
            "classes": [0, *split["new_classes"]],
            "contour_tolerance": tolerance,
            # what the CAM network learned, for the report (VWE's codebook drift, IS-CAM's σ, μ)
            "learned": meta.get("learned", {}),
            "parameter_drift": meta.get("parameter_drift", {}),
            **result,
        },
    )
    log.info(
        "pseudo-label quality: mIoU %s, contour F %s over %d images",
        result["miou"],
        result["contour_f"],
        result["n_images"],
    )
    save_pseudo_label_figure(args.figure, args.out, provenance, split, args.data, args.figure_images)
    log.info("wrote %s, %s, %s", args.out, args.quality, args.figure)
