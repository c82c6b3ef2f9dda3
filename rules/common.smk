# Paths and helpers shared by the rules, bound to this run's config. The artifact paths (the
# contract between stages) and the helpers live in pipeline/workflow (torch-free, unit tested).
import os
import shlex
import sys

import yaml
from snakemake.settings.types import DeploymentMethod

import pipeline.workflow as wf
from pipeline.workflow import (
    BASE_HISTORY,
    BASE_MODEL,
    COSEG_CACHE,
    COSEG_QUALITY_FIGURE,
    COSEG_QUALITY_JSON,
    DATA_INDEX,
    MEMORY0,
    MEMORY_STEP,
    PSEUDO_CACHE,
    PSEUDO_FIGURE,
    PSEUDO_QUALITY,
    REPORT_FIGURES,
    REPORT_SUMMARY,
    RUN_HISTORY,
    RUN_METRICS,
    RUN_MODEL,
    RUN_PER_CLASS,
    RUN_PREDICTIONS,
    SPLIT,
    SPLIT0,
    SPLIT_SUMMARY,
    SPLIT_SUMMARY_CSV,
    WSSS_HISTORY,
    WSSS_MODEL,
    bench_path,
    log_path,
    params_json,
)

DATASET = config["dataset"]["name"]
ROOT = config["dataset"]["root"]
EXP = config["experiments"]
ENV = "../envs/pipeline.yaml"

# The interpreter of the jobs: the conda env's python with --use-conda, otherwise the one running
# Snakemake (the quick start's venv), whether or not that venv is activated.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else shlex.quote(sys.executable)

# Make the package importable inside conda environments too (it is installed in the quick start's venv).
shell.prefix(wf.shell_prefix(workflow.basedir))


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.\-]+",
    task=r"\d+(-\d+)+|coco-voc",  # VOC's tasks; COCO-to-VOC (rules/coco.smk)
    protocol="disjoint|overlap",
    seed=r"\d+",
    step=r"\d+",
    method="[a-z][a-z0-9_]*",
    cam="|".join(wf.cam_networks()),
    cache="[a-z][a-z0-9_]*",


# Every method and variant with a section under `methods:` can run at t >= 1.
INCREMENTAL_METHODS = wf.incremental_methods(config)

with open(os.path.join(workflow.basedir, "schemas", "config.schema.yaml")) as schema_file:
    wf.check_methods(config, yaml.safe_load(schema_file))


def method_settings(name):
    """methods.<name> merged onto its base's, with `method` = the base (pipeline.workflow.method_settings)."""
    return wf.method_settings(config, name)


def coseg_compute(cfg):
    """The coseg settings that change what the foundation models compute."""
    return wf.coseg_compute(cfg)


def coseg_cache_config(cache):
    """The coseg section a cache is computed (and its quality measured) with."""
    return wf.coseg_cache_config(config, cache)


def dataset_path(key):
    """An id list of the dataset, resolved against the root unless absolute."""
    return wf.dataset_path(config, key)


def dataset_root(path, relative):
    """The dataset root as a job sees it, from its file `path` (`relative` to the root)."""
    return wf.dataset_root(config, path, relative)


def dataset_lists(wildcards=None):
    """Inputs of prepare_data: the id lists when they exist or a job makes them, else none."""
    return wf.dataset_lists(config)


def res(kind):
    """Cluster resources of a job kind (config.resources): gpu, mem_mb, runtime."""
    return config["resources"][kind]


def all_targets():
    """Everything `snakemake` builds by default."""
    return wf.all_targets(config)


def evaluated_runs():
    """(metrics.json, history.csv) of every run the report shows."""
    return wf.evaluated_runs(config)


def quality_files():
    """Pseudo-label quality JSONs of the matrix (one per coseg-reading method and CAM network, step t >= 1)."""
    return wf.quality_files(config)


def quality_figures():
    """The example figure of each quality file, in its order."""
    return wf.quality_figures(config)


def report_variants():
    """--variants of the report (JSON): every variant of the matrix, its base and its changes."""
    return wf.report_variants(config)


# Input and params functions of the rules (Snakemake calls them with the job's wildcards).
def method_coseg(wildcards):
    """The coseg cache a method reads at its step."""
    return wf.method_coseg(config, wildcards)


def method_inputs(wildcards):
    """The caches a method learns from at step t, from its spec: pseudo, coseg, memory."""
    return wf.method_inputs(config, wildcards)


def method_options(wildcards, input):
    """--pseudo / --coseg / --memory options of train_step for the inputs of method_inputs."""
    return wf.method_options(input)


def previous_model(wildcards):
    """model.pt of step t-1 of the same method; at t = 1 the shared step-0 model."""
    return wf.previous_model(wildcards)


def previous_bank(wildcards):
    """The memory bank a step's bank extends (step 0's at t = 1)."""
    return wf.previous_bank(wildcards)


def step_params(wildcards):
    """--params of train_step: the loop settings and the method's section (+ relaxed labels)."""
    return wf.step_params(config, wildcards.method)


# The papers' remaining experiments (WILSON Table 5, FMWISS Tables 9-10): a method's split and
# the report's settings of every method.
def method_split(wildcards):
    """The split a method trains on: the experiment's, or its split variant (relaxed labels, data fraction)."""
    return wf.method_split(config, wildcards)


def report_settings():
    """--settings of the report (JSON): every method's base, changes and data/supervision settings."""
    return wf.report_settings(config)


# COCO-to-VOC (rules/coco.smk): every run's evaluation on the second set (VOC val) for the report.
def second_eval_metrics():
    """metrics.json of every run on VOC val (COCO-to-VOC only; empty otherwise)."""
    return wf.second_eval_metrics(config)
