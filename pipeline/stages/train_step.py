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

from pipeline import __version__
from pipeline.methods import build_method, method_specs
from pipeline.methods.base import StepContext, StepInputs
from pipeline.methods.registry import CACHES
from pipeline.models import load_model
from pipeline.stages.common import add_run_arguments, start_run, train_and_save
from pipeline.train.loop import file_digest, fingerprint, seed_everything

log = logging.getLogger("pipeline.stages.train_step")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    incremental = [name for name, spec in method_specs().items() if spec.steps == "incremental"]
    parser.add_argument(
        "--method",
        required=True,
        help=f"one of {', '.join(incremental)} (the registry: `wilss list methods`) or a variant (methods.<name>.method)",
    )
    parser.add_argument("--previous", required=True, help="model.pt of step t-1 (step 0: the base model)")
    parser.add_argument("--pseudo", help="cam/vwe/iscam: pseudo-label cache of the pseudo-labels stage (.h5)")
    parser.add_argument("--coseg", help="fmwiss: co-segmentation cache of the coseg stage (.h5)")
    parser.add_argument("--memory", help="fmwiss: memory bank of old-class instances (.h5; omitted: no copy-paste)")
    add_run_arguments(parser, 'JSON: {"train": {...}, "method": {...}} (config train_step and methods.<name>)')


def check_previous(path, meta: dict, split: dict) -> None:
    """Check that the ``--previous`` model (its ``meta``) is step t-1 of the split's task and protocol.

    The model must be of the split's task and step t-1, of its protocol (an overlap base model
    under a disjoint step would train without an error and report the wrong setting), and have
    one output channel per class seen before step t (background + old classes).

    Raises:
        ValueError: naming the file, what it is and what the split needs.
    """
    task, step, protocol = split["task"], split["step"], split["protocol"]
    if (meta.get("task"), meta.get("step")) != (task, step - 1):
        raise ValueError(
            f"{path} is task {meta.get('task')} step {meta.get('step')}; "
            f"step {step} of {task} starts from step {step - 1}"
        )
    if meta.get("protocol") != protocol:
        raise ValueError(
            f"{path} is a model of the {meta.get('protocol')} protocol; step {step} of {task} {protocol} "
            f"starts from step {step - 1} of the {protocol} protocol"
        )
    expected = len(split["seen_classes"]) - len(split["new_classes"])
    channels = sum(meta.get("classes_per_step", []))
    if channels != expected:
        raise ValueError(
            f"{path} has {channels} output classes (per step: {meta.get('classes_per_step')}); step {step} of "
            f"{task} {protocol} starts from the {expected} classes seen before it (background + old classes "
            f"{split['old_classes']})"
        )


def run(args: argparse.Namespace) -> None:
    params, split, device = start_run(args)
    train, method_cfg = params["train"], params["method"]
    task, step = split["task"], split["step"]
    if step < 1:
        raise ValueError(f"{args.split}: train-step needs a step t >= 1, got {step} (step 0 is train-base)")

    old_model, meta = load_model(args.previous, device)
    check_previous(args.previous, meta, split)
    seed_everything(args.seed)
    model, _ = load_model(args.previous, device)
    context = StepContext.build(task, step, old_model, split.get("task_table", "voc"))
    method = build_method(method_cfg.get("method", args.method), method_cfg, context, model)
    model.classifier.add_step(len(context.new_classes), init=method.classifier_init)

    caches = {key: getattr(args, key) for key in CACHES if getattr(args, key)}
    dataset = method.dataset(StepInputs(split, args.data, context.num_classes, train, caches))
    log.info(
        "%s: task %s %s step %d, %d training images (%s labels), new classes %s, device %s",
        args.method,
        task,
        split["protocol"],
        step,
        len(dataset),
        method.spec.supervision,
        context.new_classes,
        device,
    )
    train_and_save(
        model,
        method,
        dataset,
        train,
        args,
        device,
        task,
        step,
        meta={
            "model": meta["model"],
            "task": task,
            "protocol": split["protocol"],
            "step": step,
            "method": args.method,
            "seen_classes": split["seen_classes"],
            "method_cfg": method_cfg,
            "previous": str(args.previous),
        },
        tag=fingerprint(
            args.method,
            method_cfg,
            train,
            split["ids"],
            file_digest(args.previous),
            *[file_digest(p) for p in (args.pseudo, args.coseg, args.memory) if p],
            __version__,
        ),
        warmup_epochs=method.warmup_before_training,
    )
