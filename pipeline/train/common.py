"""Helpers shared by the training stages: logging, run inputs, datasets for a step."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from pipeline.data.voc import VOCSegmentation
from pipeline.io import read_json


def setup_logging(verbose: bool = False) -> None:
    """Log lines ``time level message`` to stderr (Snakemake redirects stderr to the rule's log)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def parse_params(text: str) -> dict:
    """The ``--params`` JSON string a rule passes (its config sections); errors name the text."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--params is not valid JSON ({err}): {text[:200]!r}") from err
    if not isinstance(params, dict):
        raise ValueError(f"--params must be a JSON object, got {type(params).__name__}")
    return params


def set_threads(threads: int) -> None:
    """Limit torch's CPU threads to what the scheduler gave the job (``threads`` ≤ 0: leave as is)."""
    if threads > 0:
        torch.set_num_threads(threads)


def step_dataset(data_index: str | Path, ids: list[str], transform) -> VOCSegmentation:
    """A :class:`VOCSegmentation` over ``ids`` of the dataset described by a prepare-data index."""
    index = read_json(data_index)
    return VOCSegmentation(index["root"], ids, mask_dir=index["mask_dir"], transform=transform)


def val_ids(data_index: str | Path) -> list[str]:
    """The validation ids listed in a prepare-data index."""
    return list(read_json(data_index)["splits"]["val"])
