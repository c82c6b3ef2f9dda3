"""What the rules know of a method or variant: its settings, its spec, the caches it reads.

Which caches a method reads comes from its spec (:class:`pipeline.methods.MethodSpec`, torch-free):
``pseudo`` → the CAM pseudo-labels of ``spec.cam_network``; ``coseg`` → the co-segmentation
cache of the step; ``memory`` → the memory bank of the classes learned before the step, when the
method's ``paste_prob`` > 0. A variant (``methods.<name>.method: <base>``) reads what its base
reads.

``config`` is the merged Snakemake config (config.yaml and the overlays, validated against
schemas/config.schema.yaml); ``wildcards`` is any mapping of wildcard names to values (Snakemake's
``Wildcards`` or a dict).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from pipeline.config import merge, resolve_method, variant_changes
from pipeline.foundation.settings import READ_KEYS
from pipeline.methods import MethodSpec, method_spec, method_specs
from pipeline.methods.registry import CACHES
from pipeline.workflow.paths import COSEG_CACHE, MEMORY0, MEMORY_STEP, PSEUDO_CACHE, RUN_MODEL


def params_json(**sections: Any) -> str:
    """Config sections as one JSON string (sorted keys) for a stage's ``--params`` (quoted in the
    shell command with ``{params.x:q}``)."""
    return json.dumps(sections, sort_keys=True)


def method_settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The complete settings of a method or variant: ``methods.<name>`` merged onto its base's,
    with ``method`` = the base method; a method reading the co-segmentation cache also gets its
    full ``coseg`` section (the config's, with the method's ``coseg`` overrides merged in).

    Raises:
        KeyError: ``name`` or its base has no section under ``methods:``; no spec for the base.
    """
    base, settings = resolve_method(config["methods"], name)
    settings = dict(settings, method=base)
    if "coseg" in method_spec(base).reads:
        settings["coseg"] = merge(config["coseg"], settings.get("coseg", {}))
    return settings


def spec_of(config: Mapping[str, Any], name: str) -> MethodSpec:
    """The spec of a method, or of a variant's base method.

    Raises:
        KeyError: unknown method or variant.
    """
    base, _ = resolve_method(config["methods"], name)
    return method_spec(base)


def incremental_methods(config: Mapping[str, Any]) -> list[str]:
    """Every method and variant with a section under ``methods:`` (they can all run at t >= 1),
    sorted: the alternatives of train_step's ``method`` wildcard."""
    return sorted(config["methods"])


def cam_networks() -> tuple[str, ...]:
    """The CAM networks some method reads pseudo-labels of (``cam``, ``vwe``, ``iscam``), in table
    order: the alternatives of the ``cam`` wildcard."""
    return tuple(dict.fromkeys(s.cam_network for s in method_specs().values() if "pseudo" in s.reads))


def check_methods(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Every method of the matrix has settings, every base method has a spec, and a variant's merged
    settings pass its base method's schema (so a typo in an override is named, not ignored).

    Args:
        config: the merged config.
        schema: schemas/config.schema.yaml, loaded (its ``methods`` properties and ``$defs``).
    Raises:
        ValueError: naming the method, and the key where the schema fails.
    """
    import jsonschema

    known = schema["properties"]["methods"]["properties"]
    specs = method_specs()
    for name in config["experiments"]["methods"]:
        if name not in config["methods"]:
            raise ValueError(
                f"experiments.methods lists {name!r}, which has no section under `methods:` "
                f"(methods: {', '.join(sorted(config['methods']))})"
            )
    for name in config["methods"]:
        base, settings = resolve_method(config["methods"], name)
        if base not in known:
            raise ValueError(f"methods.{name}.method = {base!r}: expected one of {', '.join(sorted(known))}")
        if base not in specs:
            raise ValueError(
                f"methods.{name}: method {base!r} has a schema but no spec in pipeline/methods "
                f"(specs: {', '.join(specs)})"
            )
        try:
            jsonschema.validate(settings, {"$defs": schema["$defs"], **known[base]})
        except jsonschema.ValidationError as error:
            where = ".".join(str(p) for p in error.absolute_path)
            raise ValueError(
                f"methods.{name} (a variant of {base}){': ' + where if where else ''}: {error.message}"
            ) from None


def coseg_compute(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The co-segmentation settings that change what the foundation models compute: ``cfg`` (a
    ``coseg`` section) without the keys applied when the cache is read
    (:data:`pipeline.foundation.settings.READ_KEYS`: fusion, top-K, thresholds)."""
    return {k: v for k, v in cfg.items() if k not in READ_KEYS}


def coseg_cache_name(config: Mapping[str, Any], method: str) -> str:
    """The cache a coseg-reading method or variant reads: ``default`` when it computes what the
    config's ``coseg`` section computes; else the name of the first such variant (alphabetically)
    computing the same thing, so variants share one cache."""
    compute = coseg_compute(method_settings(config, method)["coseg"])
    if compute == coseg_compute(config["coseg"]):
        return "default"
    for name in sorted(config["methods"]):
        if "coseg" in spec_of(config, name).reads and coseg_compute(method_settings(config, name)["coseg"]) == compute:
            return name
    return method


def coseg_cache_config(config: Mapping[str, Any], cache: str) -> dict[str, Any]:
    """The ``coseg`` section a cache (``default`` or a method's name) is computed and read with."""
    return config["coseg"] if cache == "default" else method_settings(config, cache)["coseg"]


def method_coseg(config: Mapping[str, Any], wildcards: Mapping[str, Any]) -> str:
    """The co-segmentation cache (``.h5``) method ``wildcards["method"]`` reads at its step."""
    return COSEG_CACHE.format(
        dataset=wildcards["dataset"],
        task=wildcards["task"],
        protocol=wildcards["protocol"],
        step=wildcards["step"],
        cache=coseg_cache_name(config, wildcards["method"]),
    )


def method_inputs(config: Mapping[str, Any], wildcards: Mapping[str, Any]) -> dict[str, str]:
    """The caches method ``wildcards["method"]`` learns from at step ``wildcards["step"]`` >= 1,
    by the name of train_step's option: ``pseudo`` (the CAM pseudo-labels of the spec's
    ``cam_network``, this seed), ``coseg`` (the step's co-segmentation cache), ``memory`` (the
    bank of the classes learned before the step: step 0's at t = 1, else step t-1's extension by
    the same cache; only when ``paste_prob`` > 0). Empty for a method reading no cache.

    Raises:
        KeyError: unknown method; ValueError: a spec reading ``memory`` without ``coseg``.
    """
    name = wildcards["method"]
    spec = spec_of(config, name)
    step = int(wildcards["step"])
    wc = dict(dataset=wildcards["dataset"], task=wildcards["task"], protocol=wildcards["protocol"])
    inputs = {}
    if "pseudo" in spec.reads:
        inputs["pseudo"] = PSEUDO_CACHE.format(
            cam=spec.cam_network, seed=wildcards["seed"], step=wildcards["step"], **wc
        )
    if "memory" in spec.reads and "coseg" not in spec.reads:
        raise ValueError(
            f"method {name!r} reads 'memory' without 'coseg': the bank of step t >= 1 is extended "
            "by the co-segmentation masks of a cache"
        )
    if "coseg" in spec.reads:
        cache = coseg_cache_name(config, name)
        inputs["coseg"] = COSEG_CACHE.format(step=wildcards["step"], cache=cache, **wc)
        if "memory" in spec.reads and method_settings(config, name)["paste_prob"] > 0:
            inputs["memory"] = (
                MEMORY0.format(**wc) if step == 1 else MEMORY_STEP.format(step=step - 1, cache=cache, **wc)
            )
    return inputs


def method_options(inputs: Mapping[str, Any]) -> str:
    """The ``--pseudo`` / ``--coseg`` / ``--memory`` options of train_step for the named inputs of
    :func:`method_inputs` present in ``inputs`` (a job's ``input``), shell-quoted."""
    return " ".join(f"--{key} {shlex.quote(str(inputs[key]))}" for key in CACHES if key in inputs.keys())


def previous_model(wildcards: Mapping[str, Any]) -> str:
    """model.pt of step t-1 of the same method; at t = 1 the shared step-0 model (``base``)."""
    step = int(wildcards["step"])
    method = "base" if step == 1 else wildcards["method"]
    return RUN_MODEL.format(
        dataset=wildcards["dataset"],
        task=wildcards["task"],
        protocol=wildcards["protocol"],
        seed=wildcards["seed"],
        step=step - 1,
        method=method,
    )


def previous_bank(wildcards: Mapping[str, Any]) -> str:
    """The memory bank step ``wildcards["step"]`` extends: step 0's at t = 1, else step t-1's of
    the same cache."""
    step = int(wildcards["step"])
    wc = dict(dataset=wildcards["dataset"], task=wildcards["task"], protocol=wildcards["protocol"])
    return MEMORY0.format(**wc) if step == 1 else MEMORY_STEP.format(step=step - 1, cache=wildcards["cache"], **wc)


def step_params(config: Mapping[str, Any], method: str) -> str:
    """``--params`` of train_step: the loop settings (``train_step``) and the method's complete
    settings plus ``relaxed`` (experiments.relaxed_labels); ``method`` names the base of a variant
    only."""
    settings = dict(method_settings(config, method), relaxed=config["experiments"]["relaxed_labels"])
    if settings["method"] == method:
        del settings["method"]
    return params_json(train=config["train_step"], method=settings)


def report_variants(config: Mapping[str, Any]) -> str:
    """``--variants`` of the report: every variant of the matrix with its base method and the
    settings it changes (dotted keys), as JSON."""
    variants = {}
    for name in config["experiments"]["methods"]:
        base = method_settings(config, name)["method"]
        if base != name:
            variants[name] = {"method": base, "changes": variant_changes(config["methods"], name)}
    return json.dumps(variants)


__all__ = [
    "cam_networks",
    "check_methods",
    "coseg_cache_config",
    "coseg_cache_name",
    "coseg_compute",
    "incremental_methods",
    "method_coseg",
    "method_inputs",
    "method_options",
    "method_settings",
    "params_json",
    "previous_bank",
    "previous_model",
    "report_variants",
    "spec_of",
    "step_params",
]
