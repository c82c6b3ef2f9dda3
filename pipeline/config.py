"""Method variants: a named copy of a method with some settings changed (ablations, oracle runs).

In ``config.yaml``, ``methods.<variant>`` with a ``method: <base>`` key takes every setting of
``methods.<base>`` and overrides the keys it gives (nested sections such as ``coseg`` are merged
key by key). The variant runs like any method (``experiments.methods: [fmwiss, fmwiss_oracle]``),
with its own results folder and its own row in the tables; the report groups the variants of a
method into an ablation table.

A variant may also change its *training data* (:data:`DATA_KEYS`): ``relaxed_labels`` (image
labels of every seen class, WILSON Table 5), ``data_fraction`` and ``data_fraction_seed`` (a seeded
subset of the step's images, FMWISS Table 10). They choose the split file the variant trains on
(:func:`pipeline.workflow.methods.method_split`), not its objective, so they never reach the
method's settings (:func:`objective_settings`); :func:`data_settings` gives their values.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

#: The one source of every default (validated by :data:`SCHEMA_PATH`), at the workflow's root.
DEFAULTS_PATH = Path(__file__).resolve().parents[1] / "config.yaml"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys replacing it, merged recursively for nested mappings."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_method(methods: Mapping[str, Mapping], name: str) -> tuple[str, dict[str, Any]]:
    """The base method of ``name`` and its complete settings.

    Args:
        methods: the ``methods`` section of the config.
        name: a method (``wilson``) or a variant (an entry with ``method: <base>``).
    Returns:
        ``(base, settings)``: settings of the base method overridden by the variant's, without the
        ``method`` key. For a plain method, ``(name, its settings)``.
    Raises:
        KeyError: ``name`` or its base is not in ``methods``; a variant of a variant.
    """
    if name not in methods:
        raise KeyError(
            f"method {name!r} has no section under `methods:` in the config (known: {', '.join(sorted(methods))})"
        )
    entry = dict(methods[name])
    base = entry.pop("method", name)
    if base == name:
        return name, entry
    if base not in methods:
        raise KeyError(f"methods.{name}.method = {base!r}: no such method under `methods:`")
    if "method" in methods[base] and methods[base]["method"] != base:
        raise KeyError(f"methods.{name}.method = {base!r} is itself a variant; name the base method")
    return base, merge(methods[base], entry)


def variant_changes(methods: Mapping[str, Mapping], name: str) -> dict[str, Any]:
    """The settings a variant changes, flattened to dotted keys (``{"coseg.fusion": "none"}``);
    empty for a base method. Used as the columns of the ablation table."""
    base, settings = resolve_method(methods, name)
    if base == name:
        return {}

    def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in d.items():
            if isinstance(value, Mapping):
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    before, after = flatten(methods[base]), flatten(settings)
    return {key: after[key] for key in after if before.get(key) != after[key]}


#: Variant keys that choose the training data (the split), with their value when not given:
#: ``relaxed_labels`` None = ``experiments.relaxed_labels``; ``data_fraction`` 1.0 = every image;
#: ``data_fraction_seed`` None = the run's seed (``experiments.seeds``).
DATA_KEYS: dict[str, Any] = {"relaxed_labels": None, "data_fraction": 1.0, "data_fraction_seed": None}


def objective_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (of :func:`resolve_method`) without the data keys (:data:`DATA_KEYS`): what
    the method's class is built from."""
    return {key: value for key, value in settings.items() if key not in DATA_KEYS}


def data_settings(methods: Mapping[str, Mapping], name: str, relaxed_labels: bool) -> dict[str, Any]:
    """The training-data settings of a method or variant.

    Args:
        methods: the ``methods`` section of the config.
        name: a method or variant.
        relaxed_labels: ``experiments.relaxed_labels``, the default of ``relaxed_labels``.
    Returns:
        ``{"relaxed_labels": bool, "data_fraction": float in (0, 1], "data_fraction_seed": int or
        None}`` (None: the run's seed).
    Raises:
        KeyError: as :func:`resolve_method`.
        ValueError: a data fraction outside (0, 1] or a seed < 0, naming ``methods.<name>``.
    """
    _, settings = resolve_method(methods, name)
    relaxed = settings.get("relaxed_labels")
    fraction = settings.get("data_fraction", DATA_KEYS["data_fraction"])
    seed = settings.get("data_fraction_seed")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"methods.{name}.data_fraction = {fraction!r}: expected a number in (0, 1]")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"methods.{name}.data_fraction_seed = {seed!r}: expected an integer >= 0 or null")
    return {
        "relaxed_labels": bool(relaxed_labels if relaxed is None else relaxed),
        "data_fraction": float(fraction),
        "data_fraction_seed": seed,
    }


@functools.cache
def _yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: stages read their defaults from the workflow's config.yaml "
            "(run from a checkout of the repository, or pass every key)"
        )
    with open(path) as handle:
        return yaml.safe_load(handle)


def _check_known(defaults: Mapping, given: Mapping, where: str) -> None:
    """Every key of ``given`` exists in ``defaults`` (recursively), else ValueError naming it."""
    for key, value in given.items():
        if key not in defaults:
            raise ValueError(f"{where}.{key}: unknown key; expected one of {sorted(defaults)}")
        if isinstance(defaults[key], Mapping):
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}.{key}: expected a mapping, got {value!r}")
            _check_known(defaults[key], value, f"{where}.{key}")


def validated_section(name: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config section ``name`` of config.yaml with ``given`` merged onto it (nested mappings key by
    key), checked against its schema (schemas/config.schema.yaml).

    For stages run by hand with a partial ``--params``: the rules always pass the full section, and
    the defaults live only in config.yaml.

    Args:
        name: a top-level section (``coseg``, ``memory``, ...).
        given: the keys to override (None: the defaults).
    Returns:
        A new dict, the complete section.
    Raises:
        ValueError: an unknown key or a bad value, naming ``<name>.<key>`` and what the schema expects.
    """
    schema = _yaml(SCHEMA_PATH)
    defaults = _yaml(DEFAULTS_PATH)[name]
    _check_known(defaults, given or {}, name)
    section = merge(defaults, given or {})
    try:
        jsonschema.validate(section, {"$defs": schema.get("$defs", {}), **schema["properties"][name]})
    except jsonschema.ValidationError as error:
        where = ".".join(str(p) for p in error.absolute_path)
        raise ValueError(f"{name}{'.' + where if where else ''}: {error.message}") from None
    return section


__all__ = [
    "DATA_KEYS",
    "DEFAULTS_PATH",
    "SCHEMA_PATH",
    "data_settings",
    "merge",
    "objective_settings",
    "resolve_method",
    "validated_section",
    "variant_changes",
]
