"""Artifact paths: the contract between the stages (Snakemake patterns, relative to the workdir).

Every pattern names its wildcards in braces (``{dataset}``, ``{task}``, ``{protocol}``,
``{seed}``, ``{step}``, ``{method}``, ``{cache}``, ``{cam}``); the rules use them as inputs and
outputs, :mod:`pipeline.workflow.targets` formats them into the files of the matrix.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

DATA_INDEX = "results/{dataset}/dataset.json"
SPLIT = "results/{dataset}/splits/{task}-{protocol}/step{step}.json"
#: The split of step 0 (base classes, pixel labels).
SPLIT0 = SPLIT.replace("{step}", "0")
#: A split with other training data than the experiment's (a variant's relaxed labels or data
#: fraction; ``{split_variant}`` named by :func:`pipeline.workflow.methods.split_variant_name`).
SPLIT_VARIANT = "results/{dataset}/splits/{task}-{protocol}/{split_variant}/step{step}.json"
SPLIT_SUMMARY = "results/{dataset}/splits/{task}-{protocol}/summary.json"
SPLIT_SUMMARY_CSV = "results/{dataset}/splits/{task}-{protocol}/summary.csv"

#: One trained model: step 0 (method ``base``) or step t >= 1 of a method or variant.
RUN = "results/{dataset}/{task}-{protocol}/seed{seed}/step{step}/{method}"
RUN_MODEL = f"{RUN}/model.pt"
RUN_HISTORY = f"{RUN}/history.csv"
RUN_METRICS = f"{RUN}/metrics.json"
RUN_PER_CLASS = f"{RUN}/per_class.csv"
RUN_PREDICTIONS = f"{RUN}/predictions"
#: The step-0 model shared by every method of a (task, protocol, seed).
BASE_RUN = RUN.replace("{step}", "0").replace("{method}", "base")
BASE_MODEL = f"{BASE_RUN}/model.pt"
BASE_HISTORY = f"{BASE_RUN}/history.csv"

# FMWISS: co-segmentation cache per step ("default": config coseg; a variant changing what the
# foundation models compute gets its own), memory bank of step 0 (ground truth) and its extension
# by each step's new classes (from that step's fused masks).
COSEG = "results/{dataset}/{task}-{protocol}/step{step}/coseg/{cache}"
COSEG_CACHE = f"{COSEG}.h5"
COSEG_QUALITY = "results/{dataset}/{task}-{protocol}/step{step}/coseg/quality/{method}"
COSEG_QUALITY_JSON = f"{COSEG_QUALITY}.json"
COSEG_QUALITY_FIGURE = f"{COSEG_QUALITY}_examples.png"
MEMORY0 = "results/{dataset}/{task}-{protocol}/step0/memory_bank.h5"
MEMORY_STEP = "results/{dataset}/{task}-{protocol}/step{step}/memory_bank/{cache}.h5"

# Offline WSSS baselines: CAM network and its pseudo-labels, per seed and step.
WSSS = "results/{dataset}/{task}-{protocol}/seed{seed}/step{step}/wsss/{cam}"
WSSS_MODEL = f"{WSSS}/model.pt"
WSSS_HISTORY = f"{WSSS}/history.csv"
PSEUDO = "results/{dataset}/{task}-{protocol}/seed{seed}/step{step}/pseudo/{cam}"
PSEUDO_CACHE = f"{PSEUDO}.h5"
PSEUDO_QUALITY = f"{PSEUDO}_quality.json"
PSEUDO_FIGURE = f"{PSEUDO}_examples.png"

REPORT_DIR = "results/report"
REPORT_SUMMARY = f"{REPORT_DIR}/summary.md"
REPORT_FIGURES = f"{REPORT_DIR}/figures"


def log_path(rule: str, name: str = "") -> str:
    """``logs/<rule>/{dataset}.log``, or ``logs/<rule>/{dataset}/<name>.log``: one log per job,
    ``name`` a pattern of the job's other wildcards (``"{task}-{protocol}/seed{seed}"``)."""
    return f"logs/{rule}/{{dataset}}" + (f"/{name}" if name else "") + ".log"


def bench_path(rule: str, name: str = "") -> str:
    """Snakemake benchmark file (wall time, memory) of one job: ``results/{dataset}/benchmarks/
    <rule>.tsv`` or ``.../<rule>/<name>.tsv`` (``name`` as in :func:`log_path`)."""
    return f"results/{{dataset}}/benchmarks/{rule}" + (f"/{name}" if name else "") + ".tsv"


def run_dir(dataset: str, task: str, protocol: str, seed: int | str, step: int | str, method: str) -> str:
    """The folder of one trained model (:data:`RUN` formatted)."""
    return RUN.format(dataset=dataset, task=task, protocol=protocol, seed=seed, step=step, method=method)


def dataset_path(config: Mapping[str, Any], key: str) -> str:
    """The id list ``dataset.<key>`` (``train_list``, ``val_list``), resolved against
    ``dataset.root`` unless absolute."""
    path = config["dataset"][key]
    return path if os.path.isabs(path) else os.path.join(config["dataset"]["root"], path)


def dataset_root(config: Mapping[str, Any], path: str, relative: str) -> str:
    """The dataset root as a job sees it, from one of its files: ``path`` is ``os.path.join(root,
    relative)`` (``root`` = ``dataset.root``), possibly behind a prefix Snakemake adds (the local
    copy of a remote storage), which is kept.

    Raises:
        ValueError: ``path`` does not end with ``os.path.join(root, relative)``.
    """
    root = config["dataset"]["root"]
    local = os.path.join(root, relative)
    if not path.endswith(local):
        raise ValueError(f"{path!r} is not {relative!r} under the dataset root {root!r}")
    return path[: len(path) - len(local)] + root


def dataset_lists(config: Mapping[str, Any]) -> list[str]:
    """Inputs of prepare_data: the id lists when a rule makes them (synthetic data) or they exist
    (relative to the working directory); otherwise none, and prepare_data stops with an error that
    says how to get the data."""
    lists = [dataset_path(config, "train_list"), dataset_path(config, "val_list")]
    if config["dataset"]["kind"] == "synthetic" or all(os.path.exists(p) for p in lists):
        return lists
    return []


def shell_prefix(basedir: str) -> str:
    """The prefix of every shell command: ``basedir`` (the repository) put first on PYTHONPATH, so
    the package is importable inside conda environments too. Braces are doubled because Snakemake
    formats the prefix like a command."""
    return f"export PYTHONPATH={shlex.quote(basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "


__all__ = [
    "training_launcher",
    "BASE_HISTORY",
    "BASE_MODEL",
    "BASE_RUN",
    "COSEG",
    "COSEG_CACHE",
    "COSEG_QUALITY",
    "COSEG_QUALITY_FIGURE",
    "COSEG_QUALITY_JSON",
    "DATA_INDEX",
    "MEMORY0",
    "MEMORY_STEP",
    "PSEUDO",
    "PSEUDO_CACHE",
    "PSEUDO_FIGURE",
    "PSEUDO_QUALITY",
    "REPORT_DIR",
    "REPORT_FIGURES",
    "REPORT_SUMMARY",
    "RUN",
    "RUN_HISTORY",
    "RUN_METRICS",
    "RUN_MODEL",
    "RUN_PER_CLASS",
    "RUN_PREDICTIONS",
    "SPLIT",
    "SPLIT0",
    "SPLIT_VARIANT",
    "SPLIT_SUMMARY",
    "SPLIT_SUMMARY_CSV",
    "WSSS",
    "WSSS_HISTORY",
    "WSSS_MODEL",
    "bench_path",
    "dataset_lists",
    "dataset_path",
    "dataset_root",
    "log_path",
    "run_dir",
    "shell_prefix",
]


def training_launcher(python: str, gpus: int) -> str:
    """The command prefix of a training job: ``python`` alone, or ``torchrun`` with one process per
    GPU when the job gets ``resources: gpu > 1`` (:mod:`pipeline.train.distributed`; the global
    batch stays as configured, split between the processes).

    Args:
        python: the interpreter (quoted for the shell).
        gpus: the job's ``resources.gpu``.
    """
    if int(gpus) <= 1:
        return python
    return f"{python} -m torch.distributed.run --standalone --nproc_per_node {int(gpus)}"
