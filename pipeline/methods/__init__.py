"""Methods as objectives plugged into the shared loop (:mod:`pipeline.train.loop`).

Adding a method is one module here and one line in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from pipeline.methods.base import PixelSupervised

OBJECTIVES = {
    "base": PixelSupervised,
}


def build_objective(name: str, **kwargs):
    """Instantiate the objective of method ``name``; unknown names raise ``ValueError``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](**kwargs)
