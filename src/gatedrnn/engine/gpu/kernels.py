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

Layer norm (``LAYER_NORM``): ``a = gx_t + LN_hh(W_hh h_{t-1}) + b_hh`` (a GRU's ``LN_hh`` is ``LN_rz`` over the
``r|z`` rows and ``LN_n`` over the ``n`` rows) and an LSTM's ``h = o tanh(LN_c(c'))``. A row spans the programs of
its batch tile, so each writes partial statistics of its columns (``_ln_partials``), meets the others at a
barrier, and merges them (``_ln_stats``); backward does the same with the row sums ``Σ dx̂``, ``Σ dx̂ x̂``
(``_ln_hh_grad_partials``, ``_row_sums``) and writes ``dy``, the gradient of ``W_hh h_{t-1}`` itself.

Projection (``PROJ``, LSTM): ``h = W_hr u`` with ``u = o tanh(LN_c(c'))``, the state ``P`` wide: each program
writes its units of ``u``, meets the others, and forms its slice of ``h`` from all of ``u``; backward writes its
slice of ``∂h_t``, meets the others, and forms ``∂u = W_hrᵀ ∂h_t`` for its units.

These barriers inside a step split it into stages; see ``forward_kernel``'s docstring.

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
def _recurrent_gates(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H, K,
                     NGATES: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """``(W h)`` for the rows ``k·H + cols`` of every gate ``k`` of ``W`` (``(NGATES·H, K)``), ``h`` being ``(B, K)``:
    up to four ``(BLOCK_B, BLOCK_J)`` tiles."""
    acc0 = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    acc1 = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    acc2 = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    acc3 = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        k_mask = kk < K
        # .cg: read from L2, never from a stale L1 line, since other programs wrote h_{t-1}.
        h = tl.load(h_ptr + rows[:, None] * K + kk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0,
                    cache_modifier=".cg").to(DOT_DTYPE)  # (BLOCK_B, BLOCK_K)
        w_offs = cols[None, :] * K + kk[:, None]  # (BLOCK_K, BLOCK_J): W[k*H + cols, kk] transposed
        w_mask = k_mask[:, None] & col_mask[None, :]
        acc0 = tl.dot(h, tl.load(w_ptr + w_offs, mask=w_mask, other=0.0).to(DOT_DTYPE), acc0, input_precision=PRECISION)
        if NGATES > 1:
            acc1 = tl.dot(h, tl.load(w_ptr + H * K + w_offs, mask=w_mask, other=0.0).to(DOT_DTYPE), acc1,
                          input_precision=PRECISION)
        if NGATES > 2:
            acc2 = tl.dot(h, tl.load(w_ptr + 2 * H * K + w_offs, mask=w_mask, other=0.0).to(DOT_DTYPE), acc2,
                          input_precision=PRECISION)
        if NGATES > 3:
            acc3 = tl.dot(h, tl.load(w_ptr + 3 * H * K + w_offs, mask=w_mask, other=0.0).to(DOT_DTYPE), acc3,
                          input_precision=PRECISION)
    return acc0, acc1, acc2, acc3


@triton.jit
def _store_row_pair(part_ptr, slot, rows, row_mask, B, v0, v1):
    """Write this program's two per-row values ``(v0, v1)`` to ``part[slot, rows, :]`` of a ``(slots, B, 2)`` buffer."""
    offs = slot * B * 2 + rows * 2
    tl.store(part_ptr + offs, v0, mask=row_mask)
    tl.store(part_ptr + offs + 1, v1, mask=row_mask)


@triton.jit
def _ln_partials(part_ptr, slot, rows, cols, row_mask, col_mask, B, H, x0, x1, x2, x3, NG: tl.constexpr):
    """Mean and sum of squared deviations (M2) over this program's columns of the ``NG`` tiles ``x0..x3``, per row:
    the numerically safe partial statistics of a layer norm (no ``E[x²] - E[x]²`` cancellation)."""
    valid = row_mask[:, None] & col_mask[None, :]
    n = tl.sum(col_mask.to(tl.float32), axis=0) * NG
    total = tl.sum(tl.where(valid, x0, 0.0), axis=1)
    if NG > 1:
        total += tl.sum(tl.where(valid, x1, 0.0), axis=1)
    if NG > 2:
        total += tl.sum(tl.where(valid, x2, 0.0), axis=1)
    if NG > 3:
        total += tl.sum(tl.where(valid, x3, 0.0), axis=1)
    mean = total / n
    d = tl.where(valid, x0 - mean[:, None], 0.0)
    m2 = tl.sum(d * d, axis=1)
    if NG > 1:
        d = tl.where(valid, x1 - mean[:, None], 0.0)
        m2 += tl.sum(d * d, axis=1)
    if NG > 2:
        d = tl.where(valid, x2 - mean[:, None], 0.0)
        m2 += tl.sum(d * d, axis=1)
    if NG > 3:
        d = tl.where(valid, x3 - mean[:, None], 0.0)
        m2 += tl.sum(d * d, axis=1)
    _store_row_pair(part_ptr, slot, rows, row_mask, B, mean, m2)


@triton.jit
def _ln_stats(part_ptr, rows, row_mask, B, H, eps, NG: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    """Mean and ``rstd = 1/sqrt(var + eps)`` of whole rows of width ``NG·H`` from every program's partials
    (``_ln_partials``), merged as in Chan et al.: ``M2 = Σ_p M2_p + n_p (mean_p - mean)²``."""
    n_j = tl.cdiv(H, BLOCK_J)
    total = tl.zeros((BLOCK_B,), tl.float32)
    for jj in range(0, n_j):
        n_p = (tl.minimum(BLOCK_J, H - jj * BLOCK_J) * NG).to(tl.float32)
        total += n_p * tl.load(part_ptr + jj * B * 2 + rows * 2, mask=row_mask, other=0.0, cache_modifier=".cg")
    mean = total / (NG * H)
    m2 = tl.zeros((BLOCK_B,), tl.float32)
    for jj in range(0, n_j):
        n_p = (tl.minimum(BLOCK_J, H - jj * BLOCK_J) * NG).to(tl.float32)
        offs = jj * B * 2 + rows * 2
        mean_p = tl.load(part_ptr + offs, mask=row_mask, other=0.0, cache_modifier=".cg")
        m2 += tl.load(part_ptr + offs + 1, mask=row_mask, other=0.0, cache_modifier=".cg")
        m2 += n_p * (mean_p - mean) * (mean_p - mean)
    return mean, 1.0 / tl.sqrt(m2 / (NG * H) + eps)


@triton.jit
def _row_sums(part_ptr, rows, row_mask, B, H, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    """Sums over every program of the per-row pairs written by ``_store_row_pair``."""
    s0 = tl.zeros((BLOCK_B,), tl.float32)
    s1 = tl.zeros((BLOCK_B,), tl.float32)
    for jj in range(0, tl.cdiv(H, BLOCK_J)):
        offs = jj * B * 2 + rows * 2
        s0 += tl.load(part_ptr + offs, mask=row_mask, other=0.0, cache_modifier=".cg")
        s1 += tl.load(part_ptr + offs + 1, mask=row_mask, other=0.0, cache_modifier=".cg")
    return s0, s1


@triton.jit
def _ln_apply(x, mean, rstd, ln_ptr, gate, cols, col_mask, H, xhat_ptr, rows, row_mask, width, SAVE: tl.constexpr):
    """``x̂ w + b`` of one gate tile, with ``x̂ = (x - mean) rstd`` (saved for backward with ``SAVE``)."""
    xhat = (x - mean[:, None]) * rstd[:, None]
    if SAVE:
        _store_tile(xhat_ptr, gate, rows, cols, row_mask, col_mask, H, width, xhat)
    w = tl.load(ln_ptr + gate * H + cols, mask=col_mask, other=0.0)
    b = tl.load(ln_ptr + width + gate * H + cols, mask=col_mask, other=0.0)
    return xhat * w[None, :] + b[None, :]


@triton.jit
def forward_kernel(
    gx_ptr,  # (T, B, G·H) input projection of every step
    w_ptr,  # (G·H, S) weight_hh; S = P (proj_size) with PROJ, else H
    w_hr_ptr,  # (P, H) weight_hr (unused without PROJ)
    b_ptr,  # (G·H,) bias_hh (unused without HAS_BIAS)
    peep_ptr,  # (3, H) peephole weights p_i | p_f | p_o, float32 (unused without PEEPHOLE)
    ln_ptr,  # (2·G·H + 2·H,) float32 layer-norm weights w_hh | b_hh | w_c | b_c (unused without LAYER_NORM)
    len_ptr,  # (B,) int64 lengths (unused without HAS_LENGTHS)
    hs_ptr,  # (T+1, B, S) states h; hs[0] = h_0 on entry, hs[t+1] = state after step t
    cs_ptr,  # (T+1, B, H) float32 cell states, same layout (LSTM only)
    out_ptr,  # (T, B, S) outputs, zero where t >= lengths
    saved_ptr,  # (T, B, NSAVED·H) float32 activations for backward (written only with SAVE)
    q_ptr,  # (T, B, H) q = r h_{t-1} of GRU reset-before (unused otherwise)
    us_ptr,  # (T, B, H) u = o tanh(c_t), the projection's input (PROJ)
    xhat_ptr,  # (T, B, G·H) float32 x̂ of LN_hh (written only with LAYER_NORM and SAVE)
    stats_ptr,  # (T, B, 3) float32 rstd of LN_hh, mean and rstd of LN_c (written only with LAYER_NORM and SAVE)
    part_ptr,  # (2, n_j, B, 2) float32 partial row statistics of LN_hh and LN_c (LAYER_NORM)
    scratch_ptr,  # (B, G·H + H) float32: W_hh h_{t-1} | o, carried between the stages of a SPLIT step
    counter_ptr,  # int32 arrivals at the grid barrier, zero on entry
    t_start, t_stop, B, H, S, forget_bias, eps,
    CELL: tl.constexpr, NGATES: tl.constexpr, NREC: tl.constexpr, NSAVED: tl.constexpr, RELU: tl.constexpr,
    COUPLED: tl.constexpr,
    PEEPHOLE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr, SAVE: tl.constexpr,
    LAYER_NORM: tl.constexpr, PROJ: tl.constexpr, SPLIT: tl.constexpr, STAGE: tl.constexpr,
    NSTAGES: tl.constexpr, PW_STAGE: tl.constexpr, U_STAGE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Steps ``t_start … t_stop-1``. A step with a layer norm or a projection has ``NSTAGES`` stages separated by
    barriers (the layer norms' row statistics; all of ``u`` before ``W_hr u``); with ``SPLIT`` this launch runs
    only stage ``STAGE`` of one step (the launch boundary is the barrier, and what crosses it goes through memory).
    The cell's gates are computed in stage ``PW_STAGE``, an LSTM's ``u = o tanh(LN_c(c_t))`` in stage ``U_STAGE``
    (``h_t = W_hr u`` in the last stage)."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_j = tl.cdiv(H, BLOCK_J)
    pid_j = pid % n_j
    rows = (pid // n_j) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    row_mask = rows < B
    col_mask = cols < H
    s_mask = cols < S  # this program's units of the state h (of the projection's output with PROJ)
    GH = NGATES * H
    BH = B * H
    BS = B * S

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
    h_own = _gate_tile(hs_ptr + t_start * BS, 0, rows, cols, row_mask, s_mask, S, S)
    c = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    if CELL == 1:
        c = _gate_tile(cs_ptr + t_start * BH, 0, rows, cols, row_mask, col_mask, H, H)

    barriers = 0
    for t in range(t_start, t_stop):
        gx_t = gx_ptr + t * B * GH
        saved_t = saved_ptr + t * B * NSAVED * H
        active = tl.full((BLOCK_B, 1), 1, tl.int1)
        if HAS_LENGTHS:
            active = (t < lengths)[:, None]
        if not SPLIT or STAGE == 0:
            # The NREC gate blocks that multiply h_{t-1} itself (all but GRU reset-before's n).
            acc0, acc1, acc2, acc3 = _recurrent_gates(hs_ptr + t * BS, w_ptr, rows, cols, row_mask, col_mask, H, S,
                                                      NREC, BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
            if LAYER_NORM:
                # LN_hh normalises the whole gate row y = W_hh h_{t-1} (G·H wide), which spans n_j programs; a
                # GRU's is two layer norms, LN_rz over the r|z rows and LN_n over the n rows (partials in part[1]).
                if CELL == 2:
                    _ln_partials(part_ptr, pid_j, rows, cols, row_mask, col_mask, B, H, acc0, acc1, acc1, acc1, 2)
                    _ln_partials(part_ptr + n_j * B * 2, pid_j, rows, cols, row_mask, col_mask, B, H, acc2, acc2,
                                 acc2, acc2, 1)
                else:
                    _ln_partials(part_ptr, pid_j, rows, cols, row_mask, col_mask, B, H, acc0, acc1, acc2, acc3,
                                 NREC)
                if SPLIT:
                    _store_tile(scratch_ptr, 0, rows, cols, row_mask, col_mask, H, GH + H, acc0)
                    if NREC > 1:
                        _store_tile(scratch_ptr, 1, rows, cols, row_mask, col_mask, H, GH + H, acc1)
                    if NREC > 2:
                        _store_tile(scratch_ptr, 2, rows, cols, row_mask, col_mask, H, GH + H, acc2)
                    if NREC > 3:
                        _store_tile(scratch_ptr, 3, rows, cols, row_mask, col_mask, H, GH + H, acc3)
                else:
                    barriers += 1
                    _grid_barrier(counter_ptr, barriers * n_programs)  # every program's partials are written
        if LAYER_NORM and (not SPLIT or STAGE == 1):
            if SPLIT:
                acc0 = _gate_tile(scratch_ptr, 0, rows, cols, row_mask, col_mask, H, GH + H)
                if NREC > 1:
                    acc1 = _gate_tile(scratch_ptr, 1, rows, cols, row_mask, col_mask, H, GH + H)
                if NREC > 2:
                    acc2 = _gate_tile(scratch_ptr, 2, rows, cols, row_mask, col_mask, H, GH + H)
                if NREC > 3:
                    acc3 = _gate_tile(scratch_ptr, 3, rows, cols, row_mask, col_mask, H, GH + H)
            if CELL == 2:
                mean, rstd = _ln_stats(part_ptr, rows, row_mask, B, H, eps, 2, BLOCK_B, BLOCK_J)
                mean_n, rstd_n = _ln_stats(part_ptr + n_j * B * 2, rows, row_mask, B, H, eps, 1, BLOCK_B, BLOCK_J)
            else:
                mean, rstd = _ln_stats(part_ptr, rows, row_mask, B, H, eps, NREC, BLOCK_B, BLOCK_J)
                mean_n = mean
                rstd_n = rstd
            xhat_t = xhat_ptr + t * B * GH
            acc0 = _ln_apply(acc0, mean, rstd, ln_ptr, 0, cols, col_mask, H, xhat_t, rows, row_mask, GH, SAVE)
            if NREC > 1:
                acc1 = _ln_apply(acc1, mean, rstd, ln_ptr, 1, cols, col_mask, H, xhat_t, rows, row_mask, GH, SAVE)
            if NREC > 2:
                acc2 = _ln_apply(acc2, mean_n, rstd_n, ln_ptr, 2, cols, col_mask, H, xhat_t, rows, row_mask, GH,
                                 SAVE)
            if NREC > 3:
                acc3 = _ln_apply(acc3, mean, rstd, ln_ptr, 3, cols, col_mask, H, xhat_t, rows, row_mask, GH, SAVE)
            if SAVE:
                if pid_j == 0:  # every program of the row has the same statistics; the first one writes them
                    tl.store(stats_ptr + t * B * 3 + rows * 3, rstd, mask=row_mask)
                    if CELL == 2:
                        tl.store(stats_ptr + t * B * 3 + rows * 3 + 1, mean_n, mask=row_mask)
                        tl.store(stats_ptr + t * B * 3 + rows * 3 + 2, rstd_n, mask=row_mask)
        if not SPLIT or STAGE >= PW_STAGE:
            c_new = c
            if CELL == 0:
                a0 = _gate_tile(gx_t, 0, rows, cols, row_mask, col_mask, H, GH) + acc0 + b0[None, :]
                if RELU:
                    h_new = tl.where(a0 < 0.0, 0.0, a0)  # NaN passes, as torch.relu (max would drop it)
                else:
                    h_new = _tanh(a0)
                if SAVE:
                    _store_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, NSAVED * H, h_new)
            elif CELL == 1:
                if not SPLIT or STAGE == PW_STAGE:
                    a0 = _gate_tile(gx_t, 0, rows, cols, row_mask, col_mask, H, GH) + acc0 + b0[None, :]
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
                    c_new = tl.where(active, f * c + i * g, c)
                    if PEEPHOLE:
                        a_o += p_o[None, :] * c_new
                    o = _sigmoid(a_o)
                    _store_tile(cs_ptr + (t + 1) * BH, 0, rows, cols, row_mask, col_mask, H, H, c_new)
                    if SAVE:
                        _store_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, NSAVED * H, i)
                        if COUPLED:
                            _store_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, NSAVED * H, g)
                            _store_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, NSAVED * H, o)
                        else:
                            _store_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, NSAVED * H, f)
                            _store_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, NSAVED * H, g)
                            _store_tile(saved_t, 3, rows, cols, row_mask, col_mask, H, NSAVED * H, o)
                    if LAYER_NORM:
                        # LN_c normalises c_t over its H units, which span the n_j programs of the row.
                        _ln_partials(part_ptr + n_j * B * 2, pid_j, rows, cols, row_mask, col_mask, B, H,
                                     c_new, c_new, c_new, c_new, 1)
                        if SPLIT:
                            _store_tile(scratch_ptr, NGATES, rows, cols, row_mask, col_mask, H, GH + H, o)
                        else:
                            barriers += 1
                            _grid_barrier(counter_ptr, barriers * n_programs)  # every partial of c_t is written
                if not SPLIT or STAGE == U_STAGE:  # u = o tanh(LN_c(c_t)), h_t itself without projection
                    if LAYER_NORM:
                        if SPLIT:
                            o = _gate_tile(scratch_ptr, NGATES, rows, cols, row_mask, col_mask, H, GH + H)
                            c_new = _gate_tile(cs_ptr + (t + 1) * BH, 0, rows, cols, row_mask, col_mask, H, H)
                        mean_c, rstd_c = _ln_stats(part_ptr + n_j * B * 2, rows, row_mask, B, H, eps, 1, BLOCK_B,
                                                   BLOCK_J)
                        if SAVE:
                            if pid_j == 0:
                                tl.store(stats_ptr + t * B * 3 + rows * 3 + 1, mean_c, mask=row_mask)
                                tl.store(stats_ptr + t * B * 3 + rows * 3 + 2, rstd_c, mask=row_mask)
                        w_c = tl.load(ln_ptr + 2 * GH + cols, mask=col_mask, other=0.0)
                        b_c = tl.load(ln_ptr + 2 * GH + H + cols, mask=col_mask, other=0.0)
                        u = o * _tanh((c_new - mean_c[:, None]) * rstd_c[:, None] * w_c[None, :] + b_c[None, :])
                    else:
                        u = o * _tanh(c_new)
                    if PROJ:
                        # h_t = W_hr u needs every program's units of u.
                        _store_tile(us_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H, u)
                        if not SPLIT:
                            barriers += 1
                            _grid_barrier(counter_ptr, barriers * n_programs)  # all of u is written
                    else:
                        h_new = u
                if PROJ:
                    if not SPLIT or STAGE == NSTAGES - 1:
                        # This program's units of h_t = W_hr u (the programs past P have none).
                        h_new, _, _, _ = _recurrent_gates(us_ptr + t * BH, w_hr_ptr, rows, cols, row_mask, s_mask, H,
                                                          H, 1, BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
            elif CELL == 3:
                a0 = _gate_tile(gx_t, 0, rows, cols, row_mask, col_mask, H, GH) + acc0 + b0[None, :]
                r = _sigmoid(a0)
                z = _sigmoid(_gate_tile(gx_t, 1, rows, cols, row_mask, col_mask, H, GH) + acc1 + b1[None, :])
                _store_tile(q_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H, r * h_own)
                barriers += 1
                _grid_barrier(counter_ptr, barriers * n_programs)  # all of q = r h_{t-1} is written
                acc_n, _, _, _ = _recurrent_gates(q_ptr + t * BH, w_ptr + 2 * H * H, rows, cols, row_mask, col_mask,
                                                  H, H, 1, BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
                if LAYER_NORM:  # LN_n over the n rows W_hn q, a third round of partials in this step
                    _ln_partials(part_ptr + n_j * B * 2, pid_j, rows, cols, row_mask, col_mask, B, H, acc_n, acc_n,
                                 acc_n, acc_n, 1)
                    barriers += 1
                    _grid_barrier(counter_ptr, barriers * n_programs)  # LN_n's partials are written
                    mean_n, rstd_n = _ln_stats(part_ptr + n_j * B * 2, rows, row_mask, B, H, eps, 1, BLOCK_B,
                                               BLOCK_J)
                    acc_n = _ln_apply(acc_n, mean_n, rstd_n, ln_ptr, 2, cols, col_mask, H, xhat_t, rows, row_mask,
                                      GH, SAVE)
                    if SAVE:
                        if pid_j == 0:
                            tl.store(stats_ptr + t * B * 3 + rows * 3 + 1, mean_n, mask=row_mask)
                            tl.store(stats_ptr + t * B * 3 + rows * 3 + 2, rstd_n, mask=row_mask)
                n = _tanh(_gate_tile(gx_t, 2, rows, cols, row_mask, col_mask, H, GH) + acc_n + b2[None, :])
                h_new = (1.0 - z) * n + z * h_own
                if SAVE:
                    _store_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, NSAVED * H, r)
                    _store_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, NSAVED * H, z)
                    _store_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, NSAVED * H, n)
            else:
                a0 = _gate_tile(gx_t, 0, rows, cols, row_mask, col_mask, H, GH) + acc0 + b0[None, :]
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
        if not SPLIT or STAGE == NSTAGES - 1:
            # Round h to the storage dtype once, so the own copy equals what the other programs read.
            h_new = h_new.to(hs_ptr.dtype.element_ty).to(tl.float32)
            h_new = tl.where(active, h_new, h_own)
            out = tl.where(active, h_new, 0.0)
            _store_tile(hs_ptr + (t + 1) * BS, 0, rows, cols, row_mask, s_mask, S, S, h_new)
            _store_tile(out_ptr + t * BS, 0, rows, cols, row_mask, s_mask, S, S, out)
            h_own = h_new
            c = c_new
            if t + 1 < t_stop:
                barriers += 1
                _grid_barrier(counter_ptr, barriers * n_programs)


@triton.jit
def _grad_row_sums(d, xhat, w, valid):
    """Per row, ``Σ dx̂`` and ``Σ dx̂ x̂`` over the valid columns of one tile, with ``dx̂ = d w``."""
    dx = tl.where(valid, d * w[None, :], 0.0)
    return tl.sum(dx, axis=1), tl.sum(dx * xhat, axis=1)


@triton.jit
def _ln_hh_grad_partials(part_ptr, slot, rows, cols, row_mask, col_mask, B, H, GH, ln_ptr, xhat_ptr, d0, d1, d2,
                         d3, NG: tl.constexpr):
    """This program's parts of ``LN_hh``'s row sums ``Σ dx̂`` and ``Σ dx̂ x̂`` over its columns of the ``NG`` gate
    tiles ``d0..d3`` (gradients of the layer norm's output), written to ``part[slot]``."""
    valid = row_mask[:, None] & col_mask[None, :]
    w = tl.load(ln_ptr + cols, mask=col_mask, other=0.0)
    s0, s1 = _grad_row_sums(d0, _gate_tile(xhat_ptr, 0, rows, cols, row_mask, col_mask, H, GH), w, valid)
    if NG > 1:
        w = tl.load(ln_ptr + H + cols, mask=col_mask, other=0.0)
        u0, u1 = _grad_row_sums(d1, _gate_tile(xhat_ptr, 1, rows, cols, row_mask, col_mask, H, GH), w, valid)
        s0 += u0
        s1 += u1
    if NG > 2:
        w = tl.load(ln_ptr + 2 * H + cols, mask=col_mask, other=0.0)
        u0, u1 = _grad_row_sums(d2, _gate_tile(xhat_ptr, 2, rows, cols, row_mask, col_mask, H, GH), w, valid)
        s0 += u0
        s1 += u1
    if NG > 3:
        w = tl.load(ln_ptr + 3 * H + cols, mask=col_mask, other=0.0)
        u0, u1 = _grad_row_sums(d3, _gate_tile(xhat_ptr, 3, rows, cols, row_mask, col_mask, H, GH), w, valid)
        s0 += u0
        s1 += u1
    _store_row_pair(part_ptr, slot, rows, row_mask, B, s0, s1)


@triton.jit
def _ln_grad_input(d, xhat, w, rstd, mean_dx, mean_dx_xhat):
    """``∂L/∂x`` of a layer norm from ``d = ∂L/∂(x̂ w + b)``: ``rstd (d w - mean(d w) - x̂ mean(d w x̂))``."""
    return rstd[:, None] * (d * w[None, :] - mean_dx[:, None] - xhat * mean_dx_xhat[:, None])


@triton.jit
def _ln_hh_grad_tile(gate, dgh_t, dy_t, xhat_t, ln_ptr, rows, cols, row_mask, col_mask, H, GH, rstd, mean_dx,
                     mean_dx_xhat):
    """``dy = ∂L/∂(W_hh h_{t-1})`` of one gate tile from ``dgh``, the gradient of ``LN_hh``'s output."""
    d = _gate_tile(dgh_t, gate, rows, cols, row_mask, col_mask, H, GH)
    xhat = _gate_tile(xhat_t, gate, rows, cols, row_mask, col_mask, H, GH)
    w = tl.load(ln_ptr + gate * H + cols, mask=col_mask, other=0.0)
    _store_tile(dy_t, gate, rows, cols, row_mask, col_mask, H, GH, _ln_grad_input(d, xhat, w, rstd, mean_dx,
                                                                                  mean_dx_xhat))


@triton.jit
def _gru_gate_grads(saved_t, h_prev_ptr, dh, active, rows, cols, row_mask, col_mask, H, SH):
    """A GRU step's saved gates ``r, z, n``, ``h_{t-1}``, and the gradients of the pre-activations of ``n`` and ``z``
    from ``h = (1 - z) n + z h_{t-1}`` (zero past a row's length): ``da_n = dh (1 - z)(1 - n²)``,
    ``da_z = dh (h_{t-1} - n) z (1 - z)``; both reset forms."""
    r = _gate_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, SH)
    z = _gate_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, SH)
    n = _gate_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, SH)
    h_prev = _gate_tile(h_prev_ptr, 0, rows, cols, row_mask, col_mask, H, H)
    da_n = tl.where(active, dh * (1.0 - z) * (1.0 - n * n), 0.0)
    da_z = tl.where(active, dh * (h_prev - n) * z * (1.0 - z), 0.0)
    return r, z, n, h_prev, da_n, da_z


@triton.jit
def _recurrent_grad(dgh_ptr, w_ptr, rows, cols, row_mask, col_mask, H, K, GH,
                    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                    DOT_DTYPE: tl.constexpr):
    """``Wᵀ dgh`` for this tile's units: Σ over the first ``K`` rows ``k`` of ``W`` (from ``w_ptr``, rows ``H``
    apart) of ``dgh[:, k] W[k, cols]``; ``dgh`` rows are ``GH`` apart."""
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
    dout_ptr,  # (T, B, S) gradient of the outputs
    dh_ptr,  # (B, S) float32 in/out: ∂L/∂h pending (without the term W_hhᵀ dy of the step after); ∂L/∂h_0 at the end
    dc_ptr,  # (B, H) float32 in/out: ∂L/∂c carried backwards; ∂L/∂c_0 at the end (LSTM only)
    w_ptr,  # (G·H, S) weight_hh; S = P (proj_size) with PROJ, else H
    w_hr_ptr,  # (P, H) weight_hr (unused without PROJ)
    peep_ptr,  # (3, H) float32 peephole weights
    ln_ptr,  # (2·G·H + 2·H,) float32 layer-norm weights w_hh | b_hh | w_c | b_c (unused without LAYER_NORM)
    len_ptr,  # (B,) int64 lengths
    hs_ptr,  # (T+1, B, H) states from the forward
    cs_ptr,  # (T+1, B, H) float32 cell states from the forward
    saved_ptr,  # (T, B, S·H) float32 activations from the forward
    xhat_ptr,  # (T, B, G·H) float32 x̂ of LN_hh from the forward (LAYER_NORM)
    stats_ptr,  # (T, B, 3) float32 rstd of LN_hh, mean and rstd of LN_c from the forward (LAYER_NORM)
    part_ptr,  # (2, n_j, B, 2) float32 partial row sums of the two layer norms' gradients (LAYER_NORM)
    dgx_ptr,  # (T, B, G·H) out: gradient of gx (in the weights' dtype)
    dgh_ptr,  # (T, B, G·H) out: gradient of LN_hh(W_hh h_{t-1}) + b_hh (the same buffer as dgx for RNN, LSTM)
    dy_ptr,  # (T, B, G·H) out: gradient of W_hh h_{t-1} (the same buffer as dgh without LAYER_NORM)
    dcn_ptr,  # (T, B, H) float32 out: gradient of LN_c's output (LSTM with LAYER_NORM)
    dhs_ptr,  # (T, B, P) out: ∂L/∂h_t, zero where t >= lengths, in the weights' dtype (PROJ)
    counter_ptr,  # int32 arrivals at the grid barrier, zero on entry
    t_lo, t_hi, T, B, H, S,
    CELL: tl.constexpr, NGATES: tl.constexpr, NREC: tl.constexpr, NSAVED: tl.constexpr, RELU: tl.constexpr,
    COUPLED: tl.constexpr,
    PEEPHOLE: tl.constexpr, HAS_LENGTHS: tl.constexpr, FINAL: tl.constexpr,
    LAYER_NORM: tl.constexpr, PROJ: tl.constexpr, SPLIT: tl.constexpr, STAGE: tl.constexpr,
    NSTAGES: tl.constexpr, PW_STAGE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Steps ``t_hi-1`` down to ``t_lo``; with ``FINAL`` also the last ``W_hhᵀ dy_0`` that completes ``∂L/∂h_0``.

    A step with a layer norm or a projection has ``NSTAGES`` stages separated by barriers (a projected LSTM:
    all of ``∂L/∂h_t`` before ``W_hrᵀ ∂L/∂h_t``; a layer-norm LSTM: ``LN_c``'s row sums, then ``LN_hh``'s; others:
    ``LN_hh``'s); with ``SPLIT`` this launch runs only stage ``STAGE`` of one step, and ``dh`` carries the step's
    whole ``∂L/∂h_t`` from a layer-norm LSTM's stage 0 to its stage 1. The gates' gradients are formed in stage
    ``PW_STAGE``."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_j = tl.cdiv(H, BLOCK_J)
    pid_j = pid % n_j
    rows = (pid // n_j) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    row_mask = rows < B
    col_mask = cols < H
    s_mask = cols < S  # this program's units of the state h (of the projection's output with PROJ)
    GH = NGATES * H
    BH = B * H
    BS = B * S
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

    dh_pending = _gate_tile(dh_ptr, 0, rows, cols, row_mask, s_mask, S, S)
    dc_carry = tl.zeros((BLOCK_B, BLOCK_J), tl.float32)
    if CELL == 1:
        dc_carry = _gate_tile(dc_ptr, 0, rows, cols, row_mask, col_mask, H, H)
    barriers = 0

    for s in range(T - t_hi, T - t_lo):
        t = T - 1 - s
        dh = dh_pending
        active = tl.full((BLOCK_B, 1), 1, tl.int1)
        if HAS_LENGTHS:
            active = (t < lengths)[:, None]
        if not SPLIT or STAGE == 0:
            if t + 1 < T:
                if s > T - t_hi:  # dy_{t+1} was written in this launch: wait for every program's part
                    barriers += 1
                    _grid_barrier(counter_ptr, barriers * n_programs)
                dh += _recurrent_grad(dy_ptr + (t + 1) * B * GH, w_ptr, rows, cols, row_mask, s_mask, S,
                                      NREC * H, GH, BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
            dh += tl.where(active, _gate_tile(dout_ptr + t * BS, 0, rows, cols, row_mask, s_mask, S, S), 0.0)
        saved_t = saved_ptr + t * B * SH
        dgx_t = dgx_ptr + t * B * GH
        dgh_t = dgh_ptr + t * B * GH
        xhat_t = xhat_ptr + t * B * GH
        dc_prev = dc_carry
        dh_direct = dh
        if PROJ:
            dhs_t = dhs_ptr + t * BS
            if not SPLIT or STAGE == 0:
                _store_tile(dhs_t, 0, rows, cols, row_mask, s_mask, S, S, tl.where(active, dh, 0.0))
                dh_direct = tl.where(active, 0.0, dh)
                if not SPLIT:
                    barriers += 1
                    _grid_barrier(counter_ptr, barriers * n_programs)  # all of ∂L/∂h_t is written
            if (not SPLIT or STAGE == PW_STAGE) or (LAYER_NORM and STAGE == PW_STAGE - 1):
                # From here on dh is ∂L/∂u = W_hrᵀ ∂L/∂h_t for this tile's units of u = o tanh(LN_c(c_t)) (formed
                # in both stages of a SPLIT layer-norm step, not carried between them).
                dh = _recurrent_grad(dhs_t, w_hr_ptr, rows, cols, row_mask, col_mask, H, S, S, BLOCK_B, BLOCK_J,
                                     BLOCK_K, PRECISION, DOT_DTYPE)
        if CELL == 1:
            if (not SPLIT or STAGE == PW_STAGE) or (LAYER_NORM and STAGE == PW_STAGE - 1):
                c_new = _gate_tile(cs_ptr + (t + 1) * BH, 0, rows, cols, row_mask, col_mask, H, H)
                o = _gate_tile(saved_t, NGATES - 1, rows, cols, row_mask, col_mask, H, SH)
                if LAYER_NORM:
                    # h = o tanh(LN_c(c)), LN_c(c) = ĉ w_c + b_c with ĉ = (c - mean_c) rstd_c over the row's H units
                    mean_c = tl.load(stats_ptr + t * B * 3 + rows * 3 + 1, mask=row_mask, other=0.0)
                    rstd_c = tl.load(stats_ptr + t * B * 3 + rows * 3 + 2, mask=row_mask, other=0.0)
                    c_hat = (c_new - mean_c[:, None]) * rstd_c[:, None]
                    w_c = tl.load(ln_ptr + 2 * GH + cols, mask=col_mask, other=0.0)
                    b_c = tl.load(ln_ptr + 2 * GH + H + cols, mask=col_mask, other=0.0)
                    tc = _tanh(c_hat * w_c[None, :] + b_c[None, :])
                    dcn = tl.where(active, dh * o * (1.0 - tc * tc), 0.0)  # ∂L/∂LN_c(c)
                    if not SPLIT or STAGE == PW_STAGE - 1:
                        _store_tile(dcn_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H, dcn)
                        s0, s1 = _grad_row_sums(dcn, c_hat, w_c, row_mask[:, None] & col_mask[None, :])
                        _store_row_pair(part_ptr + n_j * B * 2, pid_j, rows, row_mask, B, s0, s1)
                        if not SPLIT:
                            barriers += 1
                            _grid_barrier(counter_ptr, barriers * n_programs)  # LN_c's partial sums are written
                else:
                    tc = _tanh(c_new)
            if not SPLIT or STAGE == PW_STAGE:
                c_prev = _gate_tile(cs_ptr + t * BH, 0, rows, cols, row_mask, col_mask, H, H)
                i = _gate_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, SH)
                if COUPLED:
                    g = _gate_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, SH)
                    f = 1.0 - i
                else:
                    f = _gate_tile(saved_t, 1, rows, cols, row_mask, col_mask, H, SH)
                    g = _gate_tile(saved_t, 2, rows, cols, row_mask, col_mask, H, SH)
                da_o = dh * tc * o * (1.0 - o)
                if LAYER_NORM:
                    sum_dx, sum_dx_xhat = _row_sums(part_ptr + n_j * B * 2, rows, row_mask, B, H, BLOCK_B, BLOCK_J)
                    dc = dc_carry + _ln_grad_input(dcn, c_hat, w_c, rstd_c, sum_dx / H, sum_dx_xhat / H)
                else:
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
                d0 = tl.where(active, da_i, 0.0)
                if COUPLED:
                    d1 = tl.where(active, da_g, 0.0)
                    d2 = tl.where(active, da_o, 0.0)
                    d3 = d2
                else:
                    d1 = tl.where(active, da_f, 0.0)
                    d2 = tl.where(active, da_g, 0.0)
                    d3 = tl.where(active, da_o, 0.0)
                _store_tile(dgx_t, 0, rows, cols, row_mask, col_mask, H, GH, d0)
                _store_tile(dgx_t, 1, rows, cols, row_mask, col_mask, H, GH, d1)
                _store_tile(dgx_t, 2, rows, cols, row_mask, col_mask, H, GH, d2)
                if not COUPLED:
                    _store_tile(dgx_t, 3, rows, cols, row_mask, col_mask, H, GH, d3)
                if not PROJ:
                    dh_direct = tl.where(active, 0.0, dh)
        elif not SPLIT or STAGE == PW_STAGE:
            if CELL == 0:
                y = _gate_tile(saved_t, 0, rows, cols, row_mask, col_mask, H, SH)
                if RELU:
                    da0 = tl.where(y <= 0.0, 0.0, dh)
                else:
                    da0 = dh * (1.0 - y * y)
                d0 = tl.where(active, da0, 0.0)
                d1 = d0
                d2 = d0
                d3 = d0
                _store_tile(dgx_t, 0, rows, cols, row_mask, col_mask, H, GH, d0)
                dh_direct = tl.where(active, 0.0, dh)
            elif CELL == 3:
                r, z, n, h_prev, da_n, da_z = _gru_gate_grads(saved_t, hs_ptr + t * BH, dh, active, rows, cols,
                                                              row_mask, col_mask, H, SH)
                _store_tile(dgx_t, 1, rows, cols, row_mask, col_mask, H, GH, da_z)
                _store_tile(dgx_t, 2, rows, cols, row_mask, col_mask, H, GH, da_n)
                dgx_n = dgx_t + 2 * H  # ∂L/∂(W_hn q), rows GH apart
                if LAYER_NORM:
                    # Through LN_n first: its row sums over the n units of every program, then dy_n.
                    dt = dgh_ptr.dtype.element_ty
                    d_n = da_n.to(dt).to(tl.float32)  # as the last stage reads it back
                    _ln_hh_grad_partials(part_ptr + n_j * B * 2, pid_j, rows, cols, row_mask, col_mask, B, H, GH,
                                         ln_ptr + 2 * H, xhat_t + 2 * H, d_n, d_n, d_n, d_n, 1)
                    barriers += 1
                    _grid_barrier(counter_ptr, barriers * n_programs)  # LN_n's partial sums are written
                    sum_dx, sum_dx_xhat = _row_sums(part_ptr + n_j * B * 2, rows, row_mask, B, H, BLOCK_B, BLOCK_J)
                    rstd_n = tl.load(stats_ptr + t * B * 3 + rows * 3 + 2, mask=row_mask, other=0.0)
                    _ln_hh_grad_tile(2, dgh_t, dy_ptr + t * B * GH, xhat_t, ln_ptr, rows, cols, row_mask, col_mask,
                                     H, GH, rstd_n, sum_dx / H, sum_dx_xhat / H)
                    dgx_n = dy_ptr + t * B * GH + 2 * H
                barriers += 1
                _grid_barrier(counter_ptr, barriers * n_programs)  # all of dgx_n (dy_n) is written
                # ∂q = W_hnᵀ dgx_n for this tile's units, q = r h_{t-1}
                dq = _recurrent_grad(dgx_n, w_ptr + 2 * H * H, rows, cols, row_mask, col_mask, H, H, GH,
                                     BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
                da_r = tl.where(active, dq * h_prev * r * (1.0 - r), 0.0)
                _store_tile(dgx_t, 0, rows, cols, row_mask, col_mask, H, GH, da_r)
                dh_direct = tl.where(active, dq * r + dh * z, dh)
                if LAYER_NORM:  # LN_rz's gradient below, over the r|z rows
                    d0 = da_r
                    d1 = da_z
                    d2 = da_z
                    d3 = da_z
            else:
                r, z, n, h_prev, da_n, da_z = _gru_gate_grads(saved_t, hs_ptr + t * BH, dh, active, rows, cols,
                                                              row_mask, col_mask, H, SH)
                m = _gate_tile(saved_t, 3, rows, cols, row_mask, col_mask, H, SH)
                da_r = da_n * m * r * (1.0 - r)
                d0 = da_r
                d1 = da_z
                d2 = da_n * r  # ∂L/∂m: m = (LN_hh(W_hh h) + b_hh)_n enters as r m
                d3 = d2
                _store_tile(dgx_t, 0, rows, cols, row_mask, col_mask, H, GH, da_r)
                _store_tile(dgx_t, 1, rows, cols, row_mask, col_mask, H, GH, da_z)
                _store_tile(dgx_t, 2, rows, cols, row_mask, col_mask, H, GH, da_n)
                _store_tile(dgh_t, 0, rows, cols, row_mask, col_mask, H, GH, d0)
                _store_tile(dgh_t, 1, rows, cols, row_mask, col_mask, H, GH, d1)
                _store_tile(dgh_t, 2, rows, cols, row_mask, col_mask, H, GH, d2)
                dh_direct = tl.where(active, dh * z, dh)
        if LAYER_NORM:
            if not SPLIT or STAGE == PW_STAGE:
                # dgh is stored in the weights' dtype: take the row sums of the values the last stage reads back.
                dt = dgh_ptr.dtype.element_ty
                d0 = d0.to(dt).to(tl.float32)
                d1 = d1.to(dt).to(tl.float32)
                d2 = d2.to(dt).to(tl.float32)
                d3 = d3.to(dt).to(tl.float32)
                if CELL == 2:  # LN_rz over the r|z rows, LN_n over the n rows
                    _ln_hh_grad_partials(part_ptr, pid_j, rows, cols, row_mask, col_mask, B, H, GH, ln_ptr, xhat_t,
                                         d0, d1, d1, d1, 2)
                    _ln_hh_grad_partials(part_ptr + n_j * B * 2, pid_j, rows, cols, row_mask, col_mask, B, H, GH,
                                         ln_ptr + 2 * H, xhat_t + 2 * H, d2, d2, d2, d2, 1)
                else:
                    _ln_hh_grad_partials(part_ptr, pid_j, rows, cols, row_mask, col_mask, B, H, GH, ln_ptr, xhat_t,
                                         d0, d1, d2, d3, NREC)
                if not SPLIT:
                    barriers += 1
                    _grid_barrier(counter_ptr, barriers * n_programs)  # LN_hh's partial sums are written
            if not SPLIT or STAGE == NSTAGES - 1:
                sum_dx, sum_dx_xhat = _row_sums(part_ptr, rows, row_mask, B, H, BLOCK_B, BLOCK_J)
                rstd = tl.load(stats_ptr + t * B * 3 + rows * 3, mask=row_mask, other=0.0)
                dy_t = dy_ptr + t * B * GH
                if CELL == 2:
                    _ln_hh_grad_tile(0, dgh_t, dy_t, xhat_t, ln_ptr, rows, cols, row_mask, col_mask, H, GH, rstd,
                                     sum_dx / (2 * H), sum_dx_xhat / (2 * H))
                    _ln_hh_grad_tile(1, dgh_t, dy_t, xhat_t, ln_ptr, rows, cols, row_mask, col_mask, H, GH, rstd,
                                     sum_dx / (2 * H), sum_dx_xhat / (2 * H))
                    sum_dx, sum_dx_xhat = _row_sums(part_ptr + n_j * B * 2, rows, row_mask, B, H, BLOCK_B, BLOCK_J)
                    rstd = tl.load(stats_ptr + t * B * 3 + rows * 3 + 2, mask=row_mask, other=0.0)
                    _ln_hh_grad_tile(2, dgh_t, dy_t, xhat_t, ln_ptr, rows, cols, row_mask, col_mask, H, GH, rstd,
                                     sum_dx / H, sum_dx_xhat / H)
                else:
                    for k in tl.static_range(NREC):
                        _ln_hh_grad_tile(k, dgh_t, dy_t, xhat_t, ln_ptr, rows, cols, row_mask, col_mask, H, GH, rstd,
                                         sum_dx / (NREC * H), sum_dx_xhat / (NREC * H))
        dh_pending = dh_direct
        dc_carry = dc_prev

    if FINAL:
        if t_hi > t_lo:
            barriers += 1
            _grid_barrier(counter_ptr, barriers * n_programs)
        dh_pending += _recurrent_grad(dy_ptr, w_ptr, rows, cols, row_mask, s_mask, S, NREC * H, GH,
                                      BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, DOT_DTYPE)
    _store_tile(dh_ptr, 0, rows, cols, row_mask, s_mask, S, S, dh_pending)
    if CELL == 1:
        _store_tile(dc_ptr, 0, rows, cols, row_mask, col_mask, H, H, dc_carry)
