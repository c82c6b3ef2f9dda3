"""Stage ``evaluate``: predict every validation image, accumulate the confusion matrix at label
resolution and write per-class IoU and old/new/all mIoU (WILSON's convention) to ``metrics.json``
(+ ``per_class.csv``), and the predicted masks as VOC-palette PNGs.

The stage's command line; what it computes is documented in :mod:`pipeline.eval.evaluate`.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from pipeline.data.datasets import step_dataset, val_ids
from pipeline.data.tasks import class_name_in, eval_target_lut, task_steps
from pipeline.data.transforms import EvalTransform
from pipeline.eval.evaluate import evaluate_model, log
from pipeline.io import read_json, write_json, write_text
from pipeline.metrics.miou import summarize
from pipeline.models import load_model
from pipeline.stages.common import set_threads, setup_logging, split_classes_of_model
from pipeline.train.loop import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model.pt of the run to evaluate")
    parser.add_argument("--data", required=True, help="dataset index JSON written by prepare-data")
    parser.add_argument("--split", required=True, help="step{t}.json of the evaluated step (dataset, task, protocol)")
    parser.add_argument("--out", required=True, help="metrics.json to write (per_class.csv beside it)")
    parser.add_argument("--pred-dir", required=True, help="folder for the predicted VOC-palette PNGs")
    parser.add_argument(
        "--val-split",
        default="val",
        help="split of the index to evaluate on (default val; COCO-to-VOC's VOC evaluation: val_voc)",
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    setup_logging()
    set_threads(args.threads)
    device = resolve_device(args.device)
    split = read_json(args.split)
    model, meta = load_model(args.model, device)
    task, step, table, seen, old, new = split_classes_of_model(args.model, args.split, split, meta, model.num_classes)
    ids = val_ids(args.data, args.val_split)
    dataset = step_dataset(args.data, ids, EvalTransform(eval_target_lut(task, step, table)))
    log.info("evaluating %s on %d val images (%s step %d, %d classes)", args.model, len(ids), task, step, len(seen))
    pred_dir = Path(args.pred_dir)
    conf = evaluate_model(model, dataset, len(seen), device, args.batch_size, pred_dir)

    names = [class_name_in(table, c) for c in seen]
    summary = summarize(conf, seen, old, new, class_names=names)
    index = read_json(args.data)
    metrics = {
        "dataset": split["dataset"],
        "task": task,
        "protocol": split["protocol"],
        "step": step,
        "num_steps": len(task_steps(task, table)),
        "task_table": table,
        "val_split": args.val_split,
        "method": meta.get("method"),
        "seed": meta.get("seed", 0),
        "seen_classes": seen,
        "old_classes": old,
        "new_classes": new,
        **summary,
        "confusion_matrix": conf.tolist(),
        "predictions_dir": str(pred_dir.resolve()),
        "image_root": index["root"],
        "mask_dir": index["mask_dir"],
        "val_ids": ids,
        "model": str(args.model),
    }
    out = Path(args.out)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_index", "class", "iou"])
    for index_, name in zip(seen, names):
        iou = summary["per_class_iou"][name]
        writer.writerow([index_, name, "" if iou is None else f"{iou:.6f}"])
    write_text(out.with_name("per_class.csv"), buffer.getvalue())
    write_json(out, metrics)
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    log.info(
        "mIoU old %s  new %s  all %s", fmt(summary["miou_old"]), fmt(summary["miou_new"]), fmt(summary["miou_all"])
    )
