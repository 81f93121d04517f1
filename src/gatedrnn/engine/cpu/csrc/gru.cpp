// GRU recurrence (cells/gru.py, reset "after" or "before", optional layer norm), forward and backward.
//
// Gate blocks r|z|n as in torch.nn.GRU. reset="after": one GEMM gh = h W_hh^T per step and one fused pass.
// reset="before": W_hn multiplies r*h, which exists only after r, so a step is GEMM(r|z rows), pass, GEMM(n
// rows), pass. Layer norm of the recurrent part is over the r|z block (2H) and the n block (H) separately.
#include <torch/library.h>

#include "common.h"
#include "team.h"

namespace gatedrnn {
namespace {

template <typename T>
void forward_impl(StepInput<T>& input, const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& ln_w,
                  const OptTensor& ln_b, const OptTensor& ln_ih_w, const OptTensor& ln_ih_s, bool before,
                  const int64_t* lengths, Tensor& h_state, Tensor& out, Tensor& gates, Tensor& aux, Tensor& xhat,
                  Tensor& rstd, Tensor& stats_ih, bool save) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2), G = 3 * H;
  const T* bias = ptr_or_null<T>(b_hh);
  const T *lnw = ptr_or_null<T>(ln_w), *lnb = ptr_or_null<T>(ln_b);
  const T *lniw = ptr_or_null<T>(ln_ih_w), *lnis = ptr_or_null<T>(ln_ih_s);  // fused LN_ih: gx holds W_ih x
  auto opts = h_state.options();
  Tensor gx_norm = lniw ? at::empty({B, G}, opts) : Tensor();  // (B, 3H): this step's LN_ih(W_ih x)
  Tensor w_rz = w_hh.narrow(0, 0, 2 * H), w_n = w_hh.narrow(0, 2 * H, H);
  Tensor gh = at::empty({B, before ? 2 * H : G}, opts);  // (B, 2H) or (B, 3H)
  Tensor ghn = at::empty({B, H}, opts);                   // reset-before: W_hn (r*h), (B, H)
  Tensor gate_scratch = save ? Tensor() : at::empty({B, G}, opts);
  Tensor aux_scratch = save ? Tensor() : at::empty({B, H}, opts);
  T* hs = h_state.data_ptr<T>();
  const int64_t ghw = gh.size(1);
  const StepProduct<T> recurrent(before ? w_rz : w_hh, /*transposed=*/true, B, T_);  // h W_hh^T (r|z if before)
  std::optional<StepProduct<T>> candidate;                                             // reset-before: (r*h) W_hn^T
  if (before) candidate.emplace(w_n, /*transposed=*/true, B, T_);

  for (int64_t t = 0; t < T_; ++t) {
    recurrent(hs, H, gh.data_ptr<T>(), /*accumulate=*/false);
    const T* x_t = input(t);
    T* gt = save ? step_row<T>(gates, t, 0, G) : gate_scratch.data_ptr<T>();
    // aux: reset-after keeps LN_n(W_hn h) + b_hn (dr needs it); reset-before keeps r*h (the factor of dW_hn).
    T* auxt = save ? step_row<T>(aux, t, 0, H) : aux_scratch.data_ptr<T>();
    T* xh = save && lnw ? step_row<T>(xhat, t, 0, G) : nullptr;
    T* rs = save && lnw ? step_row<T>(rstd, t, 0, 2) : nullptr;
    T* outt = step_row<T>(out, t, 0, H);
    // First pass: r and z (and for reset-after the whole step).
    at::parallel_for(0, B, row_grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!active(lengths, b, t)) continue;
        T* a = gh.data_ptr<T>() + b * ghw;
        if (lnw) {
          layer_norm_row(a, 2 * H, lnw, lnb, xh ? xh + b * G : nullptr, rs ? rs + 2 * b : nullptr);
          if (!before) {
            layer_norm_row(a + 2 * H, H, lnw + 2 * H, lnb + 2 * H, xh ? xh + b * G + 2 * H : nullptr,
                           rs ? rs + 2 * b + 1 : nullptr);
          }
        }
        const T* x = x_t + b * G;
        if (lniw) {
          x = input_norm_row(x, G, lniw, lnis, gx_norm.data_ptr<T>() + b * G,
                             save ? step_row<T>(stats_ih, t, b, 2) : nullptr);
        }
        const T* h = hs + b * H;
        T* gr = gt + b * G;
        T* au = auxt + b * H;
        add_(gr, x, a, bias, 2 * H);
        sigmoid_(gr, 2 * H);  // r|z
        const T* r = gr;
        const T* z = gr + H;
        if (before) {
          for (int64_t j = 0; j < H; ++j) au[j] = r[j] * h[j];
          continue;
        }
        const T* ghn_raw = a + 2 * H;
        if (bias) {
          for (int64_t j = 0; j < H; ++j) au[j] = ghn_raw[j] + bias[2 * H + j];
        } else {
          std::copy(ghn_raw, ghn_raw + H, au);
        }
        T* n = gr + 2 * H;
        for (int64_t j = 0; j < H; ++j) n[j] = x[2 * H + j] + r[j] * au[j];
        tanh_(n, H);
        T* o = outt + b * H;
        for (int64_t j = 0; j < H; ++j) o[j] = (T(1) - z[j]) * n[j] + z[j] * h[j];
      }
    });
    if (before) {
      (*candidate)(auxt, H, ghn.data_ptr<T>(), /*accumulate=*/false);
      at::parallel_for(0, B, row_grain(G), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (!active(lengths, b, t)) continue;
          T* a = ghn.data_ptr<T>() + b * H;
          if (lnw) {
            layer_norm_row(a, H, lnw + 2 * H, lnb + 2 * H, xh ? xh + b * G + 2 * H : nullptr,
                           rs ? rs + 2 * b + 1 : nullptr);
          }
          const T* x = lniw ? gx_norm.data_ptr<T>() + b * G : x_t + b * G;  // normalised by the first pass
          const T* h = hs + b * H;
          T* gr = gt + b * G;
          const T* z = gr + H;
          T* n = gr + 2 * H;
          add_(n, x + 2 * H, a, bias ? bias + 2 * H : nullptr, H);
          tanh_(n, H);
          T* o = outt + b * H;
          for (int64_t j = 0; j < H; ++j) o[j] = (T(1) - z[j]) * n[j] + z[j] * h[j];
        }
      });
    }
    for (int64_t b = 0; b < B; ++b) {
      if (active(lengths, b, t)) {
        std::copy(outt + b * H, outt + (b + 1) * H, hs + b * H);
      } else {
        std::fill(outt + b * H, outt + (b + 1) * H, T(0));
      }
    }
  }
}

// The small-batch recurrence (team.h), without layer norm (its statistics are over whole rows). Member k computes
// the gates of its units [j0, j1) from its own rows of W_hh:
//   r = σ(x_r + W_hr h + b_hr)        z = σ(x_z + W_hz h + b_hz)
//   after:  a = W_hn h + b_hn,  n = tanh(x_n + r ⊙ a)
//   before: n = tanh(x_n + W_hn (r ⊙ h) + b_hn), where W_hn needs all of r ⊙ h: the members exchange it at a
//           second sync in the step
//   h' = (1 - z) ⊙ n + z ⊙ h
// Outputs and saved tensors are those of forward_impl.
template <typename T>
void forward_team(int threads, const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh, bool before,
                  const int64_t* lengths, Tensor& h_state, Tensor& out, Tensor& gates, Tensor& aux, bool save) {
  const int64_t T_ = gx.size(0), B = gx.size(1), G = gx.size(2), H = G / 3;
  auto opts = gx.options();
  const Tensor zero_bias = b_hh.has_value() && b_hh->defined() ? Tensor() : at::zeros({G}, opts);
  const T* bias = zero_bias.defined() ? zero_bias.data_ptr<T>() : b_hh->data_ptr<T>();
  Tensor h_other = at::empty({B, H}, opts);  // (B, H): h_t at odd t; h_state holds h_t at even t
  T* hbuf[2] = {h_state.data_ptr<T>(), h_other.data_ptr<T>()};
  // Without saving, one step's gates (B, 3H) and aux (B, H): each member writes its own columns; reset-before reads
  // all of aux (r ⊙ h) after the sync.
  Tensor gate_scratch = save ? Tensor() : at::empty({B, G}, opts);
  Tensor aux_scratch = save ? Tensor() : at::empty({B, H}, opts);
  const T* gxp = gx.data_ptr<T>();
  T* outp = out.data_ptr<T>();
  const T* w = w_hh.data_ptr<T>();
  const int64_t ld = w_hh.stride(0);

  run_team(threads, H, line_units<T>(), [&](TeamMember& m) {
    const int64_t j0 = m.j0, nk = m.units();
    // r|z|n rows (r|z when reset-before: its n rows multiply r ⊙ h, a second product)
    SliceProduct<T> recurrent(w, ld, H, before ? std::vector<int64_t>{0, H} : std::vector<int64_t>{0, H, 2 * H}, j0,
                              m.j1, B, /*slot=*/0);
    std::optional<SliceProduct<T>> candidate;
    if (before) candidate.emplace(w, ld, H, std::vector<int64_t>{2 * H}, j0, m.j1, B, /*slot=*/1);
    const T *br = bias + j0, *bz = bias + H + j0, *bn = bias + 2 * H + j0;
    for (int64_t t = 0; t < T_; ++t) {
      const T* hp = hbuf[t % 2];
      T* hn = hbuf[(t + 1) % 2];
      T* gt = save ? gates.data_ptr<T>() + t * B * G : gate_scratch.data_ptr<T>();
      T* auxt = save ? aux.data_ptr<T>() + t * B * H : aux_scratch.data_ptr<T>();
      for (int64_t b = 0; b < B && nk > 0; ++b) {
        const T* h = hp + b * H + j0;
        T* o_out = outp + (t * B + b) * H + j0;
        if (!active(lengths, b, t)) {
          std::copy(h, h + nk, hn + b * H + j0);
          std::fill(o_out, o_out + nk, T(0));
          continue;
        }
        const T* y = recurrent(hp + b * H, b);
        const T* x = gxp + (t * B + b) * G + j0;
        T* gr = gt + b * G + j0;
        T* au = auxt + b * H + j0;
        T* h_new = hn + b * H + j0;
        if (before) {
          #pragma omp simd
          for (int64_t j = 0; j < nk; ++j) {
            const T r = sigmoid(x[j] + y[j] + br[j]);
            gr[j] = r;
            gr[H + j] = sigmoid(x[H + j] + y[nk + j] + bz[j]);
            au[j] = r * h[j];
          }
        } else {
          #pragma omp simd
          for (int64_t j = 0; j < nk; ++j) {
            const T r = sigmoid(x[j] + y[j] + br[j]);
            const T z = sigmoid(x[H + j] + y[nk + j] + bz[j]);
            const T a = y[2 * nk + j] + bn[j];
            const T n = tanh(x[2 * H + j] + r * a);
            const T hj = (T(1) - z) * n + z * h[j];
            gr[j] = r;
            gr[H + j] = z;
            gr[2 * H + j] = n;
            au[j] = a;
            h_new[j] = hj;
            o_out[j] = hj;
          }
        }
      }
      if (before) {
        m.sync();  // all of r ⊙ h_{t-1} is written
        for (int64_t b = 0; b < B && nk > 0; ++b) {
          if (!active(lengths, b, t)) continue;
          const T* y = (*candidate)(auxt + b * H, b);
          const T* x = gxp + (t * B + b) * G + j0;
          const T* h = hp + b * H + j0;
          T* gr = gt + b * G + j0;
          T* h_new = hn + b * H + j0;
          T* o_out = outp + (t * B + b) * H + j0;
          #pragma omp simd
          for (int64_t j = 0; j < nk; ++j) {
            const T n = tanh(x[2 * H + j] + y[j] + bn[j]);
            const T z = gr[H + j];
            const T hj = (T(1) - z) * n + z * h[j];
            gr[2 * H + j] = n;
            h_new[j] = hj;
            o_out[j] = hj;
          }
        }
      }
      m.sync();  // h_t complete: the next step reads all of it, and overwrites h_{t-1}
    }
  });
  if (T_ % 2) h_state.copy_(h_other);
}

// Saved tensors (what backward needs, and why):
//   gates (T,B,3H)   activated r, z, n: the local derivatives of the cell
//   aux   (T,B,H)    reset-after: LN_n(W_hn h_{t-1}) + b_hn, the factor of dr; reset-before: r*h_{t-1}, the
//                    right factor of dW_hn
//   out   (T,B,H)    h_t (the output, kept anyway): h_{t-1} for dz, for dr (before) and for dW_hh
//   xhat (T,B,3H), rstd (T,B,2)   layer_norm only: LN backward of the r|z and n blocks
//   stats_ih (T,B,2)              mean and 1/std of each row of W_ih x (fused LN_ih only): backward rebuilds
//                                 LN_ih's xhat from them and W_ih x, which the caller keeps
// With ln_ih_w and ln_ih_s (LN_ih's gain, and its shift + b_ih) given, gx is W_ih x and LN_ih runs in the kernel.
std::vector<Tensor> gru_forward(const Tensor& gx, const Tensor& h0, const Tensor& w_hh, const OptTensor& b_hh,
                                const OptTensor& ln_w, const OptTensor& ln_b, const OptTensor& ln_ih_w,
                                const OptTensor& ln_ih_s, bool before, const OptTensor& lengths, bool save) {
  const int64_t T_ = gx.size(0), B = gx.size(1), G = gx.size(2), H = G / 3;
  const int64_t* len = ptr_or_null<int64_t>(lengths);
  const bool zero = len != nullptr;
  const bool ln = ln_w.has_value() && ln_w->defined();
  auto opts = gx.options();
  Tensor h_state = h0.clone();
  Tensor out = buffer({T_, B, H}, opts, false);
  Tensor none = none_like(gx);
  Tensor gates = save ? buffer({T_, B, G}, opts, zero) : none;
  Tensor aux = save ? buffer({T_, B, H}, opts, zero) : none;
  Tensor xhat = save && ln ? buffer({T_, B, G}, opts, zero) : none;
  Tensor rstd = save && ln ? buffer({T_, B, 2}, opts, zero) : none;
  const bool ln_ih = ln_ih_w.has_value() && ln_ih_w->defined();
  Tensor stats_ih = save && ln_ih ? buffer({T_, B, 2}, opts, zero) : none;
  const int team = team_size(ln || ln_ih, T_, B, H);
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "gru_forward", [&] {
    if (team) {
      forward_team<scalar_t>(team, gx, w_hh, b_hh, before, len, h_state, out, gates, aux, save);
      return;
    }
    for_batch_slices(B, int64_t(w_hh.nbytes()), [&](int64_t b0, int64_t n) {
      StepInput<scalar_t> input(batch_rows(gx, b0, n));
      Tensor h = state_rows(h_state, b0, n), o = batch_rows(out, b0, n), g = batch_rows(gates, b0, n);
      Tensor a = batch_rows(aux, b0, n), xh = batch_rows(xhat, b0, n), rs = batch_rows(rstd, b0, n);
      Tensor st = batch_rows(stats_ih, b0, n);
      forward_impl<scalar_t>(input, w_hh, b_hh, ln_w, ln_b, ln_ih_w, ln_ih_s, before, len ? len + b0 : nullptr, h, o,
                             g, a, xh, rs, st, save);
    });
  });
  return {out, h_state, gates, aux, xhat, rstd, stats_ih};
}

// gru_forward without saving, from the layer's input x (T, B, I) rather than gx (b_ih left out by the caller with
// LN_ih given, as for gru_forward): the time loop forms the input projection a chunk of steps at a time
// (StepInput); where the team runs the call, it is one GEMM first (input_product). Returns out, h_n.
std::vector<Tensor> gru_forward_input(const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih, const Tensor& h0,
                                      const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& ln_w,
                                      const OptTensor& ln_b, const OptTensor& ln_ih_w, const OptTensor& ln_ih_s,
                                      bool before, const OptTensor& lengths) {
  const bool row_wide = (ln_w.has_value() && ln_w->defined()) || (ln_ih_w.has_value() && ln_ih_w->defined());
  auto whole = [&](const Tensor& gx) {
    return gru_forward(gx, h0, w_hh, b_hh, ln_w, ln_b, ln_ih_w, ln_ih_s, before, lengths, false);
  };
  auto chunks = [&](auto& input, Tensor& h_state, Tensor& out, const int64_t* len) {
    using T = typename std::decay_t<decltype(input)>::Scalar;
    Tensor unsaved = none_like(x);
    forward_impl<T>(input, w_hh, b_hh, ln_w, ln_b, ln_ih_w, ln_ih_s, before, len, h_state, out, unsaved, unsaved,
                    unsaved, unsaved, unsaved, false);
  };
  return forward_from_input("gru_forward_input", x, w_ih, b_ih, h0, w_hh, lengths, row_wide, whole, chunks);
}

// dW_hh += the steps t0..t0+n-1 of the weight gradient, from dgh holding those steps (n, B, 3H) (add_weight_grad):
// sum_t dgh_t^T h_{t-1} for every row block (reset-after) or the r|z rows (reset-before), whose n rows get
// sum_t dgh_n,t^T (r*h_{t-1}), r*h being aux.
inline void weight_grad(Tensor& dw_hh, const Tensor& dgh, int64_t t0, int64_t n, const Tensor& h0, const Tensor& out,
                        const Tensor& aux, bool before) {
  if (!before) {
    add_weight_grad(dw_hh, dgh, t0, n, h0, out);
    return;
  }
  const int64_t B = dgh.size(1), H = dgh.size(2) / 3;
  Tensor dw_rz = dw_hh.narrow(0, 0, 2 * H);
  add_weight_grad(dw_rz, dgh.narrow(2, 0, 2 * H), t0, n, h0, out);
  dw_hh.narrow(0, 2 * H, H)
      .addmm_(dgh.narrow(0, 0, n).narrow(2, 2 * H, H).reshape({n * B, H}).t(),
              aux.narrow(0, t0, n).reshape({n * B, H}));  // (H, n·B) @ (n·B, H)
}

// Backward through time. Returns, batched over time for the caller's weight GEMMs:
//   dgx (T,B,3H)  gradient of gx
//   dh0
// the gradient of W_hh, as GEMMs over chunks of steps (add_weight_grad):
//   dw_hh (3H,H)  sum_t dgh_t^T h_{t-1} (r|z rows; n rows too for reset-after) and sum_t dgh_n,t^T (r*h_{t-1})
//                 (n rows, reset-before), dgh the gradient of the recurrent products before LN. For reset-before
//                 without layer norm dgh is dgx, kept whole, and dw_hh is undefined here: the caller forms it over
//                 all steps and rows at once (weight_grad); otherwise dgh exists only for this and the step's
//                 recurrent products, and lives in a buffer of chunk_steps steps
// and the vector parameters' gradients, summed here step by step (sum_rows) over dgp, the gradient of the
// recurrent part after LN and bias (for reset-after its n block is r * dgx_n, for reset-before it equals dgx):
//   db (3H)       sum of dgp: the gradient of b_hh and of LN's shift
//   dln_w (3H)    sum of dgp * xhat: LN's gain (layer_norm only)
// and with LN_ih fused, where dgx is then the gradient of the step's LN_ih(W_ih x), in a (B,3H) buffer, and the
// (T,B,3H) result is instead the gradient of W_ih x:
//   dln_ih_w (3H), dln_ih_s (3H)   sums of dgx * xhat_ih and of dgx: LN_ih's gain and shift (and b_ih)
template <typename T>
void backward_impl(const Tensor& dout, Tensor& dh, const Tensor& h0, const Tensor& w_hh, const OptTensor& ln_w,
                   bool before, const int64_t* lengths, const Tensor& out, const Tensor& gates, const Tensor& aux,
                   const Tensor& xhat, const Tensor& rstd, const OptTensor& ln_ih_w, const OptTensor& a_ih,
                   const Tensor& stats_ih, Tensor& dgx, Tensor& dgh, Tensor& dw_hh, Tensor& acc_b, Tensor& acc_lnw,
                   Tensor& acc_lniw, Tensor& acc_lnis) {
  const int64_t T_ = gates.size(0), B = gates.size(1), G = gates.size(2), H = G / 3;
  const int64_t chunk = dgh.size(0);                      // steps held by dgh
  const bool own_dgh = dgh.data_ptr() != dgx.data_ptr();  // a reused buffer: rows of ended sequences cleared each step
  const T* lnw = ptr_or_null<T>(ln_w);
  const T* lniw = ptr_or_null<T>(ln_ih_w);
  auto opts = dout.options();
  Tensor w_rz = w_hh.narrow(0, 0, 2 * H), w_n = w_hh.narrow(0, 2 * H, H);
  // fused LN_ih: this step's dgx (the gradient of LN_ih(W_ih x)) and xhat_ih, each (B, 3H)
  Tensor dgx_step = lniw ? at::empty({B, G}, opts) : Tensor();
  Tensor xhat_ih = lniw ? at::empty({B, G}, opts) : Tensor();
  // LN_ih's backward of row b, once its dgx row is complete: the gradient of W_ih x into the result
  auto input_norm_backward = [&](int64_t t, int64_t b, const T* dg) {
    input_norm_row_backward(dg, step_row<T>(*a_ih, t, b, G), step_row<T>(stats_ih, t, b, 2), lniw, G,
                            xhat_ih.data_ptr<T>() + b * G, step_row<T>(dgx, t, b, G));
  };
  Tensor drh = at::empty({B, H}, opts);  // reset-before: gradient of r*h_{t-1}
  // reset-after with layer norm: this step's dgp (B, 3H); without layer norm dgp is dgh, and for reset-before dgx
  Tensor dgp_step = !before && lnw ? at::empty({B, G}, opts) : Tensor();
  T* dhp = dh.data_ptr<T>();
  // dgh W_hh (all rows for reset-after, the r|z rows for reset-before) and, reset-before only, dgh_n W_hn.
  const StepProduct<T> recurrent(before ? w_rz : w_hh, /*transposed=*/false, B, T_);
  std::optional<StepProduct<T>> candidate;
  if (before) candidate.emplace(w_n, /*transposed=*/false, B, T_);

  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* doutt = step_row<T>(dout, t, 0, H);
    const T* gt = step_row<T>(gates, t, 0, G);
    const T* auxt = step_row<T>(aux, t, 0, H);
    const T* hprev = t > 0 ? step_row<T>(out, t - 1, 0, H) : h0.data_ptr<T>();
    T* dgxt = lniw ? dgx_step.data_ptr<T>() : step_row<T>(dgx, t, 0, G);
    T* dght = step_row<T>(dgh, t % chunk, 0, G);
    T* dgpt = before ? dgxt : (lnw ? dgp_step.data_ptr<T>() : dght);
    const T* xh = lnw ? step_row<T>(xhat, t, 0, G) : nullptr;
    const T* rs = lnw ? step_row<T>(rstd, t, 0, 2) : nullptr;
    for (int64_t b = 0; b < B; ++b) {
      if (!active(lengths, b, t)) continue;
      for (int64_t j = 0; j < H; ++j) dhp[b * H + j] += doutt[b * H + j];
    }
    if (!before) {
      at::parallel_for(0, B, row_grain(G), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (!active(lengths, b, t)) {
            if (own_dgh) std::fill(dght + b * G, dght + (b + 1) * G, T(0));
            continue;
          }
          const T* gr = gt + b * G;
          const T* hp = hprev + b * H;
          T* d = dhp + b * H;
          T* da = dgxt + b * G;
          T* dp = dgpt + b * G;
          // The rows written never overlap the rows read, which the compiler cannot prove from the pointers;
          // without `omp simd` it keeps this loop scalar.
          #pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            const T r = gr[j], z = gr[H + j], n = gr[2 * H + j];
            const T dan = d[j] * (T(1) - z) * (T(1) - n * n);
            const T dar = dan * auxt[b * H + j] * r * (T(1) - r);
            const T daz = d[j] * (hp[j] - n) * z * (T(1) - z);
            da[j] = dp[j] = dar;
            da[H + j] = dp[H + j] = daz;
            da[2 * H + j] = dan;
            dp[2 * H + j] = dan * r;
            d[j] *= z;  // the direct path h_t = ... + z*h_{t-1}; the GEMM below adds the rest
          }
          if (lnw) {
            layer_norm_row_backward(dp, xh + b * G, rs[2 * b], lnw, 2 * H, dght + b * G);
            layer_norm_row_backward(dp + 2 * H, xh + b * G + 2 * H, rs[2 * b + 1], lnw + 2 * H, H,
                                    dght + b * G + 2 * H);
          }
          if (lniw) input_norm_backward(t, b, da);
        }
      });
      sum_rows(dgpt, G, xh, G, B, G, lengths, t, acc_or_null(acc_lnw), acc_or_null(acc_b));
      if (lniw) {
        sum_rows(dgxt, G, xhat_ih.data_ptr<T>(), G, B, G, lengths, t, acc_or_null(acc_lniw), acc_or_null(acc_lnis));
      }
      recurrent(dght, G, dhp, /*accumulate=*/true);  // (B,3H) @ (3H,H)
      if (dw_hh.defined() && t % chunk == 0) weight_grad(dw_hh, dgh, t, std::min(chunk, T_ - t), h0, out, aux, before);
      continue;
    }
    // reset-before: the n block first, because d(r*h) = dgh_n W_hn is needed for dr.
    at::parallel_for(0, B, row_grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!active(lengths, b, t)) {
          if (own_dgh) std::fill(dght + b * G, dght + (b + 1) * G, T(0));
          continue;
        }
        const T* gr = gt + b * G;
        const T* d = dhp + b * H;
        T* da = dgxt + b * G;
        // Rows written never overlap rows read (see above).
        #pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T z = gr[H + j], n = gr[2 * H + j];
          da[2 * H + j] = d[j] * (T(1) - z) * (T(1) - n * n);
        }
        if (lnw) {
          layer_norm_row_backward(da + 2 * H, xh + b * G + 2 * H, rs[2 * b + 1], lnw + 2 * H, H,
                                  dght + b * G + 2 * H);
        }
      }
    });
    (*candidate)(dght + 2 * H, G, drh.data_ptr<T>(), /*accumulate=*/false);  // (B,H) @ (H,H)
    at::parallel_for(0, B, row_grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!active(lengths, b, t)) continue;
        const T* gr = gt + b * G;
        const T* hp = hprev + b * H;
        const T* dr = drh.data_ptr<T>() + b * H;
        T* d = dhp + b * H;
        T* da = dgxt + b * G;
        // Rows written never overlap rows read (see above).
        #pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T r = gr[j], z = gr[H + j], n = gr[2 * H + j];
          da[j] = dr[j] * hp[j] * r * (T(1) - r);
          da[H + j] = d[j] * (hp[j] - n) * z * (T(1) - z);
          d[j] = d[j] * z + dr[j] * r;
        }
        if (lnw) layer_norm_row_backward(da, xh + b * G, rs[2 * b], lnw, 2 * H, dght + b * G);
        if (lniw) input_norm_backward(t, b, da);
      }
    });
    sum_rows(dgpt, G, xh, G, B, G, lengths, t, acc_or_null(acc_lnw), acc_or_null(acc_b));
    if (lniw) {
      sum_rows(dgxt, G, xhat_ih.data_ptr<T>(), G, B, G, lengths, t, acc_or_null(acc_lniw), acc_or_null(acc_lnis));
    }
    recurrent(dght, G, dhp, /*accumulate=*/true);  // (B,2H) @ (2H,H)
    if (dw_hh.defined() && t % chunk == 0) weight_grad(dw_hh, dgh, t, std::min(chunk, T_ - t), h0, out, aux, before);
  }
}

std::vector<Tensor> gru_backward(const Tensor& dout_in, const Tensor& dh_n, const Tensor& h0, const Tensor& w_hh,
                                 const OptTensor& ln_w, const OptTensor& ln_ih_w, bool before,
                                 const OptTensor& lengths, const Tensor& out, const Tensor& gates, const Tensor& aux,
                                 const Tensor& xhat, const Tensor& rstd, const OptTensor& a_ih,
                                 const Tensor& stats_ih) {
  const Tensor dout = contiguous_buffer(dout_in);  // (T,B,·), read row by row
  const int64_t T_ = gates.size(0), B = gates.size(1), G = gates.size(2), H = G / 3;
  const int64_t* len = ptr_or_null<int64_t>(lengths);
  const bool zero = len != nullptr;  // rows of ended sequences are never written
  const bool ln = ln_w.has_value() && ln_w->defined();
  const bool ln_ih = ln_ih_w.has_value() && ln_ih_w->defined();
  TORCH_CHECK(ln || !ln_ih, "gru_backward: a fused LN_ih comes with LN_hh (layer_norm)");
  auto opts = dout.options();
  Tensor dh = dh_n.clone();
  Tensor dgx = buffer(gates.sizes(), opts, zero);
  // Without layer norm the gradient before LN is the one after it: reset-before's is dgx itself, whose weight GEMM
  // runs once over all steps and rows after the time loop.
  const bool whole_dgh = !ln && before;
  Tensor dw_hh = buffer({G, H}, opts, true);
  // db, dln_w, dln_ih_w, dln_ih_s (see above)
  auto accumulators = [&] {
    return std::vector<Tensor>{accumulator(G, true, opts), accumulator(G, ln, opts), accumulator(G, ln_ih, opts),
                               accumulator(G, ln_ih, opts)};
  };
  std::vector<Tensor> acc = accumulators();
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "gru_backward", [&] {
    backward_slices(B, int64_t(w_hh.nbytes()), whole_dgh, dw_hh, acc, accumulators,
                    [&](int64_t b0, int64_t n, Tensor& dw, std::vector<Tensor>& a) {
      Tensor dh_s = state_rows(dh, b0, n), dgx_s = batch_rows(dgx, b0, n);
      Tensor dgh_s = whole_dgh ? dgx_s : buffer({chunk_steps(T_, n), n, G}, opts, false);
      backward_impl<scalar_t>(batch_rows(dout, b0, n), dh_s, state_rows(h0, b0, n), w_hh, ln_w, before,
                              len ? len + b0 : nullptr, batch_rows(out, b0, n), batch_rows(gates, b0, n),
                              batch_rows(aux, b0, n), batch_rows(xhat, b0, n), batch_rows(rstd, b0, n), ln_ih_w,
                              batch_rows(a_ih, b0, n), batch_rows(stats_ih, b0, n), dgx_s, dgh_s, dw, a[0], a[1],
                              a[2], a[3]);
    });
  });
  if (whole_dgh) weight_grad(dw_hh, dgx, 0, T_, h0, out, aux, before);
  Tensor acc_b = acc[0], acc_lnw = acc[1], acc_lniw = acc[2], acc_lnis = acc[3];
  const auto dtype = dout.scalar_type();
  return {dgx, dw_hh, dh, acc_b.to(dtype), acc_lnw.to(dtype), acc_lniw.to(dtype), acc_lnis.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("gru_forward", &gru_forward);
  m.def("gru_forward_input", &gru_forward_input);
  m.def("gru_backward", &gru_backward);
}

}  // namespace gatedrnn
