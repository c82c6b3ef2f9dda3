"""The conda environment of the rules pins what pyproject.toml pins."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_conda_env_mirrors_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {d.split("==")[0].lower(): d.split("==")[1] for d in project["dependencies"]}
    assert all("==" in d for d in project["dependencies"]), "every dependency is pinned"
    env = yaml.safe_load((REPO / "envs/pipeline.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = {d.split("==")[0].lower(): d.split("==")[1] for d in pip}
    # the rules do not need Snakemake itself inside their environment
    expected = {name: version for name, version in pins.items() if not name.startswith("snakemake")}
    # the optional extra `tensorboard` is in the rules' environment too (their event files)
    extra = project["optional-dependencies"]["tensorboard"]
    assert all("==" in d for d in extra), "every dependency is pinned"
    expected |= {d.split("==")[0].lower(): d.split("==")[1] for d in extra}
    assert env_pins == expected


def test_every_rule_declares_conda_log_and_resources():
    rules = 0
    for smk in (REPO / "rules").glob("*.smk"):
        parts = re.split(r"^\s*rule (\w+):", smk.read_text(), flags=re.M)
        for name, block in zip(parts[1::2], parts[2::2]):
            rules += 1
            assert "conda:" in block, f"{smk.name}: rule {name} has no conda:"
            assert "resources:" in block, f"{smk.name}: rule {name} has no resources:"
            assert "log:" in block, f"{smk.name}: rule {name} has no log:"
    assert rules >= 8
