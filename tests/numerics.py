"""Numeric helpers shared by the tests."""

from __future__ import annotations

from torch import Tensor


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """Norm-wise relative error ``max|a - e| / max|e|`` (absolute where ``e`` is all zero)."""
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)
