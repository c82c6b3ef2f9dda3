# Paths and helpers shared by the rules: the artifact paths are the contract between stages.
import json
import os
import shlex
import sys

from snakemake.settings.types import DeploymentMethod

from pipeline.data.tasks import num_steps
from pipeline.config import merge, resolve_method, variant_changes

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
    method="[a-z][a-z0-9_]*",
    cam="cam|vwe|iscam",
    cache="[a-z][a-z0-9_]*",


DATA_INDEX = "results/{dataset}/dataset.json"
SPLIT = "results/{dataset}/splits/{task}-{protocol}/step{step}.json"
SPLIT_SUMMARY = "results/{dataset}/splits/{task}-{protocol}/summary.json"
RUN = "results/{dataset}/{task}-{protocol}/seed{seed}/step{step}/{method}"
# FMWISS: co-segmentation cache per step ("default": config coseg; a variant changing what the
# foundation models compute gets its own), memory bank of step 0 (ground truth) and its extension
# by each step's new classes (from that step's fused masks).
COSEG = "results/{dataset}/{task}-{protocol}/step{step}/coseg/{cache}"
COSEG_QUALITY = "results/{dataset}/{task}-{protocol}/step{step}/coseg/quality/{method}"
MEMORY0 = "results/{dataset}/{task}-{protocol}/step0/memory_bank.h5"
MEMORY_STEP = "results/{dataset}/{task}-{protocol}/step{step}/memory_bank/{cache}.h5"
# Offline WSSS baselines: CAM network and its pseudo-labels, per seed and step.
WSSS = "results/{dataset}/{task}-{protocol}/seed{seed}/step{step}/wsss/{cam}"
PSEUDO = "results/{dataset}/{task}-{protocol}/seed{seed}/step{step}/pseudo/{cam}"
CAM_METHODS = ("cam", "vwe", "iscam")


def log_path(rule, suffix=".log"):
    """logs/<rule>/{dataset}<suffix>: one log per job, named by the job's wildcards."""
    return f"logs/{rule}/{{dataset}}{suffix}"


def bench_path(rule, suffix=".tsv"):
    """Snakemake benchmark file (wall time, memory) of one job."""
    return f"results/{{dataset}}/benchmarks/{rule}{suffix}"

REPORT_DIR = "results/report"
# Every method and variant with a section under `methods:` can run at t >= 1.
INCREMENTAL_METHODS = sorted(config["methods"])


def check_methods():
    """Every method of the matrix has settings; a variant's merged settings pass its base
    method's schema (so a typo in an override is named, not ignored)."""
    import jsonschema
    import yaml

    with open(os.path.join(workflow.basedir, "schemas", "config.schema.yaml")) as f:
        schema = yaml.safe_load(f)
    known = schema["properties"]["methods"]["properties"]
    for name in EXP["methods"]:
        if name not in config["methods"]:
            raise ValueError(f"experiments.methods lists {name!r}, which has no section under `methods:` "
                             f"(methods: {', '.join(sorted(config['methods']))})")
    for name in config["methods"]:
        base, settings = resolve_method(config["methods"], name)
        if base not in known:
            raise ValueError(f"methods.{name}.method = {base!r}: expected one of {', '.join(sorted(known))}")
        try:
            jsonschema.validate(settings, {"$defs": schema["$defs"], **known[base]})
        except jsonschema.ValidationError as error:
            where = ".".join(str(p) for p in error.absolute_path)
            raise ValueError(f"methods.{name} (a variant of {base}){': ' + where if where else ''}: {error.message}") from None


check_methods()


def method_settings(name):
    """The complete settings of a method or variant (methods.<name>, merged onto its base's), with
    ``method`` = the base method; fmwiss also gets its full ``coseg`` section."""
    base, settings = resolve_method(config["methods"], name)
    settings = dict(settings, method=base)
    if base == "fmwiss":
        settings["coseg"] = merge(config["coseg"], settings.get("coseg", {}))
    return settings


def coseg_compute(cfg):
    """The co-segmentation settings that change what the foundation models compute (not the ones
    applied when the cache is read: fusion, top-K, thresholds)."""
    from pipeline.foundation.coseg import READ_KEYS

    return {k: v for k, v in cfg.items() if k not in READ_KEYS}


def coseg_cache_name(method):
    """`default` when a fmwiss variant reads the default cache; else the name of the first fmwiss
    variant (alphabetically) computing the same thing, so variants share one cache."""
    compute = coseg_compute(method_settings(method)["coseg"])
    if compute == coseg_compute(config["coseg"]):
        return "default"
    for name in sorted(config["methods"]):
        settings = method_settings(name)
        if settings["method"] == "fmwiss" and coseg_compute(settings["coseg"]) == compute:
            return name
    return method


def coseg_cache_config(cache):
    """The coseg section a cache is computed (and its quality measured) with."""
    return config["coseg"] if cache == "default" else method_settings(cache)["coseg"]


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
    targets += quality_files()
    targets.append(f"{REPORT_DIR}/summary.md")
    return targets


def evaluated_runs():
    """(metrics.json, history.csv) of every run the report shows."""
    return [(run_dir(*run) + "/metrics.json", run_dir(*run) + "/history.csv") for run in runs()]


def quality_files():
    """Pseudo-label quality JSONs of the matrix: one per co-segmentation cache and per CAM
    baseline, at every step t >= 1 (they feed the report's pseudo-label table)."""
    files = []
    for task, protocol, seed, step, method in runs():
        if step == 0:
            continue
        base = method_settings(method)["method"]
        wc = dict(dataset=DATASET, task=task, protocol=protocol, seed=seed, step=step)
        if base == "fmwiss":
            files.append(COSEG_QUALITY.format(method=method, **wc) + ".json")
        elif base in CAM_METHODS:
            files.append(PSEUDO.format(cam=base, **wc) + "_quality.json")
    return sorted(set(files))
