"""``wilss list methods | tasks | datasets`` (issue 18): read from the registries, torch-free, and
the train-step help built from the same method table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.__main__ import main
from pipeline.data.coco_classes import COCO_NON_VOC_IDS, VOC_COCO_IDS
from pipeline.data.tasks import TASKS
from pipeline.methods import method_specs
from pipeline.stages.listing import class_ranges

REPO = Path(__file__).resolve().parents[1]


def _list(capsys, *args) -> str:
    main(["list", *args])
    return capsys.readouterr().out


def test_methods_are_the_registry_and_the_config_variants(capsys):
    rows = json.loads(_list(capsys, "methods", "--format", "json"))
    by_name = {row["name"]: row for row in rows}
    specs = method_specs()
    assert [row["name"] for row in rows[: len(specs)]] == list(specs)  # table order
    for name, spec in specs.items():
        assert by_name[name]["label"] == spec.label and by_name[name]["supervision"] == spec.supervision
    assert by_name["fmwiss"]["reads"] == "coseg,memory" and by_name["cam"]["reads"] == "pseudo"
    assert by_name["mib"]["paper"] == "Cermelli et al., CVPR 2020" and by_name["mib"]["equations"] == "Eq. 4-7"
    methods = yaml.safe_load((REPO / "config.yaml").read_text())["methods"]
    variants = {name for name, s in methods.items() if isinstance(s, dict) and "method" in s}
    assert variants and variants <= set(by_name)
    assert by_name["fmwiss_oracle"]["label"] == "variant of fmwiss"
    assert by_name["fmwiss_oracle"]["changes"] == "coseg.source=oracle"


def test_tasks_show_classes_per_step(capsys):
    listed = json.loads(_list(capsys, "tasks", "--format", "json"))
    assert {(row["table"], row["task"]) for row in listed} == {(t, k) for t, ks in TASKS.items() for k in ks}
    rows = {(row["table"], row["task"]): row for row in listed}
    assert rows[("voc", "15-5")]["classes per step"] == "0-15 | 16-20" and rows[("voc", "15-5")]["steps"] == 2
    assert rows[("voc", "15-1")]["steps"] == 6 and rows[("voc", "2-2")]["steps"] == 10
    assert rows[("coco", "coco-voc")]["classes"] == 80  # the COCO category ids
    step0, step1 = rows[("coco", "coco-voc")]["classes per step"].split(" | ")
    assert step0 == class_ranges([0, *COCO_NON_VOC_IDS]) and step1 == class_ranges(VOC_COCO_IDS)
    assert class_ranges([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10" and class_ranges([]) == "-"


def test_datasets_from_the_configs_and_the_task_tables(capsys):
    rows = {row["name"]: row for row in json.loads(_list(capsys, "datasets", "--format", "json"))}
    assert rows["voc"]["config"] == "config.yaml" and rows["voc"]["root"] == "data/VOC2012"
    assert rows["demo"]["kind"] == "synthetic" and rows["demo"]["config"] == "config/demo.yaml"
    assert rows["voc-mini"]["root"] == "../shared/voc-mini"
    assert rows["coco"]["tasks"] == "coco-voc"
    text = _list(capsys, "datasets", "--format", "markdown")
    assert text.startswith("| name | kind | root | table | tasks | config |")


def test_text_table_and_bad_choice(capsys):
    text = _list(capsys, "methods")
    header, rule = text.splitlines()[:2]
    assert header.split()[:3] == ["name", "label", "supervision"] and set(rule.replace(" ", "")) == {"-"}
    with pytest.raises(SystemExit):
        main(["list", "models"])


def test_train_step_help_lists_every_incremental_method(capsys):
    with pytest.raises(SystemExit):
        main(["train-step", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    incremental = [name for name, spec in method_specs().items() if spec.steps == "incremental"]
    assert len(incremental) >= 8
    assert "one of " + ", ".join(incremental) + " " in help_text
    assert "base" not in help_text.split("one of ")[1].split("(")[0]


def test_list_imports_no_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm', 'open_clip'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pipeline.__main__ import main\n"
        "main(['list', 'tasks'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "15-5" in out
