"""A finished run's metrics for the report's table tests (tests/test_variants.py,
tests/test_paper_experiments.py): demo 15-5, old classes 1-15, new 16-20."""

from __future__ import annotations

from pipeline.report.runs import Run


def metrics_run(
    method: str, new: float, *, old: float, all_: float, seed: int = 0, protocol: str = "overlap", step: int = 1
) -> Run:
    """A :class:`Run` of ``method`` with mIoU ``old`` / ``new`` / ``all_`` (fractions, not %)."""
    return Run(
        path=f"{method}/{protocol}/{step}/{seed}",
        data={
            "dataset": "demo",
            "task": "15-5",
            "step": step,
            "method": method,
            "protocol": protocol,
            "seed": seed,
            "old_classes": list(range(1, 16)),
            "new_classes": list(range(16, 21)),
            "miou_old": old,
            "miou_new": new,
            "miou_all": all_,
        },
    )
