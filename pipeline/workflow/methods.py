"""What the rules know of a method or variant: its settings, its spec, the caches it reads.

Which caches a method reads comes from its spec (:class:`pipeline.methods.MethodSpec`, torch-free):
``pseudo`` → the CAM pseudo-labels of ``spec.cam_network``; ``coseg`` → the co-segmentation
cache of the step; ``memory`` → the memory bank of the classes learned before the step, when the
method's ``paste_prob`` > 0. A variant (``methods.<name>.method: <base>``) reads what its base
reads.

Which split a method trains on comes from its data settings (:data:`pipeline.config.DATA_KEYS`):
the experiment's ``step{t}.json``, or a split variant with relaxed labels and/or a data fraction
(:func:`method_split`, made by the ``split_variant`` rule).

``config`` is the merged Snakemake config (config.yaml and the overlays, validated against
schemas/config.schema.yaml); ``wildcards`` is any mapping of wildcard names to values (Snakemake's
``Wildcards`` or a dict).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from pipeline.config import data_settings, merge, objective_settings, resolve_method, variant_changes
from pipeline.foundation.settings import READ_KEYS
from pipeline.methods import MethodSpec, method_spec, method_specs
from pipeline.methods.registry import CACHES
from pipeline.workflow.paths import COSEG_CACHE, MEMORY0, MEMORY_STEP, PSEUDO_CACHE, RUN_MODEL, SPLIT, SPLIT_VARIANT


def params_json(**sections: Any) -> str:
    """Config sections as one JSON string (sorted keys) for a stage's ``--params`` (quoted in the
    shell command with ``{params.x:q}``)."""
    return json.dumps(sections, sort_keys=True)


def method_settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The complete settings of a method or variant: ``methods.<name>`` merged onto its base's,
    without the data keys (:data:`pipeline.config.DATA_KEYS`, see :func:`method_split`), with
    ``method`` = the base method; a method reading the co-segmentation cache also gets its full
    ``coseg`` section (the config's, with the method's ``coseg`` overrides merged in).

    Raises:
        KeyError: ``name`` or its base has no section under ``methods:``; no spec for the base.
    """
    base, settings = resolve_method(config["methods"], name)
    settings = dict(objective_settings(settings), method=base)
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
        check_data_settings(config, name)
        settings = objective_settings(settings)
        try:
            jsonschema.validate(settings, {"$defs": schema["$defs"], **known[base]})
        except jsonschema.ValidationError as error:
            where = ".".join(str(p) for p in error.absolute_path)
            raise ValueError(
                f"methods.{name} (a variant of {base}){': ' + where if where else ''}: {error.message}"
            ) from None


def check_data_settings(config: Mapping[str, Any], name: str) -> None:
    """A variant's data keys (:data:`pipeline.config.DATA_KEYS`) are given only where they change
    what its base method learns from.

    - ``relaxed_labels``: methods learning from image-level labels that read no cache (WILSON):
      pixel-label methods never read the image labels, and the caches of the others (CAM
      pseudo-labels, co-segmentation masks) are computed from the experiment's split, so relaxed
      labels would change nothing or only half of the method (set ``experiments.relaxed_labels``
      to relax every split);
    - ``data_fraction`` < 1: methods learning from image-level labels that read no CAM
      pseudo-labels (WILSON, FMWISS; FMWISS Table 10): the CAM network of ``cam``/``vwe``/``iscam``
      is trained on the full split by ``train_cam``, and ``joint`` trains on the images of every
      step, not on the step's split; ``data_fraction_seed`` only with a ``data_fraction`` < 1.

    Raises:
        ValueError: naming ``methods.<name>``, the key and why.
        KeyError: as :func:`pipeline.config.resolve_method`.
    """
    base, settings = resolve_method(config["methods"], name)
    spec = method_spec(base)
    data = data_settings(config["methods"], name, config["experiments"]["relaxed_labels"])
    if "relaxed_labels" in settings and (spec.supervision != "image" or spec.reads):
        raise ValueError(
            f"methods.{name}.relaxed_labels: {base!r} "
            + ("learns from pixel labels" if spec.supervision != "image" else f"reads caches {list(spec.reads)}")
            + " made from the experiment's split; relaxed labels per variant apply to image-label methods "
            "reading no cache (wilson); set experiments.relaxed_labels to relax every split"
        )
    if data["data_fraction"] == 1.0 and data["data_fraction_seed"] is not None:
        raise ValueError(
            f"methods.{name}.data_fraction_seed = {data['data_fraction_seed']}: a subset seed without "
            "a data_fraction < 1 changes nothing; give data_fraction too, or drop the seed"
        )
    if data["data_fraction"] < 1.0 and (spec.supervision != "image" or "pseudo" in spec.reads):
        raise ValueError(
            f"methods.{name}.data_fraction = {data['data_fraction']}: supported for image-label methods "
            f"reading no CAM pseudo-labels (wilson, fmwiss; FMWISS Table 10), not {base!r}"
            + (
                " (its CAM network is trained on the full split by train_cam)"
                if "pseudo" in spec.reads
                else " (pixel-label methods; joint trains on every step's images)"
            )
        )


def split_variant_name(relaxed: bool, fraction: float, seed: int | None) -> str:
    """The ``{split_variant}`` folder of a split with other training data than the experiment's:
    ``relaxed`` or ``standard`` (image labels of every seen / of the new classes), then, for a
    fraction < 1, ``-fraction<f>-seed<s>`` (``repr`` of the float, so the name gives the fraction
    back exactly: :func:`split_variant_options`).

    Raises:
        ValueError: a fraction outside (0, 1], or a fraction < 1 without an integer seed.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"data fraction {fraction!r}: expected a number in (0, 1]")
    name = "relaxed" if relaxed else "standard"
    if float(fraction) < 1.0:
        if seed is None or isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"data fraction seed {seed!r}: expected an integer >= 0")
        name += f"-fraction{float(fraction)!r}-seed{int(seed)}"
    return name


#: The names :func:`split_variant_name` makes (the ``split_variant`` wildcard's constraint).
SPLIT_VARIANT_PATTERN = r"(standard|relaxed)(-fraction[0-9.e-]+-seed[0-9]+)?"
_SPLIT_VARIANT = re.compile(r"(standard|relaxed)(?:-fraction([0-9.e-]+)-seed([0-9]+))?")


def split_variant_options(name: str) -> str:
    """The ``splits`` stage options that make split variant ``name`` (:func:`split_variant_name`):
    ``--relaxed`` and/or ``--data-fraction F --fraction-seed S``.

    Raises:
        ValueError: ``name`` is not such a name.
    """
    match = _SPLIT_VARIANT.fullmatch(name)
    if match is None:
        raise ValueError(f"split variant {name!r}: expected standard|relaxed[-fraction<f>-seed<s>]")
    options = ["--relaxed"] if match.group(1) == "relaxed" else []
    if match.group(2) is not None:
        try:
            fraction = float(match.group(2))
        except ValueError:
            raise ValueError(f"split variant {name!r}: {match.group(2)!r} is not a number") from None
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"split variant {name!r}: fraction {fraction!r}, expected one in (0, 1)")
        options += ["--data-fraction", repr(fraction), "--fraction-seed", str(int(match.group(3)))]
    return " ".join(options)


def method_split(config: Mapping[str, Any], wildcards: Mapping[str, Any]) -> str:
    """The split ``wildcards["method"]`` trains on at its step: the experiment's ``step{t}.json``
    (:data:`SPLIT`) when its data settings are the experiment's (labels as
    ``experiments.relaxed_labels``, every image), else the split variant (:data:`SPLIT_VARIANT`)
    with its relaxed labels and/or data fraction, whose subset seed is ``data_fraction_seed`` or
    the run's seed. Methods with the same data settings share one file, so their subsets are the
    same.

    Raises:
        KeyError: unknown method.
    """
    data = data_settings(config["methods"], wildcards["method"], config["experiments"]["relaxed_labels"])
    wc = dict(dataset=wildcards["dataset"], task=wildcards["task"], protocol=wildcards["protocol"])
    if data["relaxed_labels"] == config["experiments"]["relaxed_labels"] and data["data_fraction"] == 1.0:
        return SPLIT.format(step=wildcards["step"], **wc)
    seed = data["data_fraction_seed"] if data["data_fraction_seed"] is not None else int(wildcards["seed"])
    name = split_variant_name(data["relaxed_labels"], data["data_fraction"], seed)
    return SPLIT_VARIANT.format(step=wildcards["step"], split_variant=name, **wc)


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
    settings plus ``relaxed`` (its ``relaxed_labels``, default experiments.relaxed_labels: the
    labels of the split :func:`method_split` gives it); ``method`` names the base of a variant
    only."""
    relaxed = data_settings(config["methods"], method, config["experiments"]["relaxed_labels"])["relaxed_labels"]
    settings = dict(method_settings(config, method), relaxed=relaxed)
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


def report_settings(config: Mapping[str, Any]) -> str:
    """``--settings`` of the report: for every method of the matrix, its base, the settings it
    changes (dotted keys, as :func:`report_variants`) and the settings of the papers' remaining
    experiments (:mod:`pipeline.report.paper_tables`): ``relaxed_labels``, ``data_fraction``,
    ``data_fraction_seed`` (:func:`pipeline.config.data_settings`) and ``pixel_labels`` (None for a
    method without it), as JSON."""
    out = {}
    for name in config["experiments"]["methods"]:
        settings = method_settings(config, name)
        out[name] = {
            "method": settings["method"],
            "changes": variant_changes(config["methods"], name),
            **data_settings(config["methods"], name, config["experiments"]["relaxed_labels"]),
            "pixel_labels": settings.get("pixel_labels"),
        }
    return json.dumps(out, sort_keys=True)


__all__ = [
    "SPLIT_VARIANT_PATTERN",
    "cam_networks",
    "check_data_settings",
    "check_methods",
    "coseg_cache_config",
    "coseg_cache_name",
    "coseg_compute",
    "incremental_methods",
    "method_coseg",
    "method_inputs",
    "method_options",
    "method_settings",
    "method_split",
    "params_json",
    "previous_bank",
    "previous_model",
    "report_settings",
    "report_variants",
    "spec_of",
    "split_variant_name",
    "split_variant_options",
    "step_params",
]
