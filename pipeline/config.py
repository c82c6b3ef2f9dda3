"""Method variants: a named copy of a method with some settings changed (ablations, oracle runs).

In ``config.yaml``, ``methods.<variant>`` with a ``method: <base>`` key takes every setting of
``methods.<base>`` and overrides the keys it gives (nested sections such as ``coseg`` are merged
key by key). The variant runs like any method (``experiments.methods: [fmwiss, fmwiss_oracle]``),
with its own results folder and its own row in the tables; the report groups the variants of a
method into an ablation table.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


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
        raise KeyError(f"method {name!r} has no section under `methods:` in the config "
                       f"(known: {', '.join(sorted(methods))})")
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


__all__ = ["merge", "resolve_method", "variant_changes"]
