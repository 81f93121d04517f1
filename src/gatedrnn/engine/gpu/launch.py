"""Launchers: buffers, tile sizes and the grid of the kernels in ``kernels.py``, for one layer and direction.

A launch runs the whole sequence (*persistent*: one launch, a grid-wide barrier between steps) when its grid fits
on the device at once, one program per multiprocessor; otherwise (very large ``B·H``) the same kernel is launched
once per step and the launch boundary is the barrier. Under ``TRITON_INTERPRET=1`` programs run one after another,
so a barrier could never be passed: there a persistent launch has a single program, and tests that want several
programs use per-step launches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import triton.language as tl
from torch import Tensor

from ...cells.base import LN_EPS
from . import kernels
from .tiling import Tiling, choose_tiling, interpreting, triton_cdiv


@dataclass(frozen=True)
class Cell:
    """The static description of a recurrence that selects a kernel specialisation."""

    cell: str  # "rnn", "lstm" or "gru"
    relu: bool = False
    coupled: bool = False
    peephole: bool = False
    forget_bias: float = 0.0
    reset_before: bool = False
    layer_norm: bool = False
    proj: bool = False

    @property
    def code(self) -> int:
        """The kernels' ``CELL``."""
        if self.cell == "gru":
            return kernels.GRU_BEFORE if self.reset_before else kernels.GRU
        return {"rnn": kernels.RNN, "lstm": kernels.LSTM}[self.cell]

    @property
    def gates(self) -> int:
        """``G``: gate blocks of ``weight_hh``."""
        return {"rnn": 1, "lstm": 3 if self.coupled else 4, "gru": 3}[self.cell]

    @property
    def recurrent_gates(self) -> int:
        """Gate blocks whose rows multiply ``h_{t-1}`` itself: all but reset-before GRU's ``n`` (it multiplies
        ``r h_{t-1}``)."""
        return 2 if self.reset_before else self.gates

    @property
    def saved(self) -> int:
        """Blocks of ``H`` activations saved per step for backward (GRU reset-after also keeps ``W_hn h + b_hn``)."""
        return 4 if self.cell == "gru" and not self.reset_before else self.gates

    @property
    def stages(self) -> int:
        """Parts of a step between barriers: a layer norm's row statistics need every program's partial sums
        (``LN_hh``, and ``LN_c`` after it in an LSTM) before the step can go on, and a projection all of its
        input (forward: ``u``; backward: ``∂L/∂h_t``)."""
        if self.cell == "lstm":
            return 1 + 2 * self.layer_norm + self.proj
        return 1 + self.layer_norm

    @property
    def forward_gate_stage(self) -> int:
        """The stage of a forward step that computes the gates (after ``LN_hh``'s statistics)."""
        return int(self.layer_norm)

    @property
    def forward_u_stage(self) -> int:
        """The stage of a forward LSTM step that forms ``u = o tanh(LN_c(c_t))`` (after ``LN_c``'s statistics)."""
        return 2 * self.layer_norm

    @property
    def backward_gate_stage(self) -> int:
        """The stage of a backward step that forms the gates' gradients (after ``W_hrᵀ ∂L/∂h_t`` needs all of
        ``∂L/∂h_t``, and after ``LN_c``'s row sums)."""
        return int(self.layer_norm) + int(self.proj) if self.cell == "lstm" else 0


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


def _step_launches(steps: Iterable[int], stages: int) -> list[tuple[int, int, bool, int]]:
    """``(t_start, t_stop, split, stage)`` of the launches that run ``steps`` one at a time: one per step, or one
    per stage of a step that has several (each launch boundary is then a barrier)."""
    if stages == 1:
        return [(t, t + 1, False, 0) for t in steps]
    return [(t, t + 1, True, stage) for t in steps for stage in range(stages)]


def forward(cell: Cell, gx: Tensor, weight_hh: Tensor, weight_hr: Tensor | None, bias_hh: Tensor | None,
            peephole: Tensor | None, ln: Tensor | None, h0: Tensor, c0: Tensor | None, lengths: Tensor | None,
            save: bool, tiling: Tiling | None = None) -> tuple[Tensor, ...]:
    """Run the recurrence; returns ``out (T,B,S)``, ``hs (T+1,B,S)``, ``cs (T+1,B,H)``, ``saved (T,B,N·H)``,
    ``q (T,B,H)``, ``xhat (T,B,G·H)``, ``stats (T,B,3)`` and ``us (T,B,H)``; the state width ``S`` is ``P`` for a
    projected LSTM (``weight_hr`` (P, H) given exactly with ``cell.proj``; ``us`` holds ``u = o tanh(LN_c(c_t))``,
    empty without projection), else ``H``.

    ``cs`` is float32 and empty (0 elements) unless LSTM; ``saved`` is float32 and empty unless ``save``; ``q`` (``r
    h_{t-1}``) is empty unless GRU reset-before, which needs a persistent launch (a barrier inside each step).
    ``ln`` (float32 ``w_hh | b_hh | w_c | b_c`` of the layer norms, LSTM only with the last two) is given exactly
    with ``cell.layer_norm``; then ``xhat`` (``LN_hh``'s normalised input) and ``stats`` (per row: ``LN_hh``'s rstd,
    ``LN_c``'s mean and rstd; a GRU's: ``LN_rz``'s rstd, ``LN_n``'s mean and rstd) are saved for backward (empty
    unless ``save``).
    """
    T, B, _ = gx.shape
    S = weight_hh.shape[1]
    H = gx.shape[2] // cell.gates
    tiling = tiling or choose_tiling(B, H, gx.device)
    if cell.reset_before and not tiling.persistent:
        raise ValueError(f"engine: 'gpu' runs a reset-before GRU only with a grid that fits on the device (B={B}, "
                         f"H={H} does not)")
    hs = gx.new_empty(T + 1, B, S)
    hs[0] = h0
    lstm = cell.cell == "lstm"
    cs = gx.new_empty((T + 1, B, H) if lstm else (0,), dtype=torch.float32)
    if lstm:
        cs[0] = c0
    out = gx.new_empty(T, B, S)
    us = gx.new_empty((T, B, H) if cell.proj else (0,))
    saved = gx.new_empty((T, B, cell.saved * H) if save else (0,), dtype=torch.float32)
    q = gx.new_empty((T, B, H) if cell.reset_before else (0,))
    f32 = torch.float32
    norm = cell.layer_norm
    xhat = gx.new_empty((T, B, cell.gates * H) if norm and save else (0,), dtype=f32)
    stats = gx.new_empty((T, B, 3) if norm and save else (0,), dtype=f32)
    part = gx.new_empty((2, triton_cdiv(H, tiling.block_j), B, 2) if norm else (0,), dtype=f32)
    scratch = gx.new_empty((B, (cell.gates + 1) * H) if norm and not tiling.persistent else (0,), dtype=f32)
    counter = torch.zeros(1, dtype=torch.int32, device=gx.device)
    grid = (tiling.grid(B, H),)
    launches = [(0, T, False, 0)] if tiling.persistent else _step_launches(range(T), cell.stages)
    for t_start, t_stop, split, stage in launches:
        kernels.forward_kernel[grid](
            gx, weight_hh, weight_hr if weight_hr is not None else weight_hh, bias_hh if bias_hh is not None else gx,
            peephole if peephole is not None else cs, ln if ln is not None else cs,
            lengths if lengths is not None else counter, hs, cs, out, saved, q if cell.reset_before else hs,
            us if cell.proj else hs, xhat, stats, part, scratch, counter,
            t_start, t_stop, B, H, S, cell.forget_bias, LN_EPS,
            CELL=cell.code, NGATES=cell.gates, NREC=cell.recurrent_gates, NSAVED=cell.saved, RELU=cell.relu,
            COUPLED=cell.coupled,
            PEEPHOLE=cell.peephole, HAS_BIAS=bias_hh is not None, HAS_LENGTHS=lengths is not None, SAVE=save,
            LAYER_NORM=norm, PROJ=cell.proj, SPLIT=split, STAGE=stage, NSTAGES=cell.stages,
            PW_STAGE=cell.forward_gate_stage, U_STAGE=cell.forward_u_stage,
            BLOCK_B=tiling.block_b, BLOCK_J=tiling.block_j, BLOCK_K=tiling.block_k,
            PRECISION=_precision(gx.dtype), DOT_DTYPE=_dot_dtype(gx.dtype), num_warps=tiling.num_warps,
        )
    return out, hs, cs, saved, q, xhat, stats, us


def backward(cell: Cell, dout: Tensor, dh_n: Tensor, dc_n: Tensor | None, weight_hh: Tensor,
             weight_hr: Tensor | None, peephole: Tensor | None, ln: Tensor | None, lengths: Tensor | None,
             hs: Tensor, cs: Tensor, saved: Tensor, xhat: Tensor, stats: Tensor,
             tiling: Tiling | None = None) -> tuple[Tensor, ...]:
    """Gradients of the recurrence: ``dgx (T,B,G·H)``, ``dgh (T,B,G·H)``, ``dy (T,B,G·H)`` (in the weights'
    dtype), ``dcn (T,B,H)``, ``dh0 (B,S)``, ``dc0 (B,H)`` (float32) and ``dhs (T,B,P)`` (in the weights' dtype).

    ``dgh`` is the gradient of ``LN_hh(W_hh h_{t-1}) + b_hh`` (the same tensor as ``dgx`` except for GRU
    reset-after) and ``dy`` that of ``W_hh h_{t-1}`` (the same tensor as ``dgh`` without layer norm); ``dcn``, the
    gradient of ``LN_c``'s output, is empty unless an LSTM with layer norm; ``dc0`` is empty unless LSTM; ``dhs``,
    ``∂L/∂h_t`` (zero past the lengths) of a projected LSTM, is empty without projection.
    """
    T, B, S = dout.shape
    H = weight_hh.shape[0] // cell.gates
    tiling = tiling or choose_tiling(B, H, dout.device)
    GH = cell.gates * H
    dgx = dout.new_empty(T, B, GH, dtype=weight_hh.dtype)
    reset_after = cell.cell == "gru" and not cell.reset_before
    dgh = dout.new_empty(T, B, GH, dtype=weight_hh.dtype) if reset_after else dgx
    norm = cell.layer_norm
    dy = dout.new_empty(T, B, GH, dtype=weight_hh.dtype) if norm else dgh
    dh = dh_n.to(torch.float32, copy=True).contiguous()
    lstm = cell.cell == "lstm"
    dc = dc_n.to(torch.float32, copy=True).contiguous() if lstm else dh.new_empty(0)
    f32 = torch.float32
    dcn = dout.new_empty((T, B, H) if norm and lstm else (0,), dtype=f32)
    dhs = dout.new_empty((T, B, S) if cell.proj else (0,), dtype=weight_hh.dtype)
    part = dout.new_empty((2, triton_cdiv(H, tiling.block_j), B, 2) if norm else (0,), dtype=f32)
    counter = torch.zeros(1, dtype=torch.int32, device=dout.device)
    grid = (tiling.grid(B, H),)
    # (t_lo, t_hi, split, stage): steps t_hi-1 … t_lo; the last launch (FINAL) also adds W_hhᵀ dy_0 to ∂L/∂h_0.
    final = (0, 0, False, 0)
    launches = [(0, T, False, 0)] if tiling.persistent else [*_step_launches(reversed(range(T)), cell.stages), final]
    for k, (t_lo, t_hi, split, stage) in enumerate(launches):
        kernels.backward_kernel[grid](
            dout, dh, dc, weight_hh, weight_hr if weight_hr is not None else weight_hh,
            peephole if peephole is not None else dh, ln if ln is not None else dh,
            lengths if lengths is not None else counter, hs, cs if lstm else dh, saved, xhat, stats, part, dgx, dgh,
            dy, dcn, dhs if cell.proj else dgx, counter,
            t_lo, t_hi, T, B, H, S,
            CELL=cell.code, NGATES=cell.gates, NREC=cell.recurrent_gates, NSAVED=cell.saved, RELU=cell.relu,
            COUPLED=cell.coupled,
            PEEPHOLE=cell.peephole, HAS_LENGTHS=lengths is not None, FINAL=k == len(launches) - 1,
            LAYER_NORM=norm, PROJ=cell.proj, SPLIT=split, STAGE=stage, NSTAGES=cell.stages,
            PW_STAGE=cell.backward_gate_stage,
            BLOCK_B=tiling.block_b, BLOCK_J=tiling.block_j, BLOCK_K=tiling.block_k,
            PRECISION=_precision(weight_hh.dtype), DOT_DTYPE=_dot_dtype(weight_hh.dtype),
            num_warps=tiling.num_warps,
        )
    return dgx, dgh, dy, dcn, dh, dc, dhs
