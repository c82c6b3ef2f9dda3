"""What rules/instance.smk knows of the CL4WSIS runs (issue 16): their paths, inputs, ``--params``
and targets. Torch-free, plain functions of the merged Snakemake ``config``.

A run of step t lives in ``results/{dataset}/{task}-{protocol}/seed{seed}/instance/step{t}/cl4wsis``
(:data:`INSTANCE_RUN`), beside the semantic runs of the same seed; step t >= 1 starts from the
step t-1 model of that folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.data.tasks import num_steps
from pipeline.workflow.coco import is_coco_voc
from pipeline.workflow.methods import method_settings, params_json

INSTANCE_RUN = "results/{dataset}/{task}-{protocol}/seed{seed}/instance/step{step}/cl4wsis"
INSTANCE_MODEL = f"{INSTANCE_RUN}/model.pt"
INSTANCE_HISTORY = f"{INSTANCE_RUN}/history.csv"
INSTANCE_METRICS = f"{INSTANCE_RUN}/metrics.json"


def instance_previous(wildcards: Mapping[str, Any]) -> dict[str, str]:
    """``{"previous": model.pt of step t-1}`` of the same task, protocol and seed; ``{}`` at step 0."""
    step = int(wildcards["step"])
    if step == 0:
        return {}
    keys = {k: wildcards[k] for k in ("dataset", "task", "protocol", "seed")}
    return {"previous": INSTANCE_MODEL.format(**keys, step=step - 1)}


def instance_params(config: Mapping[str, Any], step: int | str) -> str:
    """``--params`` of train-instance: the model, the loop section of the step (``train_base`` at
    step 0, ``train_step`` after) and ``methods.cl4wsis`` with ``relaxed`` (experiments.relaxed_labels)."""
    train = config["train_base"] if int(step) == 0 else config["train_step"]
    method = dict(method_settings(config, "cl4wsis"), relaxed=bool(config["experiments"]["relaxed_labels"]))
    return params_json(model=config["model"], train=train, method=method)


def instance_targets(config: Mapping[str, Any]) -> list[str]:
    """metrics.json of every step of every task, protocol and seed of the experiment (the per-step
    table, CL4WSIS Table 5).

    Raises:
        ValueError: a COCO-to-VOC config (CL4WSIS runs on the VOC tasks and instance maps only).
    """
    if is_coco_voc(config):
        raise ValueError(
            f"instance_all: CL4WSIS runs on VOC tasks with instance maps; dataset {config['dataset']['name']!r} "
            "is COCO-to-VOC (dataset.kind: coco-voc), which has no instance pipeline here"
        )
    exp = config["experiments"]
    dataset = config["dataset"]["name"]
    return [
        INSTANCE_METRICS.format(dataset=dataset, task=task, protocol=protocol, seed=seed, step=step)
        for task in exp["tasks"]
        for protocol in exp["protocols"]
        for seed in exp["seeds"]
        for step in range(num_steps(task))
    ]


__all__ = [
    "INSTANCE_HISTORY",
    "INSTANCE_METRICS",
    "INSTANCE_MODEL",
    "INSTANCE_RUN",
    "instance_params",
    "instance_previous",
    "instance_targets",
]
