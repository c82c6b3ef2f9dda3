"""Stage ``evaluate``: predict every validation image, accumulate the confusion matrix at label
resolution and write per-class IoU and old/new/all mIoU (WILSON's convention) to ``metrics.json``
(+ ``per_class.csv``), and the predicted masks as VOC-palette PNGs.

Ground truth of classes not seen yet at the evaluated step is mapped to background (MiB's
masking at test time); void (255) stays ignored. *old* are the base classes of step 0, *new* the
classes added in steps 1..t, *all* background plus every seen class (WILSON Tables 1-2; MiB for
multi-step tasks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data.classes import voc_palette
from pipeline.data.datasets import index_table, step_dataset, val_ids
from pipeline.data.tasks import eval_target_lut, seen_classes, task_steps
from pipeline.data.transforms import EvalTransform, pad_collate
from pipeline.io import atomic_path
from pipeline.metrics.miou import ConfusionMatrix, summarize

log = logging.getLogger("pipeline.eval.evaluate")


def report_classes(task: str, step: int, table: str = "voc") -> tuple[list[int], list[int], list[int]]:
    """(seen, old, new) classes for the tables: old = base object classes, new = classes of steps 1..step
    (``table``: the task table, :mod:`pipeline.data.tasks`)."""
    steps = task_steps(task, table)
    old = [c for c in steps[0] if c != 0]
    new = [c for s in steps[1 : step + 1] for c in s]
    return seen_classes(task, step, table), old, new


@torch.no_grad()
def predict(
    model: nn.Module, dataset, device: torch.device, batch_size: int = 1, progress: bool = True
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(id, prediction, target)`` per image: uint8 (H, W) argmax class map at label
    resolution and the (H, W) int64 target, for a dataset yielding :class:`EvalTransform` samples."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pad_collate)
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False, mininterval=10.0):
        images = batch["image"].to(device)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(images)["out"]
        labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        for i, image_id in enumerate(batch["id"]):
            height, width = batch["size"][i].tolist()
            yield image_id, labels[i, :height, :width], batch["gt"][i, :height, :width].numpy()


def evaluate_model(
    model: nn.Module,
    dataset,
    num_classes: int,
    device: torch.device,
    batch_size: int = 1,
    pred_dir: Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Confusion matrix (num_classes, num_classes) int64 of ``model`` on ``dataset``; optionally
    saves each prediction as ``pred_dir/<id>.png`` (mode P, VOC palette)."""
    confusion = ConfusionMatrix(num_classes)
    palette = voc_palette().flatten().tolist()
    for image_id, prediction, target in predict(model, dataset, device, batch_size, progress):
        confusion.update(prediction, target)
        if pred_dir is not None:
            image = Image.fromarray(prediction, mode="P")
            image.putpalette(palette)
            with atomic_path(pred_dir / f"{image_id}.png") as tmp:
                image.save(tmp)
    return confusion.matrix


def make_validator(data_index: str | Path, task: str, step: int, device: torch.device, batch_size: int = 1):
    """A callback ``model -> {"val_miou": float, "val_miou_old": float | None, "val_miou_new":
    float | None}`` (all / old / new mIoU) for the training loop's learning curves; its attribute
    ``dataset`` holds the val samples (the loop's TensorBoard images, :mod:`pipeline.train.tensorboard`)."""
    table = index_table(data_index)  # the labels' task table (COCO-to-VOC: coco80)
    dataset = step_dataset(data_index, val_ids(data_index), EvalTransform(eval_target_lut(task, step, table)))
    seen, old, new = report_classes(task, step, table)

    def validate(model: nn.Module) -> dict:
        conf = evaluate_model(model, dataset, len(seen), device, batch_size, progress=False)
        summary = summarize(conf, seen, old, new)
        return {
            "val_miou": summary["miou_all"],
            "val_miou_old": summary["miou_old"],
            "val_miou_new": summary["miou_new"],
        }

    validate.dataset = dataset
    return validate
