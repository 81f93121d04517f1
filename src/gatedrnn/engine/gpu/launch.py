"""Launchers: buffers, tile sizes and the grid of the kernels in ``kernels.py``, for one layer and direction.

A launch runs the whole sequence (*persistent*: one launch, a grid-wide barrier between steps) when its grid fits
on the device at once, one program per multiprocessor; otherwise (very large ``B·H``) the same kernel is launched
once per step and the launch boundary is the barrier. Under ``TRITON_INTERPRET=1`` programs run one after another,
so a barrier could never be passed: there a persistent launch has a single program, and tests that want several
programs use per-step launches.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton.language as tl
from torch import Tensor

from . import kernels

CELL_CODES = {"rnn": kernels.RNN, "lstm": kernels.LSTM, "gru": kernels.GRU}


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@dataclass(frozen=True)
class Cell:
    """The static description of a recurrence that selects a kernel specialisation."""

    cell: str  # "rnn", "lstm" or "gru"
    relu: bool = False
    coupled: bool = False
    peephole: bool = False
    forget_bias: float = 0.0

    @property
    def gates(self) -> int:
        """``G``: gate blocks of ``weight_hh``."""
        return {"rnn": 1, "lstm": 3 if self.coupled else 4, "gru": 3}[self.cell]

    @property
    def saved(self) -> int:
        """Blocks of ``H`` activations saved per step for backward (GRU also keeps ``W_hn h + b_hn``)."""
        return 4 if self.cell == "gru" else self.gates


@dataclass(frozen=True)
class Tiling:
    """Tile sizes and launch mode. ``persistent``: one launch for all steps with grid-wide barriers."""

    block_b: int
    block_j: int
    block_k: int
    persistent: bool
    num_warps: int = 4

    def grid(self, batch: int, hidden: int) -> int:
        return triton_cdiv(batch, self.block_b) * triton_cdiv(hidden, self.block_j)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (n - 1).bit_length())


def choose_tiling(batch: int, hidden: int, device: torch.device) -> Tiling:
    """Tiles as small as keeps every program busy, with a grid that fits on the device at once when possible.

    ``tl.dot`` needs every tile side to be at least 16, so batches under 16 leave rows of the tile idle.
    """
    if interpreting():
        return Tiling(_pow2_at_least(batch), _pow2_at_least(hidden), 16, persistent=True)
    slots = _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    block_b = min(_pow2_at_least(batch), 64)
    while block_b < 128 and triton_cdiv(batch, block_b) * triton_cdiv(hidden, 16) > slots:
        block_b *= 2
    block_j = 16
    while triton_cdiv(batch, block_b) * triton_cdiv(hidden, block_j) > slots and block_j < 128:
        block_j *= 2
    persistent = triton_cdiv(batch, block_b) * triton_cdiv(hidden, block_j) <= slots
    return Tiling(block_b, block_j, 64 if hidden >= 64 else 32 if hidden >= 32 else 16, persistent,
                  num_warps=8 if block_b * block_j >= 64 * 64 else 4)


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand type of the products: the storage type, except float32 for bfloat16 in the interpreter, whose
    bfloat16 products are wrong (triton 3.9); bfloat16 products are exact in float32, so the result is the same."""
    if dtype == torch.bfloat16 and interpreting():
        return tl.float32
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def _precision(dtype: torch.dtype) -> str:
    """float32 products on the tensor cores: TF32 where the user allows it for matmuls (torch's own switch), else
    three TF32 products per product (``tf32x3``, the error of float32 arithmetic). The interpreter computes IEEE."""
    if dtype != torch.float32 or interpreting():
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def forward(cell: Cell, gx: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, peephole: Tensor | None,
            h0: Tensor, c0: Tensor | None, lengths: Tensor | None, save: bool,
            tiling: Tiling | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run the recurrence; returns ``out (T,B,H)``, ``hs (T+1,B,H)``, ``cs (T+1,B,H)`` and ``saved (T,B,S·H)``.

    ``cs`` is float32 and empty (0 elements) unless LSTM; ``saved`` is float32 and empty unless ``save``.
    """
    T, B, _ = gx.shape
    H = weight_hh.shape[1]
    tiling = tiling or choose_tiling(B, H, gx.device)
    hs = gx.new_empty(T + 1, B, H)
    hs[0] = h0
    lstm = cell.cell == "lstm"
    cs = gx.new_empty((T + 1, B, H) if lstm else (0,), dtype=torch.float32)
    if lstm:
        cs[0] = c0
    out = gx.new_empty(T, B, H)
    saved = gx.new_empty((T, B, cell.saved * H) if save else (0,), dtype=torch.float32)
    counter = torch.zeros(1, dtype=torch.int32, device=gx.device)
    grid = (tiling.grid(B, H),)
    spans = [(0, T)] if tiling.persistent else [(t, t + 1) for t in range(T)]
    for t_start, t_stop in spans:
        kernels.forward_kernel[grid](
            gx, weight_hh, bias_hh if bias_hh is not None else gx, peephole if peephole is not None else cs,
            lengths if lengths is not None else counter, hs, cs, out, saved, counter,
            t_start, t_stop, B, H, cell.forget_bias,
            CELL=CELL_CODES[cell.cell], NGATES=cell.gates, NSAVED=cell.saved, RELU=cell.relu, COUPLED=cell.coupled,
            PEEPHOLE=cell.peephole, HAS_BIAS=bias_hh is not None, HAS_LENGTHS=lengths is not None, SAVE=save,
            BLOCK_B=tiling.block_b, BLOCK_J=tiling.block_j, BLOCK_K=tiling.block_k,
            PRECISION=_precision(gx.dtype), DOT_DTYPE=_dot_dtype(gx.dtype), num_warps=tiling.num_warps,
        )
    return out, hs, cs, saved


def backward(cell: Cell, dout: Tensor, dh_n: Tensor, dc_n: Tensor | None, weight_hh: Tensor,
             peephole: Tensor | None, lengths: Tensor | None, hs: Tensor, cs: Tensor, saved: Tensor,
             tiling: Tiling | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the recurrence: ``dgx (T,B,G·H)``, ``dgh (T,B,G·H)`` (in the weights' dtype), ``dh0``, ``dc0``
    (float32).

    ``dgh`` is the gradient of ``W_hh h_{t-1}`` (the same tensor as ``dgx`` except for GRU); ``dc0`` is empty
    unless LSTM.
    """
    T, B, H = dout.shape
    tiling = tiling or choose_tiling(B, H, dout.device)
    GH = cell.gates * H
    dgx = dout.new_empty(T, B, GH, dtype=weight_hh.dtype)
    dgh = dout.new_empty(T, B, GH, dtype=weight_hh.dtype) if cell.cell == "gru" else dgx
    dh = dh_n.to(torch.float32, copy=True).contiguous()
    lstm = cell.cell == "lstm"
    dc = dc_n.to(torch.float32, copy=True).contiguous() if lstm else dh.new_empty(0)
    counter = torch.zeros(1, dtype=torch.int32, device=dout.device)
    grid = (tiling.grid(B, H),)
    # (t_lo, t_hi, final): steps t_hi-1 … t_lo; the final launch also adds W_hhᵀ dgh_0 to ∂L/∂h_0.
    spans = [(0, T, True)] if tiling.persistent else [(t, t + 1, False) for t in reversed(range(T))] + [(0, 0, True)]
    for t_lo, t_hi, final in spans:
        kernels.backward_kernel[grid](
            dout, dh, dc, weight_hh, peephole if peephole is not None else dh,
            lengths if lengths is not None else counter, hs, cs if lstm else dh, saved, dgx, dgh, counter,
            t_lo, t_hi, T, B, H,
            CELL=CELL_CODES[cell.cell], NGATES=cell.gates, NSAVED=cell.saved, RELU=cell.relu, COUPLED=cell.coupled,
            PEEPHOLE=cell.peephole, HAS_LENGTHS=lengths is not None, FINAL=final,
            BLOCK_B=tiling.block_b, BLOCK_J=tiling.block_j, BLOCK_K=tiling.block_k,
            PRECISION=_precision(weight_hh.dtype), DOT_DTYPE=_dot_dtype(weight_hh.dtype),
            num_warps=tiling.num_warps,
        )
    return dgx, dgh, dh, dc
