"""Methods: one package each (``pipeline/methods/<package>/``), found through one registry.

Importing this package imports no torch: :func:`method_specs` reads the torch-free spec of every
method package (its ``__init__.py``); :func:`build_method` imports the method's class only when
a stage trains it. Adding a method is a package here (``__init__.py`` with its spec, ``method.py``
with the class), one config section under ``methods:`` and its schema entry
(docs/architecture.md walks through one).
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.methods.registry import MethodSpec, build, register_method, specs

_DISCOVERED = False


def method_specs() -> dict[str, MethodSpec]:
    """Every method's spec by name, in table order (``order``, then name).

    Imports each subpackage of :mod:`pipeline.methods` (torch-free ``__init__`` files only).
    """
    global _DISCOVERED
    if not _DISCOVERED:
        for info in pkgutil.iter_modules(__path__, prefix=__name__ + "."):
            if info.ispkg:
                importlib.import_module(info.name)
        _DISCOVERED = True
    return dict(sorted(specs().items(), key=lambda item: (item[1].order, item[0])))


def method_spec(name: str) -> MethodSpec:
    """The spec of a registered method (not a variant: resolve it first).

    Raises:
        KeyError: unknown method, naming the known ones.
    """
    table = method_specs()
    if name not in table:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(table)}")
    return table[name]


def build_method(name: str, cfg: dict, context=None, model=None):
    """Build method ``name`` from its config section (see :func:`pipeline.methods.registry.build`)."""
    method_specs()
    return build(name, cfg, context, model)


__all__ = ["MethodSpec", "build_method", "method_spec", "method_specs", "register_method"]
