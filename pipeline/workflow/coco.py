"""What the rules know of COCO-to-VOC (``dataset.kind: coco-voc``; rules/coco.smk): its paths,
its task table, the second evaluation set (VOC val), and the options of its stages.

A COCO-to-VOC run draws its steps from two datasets (:mod:`pipeline.data.coco_voc`): ``dataset``
keeps its meaning for the VOC part (``root``, ``train_list``, ``val_list``, ``mask_dir``: VOC 2012
+ SBD, step 1 and the VOC evaluation), the ``coco`` section names the COCO part (root, where the
COCO-id maps go, where the two are assembled). Every other config is ``dataset.kind`` voc or
synthetic, for which these functions return the VOC values (task table ``voc``, no second
evaluation) and the rules of rules/coco.smk are not defined.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.workflow.paths import RUN, dataset_root

KIND = "coco-voc"
#: The second evaluation set of COCO-to-VOC (a split of its prepare-data index): VOC val.
SECOND_EVAL = "val_voc"

#: The checked class-presence index of one COCO 2017 split (``{split}``: train | val), with provenance.
COCO_INDEX = "results/{dataset}/coco/index_{split}.json"
#: One trained model evaluated on the second set (VOC val): metrics, per-class IoU, predictions.
RUN_EVAL2 = f"{RUN}/{SECOND_EVAL}"
RUN_EVAL2_METRICS = f"{RUN_EVAL2}/metrics.json"
RUN_EVAL2_PER_CLASS = f"{RUN_EVAL2}/per_class.csv"
RUN_EVAL2_PREDICTIONS = f"{RUN_EVAL2}/predictions"


def is_coco_voc(config: Mapping[str, Any]) -> bool:
    """Whether the config runs COCO-to-VOC (``dataset.kind: coco-voc``)."""
    return config["dataset"]["kind"] == KIND


def task_table(config: Mapping[str, Any]) -> str:
    """The task table the config's tasks are read from (:mod:`pipeline.data.tasks`): ``coco80``
    (the paper's numbering, :mod:`pipeline.data.coco_voc`) for COCO-to-VOC, else ``voc``."""
    return "coco80" if is_coco_voc(config) else "voc"


def coco_section(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``coco`` section of a COCO-to-VOC config.

    Raises:
        ValueError: ``dataset.kind`` is coco-voc but the config has no ``coco`` section.
    """
    if "coco" not in config:
        raise ValueError(
            "dataset.kind is coco-voc but the config has no `coco:` section (root, label_root, assembled, "
            "fixture); see config/coco-voc.yaml"
        )
    return dict(config["coco"])


def assembled_root(config: Mapping[str, Any]) -> str:
    """Where the two datasets are assembled (``coco.assembled``; default ``results/<name>/data``)."""
    return coco_section(config).get("assembled") or f"results/{config['dataset']['name']}/data"


def coco_root(config: Mapping[str, Any], split: str) -> str:
    """The COCO root of a split: ``coco.val_root`` for val when set (real val images beside a
    generated train2017, config/coco-mini.yaml), else ``coco.root``."""
    section = coco_section(config)
    return (section.get("val_root") or section["root"]) if split == "val" else section["root"]


def val_root_option(config: Mapping[str, Any]) -> str:
    """``--coco-val-root PATH`` when ``coco.val_root`` is set; shell-quoted."""
    val_root = coco_section(config).get("val_root")
    return f"--coco-val-root {shlex.quote(str(val_root))}" if val_root else ""


def coco_index_file(config: Mapping[str, Any], split: str) -> str:
    """:data:`COCO_INDEX` of one split (train | val) for the config's dataset."""
    return COCO_INDEX.format(dataset=config["dataset"]["name"], split=split)


def fixture_marker(config: Mapping[str, Any]) -> str:
    """``<coco.root>/FIXTURE.json``: written last by the fixture generator."""
    return os.path.join(coco_section(config)["root"], "FIXTURE.json")


def coco_sources(config: Mapping[str, Any]) -> list[str]:
    """Inputs of the ``coco_labels`` jobs: the fixture marker when a rule generates the data
    (``coco.fixture``), else none (the stage names the missing stuffthingmaps folder and the
    download)."""
    return [fixture_marker(config)] if coco_section(config).get("fixture") else []


def voc_lists(config: Mapping[str, Any]) -> list[str]:
    """The VOC id lists (step 1, VOC evaluation) as inputs: when they exist or the fixture makes
    them; otherwise none, and coco_voc_prepare stops naming the missing list."""
    root = config["dataset"]["root"]
    lists = [
        p if os.path.isabs(p) else os.path.join(root, p)
        for p in (config["dataset"]["train_list"], config["dataset"]["val_list"])
    ]
    if coco_section(config).get("fixture") or all(os.path.exists(p) for p in lists):
        return lists
    return []


def voc_root(config: Mapping[str, Any], lists: Sequence[str]) -> str:
    """The VOC root as a job sees it: from its input id lists (:func:`voc_lists`, possibly behind
    a prefix Snakemake adds) when it has them and ``dataset.train_list`` is relative, else
    ``dataset.root``."""
    train_list = config["dataset"]["train_list"]
    if lists and not os.path.isabs(train_list):
        return dataset_root(config, str(lists[0]), train_list)
    return config["dataset"]["root"]


def label_root_option(config: Mapping[str, Any], flag: str = "--label-root") -> str:
    """``<flag> PATH`` when ``coco.label_root`` is set (else the stages' default
    ``<coco.root>/labels_coco``); shell-quoted."""
    label_root = coco_section(config).get("label_root")
    return f"{flag} {shlex.quote(str(label_root))}" if label_root else ""


__all__ = [
    "COCO_INDEX",
    "KIND",
    "RUN_EVAL2",
    "RUN_EVAL2_METRICS",
    "RUN_EVAL2_PER_CLASS",
    "RUN_EVAL2_PREDICTIONS",
    "SECOND_EVAL",
    "assembled_root",
    "coco_index_file",
    "coco_root",
    "coco_section",
    "coco_sources",
    "fixture_marker",
    "is_coco_voc",
    "label_root_option",
    "task_table",
    "val_root_option",
    "voc_lists",
    "voc_root",
]
