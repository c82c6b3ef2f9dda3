"""Co-segmentation settings the workflow reads without importing torch, open_clip or timm.

The ``coseg`` job's ``--params`` (and so its re-run trigger) hold only the settings that change
what the foundation models compute; the keys below are applied when the cache is read
(:mod:`pipeline.foundation.coseg`, which re-exports them) and are left out of it.
"""

from __future__ import annotations

#: Keys of the ``coseg`` config section applied when the cache is read: never part of the
#: provenance (binarisation of ``M_init``, K of Eq. 4 and its rule, the fusion of Eq. 5).
READ_TIME_KEYS: tuple[str, ...] = ("clip_threshold", "top_k", "top_k_rule", "fusion")
#: Alias read by the workflow (:func:`pipeline.workflow.coseg_compute`).
READ_KEYS = READ_TIME_KEYS

__all__ = ["READ_KEYS", "READ_TIME_KEYS"]
