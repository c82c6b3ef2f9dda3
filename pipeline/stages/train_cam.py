"""Stage ``train-cam``: the classifier of an offline WSSS baseline (``cam``, ``vwe``, ``iscam``) at
step t, on the step's training images with the image-level labels of its new classes (WILSON
Sec. 4.2: "we first train a classification model using the images available in the incremental
learning steps").

Data: the ids of ``step{t}.json`` with the usual augmentation of the pipeline (random scale, crop
padded with void, flip; :class:`pipeline.data.transforms.TrainTransform`); the masks are blanked
(only the crop padding stays void) and each image gets a (K,) multi-hot of its labelled new
classes, channel k = ``new_classes[k]`` (labels of old classes, present in WILSON's relaxed
setting, are ignored: the network learns the new classes only).

Training runs in the shared loop with the baseline's objective (:mod:`pipeline.wsss.objectives`);
writes ``model.pt`` (weights + the metadata :func:`pipeline.wsss.networks.load_cam_model` needs) and
``history.csv`` in ``--outdir`` and resumes from ``checkpoint.pt`` there.

``--params``: ``{"train": <train_cam>, "cam": <wsss.<cam>>}``; ``train`` is either the whole
``train_cam`` section (``{"cam": {...}, "vwe": {...}, "iscam": {...}}``, the baseline's own
subsection is used) or that subsection alone.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import __version__
from pipeline.data.datasets import BLANK_LUT, WithImageLabels, step_dataset
from pipeline.data.transforms import TrainTransform
from pipeline.stages.common import add_run_arguments, start_run
from pipeline.train.distributed import SINGLE
from pipeline.train.loop import LoopConfig, Trainer, fingerprint, seed_everything
from pipeline.wsss.networks import build_cam_model, parameter_drift, save_cam_model
from pipeline.wsss.objectives import CAM_OBJECTIVES, build_cam_objective

log = logging.getLogger("pipeline.stages.train_cam")


#: Keys of a ``train_cam.<cam>`` section.
TRAIN_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "head_lr_mult",
    "momentum",
    "weight_decay",
    "poly_power",
    "crop_size",
    "scale_range",
    "precision",
    "compile",
)


def channel_labels(split: dict) -> dict[str, list[int]]:
    """Image labels of a split as channels of the CAM network: ``{id: [k, ...]}`` with
    ``new_classes[k]`` a labelled class of the image; other labelled classes are dropped.

    Raises:
        ValueError: an id of ``split["ids"]`` without an entry in ``split["labels"]`` (named).
    """
    channel = {int(c): k for k, c in enumerate(split["new_classes"])}
    labels = {}
    for image_id in split["ids"]:
        if image_id not in split["labels"]:
            raise ValueError(f"split step {split.get('step')}: image {image_id!r} has no entry in 'labels'")
        labels[image_id] = sorted(channel[int(c)] for c in split["labels"][image_id] if int(c) in channel)
    return labels


def cam_training_data(split: dict, data_index: str | Path, train: dict) -> WithImageLabels:
    """The step's images, augmented, with blank masks and (K,) multi-hot ``labels``."""
    transform = TrainTransform(int(train["crop_size"]), tuple(train["scale_range"]), BLANK_LUT)
    dataset = step_dataset(data_index, split["ids"], transform)
    return WithImageLabels(dataset, channel_labels(split), len(split["new_classes"]))


def select_train_section(train: dict, cam: str) -> dict:
    """The training settings of baseline ``cam``: ``train[cam]`` when ``train`` is the whole
    ``train_cam`` section (one subsection per baseline, the papers' settings differ), else
    ``train`` itself (the subsection alone).

    Raises:
        ValueError: a missing key (named with its config path).
    """
    where = f"train_cam.{cam}"
    if isinstance(train.get(cam), dict):
        train = train[cam]
    missing = [key for key in TRAIN_KEYS if key not in train]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    return train


def train_cam_and_save(
    net, objective, dataset, train: dict, args: argparse.Namespace, device, meta: dict, tag: str
) -> list[dict]:
    """Run the shared loop (no validation pass), write ``model.pt`` with ``meta`` (the learned
    loss parameters of the objective, if any, and the drift of the network's tracked parameters
    from their initial values, :func:`pipeline.wsss.networks.parameter_drift`) and drop the
    checkpoint; returns the history.

    The CAM counterpart of :func:`pipeline.stages.common.train_and_save`, which saves Segmenters.
    """
    cfg = LoopConfig(
        epochs=int(train["epochs"]),
        batch_size=int(train["batch_size"]),
        lr=float(train["lr"]),
        momentum=float(train["momentum"]),
        weight_decay=float(train["weight_decay"]),
        poly_power=float(train["poly_power"]),
        seed=args.seed,
        precision=str(train["precision"]),
        compile=bool(train["compile"]),
        eval_every=0,
    )
    outdir = Path(args.outdir)
    world = getattr(args, "world", SINGLE)
    # the network is built seeded, so a resumed run takes the same initial values
    initial = {name: p.detach().to("cpu", copy=True) for name, p in net.tracked_parameters().items()}
    trainer = Trainer(net, objective, dataset, cfg, outdir, device, workers=args.workers, tag=tag, world=world)
    history = trainer.fit()
    if not world.is_main:  # rank 0 writes the model
        return history
    save_cam_model(
        outdir / "model.pt",
        net,
        {
            **meta,
            "seed": args.seed,
            "train": train,
            "learned": objective.learned(),
            "parameter_drift": parameter_drift(initial, net.tracked_parameters()),
            "final_loss": history[-1]["loss"] if history else None,
        },
    )
    trainer.remove_checkpoint()
    log.info("wrote %s", outdir / "model.pt")
    return history


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cam", required=True, choices=sorted(CAM_OBJECTIVES), help="WSSS baseline (its CAM network)")
    add_run_arguments(parser, 'JSON: {"train": {...}, "cam": {...}} (config train_cam[.<cam>] and wsss.<cam>)')


def run(args: argparse.Namespace) -> None:
    params, split, device = start_run(args)
    for key in ("train", "cam"):
        if key not in params:
            raise ValueError(f'--params: missing section {key!r} (expected {{"train": ..., "cam": ...}})')
    train, cam_cfg = select_train_section(params["train"], args.cam), params["cam"]
    task, step = split["task"], split["step"]
    if not split["new_classes"]:
        raise ValueError(f"{args.split}: step {step} of {task} has no new classes to learn")

    seed_everything(args.seed)
    net = build_cam_model(args.cam, cam_cfg, len(split["new_classes"]))
    objective = build_cam_objective(args.cam, cam_cfg, train)
    dataset = cam_training_data(split, args.data, train)
    log.info(
        "%s: task %s %s step %d, %d training images, new classes %s, device %s",
        args.cam,
        task,
        split["protocol"],
        step,
        len(dataset),
        split["new_classes"],
        device,
    )
    train_cam_and_save(
        net,
        objective,
        dataset,
        train,
        args,
        device,
        meta={
            "cam_cfg": cam_cfg,
            "task": task,
            "protocol": split["protocol"],
            "step": step,
            "new_classes": split["new_classes"],
            "version": __version__,
        },
        tag=fingerprint(args.cam, cam_cfg, train, split["ids"], split["labels"], __version__),
    )
