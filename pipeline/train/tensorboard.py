"""TensorBoard event files of a training run, written by the loop on rank 0
(:class:`pipeline.train.loop.Trainer`, ``LoopConfig.tensorboard``; config ``train_*.tensorboard``).

Through ``torch.utils.tensorboard.SummaryWriter`` (the optional extra ``tensorboard``:
``pip install -e ".[tensorboard]"``) into the run's folder, so ``tensorboard --logdir results``
lists every run of a matrix by its path (``<dataset>/<task>-<protocol>/seed<s>/step<t>/<method>``).
Per epoch (global step = epoch, 1-based), from the values the loop has already accumulated on the
device and reduced once per epoch (no extra host synchronisation):

- ``loss/total`` and ``loss/<term>``: each loss term's mean over the epoch's iterations;
- ``lr/group<k>``: the learning rate of every SGD parameter group at the epoch's end;
- ``time/epoch_s``: the epoch's wall time;
- ``val/miou_all``, ``val/miou_old``, ``val/miou_new``: when the loop evaluates (``eval_every``);
- ``qualitative/<id>``: image | prediction | ground truth (VOC palette) of the first
  :data:`NUM_IMAGES` validation images, at each evaluation (a few forward passes).

A resumed run opens its writer with ``purge_step`` = the first epoch it trains, so TensorBoard drops
the events a killed run had logged for the epochs that are trained again. A run that starts from
epoch 1 (no checkpoint, or one of other settings) deletes the folder's earlier event files instead:
TensorBoard reads a folder's files in name order (time in whole seconds, host, process id and a
counter compared as text), so a new file written in the same second as an old one may be read
first, and the purge would then not apply.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.data.classes import colourise
from pipeline.data.transforms import denormalise

log = logging.getLogger(__name__)

#: Validation images drawn at each evaluation.
NUM_IMAGES = 4
#: History columns that are not loss terms.
_NOT_LOSSES = ("epoch", "loss", "lr", "time_s")


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by ``torch.utils.tensorboard``) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def scalar_tags(row: dict) -> dict[str, float]:
    """The scalars of one history row under their TensorBoard tags (module docstring).

    ``val_miou`` is the evaluation's mIoU over all classes (``val/miou_all``), ``val_<name>``
    becomes ``val/<name>``; values that are None or not numbers are left out.
    """
    tags: dict[str, float] = {}
    for key, value in row.items():
        if key == "epoch" or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key == "loss":
            tags["loss/total"] = float(value)
        elif key == "time_s":
            tags["time/epoch_s"] = float(value)
        elif key == "val_miou":
            tags["val/miou_all"] = float(value)
        elif key.startswith("val_"):
            tags["val/" + key[len("val_") :]] = float(value)
        elif key not in _NOT_LOSSES:
            tags[f"loss/{key}"] = float(value)
    return tags


#: How every TensorBoard event file's name starts.
EVENT_FILE_PREFIX = "events.out.tfevents."


class TensorBoardLog:
    """One run's event files (rank 0 only; the loop creates it).

    Args:
        run_dir: the run's folder (the event files go there).
        first_epoch: the first epoch (1-based) this process trains; events of a previous process
            at that epoch or later are purged; at 1, the folder's earlier event files are deleted.
    Raises:
        ImportError: tensorboard is not installed (check :func:`tensorboard_available` first).
    """

    def __init__(self, run_dir: str | Path, first_epoch: int = 1):
        from torch.utils.tensorboard import SummaryWriter  # optional dependency, imported on use

        if first_epoch <= 1:  # a run from scratch: the earlier runs' events are superseded
            for old in Path(run_dir).glob(f"{EVENT_FILE_PREFIX}*"):
                old.unlink()
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=first_epoch)

    def log_epoch(self, epoch: int, row: dict, optimizer: torch.optim.Optimizer) -> None:
        """Scalars of one epoch (1-based ``epoch``): :func:`scalar_tags` of the history row and the
        learning rate of each parameter group."""
        for tag, value in scalar_tags(row).items():
            self.writer.add_scalar(tag, value, epoch)
        for k, group in enumerate(optimizer.param_groups):
            self.writer.add_scalar(f"lr/group{k}", float(group["lr"]), epoch)

    @torch.no_grad()
    def log_images(self, epoch: int, model: nn.Module, dataset, device: torch.device) -> None:
        """image | prediction | ground truth of the first :data:`NUM_IMAGES` samples of
        ``dataset`` (evaluation samples: ``id``, ``image`` float (3, H, W) normalised, ``gt``
        int64 (H, W)); the model is left in eval mode (the loop puts it back in train mode)."""
        model.eval()
        for index in range(min(NUM_IMAGES, len(dataset))):
            sample = dataset[index]
            logits = model(sample["image"][None].to(device))["out"]
            prediction = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
            image = (denormalise(sample["image"]).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            gt = sample["gt"].numpy().astype(np.uint8)
            panel = np.concatenate([image, colourise(prediction), colourise(gt)], axis=1)
            self.writer.add_image(f"qualitative/{sample['id']}", panel, epoch, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


__all__ = ["NUM_IMAGES", "TensorBoardLog", "scalar_tags", "tensorboard_available"]
