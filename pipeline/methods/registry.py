"""The method registry: one table of every method, read by the rules, the report and the stages.

A method is declared twice, in two halves that never disagree because the second checks the first:

* its **spec** (:class:`MethodSpec`: label, order, supervision, the caches it reads, its paper) in
  the torch-free ``__init__.py`` of its package ``pipeline/methods/<package>/``, with
  :func:`declare`. The Snakefile, the report and ``wilss list`` read specs without importing
  torch (:func:`pipeline.methods.method_specs`).
* its **class** in the package's ``method.py``, bound to the spec by the decorator
  :func:`register_method` (timm's ``@register_model`` shape). The class builds itself from its
  config section with ``from_config(cfg, context, model)`` (detectron2's ``from_config``).

Nothing here imports torch; the class is imported only when a stage builds the method.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

#: What a method learns new classes from: ``pixel`` labels or ``image``-level labels only.
SUPERVISIONS = ("pixel", "image")
#: The caches a method can read at step t (the producers' rules): the CAM baselines' pseudo-labels,
#: FMWISS's co-segmentation cache and memory bank.
CACHES = ("pseudo", "coseg", "memory")


@dataclass(frozen=True)
class MethodSpec:
    """What the workflow and the report know of a method, without importing it.

    Attributes:
        name: the config and path name (``methods.<name>``, ``.../step{t}/<name>/``).
        label: the row label of the papers' tables (``"WILSON"``).
        order: row position in the tables (ascending; references first, then the weak methods).
        supervision: ``pixel`` or ``image`` (what step t >= 1 learns the new classes from).
        steps: ``base`` (step 0 only), ``incremental`` (t >= 1 only).
        reads: caches read at step t, a subset of :data:`CACHES` (``memory`` only when the
            method's ``paste_prob`` > 0).
        cam_network: the CAM network (``pipeline.wsss`` registry) that makes the pseudo-labels
            (methods reading ``pseudo``).
        paper: the source, e.g. ``"Cermelli et al., CVPR 2022"``; equations: e.g. ``"Eq. 1-8"``.
        package: the module that declared the spec (set by :func:`declare`); its ``method``
            submodule holds the class.
    Raises:
        ValueError: an unknown supervision, step kind or cache.
    """

    name: str
    label: str
    order: int
    supervision: str
    steps: str = "incremental"
    reads: tuple[str, ...] = ()
    cam_network: str | None = None
    paper: str = ""
    equations: str = ""
    package: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.supervision not in SUPERVISIONS:
            raise ValueError(f"method {self.name!r}: supervision={self.supervision!r}, expected one of {SUPERVISIONS}")
        if self.steps not in ("base", "incremental"):
            raise ValueError(f"method {self.name!r}: steps={self.steps!r}, expected 'base' or 'incremental'")
        unknown = set(self.reads) - set(CACHES)
        if unknown:
            raise ValueError(f"method {self.name!r}: reads unknown caches {sorted(unknown)}; known: {CACHES}")
        if ("pseudo" in self.reads) != (self.cam_network is not None):
            raise ValueError(f"method {self.name!r}: a method reading 'pseudo' names its cam_network, and only it")


_SPECS: dict[str, MethodSpec] = {}
_CLASSES: dict[str, type] = {}


def declare(*specs: MethodSpec, package: str) -> None:
    """Add the specs of one package (its ``__name__``) to the table.

    Raises:
        ValueError: a name declared by another package.
    """
    for spec in specs:
        previous = _SPECS.get(spec.name)
        if previous is not None and previous.package != package:
            raise ValueError(f"method {spec.name!r} is declared by {previous.package} and {package}")
        _SPECS[spec.name] = MethodSpec(**{**spec.__dict__, "package": package})


def register_method(*names: str):
    """Class decorator binding a method class to the declared spec(s) ``names``.

    Raises:
        KeyError: a name without a declared spec (declare it in the package's ``__init__``).
    """

    def bind(cls: type) -> type:
        for name in names:
            if name not in _SPECS:
                raise KeyError(
                    f"@register_method({name!r}) on {cls.__qualname__}: no spec declared; "
                    f"add it to the package's __init__.py with declare(MethodSpec({name!r}, ...))"
                )
            _CLASSES[name] = cls
        return cls

    return bind


def specs() -> dict[str, MethodSpec]:
    """The declared specs by name (only those of packages imported so far; see
    :func:`pipeline.methods.method_specs` for all of them)."""
    return dict(_SPECS)


def method_class(name: str) -> type:
    """The class registered for ``name``, importing its package's ``method`` module.

    Raises:
        KeyError: unknown name; ImportError from the method module.
    """
    if name not in _SPECS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_SPECS))}")
    if name not in _CLASSES:
        importlib.import_module(_SPECS[name].package + ".method")
    if name not in _CLASSES:
        raise KeyError(f"{_SPECS[name].package}.method registers no class for {name!r} (@register_method)")
    return _CLASSES[name]


def build(name: str, cfg: dict[str, Any], context: Any = None, model: Any = None):
    """The method ``name`` built from its (validated, complete) config section.

    Args:
        name: a registered method (a variant is resolved to its base first, see
            :func:`pipeline.config.resolve_method`).
        cfg: ``methods.<name>`` settings.
        context: the :class:`pipeline.methods.base.StepContext` at t >= 1; None at step 0.
        model: the segmenter being trained (channel counts, atrous rates).
    Raises:
        KeyError: unknown method; ValueError: an incremental method without a context.
    """
    cls = method_class(name)
    spec = _SPECS[name]
    if spec.steps == "incremental" and context is None:
        raise ValueError(f"method {name!r} runs at steps t >= 1 and needs the step context")
    return cls.from_config(dict(cfg), context, model, spec=spec)
