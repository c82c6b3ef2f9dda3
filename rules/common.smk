# Paths and helpers shared by the rules: the artifact paths are the contract between stages.
import json
import os
import shlex
import sys

from snakemake.settings.types import DeploymentMethod

from pipeline.data.tasks import num_steps

DATASET = config["dataset"]["name"]
ROOT = config["dataset"]["root"]
EXP = config["experiments"]
ENV = "../envs/pipeline.yaml"

# The interpreter of the jobs: the conda env's python with --use-conda, otherwise the one running
# Snakemake (the quick start's venv), whether or not that venv is activated.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else shlex.quote(sys.executable)

# Make the package importable inside conda environments too (it is installed in the quick start's venv).
# (Snakemake formats the prefix too: literal braces are doubled.)
shell.prefix("export PYTHONPATH=" + shlex.quote(workflow.basedir) + "${{PYTHONPATH:+:$PYTHONPATH}}; ")


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.\-]+",
    task=r"\d+(-\d+)+",
    protocol="disjoint|overlap",
    seed=r"\d+",
    step=r"\d+",
    method="[a-z_]+",


DATA_INDEX = "results/{dataset}/dataset.json"
SPLIT = "results/{dataset}/splits/{task}-{protocol}/step{step}.json"
SPLIT_SUMMARY = "results/{dataset}/splits/{task}-{protocol}/summary.json"
RUN = "results/{dataset}/{task}-{protocol}/seed{seed}/step{step}/{method}"


def log_path(rule, suffix=".log"):
    """logs/<rule>/{dataset}<suffix>: one log per job, named by the job's wildcards."""
    return f"logs/{rule}/{{dataset}}{suffix}"


def bench_path(rule, suffix=".tsv"):
    """Snakemake benchmark file (wall time, memory) of one job."""
    return f"results/{{dataset}}/benchmarks/{rule}{suffix}"

REPORT_DIR = "results/report"
INCREMENTAL_METHODS = ["ft", "joint", "mib", "wilson"]


def dataset_path(key):
    """An id list of the dataset, resolved against the root unless absolute."""
    path = config["dataset"][key]
    return path if os.path.isabs(path) else os.path.join(ROOT, path)


def dataset_lists(wildcards=None):
    """Inputs of prepare_data: the id lists when a rule makes them (synthetic data) or they exist;
    otherwise none, and prepare_data stops with an error that says how to get the data."""
    lists = [dataset_path("train_list"), dataset_path("val_list")]
    if config["dataset"]["kind"] == "synthetic" or all(os.path.exists(p) for p in lists):
        return lists
    return []


def params_json(**sections):
    """Config sections as one JSON string for a stage's --params (quoted with {params.x:q})."""
    return json.dumps(sections, sort_keys=True)


def res(kind):
    """Cluster resources of a job kind (config.resources): gpu, mem_mb, runtime."""
    return config["resources"][kind]


def runs():
    """(task, protocol, seed, step, method) of every model the matrix trains: the step-0 base
    model, then every incremental method at every step t >= 1."""
    for task in EXP["tasks"]:
        for protocol in EXP["protocols"]:
            for seed in EXP["seeds"]:
                yield task, protocol, seed, 0, "base"
                for method in EXP["methods"]:
                    for step in range(1, num_steps(task)):
                        yield task, protocol, seed, step, method


def run_dir(task, protocol, seed, step, method):
    return RUN.format(dataset=DATASET, task=task, protocol=protocol, seed=seed, step=step, method=method)


def all_targets():
    """Everything `snakemake` builds by default: the metrics of every run, the split summaries
    and the report."""
    targets = [SPLIT_SUMMARY.format(dataset=DATASET, task=t, protocol=p) for t in EXP["tasks"] for p in EXP["protocols"]]
    targets += [run_dir(*run) + "/metrics.json" for run in runs()]
    targets.append(f"{REPORT_DIR}/summary.md")
    return targets


def evaluated_runs():
    """(metrics.json, history.csv) of every run the report shows."""
    return [(run_dir(*run) + "/metrics.json", run_dir(*run) + "/history.csv") for run in runs()]
