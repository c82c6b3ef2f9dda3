"""The workflow layer (pipeline.workflow, the imports of the Snakefile and rules/*.smk) without torch,
and its functions on the repository's config: method inputs from the specs, cache names, targets."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import pipeline.workflow as wf
from pipeline.config import merge

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "timm", "open_clip")

# Installed first in the subprocesses: any import of a blocked package (or its submodules) fails.
BLOCKER = textwrap.dedent(f"""
    import sys

    class _Block:
        blocked = {BLOCKED!r}

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ImportError(f"{{name}} is blocked (tests/test_workflow_torch_free.py)")
            return None

    sys.meta_path.insert(0, _Block())
""")


def workflow_imports() -> str:
    """The module-level import statements of the Snakefile and rules/*.smk, as Python source."""
    statements = []
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        text = path.read_text()
        statements += re.findall(r"^(?:from \S+ import \([^)]*\)|from \S+ import [^\n(]+|import [^\n]+)$", text, re.M)
    return "\n".join(statements)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, cwd=REPO)


def test_blocker_blocks():
    proc = run_blocked("import torch")
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_workflow_and_rule_imports_need_no_torch():
    imports = workflow_imports()
    assert "pipeline.workflow" in imports
    code = imports + textwrap.dedent(f"""
        import pipeline.workflow as wf
        import pipeline.foundation.settings
        from pipeline.methods import method_specs

        assert "fmwiss" in method_specs() and wf.cam_networks() == ("cam", "vwe", "iscam")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        assert not loaded, loaded
        print("ok")
    """)
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_dry_run_of_weak_methods_needs_no_torch(tmp_path):
    # sitecustomize runs at interpreter start-up: Snakemake and everything the Snakefile imports
    # then see torch & co. as missing.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    workdir = tmp_path / "wd"
    overlays = [
        str(REPO / p)
        for p in (
            "config/demo.yaml",
            "tests/data/tiny.yaml",
            "tests/data/tiny-incremental.yaml",
            "tests/data/tiny-weak.yaml",
        )
    ]
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(workdir),
            "-n",
            "--cores",
            "1",
            "--configfile",
            *overlays,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("coseg", "memory_bank_step", "train_cam", "pseudo_labels", "train_step"):
        assert re.search(rf"^{rule}\s+\d+$", out, re.M), rule


def load_config(*overlays: dict) -> dict:
    """config.yaml with overlays merged recursively, as Snakemake merges --configfile overlays."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for overlay in overlays:
        config = merge(config, overlay)
    return config


@pytest.fixture(scope="module")
def config():
    return load_config({"methods": {"cam_slow": {"method": "cam", "head_lr_mult": 1.0}}})


def wildcards(method, step, task="10-5-5", protocol="overlap", seed="0", dataset="voc"):
    return {
        "dataset": dataset,
        "task": task,
        "protocol": protocol,
        "seed": str(seed),
        "step": str(step),
        "method": method,
    }


def test_method_inputs_from_the_specs(config):
    assert wf.method_inputs(config, wildcards("ft", 1)) == {}
    assert wf.method_inputs(config, wildcards("wilson", 2)) == {}
    assert wf.method_inputs(config, wildcards("cam", 1, seed=2)) == {
        "pseudo": "results/voc/10-5-5-overlap/seed2/step1/pseudo/cam.h5"
    }
    assert wf.method_inputs(config, wildcards("iscam", 2)) == {
        "pseudo": "results/voc/10-5-5-overlap/seed0/step2/pseudo/iscam.h5"
    }
    # a variant reads the pseudo-labels of its base's CAM network
    assert wf.method_inputs(config, wildcards("cam_slow", 1)) == {
        "pseudo": "results/voc/10-5-5-overlap/seed0/step1/pseudo/cam.h5"
    }
    assert wf.method_inputs(config, wildcards("fmwiss", 1)) == {
        "coseg": "results/voc/10-5-5-overlap/step1/coseg/default.h5",
        "memory": "results/voc/10-5-5-overlap/step0/memory_bank.h5",
    }
    assert wf.method_inputs(config, wildcards("fmwiss", 2)) == {
        "coseg": "results/voc/10-5-5-overlap/step2/coseg/default.h5",
        "memory": "results/voc/10-5-5-overlap/step1/memory_bank/default.h5",
    }
    # fusion is applied when the cache is read: the default cache
    assert wf.method_inputs(config, wildcards("fmwiss_no_fusion", 1))["coseg"] == (
        "results/voc/10-5-5-overlap/step1/coseg/default.h5"
    )
    # paste_prob 0: no memory bank
    assert wf.method_inputs(config, wildcards("fmwiss_no_paste", 2)) == {
        "coseg": "results/voc/10-5-5-overlap/step2/coseg/default.h5"
    }
    # oracle masks: one cache, named after the first variant (alphabetically) computing it
    assert wf.method_inputs(config, wildcards("fmwiss_oracle", 2)) == {
        "coseg": "results/voc/10-5-5-overlap/step2/coseg/fmwiss_literal.h5",
        "memory": "results/voc/10-5-5-overlap/step1/memory_bank/fmwiss_literal.h5",
    }


def test_method_options_and_previous_files(config):
    inputs = wf.method_inputs(config, wildcards("fmwiss", 2))
    assert wf.method_options(dict(inputs, split="x.json")) == (
        "--coseg results/voc/10-5-5-overlap/step2/coseg/default.h5"
        " --memory results/voc/10-5-5-overlap/step1/memory_bank/default.h5"
    )
    assert wf.method_options({"pseudo": "a b.h5"}) == "--pseudo 'a b.h5'"
    assert wf.previous_model(wildcards("mib", 1)) == "results/voc/10-5-5-overlap/seed0/step0/base/model.pt"
    assert wf.previous_model(wildcards("mib", 2)) == "results/voc/10-5-5-overlap/seed0/step1/mib/model.pt"
    bank = {"dataset": "voc", "task": "10-5-5", "protocol": "overlap", "step": "2", "cache": "default"}
    assert wf.previous_bank(bank) == "results/voc/10-5-5-overlap/step1/memory_bank/default.h5"
    assert wf.previous_bank(dict(bank, step="1")) == "results/voc/10-5-5-overlap/step0/memory_bank.h5"


def test_method_settings_and_coseg_caches(config):
    settings = wf.method_settings(config, "fmwiss_oracle")
    assert settings["method"] == "fmwiss" and settings["coseg"]["source"] == "oracle"
    assert settings["coseg"]["fusion"] == config["coseg"]["fusion"]  # the full section
    assert "coseg" not in wf.method_settings(config, "wilson")
    assert wf.coseg_compute(
        {"fusion": "none", "top_k": 0.5, "top_k_rule": "mass", "clip_threshold": 0.3, "n_seeds": 9}
    ) == {"n_seeds": 9}
    assert wf.coseg_cache_name(config, "fmwiss") == "default"
    assert wf.coseg_cache_name(config, "fmwiss_oracle") == "fmwiss_literal"
    assert wf.coseg_cache_config(config, "default") is config["coseg"]
    assert wf.coseg_cache_config(config, "fmwiss_literal")["source"] == "oracle"


def test_step_params_name_the_base_of_a_variant_only(config):
    plain = json.loads(wf.step_params(config, "wilson"))
    assert "method" not in plain["method"] and plain["method"]["relaxed"] is False
    assert plain["train"] == config["train_step"]
    variant = json.loads(wf.step_params(config, "fmwiss_no_paste"))
    assert variant["method"]["method"] == "fmwiss" and variant["method"]["paste_prob"] == 0.0


def test_check_methods_names_the_bad_key(config):
    schema = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())
    wf.check_methods(config, schema)
    typo = load_config({"methods": {"fmwiss_typo": {"method": "fmwiss", "paste_prop": 0.2}}})
    with pytest.raises(ValueError, match="fmwiss_typo"):
        wf.check_methods(typo, schema)
    missing = load_config({"experiments": {"methods": ["nope"]}})
    with pytest.raises(ValueError, match="'nope'"):
        wf.check_methods(missing, schema)


def test_matrix_and_targets():
    config = load_config(
        {
            "experiments": {
                "tasks": ["10-5-5"],
                "protocols": ["overlap"],
                "seeds": [0],
                "methods": ["ft", "fmwiss", "fmwiss_oracle", "cam"],
            }
        }
    )
    assert list(wf.runs(config)) == [
        ("10-5-5", "overlap", 0, 0, "base"),
        ("10-5-5", "overlap", 0, 1, "ft"),
        ("10-5-5", "overlap", 0, 2, "ft"),
        ("10-5-5", "overlap", 0, 1, "fmwiss"),
        ("10-5-5", "overlap", 0, 2, "fmwiss"),
        ("10-5-5", "overlap", 0, 1, "fmwiss_oracle"),
        ("10-5-5", "overlap", 0, 2, "fmwiss_oracle"),
        ("10-5-5", "overlap", 0, 1, "cam"),
        ("10-5-5", "overlap", 0, 2, "cam"),
    ]
    quality = [
        "results/voc/10-5-5-overlap/seed0/step1/pseudo/cam_quality.json",
        "results/voc/10-5-5-overlap/seed0/step2/pseudo/cam_quality.json",
        "results/voc/10-5-5-overlap/step1/coseg/quality/fmwiss.json",
        "results/voc/10-5-5-overlap/step1/coseg/quality/fmwiss_oracle.json",
        "results/voc/10-5-5-overlap/step2/coseg/quality/fmwiss.json",
        "results/voc/10-5-5-overlap/step2/coseg/quality/fmwiss_oracle.json",
    ]
    assert wf.quality_files(config) == quality
    assert wf.quality_figures(config)[0] == "results/voc/10-5-5-overlap/seed0/step1/pseudo/cam_examples.png"
    assert wf.quality_figures(config)[2] == "results/voc/10-5-5-overlap/step1/coseg/quality/fmwiss_examples.png"
    targets = wf.all_targets(config)
    assert targets[0] == "results/voc/splits/10-5-5-overlap/summary.json"
    assert targets[1] == "results/voc/10-5-5-overlap/seed0/step0/base/metrics.json"
    assert targets[-1] == "results/report/summary.md" and targets[-7:-1] == quality
    assert wf.evaluated_runs(config)[1] == (
        "results/voc/10-5-5-overlap/seed0/step1/ft/metrics.json",
        "results/voc/10-5-5-overlap/seed0/step1/ft/history.csv",
    )
    assert wf.report_variants(config) == (
        '{"fmwiss_oracle": {"method": "fmwiss", "changes": {"coseg.source": "oracle"}}}'
    )


def test_paths_and_dataset_root(config):
    assert wf.log_path("prepare_data") == "logs/prepare_data/{dataset}.log"
    assert (
        wf.log_path("splits", "{task}-{protocol}/step{step}")
        == "logs/splits/{dataset}/{task}-{protocol}/step{step}.log"
    )
    assert wf.bench_path("train_base", "{task}-{protocol}/seed{seed}") == (
        "results/{dataset}/benchmarks/train_base/{task}-{protocol}/seed{seed}.tsv"
    )
    assert wf.BASE_MODEL == "results/{dataset}/{task}-{protocol}/seed{seed}/step0/base/model.pt"
    assert wf.SPLIT0 == "results/{dataset}/splits/{task}-{protocol}/step0.json"
    assert wf.shell_prefix("/a b") == "export PYTHONPATH='/a b'${{PYTHONPATH:+:$PYTHONPATH}}; "
    train_list = wf.dataset_path(config, "train_list")
    assert train_list == "data/VOC2012/ImageSets/Segmentation/train_aug.txt"
    assert wf.dataset_root(config, train_list, config["dataset"]["train_list"]) == "data/VOC2012"
    assert wf.dataset_root(config, "/scratch/copy/" + train_list, config["dataset"]["train_list"]) == (
        "/scratch/copy/data/VOC2012"
    )
    with pytest.raises(ValueError, match="dataset root"):
        wf.dataset_root(config, "elsewhere/train.txt", config["dataset"]["train_list"])


def test_read_keys_are_those_of_the_coseg_module():
    pytest.importorskip("torch")
    from pipeline.foundation import coseg, settings

    assert coseg.READ_KEYS is settings.READ_KEYS and coseg.READ_TIME_KEYS is settings.READ_TIME_KEYS
