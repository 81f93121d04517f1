"""Argument checks that turn bad input into an error naming the argument and what was expected.

Every error names the argument and what was expected. A bad tensor is a ``ValueError`` or ``TypeError`` by that
convention and, where ``torch.nn``'s layers raise another type for the same input, an instance of that type too
(:class:`ShapeError`, :class:`DTypeError`, :class:`DeviceError`), so code written for ``torch.nn`` keeps catching it.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


class ShapeError(ValueError, RuntimeError):
    """A tensor of the wrong shape (``torch.nn`` raises ``RuntimeError`` for most of these)."""


class DTypeError(TypeError, ValueError, RuntimeError):
    """A tensor of the wrong dtype (``torch.nn`` raises ``ValueError`` in layers, ``RuntimeError`` in cells)."""


class DeviceError(ValueError, RuntimeError):
    """A tensor on another device than the module's parameters or the input (``torch.nn``: ``RuntimeError``)."""


def check_size(name: str, value: object, *, minimum: int = 1) -> int:
    """An integer ``>= minimum``, e.g. a Python or NumPy int (bools are rejected: ``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def check_flag(name: str, value: object) -> bool:
    """A bool, or an int taken as one (``bias=1``, as ``torch.nn``'s cells accept)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        expected = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return str(value)


def check_dropout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"dropout: expected a probability in [0, 1], got {value!r}")
    return float(value)


def check_finite_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite float, got {value!r}")
    return float(value)


def check_positive(name: str, value: object, *, zero: bool = False) -> float:
    """A finite number ``> 0`` (``>= 0`` with ``zero=True``): learning rates, budgets, weight decay, scales."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not (
            value >= 0 if zero else value > 0):
        raise ValueError(f"{name}: expected a finite number {'>= 0' if zero else '> 0'}, got {value!r}")
    return float(value)


def check_fraction(name: str, value: object) -> float:
    """A probability that is not 1, as dropout during training needs: ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
    return float(value)


def check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def check_like(name: str, tensor: Tensor, shape: tuple[int, ...], like: Tensor) -> None:
    """``tensor`` must have exactly ``shape`` and ``like``'s dtype and device (used for initial states)."""
    check_tensor(name, tensor)
    if tuple(tensor.shape) != shape:
        raise ShapeError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
    if tensor.dtype != like.dtype:
        raise DTypeError(f"{name}: expected dtype {like.dtype} (the input's), got {tensor.dtype}")
    if tensor.device != like.device:
        raise DeviceError(f"{name}: expected device {like.device} (the input's), got {tensor.device}")


def check_input(x: Tensor, input_size: int, weight: Tensor, batched_dims: str) -> None:
    """The input's feature size, dtype and device must match the module's parameters."""
    if not x.is_floating_point():
        raise DTypeError(f"input: expected a floating-point tensor, got {x.dtype}")
    if x.shape[-1] != input_size:
        raise ShapeError(
            f"input: expected shape {batched_dims} with I = input_size = {input_size}, got shape {tuple(x.shape)}"
        )
    if x.dtype != weight.dtype:
        raise DTypeError(
            f"input: dtype {x.dtype} does not match the module's parameters ({weight.dtype}); "
            f"convert one of them (e.g. module.to({x.dtype}))"
        )
    if x.device != weight.device:
        raise DeviceError(
            f"input: on {x.device} but the module's parameters are on {weight.device}; "
            f"move one of them (e.g. module.to({str(x.device)!r}))"
        )


def check_lengths(lengths: object, batch: int, steps: int, device: torch.device) -> Tensor:
    """``lengths``: a 1-D integer tensor (or sequence) of ``batch`` values in ``[1, steps]``, returned as int64."""
    if not isinstance(lengths, Tensor):
        if not isinstance(lengths, (list, tuple)):
            raise TypeError(f"lengths: expected a 1-D integer tensor, got {type(lengths).__name__}")
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in lengths):
            raise TypeError("lengths: expected a 1-D integer tensor or a list of ints")
        lengths = torch.tensor(lengths, dtype=torch.int64)
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer dtype, got {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths: expected a 1-D tensor of shape ({batch},), got shape {tuple(lengths.shape)}")
    if lengths.shape[0] != batch:
        raise ValueError(f"lengths: expected one length per sequence ({batch}), got {lengths.shape[0]}")
    if batch and not torch.compiler.is_compiling():  # values are data a traced graph cannot check
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1:
            raise ValueError(f"lengths: every length must be >= 1 (no empty sequences), got {low}")
        if high > steps:
            raise ValueError(f"lengths: a length of {high} is longer than the sequence (T={steps})")
    return lengths.to(device=device, dtype=torch.int64)
