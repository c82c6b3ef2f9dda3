"""Stage ``evaluate-instance``: mask AP of an instance model (CL4WSIS Sec. 4.1, Tables 2-6) and the
semantic mIoU of its semantic branch (Table 7) on the validation images.

Per image, at label resolution: the model's semantic softmax, center heatmap and offsets give the
instances (:func:`pipeline.models.panoptic.panoptic_instances`: centers by max-pool NMS above a
threshold, pixels grouped to the nearest center after their offset, class = majority of the
semantic argmax, score = mean class probability x center score); the ground truth is every
instance of a seen class in ``SegmentationObject[Aug]`` (classes of later steps are not yet
objects, as the semantic evaluation's background). AP per class at each IoU threshold, PASCAL
VOC protocol (:class:`pipeline.metrics.instance_ap.InstanceAP`): ``--thresholds ten`` (0.50 …
0.95, the default) or ``authors`` (the authors' ``np.arange(0.5, 0.95, 0.05)``: 0.50 … 0.90).
``metrics.json`` holds per-class AP@0.5 and AP@[.5:.95], their old/new/all means (the paper's
columns) and the semantic old/new/all mIoU.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.data.datasets import step_dataset, val_ids
from pipeline.data.instances import (
    instance_classes,
    instance_masks,
    list_instances,
    load_instance_map,
    resolve_instance_dir,
)
from pipeline.data.tasks import class_name_in, eval_target_lut, task_steps
from pipeline.data.transforms import EvalTransform
from pipeline.eval.evaluate import report_classes
from pipeline.io import read_json, write_json
from pipeline.metrics.instance_ap import AUTHORS_IOU_THRESHOLDS, IOU_THRESHOLDS, InstanceAP
from pipeline.metrics.instance_ap import summarize as summarize_ap
from pipeline.metrics.miou import ConfusionMatrix
from pipeline.metrics.miou import summarize as summarize_miou
from pipeline.models.instance import load_instance_model
from pipeline.models.panoptic import CENTER_THRESHOLD, NMS_KERNEL, TOP_K, panoptic_instances
from pipeline.stages.common import set_threads, setup_logging, split_classes_of_model
from pipeline.train.loop import resolve_device

log = logging.getLogger("pipeline.stages.evaluate_instance")

THRESHOLDS = {"ten": IOU_THRESHOLDS, "authors": AUTHORS_IOU_THRESHOLDS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model.pt written by train-instance")
    parser.add_argument("--data", required=True, help="dataset index JSON written by prepare-data")
    parser.add_argument("--split", required=True, help="step{t}.json of the evaluated step")
    parser.add_argument("--out", required=True, help="metrics.json to write")
    parser.add_argument("--val-split", default="val", help="split of the index to evaluate on (default val)")
    parser.add_argument("--thresholds", choices=sorted(THRESHOLDS), default="ten", help="IoU thresholds of AP@[.5:.95]")
    parser.add_argument("--center-threshold", type=float, default=CENTER_THRESHOLD, help="heatmap score of a center")
    parser.add_argument(
        "--nms-kernel", type=int, default=NMS_KERNEL, help="max-pool NMS window of the centers (authors: 41 at 512 px)"
    )
    parser.add_argument("--top-k", type=int, default=TOP_K, help="most centers per image")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)


def ground_truth_instances(
    instance_map: np.ndarray,
    class_map: np.ndarray,
    seen_objects: Sequence[int],
    image_id: str,
    files: tuple = (None, None),
) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth instances of the seen object classes of one image.

    Args:
        instance_map, class_map: (H, W) uint8 (original classes, 0 background, 255 void).
        seen_objects: object classes seen so far (others are not evaluated).
        image_id, files: named in errors (instance map path, class map path).
    Returns:
        ``(masks (K, H, W) bool, labels (K,) int64)``.
    Raises:
        DatasetError: the two maps disagree (:func:`pipeline.data.instances.instance_classes`).
    """
    classes = instance_classes(instance_map, class_map, image_id, *files, cover=False)
    keep = {k: c for k, c in classes.items() if c in set(seen_objects)}
    return instance_masks(instance_map, list_instances(instance_map, keep))


@torch.no_grad()
def evaluate_instance_model(
    model: nn.Module,
    data_index: str,
    ids: Sequence[str],
    task: str,
    step: int,
    device: torch.device,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    center_threshold: float = CENTER_THRESHOLD,
    nms_kernel: int = NMS_KERNEL,
    top_k: int | None = TOP_K,
    table: str = "voc",
) -> tuple[dict, np.ndarray]:
    """AP accumulator result and semantic confusion matrix of ``model`` on ``ids``.

    Returns:
        ``(InstanceAP.result() over the seen classes, (C, C) confusion matrix)``.
    """
    seen, _, _ = report_classes(task, step, table)
    seen_objects = [c for c in seen if c != 0]
    index = read_json(data_index)
    instance_dir = resolve_instance_dir(index["root"], index.get("instance_dir", "auto"))
    raw = step_dataset(data_index, list(ids), None)
    transform = EvalTransform(eval_target_lut(task, step, table))
    ap = InstanceAP(len(seen), iou_thresholds)
    conf = ConfusionMatrix(len(seen))
    model.eval()
    for i in range(len(raw)):
        sample = raw[i]
        image_id = sample["id"]
        path = instance_dir / f"{image_id}.png"
        gt_masks, gt_labels = ground_truth_instances(
            load_instance_map(path, image_id), sample["mask"], seen_objects, image_id, (path, None)
        )
        item = transform(sample)
        out = model(item["image"][None].to(device))
        prob = out["out"][0].float().softmax(dim=0)
        pred = panoptic_instances(
            prob,
            out["center"][0, 0].float(),
            out["offset"][0].float(),
            seen_objects,
            center_threshold,
            nms_kernel,
            top_k,
        )
        ap.update(pred.masks().cpu().numpy(), pred.labels.cpu().numpy(), pred.scores.cpu().numpy(), gt_masks, gt_labels)
        conf.update(prob.argmax(dim=0).cpu().numpy(), item["gt"].numpy())
    return ap.result(), conf.matrix


def run(args: argparse.Namespace) -> None:
    setup_logging()
    set_threads(args.threads)
    device = resolve_device(args.device)
    split = read_json(args.split)
    model, meta = load_instance_model(args.model, device)
    task, step, table, seen, old, new = split_classes_of_model(args.model, args.split, split, meta, model.num_classes)
    ids = val_ids(args.data, args.val_split)
    log.info("evaluating %s on %d images (%s step %d)", args.model, len(ids), task, step)
    result, matrix = evaluate_instance_model(
        model,
        args.data,
        ids,
        task,
        step,
        device,
        THRESHOLDS[args.thresholds],
        args.center_threshold,
        args.nms_kernel,
        args.top_k,
        table,
    )
    names = [class_name_in(table, c) for c in seen]
    ap_summary = summarize_ap(result, old, new, class_names=names)
    miou = summarize_miou(matrix, seen, old, new, class_names=names)
    metrics = {
        "dataset": split.get("dataset"),
        "task": task,
        "protocol": split.get("protocol"),
        "step": step,
        "num_steps": len(task_steps(task, table)),
        "method": meta.get("method"),
        "seed": meta.get("seed", 0),
        "seen_classes": seen,
        "old_classes": old,
        "new_classes": new,
        "thresholds": args.thresholds,
        **ap_summary,
        "map50": result["map50"],
        "map": result["map"],
        "n_gt": [int(n) for n in result["n_gt"]],
        "semantic": {k: miou[k] for k in ("miou_old", "miou_new", "miou_all", "per_class_iou") if k in miou},
        "val_ids": list(ids),
        "model": str(args.model),
    }
    write_json(Path(args.out), metrics)
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    log.info(
        "AP@0.5 old %s new %s all %s | AP old %s new %s all %s",
        fmt(ap_summary["ap50_old"]),
        fmt(ap_summary["ap50_new"]),
        fmt(ap_summary["ap50_all"]),
        fmt(ap_summary["ap_old"]),
        fmt(ap_summary["ap_new"]),
        fmt(ap_summary["ap_all"]),
    )
