r"""Triton kernels of the gpu engine: the whole recurrence of one layer and direction in one launch.

Each program owns a tile of ``BLOCK_B`` batch rows × ``BLOCK_J`` hidden units and, for those units, every gate.
Per time step it multiplies the full previous state ``h_{t-1}`` (read back from global memory, where every program
wrote its slice) with its rows of ``W_hh``, applies the cell's pointwise math in registers (the cell state ``c``
of its tile never leaves them), writes its slice of ``h_t``, and then waits at a grid-wide barrier so that the
next step reads a complete ``h_t``. The grid is at most one program per multiprocessor, so all programs are
resident at once and the barrier cannot deadlock; the recurrent weights stay hot in L2 across steps.

The math is the cell specs' (``gatedrnn.cells``), with gate names as there; the plain-PyTorch reference is the
specs' ``step``, looped by the reference engine. Cells (``CELL``): 0 = Elman RNN, 1 = LSTM, 2 = GRU (reset after),
3 = GRU (reset before).

Forward, per step, with ``a = gx_t + W_hh h_{t-1} + b_hh`` split into gate blocks:

- RNN: ``h = tanh(a)`` or ``relu(a)``; saved ``y = h``.
- LSTM: ``i = σ(a_i + p_i c)``, ``f = σ(a_f + p_f c + forget_bias)`` (``1 - i`` if coupled), ``g = tanh(a_g)``,
  ``c' = f c + i g``, ``o = σ(a_o + p_o c')``, ``h = o tanh(c')``; saved ``i, f, g, o`` (``i, g, o`` if coupled).
- GRU: ``r = σ(a_r)``, ``z = σ(a_z)``, ``m = (W_hn h)_n + b_hn``, ``n = tanh(gx_n + r m)``,
  ``h = (1 - z) n + z h_{t-1}``; saved ``r, z, n, m``.
- GRU, reset before: ``r, z`` as above; then every program writes its slice of ``q = r h_{t-1}`` and waits at a
  second barrier, because ``n = tanh(gx_n + W_hn q + b_hn)`` needs all of ``q``; saved ``r, z, n`` and ``q``.

Backward runs time in reverse with the same tiling: from ``∂h_t`` and ``∂c_t`` of its tile a program forms the
pre-activation gradients of its gates (``dgx``, the gradient of ``gx``, and ``dgh``, that of ``W_hh h_{t-1}``;
they differ only in GRU's ``n`` block, ``dgh_n = r dgx_n``), writes them, waits at the barrier, and then forms
``∂h_{t-1} = W_hhᵀ dgh_t`` for its units from every program's ``dgh_t``. For GRU reset-before the ``n`` block goes
first, with a barrier of its own: ``∂q = W_hnᵀ dgx_n`` gives ``∂r = ∂q h_{t-1}`` and the direct term ``r ∂q``, and only
the ``r|z`` rows enter ``W_hhᵀ dgh_t``. The weight gradients are one GEMM over all steps afterwards (``ops.py``).

Where ``t >= lengths[b]`` a row keeps its state, outputs zero, and passes gradients through unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl

RNN, LSTM, GRU, GRU_BEFORE = 0, 1, 2, 3


@triton.jit
def _grid_barrier(counter_ptr, target):
    """Wait until ``target`` arrivals are counted: every program's global writes before it are then visible."""
    # The CTA barrier orders all threads' stores before the one release below (cooperative groups' grid sync).
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release")
    while tl.atomic_add(counter_ptr, 0, sem="acquire") < target:
        pass
    tl.debug_barrier()


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh(x) = 2σ(2x) - 1; exact at large |x|, where exp overflows to inf and the quotient goes to 0 or 2.
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _gate_tile(ptr, gate, rows, cols, row_mask, col_mask, H, width):
    """Load ``ptr[rows, gate*H + cols]`` of a ``(B, width)`` matrix as float32."""
    offs = rows[:, None] * width + gate * H + cols[None, :]
    return tl.load(ptr + offs, mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _store_tile(ptr, gate, rows, cols, row_mask, col_mask, H, width, value):
    offs = rows[:, None] * width + gate * H + cols[None, :]
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _recurrent_gates(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
                     NGATES: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """``(W_hh h)`` for the gate rows ``k·H + cols`` of every gate ``k``: up to four ``(BLOCK_B, BLOCK_J)`` tiles."""
    acc0 = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    acc1 = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    acc2 = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    acc3 = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + ks
        k_mask = kk < H
        # .cg: read from L2, never from a stale L1 line, since other programs wrote h_{t-1}.
        h = tl.load(h_ptr + rows[:, None] * H + kk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0,
                    cache_modifier=".cg").to(DOT_DTYPE)  # (BLOCK_B, BLOCK_K)
        w_offs = cols[None, :] * H + kk[:, None]  # (BLOCK_K, BLOCK_J): W_hh[k*H + cols, kk] transposed
        w_mask = k_mask[:, None] & col_mask[None, :]
        acc0 = tl.dot(h, tl.load(w_ptr + w_offs, mask=w_mask, other=0.0).to(DOT_DTYPE), acc0, input_precision=PRECISION)
        if NGATES > 1:
            acc1 = tl.dot(h, tl.load(w_ptr + H * H + w_offs, mask=w_mask, other=0.0).to(DOT_DTYPE), acc1,
                          input_precision=PRECISION)
        if NGATES > 2:
            acc2 = tl.dot(h, tl.load(w_ptr + 2 * H * H + w_offs, mask=w_mask, other=0.0).to(DOT_DTYPE), acc2,
                          input_precision=PRECISION)
        if NGATES > 3:
            acc3 = tl.dot(h, tl.load(w_ptr + 3 * H * H + w_offs, mask=w_mask, other=0.0).to(DOT_DTYPE), acc3,
                          input_precision=PRECISION)
    return acc0, acc1, acc2, acc3


@triton.jit
def forward_kernel(
    gx_ptr,  # (T, B, G·H) input projection of every step
    w_ptr,  # (G·H, H) weight_hh
    b_ptr,  # (G·H,) bias_hh (unused without HAS_BIAS)
    peep_ptr,  # (3, H) peephole weights p_i | p_f | p_o, float32 (unused without PEEPHOLE)
    len_ptr,  # (B,) int64 lengths (unused without HAS_LENGTHS)
    hs_ptr,  # (T+1, B, H) states h; hs[0] = h_0 on entry, hs[t+1] = state after step t
    cs_ptr,  # (T+1, B, H) float32 cell states, same layout (LSTM only)
    out_ptr,  # (T, B, H) outputs, zero where t >= lengths
    saved_ptr,  # (T, B, S·H) float32 activations for backward (written only with SAVE)
    q_ptr,  # (T, B, H) q = r h_{t-1} of GRU reset-before (unused otherwise)
    counter_ptr,  # int32 arrivals at the grid barrier, zero on entry
    t_start, t_stop, B, H, forget_bias,
    CELL: tl.constexpr, NGATES: tl.constexpr, NREC: tl.constexpr, NSAVED: tl.constexpr, RELU: tl.constexpr,
    COUPLED: tl.constexpr,
    PEEPHOLE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr, SAVE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_j = tl.cdiv(H, BLOCK_J)
    rows = (pid // n_j) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = (pid % n_j) * BLOCK_J + tl.arange(0, BLOCK_J)
    row_mask = rows < B
    col_mask = cols < H
    GH = NGATES * H
    BH = B * H

    b0 = tl.zeros((BLOCK_J,), tl.float32)
    b1 = b0
    b2 = b0
    b3 = b0
    if HAS_BIAS:
        b0 = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        if NGATES > 1:
            b1 = tl.load(b_ptr + H + cols, mask=col_mask, other=0.0).to(tl.float32)
        if NGATES > 2:
            b2 = tl.load(b_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(tl.float32)
        if NGATES > 3:
            b3 = tl.load(b_ptr + 3 * H + cols, mask=col_mask, other=0.0).to(tl.float32)
    p_i = tl.zeros((BLOCK_J,), tl.float32)
    p_f = p_i
    p_o = p_i
    if PEEPHOLE:
        p_i = tl.load(peep_ptr + cols, mask=col_mask, other=0.0)
        p_f = tl.load(peep_ptr + H + cols, mask=col_mask, other=0.0)
        p_o = tl.load(peep_ptr + 2 * H + cols, mask=col_mask, other=0.0)
    lengths = tl.zeros((BLOCK_B,), tl.int64)
    if HAS_LENGTHS:
        lengths = tl.load(len_ptr + rows, mask=row_mask, other=0)

    # This tile's own state, kept in registers across steps (h as stored, so a held state is bit-identical).
    h_own = _gate_tile(hs_ptr + t_start * BH, 0, rows, cols, row_mask, col_mask, H, H)
    c = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    if CELL == 1:
        c = _gate_tile(cs_ptr + t_start * BH, 0, rows, cols, row_mask, col_mask, H, H)

    barriers = 0
    for t in range(t_start, t_stop):
        # The NREC gate blocks that multiply h_{t-1} itself (all but GRU reset-before's n).
        acc0, acc1, acc2, acc3 = _recurrent_gates(hs_ptr + t * BH, w_ptr, rows, cols, row_mask, col_mask, H,
                                                  NREC, BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
        gx_t = gx_ptr + t * B * GH
        saved_t = saved_ptr + t * B * NSAVED * H
        a0 = _gate_tile(gx_t, 0, rows, cols, row_mask, col_mask, H, GH) + acc0 + b0[None, :]
        c_new = c
        if CELL == 0:
            if RELU:
                h_new = tl.maximum(a0, 0.0)
            else:
                h_new = _tanh(a0)
            if SAVE:
                _store_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, NSAVED * H, h_new)
        elif CELL == 1:
            a1 = _gate_tile(gx_t, 1, rows, cols, row_mask, col_mask, H, GH) + acc1 + b1[None, :]
            a2 = _gate_tile(gx_t, 2, rows, cols, row_mask, col_mask, H, GH) + acc2 + b2[None, :]
            if PEEPHOLE:
                a0 += p_i[None, :] * c
            i = _sigmoid(a0)
            if COUPLED:  # gate blocks i|g|o
                f = 1.0 - i
                g = _tanh(a1)
                a_o = a2
            else:  # gate blocks i|f|g|o
                a3 = _gate_tile(gx_t, 3, rows, cols, row_mask, col_mask, H, GH) + acc3 + b3[None, :]
                if PEEPHOLE:
                    a1 += p_f[None, :] * c
                f = _sigmoid(a1 + forget_bias)
                g = _tanh(a2)
                a_o = a3
            c_new = f * c + i * g
            if PEEPHOLE:
                a_o += p_o[None, :] * c_new
            o = _sigmoid(a_o)
            h_new = o * _tanh(c_new)
            if SAVE:
                _store_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, NSAVED * H, i)
                if COUPLED:
                    _store_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, NSAVED * H, g)
                    _store_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, NSAVED * H, o)
                else:
                    _store_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, NSAVED * H, f)
                    _store_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, NSAVED * H, g)
                    _store_tile(saved_t, 3, rows, cols, row_mask, col_mask, H, NSAVED * H, o)
        elif CELL == 3:
            r = _sigmoid(a0)
            z = _sigmoid(_gate_tile(gx_t, 1, rows, cols, row_mask, col_mask, H, GH) + acc1 + b1[None, :])
            _store_tile(q_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H, r * h_own)
            barriers += 1
            _grid_barrier(counter_ptr, barriers * n_programs)  # all of q = r h_{t-1} is written
            acc_n, _, _, _ = _recurrent_gates(q_ptr + t * BH, w_ptr + 2 * H * H, rows, cols, row_mask, col_mask, H,
                                              1, BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
            n = _tanh(_gate_tile(gx_t, 2, rows, cols, row_mask, col_mask, H, GH) + acc_n + b2[None, :])
            h_new = (1.0 - z) * n + z * h_own
            if SAVE:
                _store_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, NSAVED * H, r)
                _store_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, NSAVED * H, z)
                _store_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, NSAVED * H, n)
        else:
            a1 = _gate_tile(gx_t, 1, rows, cols, row_mask, col_mask, H, GH) + acc1 + b1[None, :]
            r = _sigmoid(a0)
            z = _sigmoid(a1)
            m = acc2 + b2[None, :]
            n = _tanh(_gate_tile(gx_t, 2, rows, cols, row_mask, col_mask, H, GH) + r * m)
            h_new = (1.0 - z) * n + z * h_own
            if SAVE:
                _store_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, NSAVED * H, r)
                _store_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, NSAVED * H, z)
                _store_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, NSAVED * H, n)
                _store_tile(saved_t, 3, rows, cols, row_mask, col_mask, H, NSAVED * H, m)
        # Round h to the storage dtype once, so the own copy equals what the other programs read.
        h_new = h_new.to(hs_ptr.dtype.element_ty).to(tl.float32)
        out = h_new
        if HAS_LENGTHS:
            active = (t < lengths)[:, None]
            h_new = tl.where(active, h_new, h_own)
            c_new = tl.where(active, c_new, c)
            out = tl.where(active, h_new, 0.0)
        _store_tile(hs_ptr + (t + 1) * BH, 0, rows, cols, row_mask, col_mask, H, H, h_new)
        _store_tile(out_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H, out)
        if CELL == 1:
            _store_tile(cs_ptr + (t + 1) * BH, 0, rows, cols, row_mask, col_mask, H, H, c_new)
        h_own = h_new
        c = c_new
        if t + 1 < t_stop:
            barriers += 1
            _grid_barrier(counter_ptr, barriers * n_programs)


@triton.jit
def _recurrent_grad(dgh_ptr, w_ptr, rows, cols, row_mask, col_mask, H, K, GH,
                    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                    DOT_DTYPE: tl.constexpr):
    """``W_hhᵀ dgh`` for this tile's units: Σ over the first ``K`` gate rows ``k`` (from ``w_ptr``, ``dgh_ptr``) of
    ``dgh[:, k] W_hh[k, cols]``; ``dgh`` rows are ``GH`` apart."""
    acc = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        k_mask = kk < K
        dg = tl.load(dgh_ptr + rows[:, None] * GH + kk[None, :], mask=row_mask[:, None] & k_mask[None, :],
                     other=0.0, cache_modifier=".cg")  # (BLOCK_B, BLOCK_K), written by every program
        w = tl.load(w_ptr + kk[:, None] * H + cols[None, :], mask=k_mask[:, None] & col_mask[None, :],
                    other=0.0)  # (BLOCK_K, BLOCK_J)
        acc = tl.dot(dg.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=PRECISION)
    return acc


@triton.jit
def backward_kernel(
    dout_ptr,  # (T, B, H) gradient of the outputs
    dh_ptr,  # (B, H) float32 in/out: ∂L/∂h pending (without the term W_hhᵀ dgh of the step after); ∂L/∂h_0 at the end
    dc_ptr,  # (B, H) float32 in/out: ∂L/∂c carried backwards; ∂L/∂c_0 at the end (LSTM only)
    w_ptr,  # (G·H, H) weight_hh
    peep_ptr,  # (3, H) float32 peephole weights
    len_ptr,  # (B,) int64 lengths
    hs_ptr,  # (T+1, B, H) states from the forward
    cs_ptr,  # (T+1, B, H) float32 cell states from the forward
    saved_ptr,  # (T, B, S·H) float32 activations from the forward
    dgx_ptr,  # (T, B, G·H) out: gradient of gx (in the weights' dtype)
    dgh_ptr,  # (T, B, G·H) out: gradient of W_hh h_{t-1} (the same buffer as dgx unless GRU)
    counter_ptr,  # int32 arrivals at the grid barrier, zero on entry
    t_lo, t_hi, T, B, H,
    CELL: tl.constexpr, NGATES: tl.constexpr, NREC: tl.constexpr, NSAVED: tl.constexpr, RELU: tl.constexpr,
    COUPLED: tl.constexpr,
    PEEPHOLE: tl.constexpr, HAS_LENGTHS: tl.constexpr, FINAL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Steps ``t_hi-1`` down to ``t_lo``; with ``FINAL`` also the last ``W_hhᵀ dgh_0`` that completes ``∂L/∂h_0``."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_j = tl.cdiv(H, BLOCK_J)
    rows = (pid // n_j) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = (pid % n_j) * BLOCK_J + tl.arange(0, BLOCK_J)
    row_mask = rows < B
    col_mask = cols < H
    GH = NGATES * H
    BH = B * H
    SH = NSAVED * H

    p_i = tl.zeros((BLOCK_J,), tl.float32)
    p_f = p_i
    p_o = p_i
    if PEEPHOLE:
        p_i = tl.load(peep_ptr + cols, mask=col_mask, other=0.0)
        p_f = tl.load(peep_ptr + H + cols, mask=col_mask, other=0.0)
        p_o = tl.load(peep_ptr + 2 * H + cols, mask=col_mask, other=0.0)
    lengths = tl.zeros((BLOCK_B,), tl.int64)
    if HAS_LENGTHS:
        lengths = tl.load(len_ptr + rows, mask=row_mask, other=0)

    dh_pending = _gate_tile(dh_ptr, 0, rows, cols, row_mask, col_mask, H, H)
    dc_carry = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    if CELL == 1:
        dc_carry = _gate_tile(dc_ptr, 0, rows, cols, row_mask, col_mask, H, H)
    barriers = 0

    for s in range(T - t_hi, T - t_lo):
        t = T - 1 - s
        dh = dh_pending
        if t + 1 < T:
            if s > T - t_hi:  # dgh_{t+1} was written in this launch: wait for every program's part
                barriers += 1
                _grid_barrier(counter_ptr, barriers * n_programs)
            dh += _recurrent_grad(dgh_ptr + (t + 1) * B * GH, w_ptr, rows, cols, row_mask, col_mask, H, NREC * H,
                                  GH, BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
        saved_t = saved_ptr + t * B * SH
        dgx_t = dgx_ptr + t * B * GH
        dgh_t = dgh_ptr + t * B * GH
        active = tl.full((BLOCK_B, 1), 1, tl.int1)
        if HAS_LENGTHS:
            active = (t < lengths)[:, None]
        dh += tl.where(active, _gate_tile(dout_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H), 0.0)
        dc_prev = dc_carry
        if CELL == 0:
            y = _gate_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, SH)
            if RELU:
                da0 = tl.where(y > 0.0, dh, 0.0)
            else:
                da0 = dh * (1.0 - y * y)
            _store_tile(dgx_t, 0, rows, cols, row_mask, col_mask, H, GH, tl.where(active, da0, 0.0))
            dh_direct = tl.where(active, 0.0, dh)
        elif CELL == 1:
            c_prev = _gate_tile(cs_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H)
            c_new = _gate_tile(cs_ptr + (t + 1) * BH, 0, rows, cols, row_mask, col_mask, H, H)
            i = _gate_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, SH)
            if COUPLED:
                g = _gate_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, SH)
                o = _gate_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, SH)
                f = 1.0 - i
            else:
                f = _gate_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, SH)
                g = _gate_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, SH)
                o = _gate_tile(saved_t, 3, rows, cols, row_mask, col_mask, H, SH)
            tc = _tanh(c_new)
            da_o = dh * tc * o * (1.0 - o)
            dc = dc_carry + dh * o * (1.0 - tc * tc)
            if PEEPHOLE:
                dc += da_o * p_o[None, :]
            da_g = dc * i * (1.0 - g * g)
            df = dc * c_prev
            dc_new_prev = dc * f
            if COUPLED:  # f = 1 - i, so ∂L/∂i gains -∂L/∂f
                da_i = (dc * g - df) * i * (1.0 - i)
            else:
                da_i = dc * g * i * (1.0 - i)
                da_f = df * f * (1.0 - f)
            if PEEPHOLE:
                dc_new_prev += da_i * p_i[None, :]
                if not COUPLED:
                    dc_new_prev += da_f * p_f[None, :]
            dc_prev = tl.where(active, dc_new_prev, dc_carry)
            _store_tile(dgx_t, 0, rows, cols, row_mask, col_mask, H, GH, tl.where(active, da_i, 0.0))
            if COUPLED:
                _store_tile(dgx_t, 1, rows, cols, row_mask, col_mask, H, GH, tl.where(active, da_g, 0.0))
                _store_tile(dgx_t, 2, rows, cols, row_mask, col_mask, H, GH, tl.where(active, da_o, 0.0))
            else:
                _store_tile(dgx_t, 1, rows, cols, row_mask, col_mask, H, GH, tl.where(active, da_f, 0.0))
                _store_tile(dgx_t, 2, rows, cols, row_mask, col_mask, H, GH, tl.where(active, da_g, 0.0))
                _store_tile(dgx_t, 3, rows, cols, row_mask, col_mask, H, GH, tl.where(active, da_o, 0.0))
            dh_direct = tl.where(active, 0.0, dh)
        elif CELL == 3:
            r = _gate_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, SH)
            z = _gate_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, SH)
            n = _gate_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, SH)
            h_prev = _gate_tile(hs_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H)
            da_n = tl.where(active, dh * (1.0 - z) * (1.0 - n * n), 0.0)
            da_z = tl.where(active, dh * (h_prev - n) * z * (1.0 - z), 0.0)
            _store_tile(dgx_t, 1, rows, cols, row_mask, col_mask, H, GH, da_z)
            _store_tile(dgx_t, 2, rows, cols, row_mask, col_mask, H, GH, da_n)
            barriers += 1
            _grid_barrier(counter_ptr, barriers * n_programs)  # all of dgx_n is written
            # ∂q = W_hnᵀ dgx_n for this tile's units, q = r h_{t-1}
            dq = _recurrent_grad(dgx_t + 2 * H, w_ptr + 2 * H * H, rows, cols, row_mask, col_mask, H, H, GH,
                                 BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
            _store_tile(dgx_t, 0, rows, cols, row_mask, col_mask, H, GH,
                        tl.where(active, dq * h_prev * r * (1.0 - r), 0.0))
            dh_direct = tl.where(active, dq * r + dh * z, dh)
        else:
            r = _gate_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, SH)
            z = _gate_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, SH)
            n = _gate_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, SH)
            m = _gate_tile(saved_t, 3, rows, cols, row_mask, col_mask, H, SH)
            h_prev = _gate_tile(hs_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H)
            da_n = tl.where(active, dh * (1.0 - z) * (1.0 - n * n), 0.0)
            da_z = tl.where(active, dh * (h_prev - n) * z * (1.0 - z), 0.0)
            da_r = da_n * m * r * (1.0 - r)
            _store_tile(dgx_t, 0, rows, cols, row_mask, col_mask, H, GH, da_r)
            _store_tile(dgx_t, 1, rows, cols, row_mask, col_mask, H, GH, da_z)
            _store_tile(dgx_t, 2, rows, cols, row_mask, col_mask, H, GH, da_n)
            _store_tile(dgh_t, 0, rows, cols, row_mask, col_mask, H, GH, da_r)
            _store_tile(dgh_t, 1, rows, cols, row_mask, col_mask, H, GH, da_z)
            _store_tile(dgh_t, 2, rows, cols, row_mask, col_mask, H, GH, da_n * r)
            dh_direct = tl.where(active, dh * z, dh)
        dh_pending = dh_direct
        dc_carry = dc_prev

    if FINAL:
        if t_hi > t_lo:
            barriers += 1
            _grid_barrier(counter_ptr, barriers * n_programs)
        dh_pending += _recurrent_grad(dgh_ptr, w_ptr, rows, cols, row_mask, col_mask, H, NREC * H, GH,
                                      BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
    _store_tile(dh_ptr, 0, rows, cols, row_mask, col_mask, H, H, dh_pending)
    if CELL == 1:
        _store_tile(dc_ptr, 0, rows, cols, row_mask, col_mask, H, H, dc_carry)
