"""Stage ``predict``: segment any images with a trained ``model.pt`` (any dataset, task, step,
method): label maps (VOC-palette PNGs of the model's class indices), overlays, and optionally one
JSON per image (classes present, area fractions).

The stage's command line; the inference (the evaluate stage's own function, whole-image or
sliding-window, batched by image size) is documented in :mod:`pipeline.eval.inference`.

    wilss predict --model results/.../step1/wilson/model.pt --images ../shared/coco-mini/val2017 --out preds/

writes ``preds/labels/<id>.png``, ``preds/overlays/<id>.jpg``, ``preds/json/<id>.json`` (with
``--json``) and ``preds/predict.json`` (the model, its classes, the settings, images/s).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pipeline.data.classes import voc_palette
from pipeline.data.voc import load_image
from pipeline.eval.inference import (
    PRECISIONS,
    image_sizes,
    inference_model,
    label_summary,
    list_images,
    model_classes,
    overlay,
    predict_images,
    resolve_precision,
)
from pipeline.io import atomic_path, write_json
from pipeline.models import load_model
from pipeline.stages.common import set_threads, setup_logging
from pipeline.train.loop import resolve_device

log = logging.getLogger("pipeline.stages.predict")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model.pt written by train-base or train-step")
    parser.add_argument(
        "--images",
        required=True,
        help="a folder of images, one image, a quoted glob ('photos/*.jpg'), or a text file of ids (with --image-root)",
    )
    parser.add_argument("--image-root", help="folder of <id>.jpg / .png for an id list given as --images")
    parser.add_argument("--out", required=True, help="output folder: labels/, overlays/, json/, predict.json")
    parser.add_argument(
        "--json", action="store_true", help="also write json/<id>.json: classes present, area fractions"
    )
    parser.add_argument(
        "--mode",
        choices=("whole", "slide"),
        default="whole",
        help="whole-image inference (the evaluate stage's) or sliding windows (mmsegmentation's slide mode)",
    )
    parser.add_argument("--window", type=int, nargs=2, metavar=("H", "W"), help="slide: window height and width")
    parser.add_argument(
        "--stride", type=int, nargs=2, metavar=("H", "W"), help="slide: stride (default: the window, no overlap)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (only images of one size)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 autocast on CUDA where supported (else fp16), float32 on the CPU",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay: weight of the class colour")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")


def _check_args(args: argparse.Namespace) -> None:
    if args.mode == "slide" and args.window is None:
        raise ValueError("--mode slide needs --window H W (and optionally --stride H W)")
    if args.mode == "whole" and (args.window is not None or args.stride is not None):
        raise ValueError("--window/--stride are for --mode slide; whole-image inference takes neither")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: expected at least 1")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha {args.alpha}: expected a weight in [0, 1]")


def run(args: argparse.Namespace) -> None:
    setup_logging()
    set_threads(args.threads)
    _check_args(args)
    items = list_images(args.images, args.image_root)
    sizes = image_sizes(items)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model, meta = load_model(args.model, device)
    classes = model_classes(meta, model.num_classes)
    log.info(
        "%s: method %s, task %s %s step %s, seed %s; %d classes: %s",
        args.model,
        meta.get("method"),
        meta.get("task"),
        meta.get("protocol"),
        meta.get("step"),
        meta.get("seed"),
        len(classes),
        ", ".join(f"{channel} {name}" for channel, _, name in classes),
    )
    window = tuple(args.window) if args.mode == "slide" else None
    stride = tuple(args.stride) if args.stride is not None else window
    net = inference_model(model, device, precision, window, stride)
    log.info(
        "%d images from %s, %s inference%s, batch %d (images of one size), %s, %s",
        len(items),
        args.images,
        args.mode,
        f" (window {window}, stride {stride})" if window else "",
        args.batch_size,
        device,
        precision,
    )

    out = Path(args.out)
    palette = voc_palette().flatten().tolist()
    overlays: list[Path] = []
    started = time.perf_counter()
    bar = tqdm(total=len(items), desc="predict", unit="img", mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for image_id, path, labels in predict_images(net, items, sizes, device, args.batch_size):
        label_image = Image.fromarray(labels, mode="P")
        label_image.putpalette(palette)
        with atomic_path(out / "labels" / f"{image_id}.png") as tmp:
            label_image.save(tmp)
        blended = Image.fromarray(overlay(load_image(path, image_id), labels, args.alpha))
        target = out / "overlays" / f"{image_id}.jpg"
        with atomic_path(target) as tmp:
            blended.save(tmp, quality=90)
        overlays.append(target)
        if args.json:
            write_json(
                out / "json" / f"{image_id}.json",
                {
                    "id": image_id,
                    "image": str(path),
                    "height": int(labels.shape[0]),
                    "width": int(labels.shape[1]),
                    "model": str(args.model),
                    "classes": label_summary(labels, classes),
                },
            )
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - started
    rate = len(items) / seconds if seconds > 0 else float("inf")
    write_json(
        out / "predict.json",
        {
            "model": str(args.model),
            "method": meta.get("method"),
            "task": meta.get("task"),
            "step": meta.get("step"),
            "classes": [{"channel": ch, "class_id": cid, "name": name} for ch, cid, name in classes],
            "images": len(items),
            "source": str(args.images),
            "mode": args.mode,
            "window": list(window) if window else None,
            "stride": list(stride) if stride else None,
            "batch_size": args.batch_size,
            "device": str(device),
            "precision": precision,
            "seconds": seconds,
            "images_per_s": rate,
        },
    )
    log.info(
        "wrote %d label maps to %s and overlays to %s (e.g. %s); %.1f s, %.2f images/s on %s",
        len(items),
        out / "labels",
        out / "overlays",
        ", ".join(str(p) for p in overlays[:2]),
        seconds,
        rate,
        device,
    )
