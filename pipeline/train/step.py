"""Stage ``train-step``: learning step t >= 1 of a task for one incremental method.

Starts from the model of step t-1 of the same method (step 0: the ``base`` model), grows its
classifier by the new classes (initialised from the background, MiB Sec. 3.4), keeps a frozen
copy as the old model, and trains with the method's objective in the shared loop. The data
follow the method's supervision: pixel labels of the new classes (``ft``, ``mib``), pixel labels
of every seen class on the images of all steps so far (``joint``), image-level labels only
(``wilson``: the masks are blanked before they reach the objective), hard pseudo-labels from an
HDF5 cache of the ``pseudo-labels`` stage (``cam``, ``vwe``, ``iscam``: they replace the masks),
or image-level labels + the fused co-segmentation masks of the ``coseg`` cache + copy-paste of
old-class instances from the memory bank (``fmwiss``). Writes ``model.pt`` and ``history.csv`` in
``--outdir`` and resumes from ``checkpoint.pt`` there.
"""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.cache import CacheError, open_cache
from pipeline.data.tasks import joint_ids, pixel_target_lut
from pipeline.data.transforms import TrainTransform
from pipeline.io import read_json
from pipeline.methods import StepContext, build_objective
from pipeline.models import load_model
from pipeline.train.common import add_run_arguments, start_run, step_dataset, train_and_save
from pipeline import __version__
from pipeline.train.loop import file_digest, fingerprint, seed_everything

log = logging.getLogger("pipeline.train.step")

#: Image-level supervision: every mask value (classes and void) becomes background, so only the
#: void padding added by the random crop is left for the objective to ignore.
BLANK_LUT = np.zeros(256, dtype=np.uint8)


class WithImageLabels(Dataset):
    """Adds ``labels``: a (num_classes,) float32 multi-hot tensor of an image's image-level labels."""

    def __init__(self, dataset, labels: dict[str, list[int]], num_classes: int):
        self.dataset, self.labels, self.num_classes = dataset, labels, num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset[i]
        multi_hot = torch.zeros(self.num_classes)
        multi_hot[self.labels[sample["id"]]] = 1.0
        return {**sample, "labels": multi_hot}


class _LazyCache:
    """An HDF5 cache opened on first use in each process (h5py handles do not survive a fork
    into DataLoader workers)."""

    def __init__(self, path: str, expected: dict | None = None):
        self.path, self.expected = path, expected
        self._reader, self._pid = None, None

    def reader(self):
        if self._pid != os.getpid():
            self._reader, self._pid = open_cache(self.path, self.expected), os.getpid()
        return self._reader

    def __getstate__(self):
        return {"path": self.path, "expected": self.expected, "_reader": None, "_pid": None}


class PseudoLabelled(Dataset):
    """The step's images with their hard pseudo-labels (``pseudo-labels`` stage) as masks.

    ``dataset[i]``: the transform's output for ``{"id", "image", "mask" = pseudo-label}``; the
    ground-truth mask is never used.

    Raises:
        CacheError: an image missing from the cache; ValueError: a label of another size.
    """

    def __init__(self, images: Dataset, cache_path: str, split: dict, transform):
        from pipeline.wsss.pseudo_labels import read_pseudo_label

        # What this step must find in the cache (the pseudo-labels stage records the CAM model's hash
        # and its settings too; Snakemake re-runs this step when the cache changes).
        expected = {"kind": "wsss_pseudo_labels", "task": split["task"], "protocol": split["protocol"],
                    "step": int(split["step"]), "new_classes": [int(c) for c in split["new_classes"]]}
        self.images, self.transform, self.read = images, transform, read_pseudo_label
        self.cache = _LazyCache(cache_path, expected)
        with open_cache(cache_path, expected) as reader:
            missing = [i for i in images.ids if i not in reader]
        if missing:
            raise CacheError(f"{cache_path}: no pseudo-label for {len(missing)} training images, e.g. {missing[0]!r}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        sample = self.images[i]
        label = self.read(self.cache.reader(), sample["id"])
        if label.shape != sample["image"].shape[:2]:
            raise ValueError(f"{self.cache.path}: pseudo-label of {sample['id']!r} is {label.shape}, "
                             f"the image {sample['image'].shape[:2]}")
        return self.transform({"id": sample["id"], "image": sample["image"], "mask": label})


class CosegLabelled(Dataset):
    """FMWISS training samples: image-level labels, the fused co-segmentation masks of the new
    classes (``coseg`` cache, fused when read) and copy-paste of old-class instances (Sec. 3.4).

    ``dataset[i]`` adds to the transform's output ``pseudo`` (|C^t|, h, w) float32 {0, 1} (channel
    k = new_classes[k]; zero under pasted instances) and ``pasted`` (h, w) int64 (old class of the
    pasted pixels, 0 elsewhere). The mask is blanked (0, and 255 in the crop padding).

    Args:
        images: the step's images without transform (masks unused).
        coseg_path, coseg_cfg: the cache and the settings it is read with (fusion, top-K, ...).
        new_classes: C^t.
        memory_path: the memory bank (None: no copy-paste); paste_prob: probability of a paste.
    """

    def __init__(self, images: Dataset, coseg_path: str, coseg_cfg: dict, new_classes: list[int],
                 memory_path: str | None, paste_prob: float, transform):
        from pipeline.foundation.coseg import coseg_masks, expected_provenance

        self.images, self.transform, self.coseg_masks = images, transform, coseg_masks
        self.cfg, self.new_classes, self.paste_prob = coseg_cfg, list(new_classes), paste_prob
        self.cache = _LazyCache(coseg_path, expected_provenance(coseg_cfg))
        with open_cache(coseg_path, expected_provenance(coseg_cfg)) as reader:  # stale cache: error now
            missing = [i for i in images.ids if i not in reader]
        if missing:
            raise CacheError(f"{coseg_path}: no co-segmentation for {len(missing)} training images, e.g. {missing[0]!r}")
        self.memory_path = memory_path
        self._bank, self._bank_pid = None, None

    def bank(self):
        if self.memory_path is None:
            return None
        if self._bank_pid != os.getpid():
            from pipeline.data.memory import MemoryBank

            self._bank, self._bank_pid = MemoryBank(self.memory_path), os.getpid()
        return self._bank

    def __getstate__(self):
        return {**self.__dict__, "_bank": None, "_bank_pid": None}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        from pipeline.data.memory import copy_paste

        sample = self.images[i]
        image_id, image = sample["id"], sample["image"]
        size = image.shape[:2]
        classes, masks = self.coseg_masks(self.cache.reader().get(image_id), self.cfg, size)
        pseudo = np.zeros((len(self.new_classes), *size), dtype=np.uint8)
        for c, m in zip(classes, masks):
            if c in self.new_classes:
                pseudo[self.new_classes.index(c)] = m
        mask = np.zeros(size, dtype=np.uint8)
        pasted = np.zeros(size, dtype=np.uint8)
        bank = self.bank()
        if bank is not None and self.paste_prob > 0:
            rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))  # seeded by the loop per epoch
            image, mask, pasted = copy_paste(image, mask, bank, rng, prob=self.paste_prob)
            pseudo[:, pasted > 0] = 0
        out = self.transform({"id": image_id, "image": image, "mask": np.zeros(size, dtype=np.uint8),
                              "extra": np.concatenate([pseudo, pasted[None]])})
        extra = out.pop("extra")
        return {**out, "pseudo": extra[:-1].float(), "pasted": extra[-1]}


def training_data(supervision: str, split: dict, data_index: str, task: str, step: int, num_classes: int,
                  train: dict, pseudo: str | None = None, coseg: str | None = None, coseg_cfg: dict | None = None,
                  memory: str | None = None, paste_prob: float = 0.5) -> Dataset:
    """The dataset of ``split`` prepared for a method's supervision (see the module docstring).

    Raises:
        ValueError: unknown supervision, or a cache path the supervision needs is missing.
    """
    crop, scales = train["crop_size"], tuple(train["scale_range"])
    if supervision == "pixel-current":
        return step_dataset(data_index, split["ids"], TrainTransform(crop, scales, pixel_target_lut(task, step)))
    if supervision == "pixel-seen":
        index = read_json(data_index)
        ids = joint_ids({i: index["index"][i] for i in index["splits"]["train"]}, task, step, split["protocol"])
        return step_dataset(data_index, ids, TrainTransform(crop, scales, pixel_target_lut(task, step, "seen")))
    if supervision == "image":
        dataset = step_dataset(data_index, split["ids"], TrainTransform(crop, scales, BLANK_LUT))
        return WithImageLabels(dataset, split["labels"], num_classes)
    if supervision == "pseudo":
        if not pseudo:
            raise ValueError("pseudo-label supervision needs --pseudo (the pseudo-labels stage's .h5)")
        return PseudoLabelled(step_dataset(data_index, split["ids"], None), pseudo, split, TrainTransform(crop, scales))
    if supervision == "fmwiss":
        if not coseg:
            raise ValueError("fmwiss needs --coseg (the coseg stage's .h5)")
        from pipeline.data.tasks import new_classes

        dataset = CosegLabelled(step_dataset(data_index, split["ids"], None), coseg, coseg_cfg or {},
                                new_classes(task, step), memory, paste_prob, TrainTransform(crop, scales))
        return WithImageLabels(dataset, split["labels"], num_classes)
    raise ValueError(f"unknown supervision {supervision!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="ft | joint | mib | wilson | fmwiss | cam | vwe | iscam, or a variant (methods.<name>.method)")
    parser.add_argument("--previous", required=True, help="model.pt of step t-1 (step 0: the base model)")
    parser.add_argument("--pseudo", help="cam/vwe/iscam: pseudo-label cache of the pseudo-labels stage (.h5)")
    parser.add_argument("--coseg", help="fmwiss: co-segmentation cache of the coseg stage (.h5)")
    parser.add_argument("--memory", help="fmwiss: memory bank of old-class instances (.h5; omitted: no copy-paste)")
    add_run_arguments(parser, 'JSON: {"train": {...}, "method": {...}} (config train_step and methods.<name>)')


def run(args: argparse.Namespace) -> None:
    params, split, device = start_run(args)
    train, method_cfg = params["train"], params["method"]
    task, step = split["task"], split["step"]
    if step < 1:
        raise ValueError(f"{args.split}: train-step needs a step t >= 1, got {step} (step 0 is train-base)")

    old_model, meta = load_model(args.previous, device)
    if (meta.get("task"), meta.get("step")) != (task, step - 1):
        raise ValueError(f"{args.previous} is task {meta.get('task')} step {meta.get('step')}; "
                         f"step {step} of {task} starts from step {step - 1}")
    seed_everything(args.seed)
    model, _ = load_model(args.previous, device)
    context = StepContext.build(task, step, old_model)
    objective = build_objective(method_cfg.get("method", args.method), method_cfg, context, model)
    model.classifier.add_step(len(context.new_classes), init=getattr(objective, "classifier_init", "background"))

    dataset = training_data(objective.supervision, split, args.data, task, step, context.num_classes, train,
                            pseudo=args.pseudo, coseg=args.coseg, coseg_cfg=method_cfg.get("coseg"),
                            memory=args.memory, paste_prob=method_cfg.get("paste_prob", 0.5))
    log.info("%s: task %s %s step %d, %d training images (%s), new classes %s, device %s", args.method, task,
             split["protocol"], step, len(dataset), objective.supervision, context.new_classes, device)
    train_and_save(model, objective, dataset, train, args, device, task, step,
                   meta={"model": meta["model"], "task": task, "protocol": split["protocol"], "step": step,
                         "method": args.method, "seen_classes": split["seen_classes"], "method_cfg": method_cfg,
                         "previous": str(args.previous)},
                   tag=fingerprint(args.method, method_cfg, train, split["ids"], file_digest(args.previous),
                                   *[file_digest(p) for p in (args.pseudo, args.coseg, args.memory) if p],
                                   __version__),
                   warmup_epochs=getattr(objective, "warmup_before_training", 0))
