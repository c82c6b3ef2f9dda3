"""Plain-Python reference values for the loss tests (written out, not computed with torch)."""

import math


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(target: float, logit: float) -> float:
    """-[y log σ(x) + (1 - y) log(1 - σ(x))], written out."""
    s = sigmoid(logit)
    return -(target * math.log(s) + (1.0 - target) * math.log(1.0 - s))


def close(tensor, expected: float, tol: float = 1e-6) -> None:
    assert math.isclose(float(tensor), expected, rel_tol=tol, abs_tol=tol), (float(tensor), expected)
