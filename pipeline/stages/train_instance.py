"""Stage ``train-instance``: one step of CL4WSIS (Hsieh et al., ICCV 2023) on an instance task.

Step 0 (no ``--previous``): the Segmenter with its Panoptic-DeepLab instance branch
(:mod:`pipeline.models.instance`) learns the base classes from pixel labels and their instance
maps (:class:`pipeline.methods.cl4wsis.method.InstanceBase`), one loop run in ``--outdir``.

Step t >= 1 (``--previous`` = the step t-1 model of this stage): the classifier grows by the new
classes, the step t-1 model is kept frozen, and the two phases run one after the other in the
shared loop, each in its own folder: ``phase1/`` (the semantic Segmenter with the Decoder and
the Peak Generator, from image labels) and ``phase2/`` (the instance branch alone). A killed run
resumes: each phase's ``checkpoint.pt`` stays until the step's ``model.pt`` is written, and a
finished phase restores its weights (and its Decoder and Peak Generator) from it without
training again.

Each loop run takes the ``train`` section (``train_base`` at step 0, ``train_step`` after) with
the phase's ``methods.cl4wsis.schedule`` entry on top (optimizer, epochs, lr, ...: Sec. 4.3).
Writes ``model.pt`` (:func:`pipeline.models.instance.save_instance_model`) and ``history.csv``
(every run's epochs, a ``phase`` column) in ``--outdir``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import __version__
from pipeline.data.tasks import task_steps
from pipeline.eval.evaluate import make_validator
from pipeline.methods import build_method
from pipeline.methods.base import StepContext, StepInputs
from pipeline.methods.cl4wsis.method import PHASES, InstanceBase
from pipeline.models.instance import build_instance_segmenter, load_instance_model, save_instance_model
from pipeline.stages.common import add_run_arguments, start_run
from pipeline.stages.train_base import PRIOR, init_prior_bias
from pipeline.stages.train_step import check_previous
from pipeline.train.distributed import SINGLE
from pipeline.train.loop import LoopConfig, Trainer, file_digest, fingerprint, seed_everything, write_history

log = logging.getLogger("pipeline.stages.train_instance")

#: Keys of a ``schedule`` entry that override the ``train`` section (``head_lr_mult`` goes to the
#: objective instead).
LOOP_KEYS = ("optimizer", "epochs", "lr", "momentum", "weight_decay", "batch_size", "poly_power")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--previous", help="model.pt of step t-1 written by train-instance (omit at step 0)")
    add_run_arguments(
        parser,
        'JSON: {"model": {...}, "train": {...}, "method": {...}} (config model, train_base or train_step, '
        "methods.cl4wsis)",
    )


def loop_config(train: dict, schedule: dict, seed: int) -> LoopConfig:
    """The loop settings of one run: ``train`` (a ``train_base``/``train_step`` section) with the
    schedule entry's :data:`LOOP_KEYS` on top.

    Raises:
        KeyError: a key neither gives (names it).
    """
    merged = {**train, **{k: v for k, v in schedule.items() if k in LOOP_KEYS}}
    try:
        return LoopConfig(
            epochs=merged["epochs"],
            batch_size=merged["batch_size"],
            lr=merged["lr"],
            momentum=merged["momentum"],
            weight_decay=merged["weight_decay"],
            poly_power=merged["poly_power"],
            seed=seed,
            precision=merged["precision"],
            compile=merged["compile"],
            eval_every=merged.get("eval_every", 0),
            optimizer=merged.get("optimizer", "sgd"),
            tensorboard=merged.get("tensorboard", False),
        )
    except KeyError as err:
        raise KeyError(f"train-instance: loop setting {err} is in neither the train section nor the schedule") from err


def _run_loop(model, objective, dataset, cfg: LoopConfig, run_dir: Path, args, device, tag, validate=None) -> Trainer:
    trainer = Trainer(
        model,
        objective,
        dataset,
        cfg,
        run_dir,
        device,
        workers=args.workers,
        validate=validate,
        tag=tag,
        world=getattr(args, "world", SINGLE),
    )
    trainer.fit()
    return trainer


def _validator(args, train: dict, cfg: LoopConfig, task: str, step: int, device):
    """The loop's semantic val-mIoU callback when ``eval_every`` asks for one."""
    if not cfg.eval_every:
        return None
    return make_validator(args.data, task, step, device, batch_size=train["eval_batch_size"])


def run(args: argparse.Namespace) -> None:
    params, split, device = start_run(args)
    model_cfg, train, method_cfg = params["model"], params["train"], params["method"]
    task, step = split["task"], int(split["step"])
    schedule = method_cfg["schedule"]
    outdir = Path(args.outdir)
    world = getattr(args, "world", SINGLE)
    seed_everything(args.seed)
    histories: list[tuple[str, list[dict]]] = []
    trainers: list[Trainer] = []
    meta = {
        "model": model_cfg,
        "task": task,
        "protocol": split["protocol"],
        "step": step,
        "method": "cl4wsis",
        "seen_classes": split["seen_classes"],
        "method_cfg": method_cfg,
    }
    if step == 0:
        if args.previous:
            raise ValueError(f"{args.split}: step 0 starts from scratch; drop --previous {args.previous}")
        model = build_instance_segmenter(model_cfg, [len(task_steps(task)[0])], method_cfg["instance"])
        init_prior_bias(model.classifier.blocks[0], PRIOR)  # BCE outputs start at probability 0.01
        objective = InstanceBase.from_config(method_cfg, None, model)
        dataset = objective.dataset(StepInputs(split, args.data, model.num_classes, train))
        cfg = loop_config(train, schedule["base"], args.seed)
        log.info("cl4wsis step 0: task %s %s, %d images, device %s", task, split["protocol"], len(dataset), device)
        tag = fingerprint("cl4wsis-base", model_cfg, method_cfg, train, split["ids"], PRIOR, __version__)
        trainer = _run_loop(
            model, objective, dataset, cfg, outdir, args, device, tag, _validator(args, train, cfg, task, 0, device)
        )
        histories.append(("base", trainer.history))
        trainers.append(trainer)
    else:
        if not args.previous:
            raise ValueError(f"{args.split}: step {step} >= 1 needs --previous (the step {step - 1} model)")
        old_model, previous_meta = load_instance_model(args.previous, device)
        check_previous(args.previous, previous_meta, split)
        model, _ = load_instance_model(args.previous, device)
        context = StepContext.build(task, step, old_model)
        method = build_method("cl4wsis", method_cfg, context, model)
        model.classifier.add_step(len(context.new_classes), init=method.classifier_init)
        dataset = method.dataset(StepInputs(split, args.data, context.num_classes, train))
        log.info(
            "cl4wsis step %d: task %s %s, %d images (image labels), new classes %s, device %s",
            step,
            task,
            split["protocol"],
            len(dataset),
            context.new_classes,
            device,
        )
        tag = fingerprint("cl4wsis", method_cfg, train, split["ids"], file_digest(args.previous), __version__)
        phase1 = method.phase1()
        cfg1 = loop_config(train, schedule["phase1"], args.seed)
        validate = _validator(args, train, cfg1, task, step, device)
        trainer1 = _run_loop(model.segmenter, phase1, dataset, cfg1, outdir / PHASES[0], args, device, tag, validate)
        phase2 = method.phase2(phase1)
        cfg2 = loop_config(train, schedule["phase2"], args.seed)
        trainer2 = _run_loop(model, phase2, dataset, cfg2, outdir / PHASES[1], args, device, tag)
        model.freeze_semantic(False)
        histories += [(PHASES[0], trainer1.history), (PHASES[1], trainer2.history)]
        trainers += [trainer1, trainer2]
        meta["previous"] = str(args.previous)
    if not world.is_main:
        return
    rows = [{"phase": phase, **row} for phase, history in histories for row in history]
    write_history(outdir / "history.csv", rows)
    save_instance_model(
        outdir / "model.pt",
        model,
        {
            **meta,
            "seed": args.seed,
            "train": train,
            "precision": trainers[-1].precision.name,
            "processes": world.size,
            "final_loss": rows[-1]["loss"] if rows else None,
        },
    )
    for trainer in trainers:
        trainer.remove_checkpoint()
    log.info("wrote %s", outdir / "model.pt")
