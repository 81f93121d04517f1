// LSTM recurrence (every variant of cells/lstm.py), forward and backward, one layer and direction.
//
// Per step: one GEMM gh = h_{t-1} W_hh^T, one fused pass over the gates of each row (layer norm, bias,
// peepholes, forget bias, coupling, cell update, output), plus the projection GEMM when proj_size > 0.
// Gate blocks are i|f|g|o (i|g|o when coupled), as in torch.nn.LSTM.
#include <torch/library.h>

#include "common.h"
#include "team.h"

namespace gatedrnn {
namespace {

struct LSTMShape {
  int64_t T, B, H, P, G;  // steps, batch, hidden, state width (proj_size or H), gate width G*H
  bool coupled;
  int64_t off_f, off_g, off_o;  // column offsets of the f, g, o blocks (off_f unused when coupled)
};

// T steps, B rows, G·H gate width; H and P from the initial state.
LSTMShape lstm_shape(int64_t T, int64_t B, int64_t G, const Tensor& c0, const Tensor& h0, bool coupled) {
  const int64_t H = c0.size(1);
  LSTMShape s{T, B, H, h0.size(1), G, coupled, H, 2 * H, 3 * H};
  if (coupled) {
    s.off_g = H;
    s.off_o = 2 * H;
  }
  return s;
}

LSTMShape lstm_shape(const Tensor& gx, const Tensor& c0, const Tensor& h0, bool coupled) {
  return lstm_shape(gx.size(0), gx.size(1), gx.size(2), c0, h0, coupled);
}

// Bytes of the recurrent weights each step's products stream, W_hh and W_hr (proj_size): what decides the batch
// split among the threads (batch_parts), forward and backward alike.
inline int64_t recurrent_bytes(const Tensor& w_hh, const OptTensor& w_hr) {
  return int64_t(w_hh.nbytes()) + bytes_of(w_hr);
}

// Whether backward recomputes the gates (activate_ifg, activate_o) instead of reading them saved. With LN_ih fused
// it keeps W_ih x anyway, and the gates follow from it, its statistics and xhat_hh: a (T,B,G·H) tensor less at the
// peak of backward. At B = 1 the gates of a sequence are few (T·G·H values) and their activations cost more to
// recompute than to store, so they are saved there.
inline bool recompute_gates(bool fused_ln_ih, int64_t B) {
  return fused_ln_ih && B > 1;
}

// i, f and g of one row, in place over their pre-activations: the peepholes p_i, p_f on c_{t-1} and the forget
// bias, then sigma and tanh. Forward runs it, and backward again where it recomputes the gates (fused LN_ih).
template <typename T>
inline void activate_ifg(const LSTMShape& s, T* gr, const T* c, const T* pci, const T* pcf, T fb) {
  const int64_t H = s.H;
  if (pci) {
    for (int64_t j = 0; j < H; ++j) gr[j] += pci[j] * c[j];
  }
  if (!s.coupled) {
    T* af = gr + s.off_f;
    if (pcf) {
      for (int64_t j = 0; j < H; ++j) af[j] += pcf[j] * c[j] + fb;
    } else if (fb != T(0)) {
      for (int64_t j = 0; j < H; ++j) af[j] += fb;
    }
  }
  sigmoid_(gr, s.coupled ? H : 2 * H);  // i (and f, the next block)
  tanh_(gr + s.off_g, H);
}

// o of one row, in place over its pre-activation: the peephole p_o on c_t, then sigma.
template <typename T>
inline void activate_o(const LSTMShape& s, T* gr, const T* c, const T* pco) {
  T* o = gr + s.off_o;
  if (pco) {
    for (int64_t j = 0; j < s.H; ++j) o[j] += pco[j] * c[j];
  }
  sigmoid_(o, s.H);
}

template <typename T>
void forward_impl(const LSTMShape& s, StepInput<T>& input, const Tensor& w_hh, const OptTensor& b_hh,
                  const OptTensor& w_hr, const OptTensor& w_ci, const OptTensor& w_cf, const OptTensor& w_co,
                  const OptTensor& ln_hh_w, const OptTensor& ln_hh_b, const OptTensor& ln_c_w,
                  const OptTensor& ln_c_b, const OptTensor& ln_ih_w, const OptTensor& ln_ih_s, double forget_bias,
                  const int64_t* lengths, Tensor& h_state, Tensor& c_state, Tensor& out, Tensor& gates, Tensor& cs,
                  Tensor& hh_all, Tensor& xhat_hh, Tensor& rstd_hh, Tensor& mean_c, Tensor& rstd_c,
                  Tensor& stats_ih, bool save) {
  const int64_t B = s.B, H = s.H, P = s.P, G = s.G;
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool ln = ln_hh_w.has_value() && ln_hh_w->defined();
  const T* bias = ptr_or_null<T>(b_hh);
  const T *pci = ptr_or_null<T>(w_ci), *pcf = ptr_or_null<T>(w_cf), *pco = ptr_or_null<T>(w_co);
  const T *lnw = ptr_or_null<T>(ln_hh_w), *lnb = ptr_or_null<T>(ln_hh_b);
  const T *lncw = ptr_or_null<T>(ln_c_w), *lncb = ptr_or_null<T>(ln_c_b);
  const T *lniw = ptr_or_null<T>(ln_ih_w), *lnis = ptr_or_null<T>(ln_ih_s);  // fused LN_ih: gx holds W_ih x
  const T fb = T(forget_bias);
  auto opts = h_state.options();
  Tensor gh = at::empty({B, G}, opts);                                // (B, G·H)
  Tensor gx_norm = lniw ? at::empty({B, G}, opts) : Tensor();         // (B, G·H): this step's LN_ih(W_ih x)
  const bool keep_gates = save && gates.dim() == 3;  // the caller's choice for the whole batch (recompute_gates)
  Tensor gate_scratch = keep_gates ? Tensor() : at::empty({B, G}, opts);  // (B, G·H)
  Tensor hh_scratch = (proj && !save) ? at::empty({B, H}, opts) : Tensor();
  Tensor h_new = proj ? at::empty({B, P}, opts) : Tensor();           // (B, P)
  T* hs = h_state.data_ptr<T>();
  T* cst = c_state.data_ptr<T>();
  T* ghp = gh.data_ptr<T>();
  const StepProduct<T> recurrent(w_hh, /*transposed=*/true, B, s.T);  // h W_hh^T
  std::optional<StepProduct<T>> projection;                           // (o*tanh(c)) W_hr^T
  if (proj) projection.emplace(w_hr.value(), /*transposed=*/true, B, s.T);

  for (int64_t t = 0; t < s.T; ++t) {
    recurrent(hs, P, ghp, /*accumulate=*/false);
    const T* gxt = input(t);
    T* gt = keep_gates ? step_row<T>(gates, t, 0, G) : gate_scratch.data_ptr<T>();
    T* cst_save = save ? step_row<T>(cs, t, 0, H) : nullptr;
    T* hht = proj ? (save ? step_row<T>(hh_all, t, 0, H) : hh_scratch.data_ptr<T>()) : nullptr;
    T* outt = step_row<T>(out, t, 0, P);
    at::parallel_for(0, B, row_grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* c = cst + b * H;
        if (!active(lengths, b, t)) {
          // Ended sequences keep their state; the saved c must still be the state (backward reads c_{t-1}).
          if (save) std::copy(c, c + H, cst_save + b * H);
          if (!proj) std::fill(outt + b * P, outt + (b + 1) * P, T(0));
          continue;
        }
        T* a = ghp + b * G;
        if (ln) {
          layer_norm_row(a, G, lnw, lnb, save ? step_row<T>(xhat_hh, t, b, G) : nullptr,
                         save ? step_row<T>(rstd_hh, t, b, 1) : nullptr);
        }
        const T* x = gxt + b * G;
        if (lniw) {
          x = input_norm_row(x, G, lniw, lnis, gx_norm.data_ptr<T>() + b * G,
                             save ? step_row<T>(stats_ih, t, b, 2) : nullptr);
        }
        T* gr = gt + b * G;
        add_(gr, x, a, bias, G);  // pre-activations of every gate, then activated in place, block by block
        activate_ifg(s, gr, c, pci, pcf, fb);
        const T* i = gr;
        const T* f = gr + s.off_f;
        const T* g = gr + s.off_g;
        if (s.coupled) {
          for (int64_t j = 0; j < H; ++j) c[j] = (T(1) - i[j]) * c[j] + i[j] * g[j];
        } else {
          for (int64_t j = 0; j < H; ++j) c[j] = f[j] * c[j] + i[j] * g[j];
        }
        activate_o(s, gr, c, pco);
        const T* o = gr + s.off_o;
        if (save) std::copy(c, c + H, cst_save + b * H);
        // h = o * tanh(LN_c(c)); LN_c needs the whole row of c first, so it is a second pass over the row.
        T mean = 0, rstd = 1;
        if (lncw) {
          row_moments(c, H, mean, rstd);
          if (save) {
            *step_row<T>(mean_c, t, b, 1) = mean;
            *step_row<T>(rstd_c, t, b, 1) = rstd;
          }
        }
        T* h = proj ? hht + b * H : outt + b * P;
        if (lncw) {
          for (int64_t j = 0; j < H; ++j) h[j] = (c[j] - mean) * rstd * lncw[j] + lncb[j];
        } else {
          std::copy(c, c + H, h);
        }
        tanh_(h, H);
        for (int64_t j = 0; j < H; ++j) h[j] *= o[j];
        if (!proj) std::copy(h, h + H, hs + b * P);
      }
    });
    if (proj) {
      (*projection)(hht, H, h_new.data_ptr<T>(), /*accumulate=*/false);
      const T* hn = h_new.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        if (active(lengths, b, t)) {
          std::copy(hn + b * P, hn + (b + 1) * P, hs + b * P);
          std::copy(hn + b * P, hn + (b + 1) * P, outt + b * P);
        } else {
          std::fill(outt + b * P, outt + (b + 1) * P, T(0));
        }
      }
    }
  }
}

// The small-batch recurrence (team.h) of the variants without row-wide statistics (no layer norm, no proj_size).
// Member k computes every gate of its units [j0, j1) from its own rows of W_hh, in one fused pass per row:
//   i = σ(x_i + W_hi h + b_i + p_i ⊙ c)      f = σ(x_f + W_hf h + b_f + p_f ⊙ c + forget_bias)   (coupled: f = 1 - i)
//   g = tanh(x_g + W_hg h + b_g)              c' = f ⊙ c + i ⊙ g
//   o = σ(x_o + W_ho h + b_o + p_o ⊙ c')     h' = o ⊙ tanh(c')
// c is private to its member; h' goes to the buffer that every member reads at the next step, after the step's
// sync. Outputs and saved tensors are those of forward_impl.
// With `x` given (the layer's input (T, B, I), and w_ih (G·H, I)), gx is undefined and x_g is each member's own
// product of x with its rows of W_ih, formed for all steps before the first (lstm_forward_input): no separate GEMM
// call and parallel region before the team, and every x_g is read from the cache of the core that wrote it. Then
// b_hh holds b_ih + b_hh.
template <typename T>
void forward_team(int threads, const LSTMShape& s, const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
                  const OptTensor& w_ci, const OptTensor& w_cf, const OptTensor& w_co, double forget_bias,
                  const int64_t* lengths, Tensor& h_state, Tensor& c_state, Tensor& out, Tensor& gates, Tensor& cs,
                  bool save, const Tensor& x = Tensor(), const Tensor& w_ih = Tensor()) {
  const int64_t B = s.B, H = s.H, G = s.G;
  const Tensor zero_bias = b_hh.has_value() && b_hh->defined() ? Tensor() : at::zeros({G}, h_state.options());
  const T* bias = zero_bias.defined() ? zero_bias.data_ptr<T>() : b_hh->data_ptr<T>();
  const bool fused = x.defined();
  const T *pci = ptr_or_null<T>(w_ci), *pcf = ptr_or_null<T>(w_cf), *pco = ptr_or_null<T>(w_co);
  const T fb = T(forget_bias);
  Tensor h_other = at::empty({B, H}, h_state.options());  // (B, H): h_t at odd t; h_state holds h_t at even t
  T* hbuf[2] = {h_state.data_ptr<T>(), h_other.data_ptr<T>()};
  T* cst = c_state.data_ptr<T>();
  const T* gxp = fused ? nullptr : gx.data_ptr<T>();
  T* outp = out.data_ptr<T>();
  T* gp = save ? gates.data_ptr<T>() : nullptr;
  T* csp = save ? cs.data_ptr<T>() : nullptr;
  // Column blocks of the member's product, gate by gate: i|f|g|o (i|g|o when coupled).
  const std::vector<int64_t> firsts =
      s.coupled ? std::vector<int64_t>{0, s.off_g, s.off_o} : std::vector<int64_t>{0, s.off_f, s.off_g, s.off_o};
  const int64_t gate_count = int64_t(firsts.size());

  run_team(threads, H, line_units<T>(), [&](TeamMember& m) {
    const int64_t j0 = m.j0, nk = m.units();
    SliceProduct<T> recurrent(w_hh.data_ptr<T>(), w_hh.stride(0), H, firsts, j0, m.j1, B, /*slot=*/0);
    const int64_t yf = nk, yg = s.coupled ? nk : 2 * nk, yo = s.coupled ? 2 * nk : 3 * nk;  // blocks of y
    // x_g of row (t, b) for this member's units: gx's row with gx's gate offsets, or the member's own product
    // (T·B, gate_count·nk), its gate blocks laid out as y's.
    const T* xg_base = fused ? nullptr : gxp + j0;
    int64_t xg_ld = G, xf = s.off_f, xgo = s.off_g, xo = s.off_o;
    std::vector<T>& own_input = input_workspace<T>(0);
    if (fused && nk > 0) {
      // This member's rows of W_ih, gate by gate (gate_count·nk, I), then x_g of every step in one GEMM.
      const int64_t I = x.size(2), width = gate_count * nk;
      std::vector<T>& own_rows = input_workspace<T>(1);
      own_rows.resize(size_t(width * I));
      const T* wp = w_ih.data_ptr<T>();
      for (int64_t q = 0; q < gate_count; ++q) {
        std::copy(wp + (firsts[q] + j0) * I, wp + (firsts[q] + m.j1) * I, own_rows.data() + q * nk * I);
      }
      own_input.resize(size_t(s.T * B * width));
      Tensor product = at::from_blob(own_input.data(), {s.T * B, width}, x.options());
      project_into(product, x.view({s.T * B, I}), at::from_blob(own_rows.data(), {width, I}, x.options()), {});
      xg_base = own_input.data();
      xg_ld = width;
      xf = yf;
      xgo = yg;
      xo = yo;
    }
    const T *bi = bias + j0, *bf = bias + s.off_f + j0, *bg = bias + s.off_g + j0, *bo = bias + s.off_o + j0;
    const T *qi = pci ? pci + j0 : nullptr, *qf = pcf ? pcf + j0 : nullptr, *qo = pco ? pco + j0 : nullptr;
    for (int64_t t = 0; t < s.T; ++t) {
      const T* hp = hbuf[t % 2];
      T* hn = hbuf[(t + 1) % 2];
      own_part_then_wait(recurrent, m, hp, B, H, lengths, t);  // W_hh h_{t-1} over the own units, then the wait
      for (int64_t b = 0; b < B && nk > 0; ++b) {
        const int64_t row = t * B + b;
        T* c = cst + b * H + j0;
        T* h = hn + b * H + j0;
        T* o_out = outp + row * H + j0;
        T* c_save = save ? csp + row * H + j0 : nullptr;
        if (!active(lengths, b, t)) {
          // Ended sequences keep their state; the saved c must still be the state (backward reads c_{t-1}).
          std::copy(hp + b * H + j0, hp + b * H + j0 + nk, h);
          std::fill(o_out, o_out + nk, T(0));
          if (save) std::copy(c, c + nk, c_save);
          continue;
        }
        const T* y = recurrent.rest(hp + b * H, j0, m.j1, b);
        const T* x = xg_base + row * xg_ld;
        T* gr = save ? gp + row * G + j0 : nullptr;
        // Compiled once per combination of flags, so that the loop vectorises (as gates_backward below).
        auto cell = [&](auto coupled_flag, auto peephole_flag, auto save_flag) {
          constexpr bool coupled = decltype(coupled_flag)::value, peephole = decltype(peephole_flag)::value;
          constexpr bool saving = decltype(save_flag)::value;
          #pragma omp simd
          for (int64_t j = 0; j < nk; ++j) {
            const T cp = c[j];
            T ai = x[j] + y[j] + bi[j];
            if constexpr (peephole) ai += qi[j] * cp;
            const T i = sigmoid(ai);
            T f;
            if constexpr (coupled) {
              f = T(1) - i;
            } else {
              T af = x[xf + j] + y[yf + j] + bf[j] + fb;
              if constexpr (peephole) af += qf[j] * cp;
              f = sigmoid(af);
            }
            const T g = tanh(x[xgo + j] + y[yg + j] + bg[j]);
            const T cn = f * cp + i * g;
            T ao = x[xo + j] + y[yo + j] + bo[j];
            if constexpr (peephole) ao += qo[j] * cn;
            const T o = sigmoid(ao);
            const T hj = o * tanh(cn);
            c[j] = cn;
            h[j] = hj;
            o_out[j] = hj;
            if constexpr (saving) {
              gr[j] = i;
              if constexpr (!coupled) gr[s.off_f + j] = f;
              gr[s.off_g + j] = g;
              gr[s.off_o + j] = o;
              c_save[j] = cn;
            }
          }
        };
        auto with_save = [&](auto coupled_flag, auto peephole_flag) {
          save ? cell(coupled_flag, peephole_flag, std::true_type{})
               : cell(coupled_flag, peephole_flag, std::false_type{});
        };
        auto with_peephole = [&](auto coupled_flag) {
          pci ? with_save(coupled_flag, std::true_type{}) : with_save(coupled_flag, std::false_type{});
        };
        s.coupled ? with_peephole(std::true_type{}) : with_peephole(std::false_type{});
      }
      m.arrive();  // this member's units of h_t are written
    }
  });
  if (s.T % 2) h_state.copy_(h_other);
}

// Saved tensors (what backward needs, and why):
//   gates (T,B,G·H)  activated i,f,g,o: every local derivative of the cell is a function of them. Not where
//                    backward recomputes them (recompute_gates: fused LN_ih, B > 1), which leaves three (T,B,G·H)
//                    tensors alive at its peak: W_ih x, xhat_hh and the gradient of W_ih x
//   cs    (T,B,H)    c_t: c_{t-1} feeds df and the peepholes p_i,p_f; c_t feeds p_o and tanh(LN_c(c_t))
//   out   (T,B,P)    h_t (the layer's output, kept anyway): h_{t-1} is the right factor of dW_hh
//   hh    (T,B,H)    o*tanh(c) before the projection, the right factor of dW_hr (proj_size > 0 only)
//   xhat_hh (T,B,G·H), rstd_hh (T,B)   normalised W_hh h and its 1/std (layer_norm only): LN backward
//   mean_c, rstd_c (T,B)               statistics of c (layer_norm only): LN_c(c) is recomputed from cs
//   stats_ih (T,B,2)                   mean and 1/std of each row of W_ih x (fused LN_ih only): backward rebuilds
//                                      LN_ih's xhat from them and W_ih x, which the caller keeps
// With ln_ih_w and ln_ih_s (LN_ih's gain, and its shift + b_ih) given, gx is W_ih x and LN_ih runs in the kernel.
std::vector<Tensor> lstm_forward(const Tensor& gx, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                 const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& w_ci,
                                 const OptTensor& w_cf, const OptTensor& w_co, const OptTensor& ln_hh_w,
                                 const OptTensor& ln_hh_b, const OptTensor& ln_c_w, const OptTensor& ln_c_b,
                                 const OptTensor& ln_ih_w, const OptTensor& ln_ih_s, double forget_bias,
                                 bool coupled, const OptTensor& lengths, bool save) {
  const LSTMShape s = lstm_shape(gx, c0, h0, coupled);
  const int64_t* len = ptr_or_null<int64_t>(lengths);
  const bool zero = len != nullptr;
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool ln = ln_hh_w.has_value() && ln_hh_w->defined();
  auto opts = gx.options();
  Tensor h_state = h0.clone(), c_state = c0.clone();
  Tensor out = buffer({s.T, s.B, s.P}, opts, false);
  Tensor none = none_like(gx);
  const bool ln_ih = ln_ih_w.has_value() && ln_ih_w->defined();
  Tensor gates = save && !recompute_gates(ln_ih, s.B) ? buffer({s.T, s.B, s.G}, opts, zero) : none;
  Tensor cs = save ? buffer({s.T, s.B, s.H}, opts, false) : none;
  Tensor hh_all = save && proj ? buffer({s.T, s.B, s.H}, opts, zero) : none;
  Tensor xhat_hh = save && ln ? buffer({s.T, s.B, s.G}, opts, zero) : none;
  Tensor rstd_hh = save && ln ? buffer({s.T, s.B}, opts, zero) : none;
  Tensor mean_c = save && ln ? buffer({s.T, s.B}, opts, zero) : none;
  Tensor rstd_c = save && ln ? buffer({s.T, s.B}, opts, zero) : none;
  Tensor stats_ih = save && ln_ih ? buffer({s.T, s.B, 2}, opts, zero) : none;
  const int team = team_size(proj || ln || ln_ih, s.T, s.B, s.H);
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "lstm_forward", [&] {
    if (team) {
      forward_team<scalar_t>(team, s, gx, w_hh, b_hh, w_ci, w_cf, w_co, forget_bias, len, h_state, c_state, out,
                             gates, cs, save);
      return;
    }
    for_batch_slices(s.B, recurrent_bytes(w_hh, w_hr), [&](int64_t b0, int64_t n) {
      LSTMShape part = s;
      part.B = n;
      StepInput<scalar_t> input(batch_rows(gx, b0, n));
      Tensor h = state_rows(h_state, b0, n), c = state_rows(c_state, b0, n), o = batch_rows(out, b0, n);
      Tensor g = batch_rows(gates, b0, n), cs_ = batch_rows(cs, b0, n), hh = batch_rows(hh_all, b0, n);
      Tensor xh = batch_rows(xhat_hh, b0, n), rs = batch_rows(rstd_hh, b0, n), mc = batch_rows(mean_c, b0, n);
      Tensor rc = batch_rows(rstd_c, b0, n), st = batch_rows(stats_ih, b0, n);
      forward_impl<scalar_t>(part, input, w_hh, b_hh, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b,
                             ln_ih_w, ln_ih_s, forget_bias, len ? len + b0 : nullptr, h, c, o, g, cs_, hh, xh, rs, mc,
                             rc, st, save);
    });
  });
  return {out, h_state, c_state, gates, cs, hh_all, xhat_hh, rstd_hh, mean_c, rstd_c, stats_ih};
}

// lstm_forward without saving, from the layer's input x (T, B, I) rather than gx: the input projection
// a = x W_ih^T (+ b_ih, which the caller leaves out with LN_ih given, as for lstm_forward) is never made whole.
// Where the team runs the call, each member forms its own part of it (forward_team); elsewhere the time loop forms
// it a chunk of steps at a time (StepInput). Returns out, h_n, c_n.
std::vector<Tensor> lstm_forward_input(const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih, const Tensor& h0,
                                       const Tensor& c0, const Tensor& w_hh, const OptTensor& b_hh,
                                       const OptTensor& w_hr, const OptTensor& w_ci, const OptTensor& w_cf,
                                       const OptTensor& w_co, const OptTensor& ln_hh_w, const OptTensor& ln_hh_b,
                                       const OptTensor& ln_c_w, const OptTensor& ln_c_b, const OptTensor& ln_ih_w,
                                       const OptTensor& ln_ih_s, double forget_bias, bool coupled,
                                       const OptTensor& lengths) {
  TORCH_CHECK(x.dim() == 3 && w_ih.dim() == 2 && x.size(2) == w_ih.size(1),
              "lstm_forward_input: x (T, B, I) and w_ih (G·H, I) expected, got ", x.sizes(), " and ", w_ih.sizes());
  const LSTMShape s = lstm_shape(x.size(0), x.size(1), w_ih.size(0), c0, h0, coupled);
  auto given = [](const OptTensor& t) { return t.has_value() && t->defined(); };
  const bool row_wide = given(w_hr) || given(ln_hh_w) || given(ln_ih_w);  // proj_size or layer norm
  const int team = team_size(row_wide, s.T, s.B, s.H);
  const int64_t* len = ptr_or_null<int64_t>(lengths);
  Tensor h_state = h0.clone(), c_state = c0.clone();
  Tensor out = buffer({s.T, s.B, s.P}, x.options(), false);
  Tensor unsaved = none_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward_input", [&] {
    if (team) {
      const OptTensor bias = given(b_ih) && given(b_hh) ? OptTensor(b_ih->add(*b_hh)) : given(b_ih) ? b_ih : b_hh;
      forward_team<scalar_t>(team, s, Tensor(), w_hh, bias, w_ci, w_cf, w_co, forget_bias, len, h_state, c_state,
                             out, unsaved, unsaved, false, x.contiguous(), w_ih.contiguous());
      return;
    }
    for_batch_slices(s.B, recurrent_bytes(w_hh, w_hr), [&](int64_t b0, int64_t n) {
      LSTMShape part = s;
      part.B = n;
      StepInput<scalar_t> input(batch_rows(x, b0, n), w_ih, b_ih);
      Tensor h = state_rows(h_state, b0, n), c = state_rows(c_state, b0, n), o = batch_rows(out, b0, n);
      forward_impl<scalar_t>(part, input, w_hh, b_hh, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b,
                             ln_ih_w, ln_ih_s, forget_bias, len ? len + b0 : nullptr, h, c, o, unsaved, unsaved,
                             unsaved, unsaved, unsaved, unsaved, unsaved, unsaved, false);
    });
  });
  return {out, h_state, c_state};
}

// Backward through time. Returns the gradients of gx, of the initial state and of every recurrent parameter but
// W_hr (whose GEMM over all steps the caller forms from dhp); the vector parameters' are summed step by step
// (sum_rows):
//   dgx (T,B,G·H)   d loss / d (gate pre-activation) = gradient of gx and of LN_hh's output
//   dw_hh (G·H,P)   sum_t dgh_t^T h_{t-1}, dgh the gradient of W_hh h_{t-1} before LN_hh. Without layer norm dgh
//                   is dgx, kept whole, and this is one GEMM that the caller forms after the time loop over all rows
//                   (dw_hh undefined here); with layer norm dgh exists only for this
//                   and for the step's recurrent product, so it lives in a buffer of chunk_steps steps, added to
//                   dw_hh whenever full: a (T,B,G·H) tensor less at the peak of backward
//   dhp (T,B,P)     gradient of the projected h_t (proj_size > 0 only; zero at masked steps)
//   dh0, dc0        gradients of the initial state
//   db (G·H)        sum of dgx: the gradient of b_hh and of LN_hh's shift
//   dln_hh_w (G·H)  sum of dgx * xhat_hh: LN_hh's gain (layer_norm only)
//   dln_c_w, dln_c_b (H)   sums of dcn * xhat_c and of dcn, dcn the gradient of LN_c(c_t) (layer_norm only)
//   dci, dcf (H)    sums of da_i * c_{t-1} and da_f * c_{t-1} (peephole only)
//   dco (H)         sum of da_o * c_t (peephole only)
//   dln_ih_w (G·H)  sum of dgx * xhat_ih: LN_ih's gain (fused LN_ih only). Then dgx is the gradient of the
//                   step's LN_ih(W_ih x) and lives in a (B,G·H) buffer; the (T,B,G·H) result is instead the
//                   gradient of W_ih x. LN_ih's shift (and b_ih) get db, as gx adds straight into every gate.
//                   Where the gates were not saved (recompute_gates), they are recomputed row by row (the
//                   forward's pre-activation sum and activate_ifg, activate_o), from W_ih x, stats_ih, xhat_hh,
//                   c_{t-1} and c_t.
template <typename T>
void backward_impl(const LSTMShape& s, const Tensor& dout, Tensor& dh, Tensor& dc, const Tensor& w_hh,
                   const OptTensor& b_hh, const OptTensor& ln_hh_b, const OptTensor& ln_ih_s, double forget_bias,
                   const OptTensor& w_hr, const OptTensor& w_ci, const OptTensor& w_cf, const OptTensor& w_co,
                   const OptTensor& ln_hh_w, const OptTensor& ln_c_w, const OptTensor& ln_c_b,
                   const OptTensor& ln_ih_w, const int64_t* lengths, const Tensor& c0, const Tensor& gates,
                   const Tensor& cs, const Tensor& xhat_hh, const Tensor& rstd_hh, const Tensor& mean_c,
                   const Tensor& rstd_c, const OptTensor& a_ih, const Tensor& stats_ih, const Tensor& h0,
                   const Tensor& out, Tensor& dgx, Tensor& dgh, Tensor& dw_hh, Tensor& dhp, std::vector<Tensor>& acc) {
  const int64_t B = s.B, H = s.H, P = s.P, G = s.G;
  const int64_t chunk = dgh.size(0);  // steps held by dgh: all T, or chunk_steps with layer norm
  const bool proj = w_hr.has_value() && w_hr->defined();
  const T *pci = ptr_or_null<T>(w_ci), *pcf = ptr_or_null<T>(w_cf), *pco = ptr_or_null<T>(w_co);
  const T* lnw = ptr_or_null<T>(ln_hh_w);
  const T *lncw = ptr_or_null<T>(ln_c_w), *lncb = ptr_or_null<T>(ln_c_b);
  double *acc_b = acc_or_null(acc[0]), *acc_lnw = acc_or_null(acc[1]), *acc_lncw = acc_or_null(acc[2]),
         *acc_lncb = acc_or_null(acc[3]), *acc_ci = acc_or_null(acc[4]), *acc_cf = acc_or_null(acc[5]),
         *acc_co = acc_or_null(acc[6]), *acc_lniw = acc_or_null(acc[7]);
  const T* lniw = ptr_or_null<T>(ln_ih_w);
  const T *bias = ptr_or_null<T>(b_hh), *lnb = ptr_or_null<T>(ln_hh_b), *lnis = ptr_or_null<T>(ln_ih_s);
  const T fb = T(forget_bias);
  auto opts = dout.options();
  Tensor dhh = proj ? at::empty({B, H}, opts) : Tensor();  // (B, H): gradient of o*tanh(c)
  // layer_norm: this step's xhat_c, dcn and the gradient of c_t through h_t, each (B, H)
  Tensor xhc = lncw ? at::empty({B, H}, opts) : Tensor();
  Tensor dcn = lncw ? at::empty({B, H}, opts) : Tensor();
  Tensor dch = lncw ? at::empty({B, H}, opts) : Tensor();
  Tensor th_buf = at::empty({B, H}, opts);  // (B, H): tanh(LN_c(c_t))
  const bool recompute = gates.dim() != 3;  // the caller's choice for the whole batch (recompute_gates)
  // fused LN_ih: this step's dgx (the gradient of LN_ih(W_ih x)), xhat_ih and recomputed gates, each (B, G·H)
  Tensor dgx_step = lniw ? at::empty({B, G}, opts) : Tensor();
  Tensor xhat_ih = lniw ? at::empty({B, G}, opts) : Tensor();
  Tensor gate_step = recompute ? at::empty({B, G}, opts) : Tensor();
  T* dhp_ = dh.data_ptr<T>();
  T* dcp_ = dc.data_ptr<T>();
  const StepProduct<T> recurrent(w_hh, /*transposed=*/false, B, s.T);  // dgh W_hh
  std::optional<StepProduct<T>> projection;                            // dh W_hr
  if (proj) projection.emplace(w_hr.value(), /*transposed=*/false, B, s.T);

  for (int64_t t = s.T - 1; t >= 0; --t) {
    const T* doutt = step_row<T>(dout, t, 0, P);
    for (int64_t b = 0; b < B; ++b) {
      if (!active(lengths, b, t)) continue;
      T* d = dhp_ + b * P;
      for (int64_t j = 0; j < P; ++j) d[j] += doutt[b * P + j];
    }
    if (proj) {
      T* dhpt = step_row<T>(dhp, t, 0, P);
      for (int64_t b = 0; b < B; ++b) {
        if (active(lengths, b, t)) std::copy(dhp_ + b * P, dhp_ + (b + 1) * P, dhpt + b * P);
      }
      (*projection)(dhp_, P, dhh.data_ptr<T>(), /*accumulate=*/false);  // (B,P) @ (P,H)
    }
    const T* dhh_ = proj ? dhh.data_ptr<T>() : dhp_;
    const T* gt = recompute ? gate_step.data_ptr<T>() : step_row<T>(gates, t, 0, G);
    const T* ct = step_row<T>(cs, t, 0, H);
    const T* cprev = t > 0 ? step_row<T>(cs, t - 1, 0, H) : c0.data_ptr<T>();
    const T* xhat_t = lnw ? step_row<T>(xhat_hh, t, 0, G) : nullptr;
    T* dgxt = lniw ? dgx_step.data_ptr<T>() : step_row<T>(dgx, t, 0, G);
    T* dght = step_row<T>(dgh, t % chunk, 0, G);
    at::parallel_for(0, B, row_grain(G), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!active(lengths, b, t)) {
          // Gradients pass through unchanged; the dgx row stays zero, the reused dgh row is cleared.
          if (lnw) std::fill(dght + b * G, dght + (b + 1) * G, T(0));
          continue;
        }
        const T* gr = gt + b * G;
        const T* c = ct + b * H;
        const T* cp = cprev + b * H;
        T* xi = lniw ? xhat_ih.data_ptr<T>() + b * G : nullptr;
        if (lniw) {
          // LN_ih's xhat, for its backward below, and where the gates were not saved the forward's
          // pre-activations LN_ih(W_ih x) + LN_hh(W_hh h) + b_hh, in its order of operations, then its activations.
          const T* ar = step_row<T>(*a_ih, t, b, G);
          const T* st = step_row<T>(stats_ih, t, b, 2);
          for (int64_t k = 0; k < G; ++k) xi[k] = (ar[k] - st[0]) * st[1];
          if (recompute) {
            const T* xr = xhat_t + b * G;
            T* g = gate_step.data_ptr<T>() + b * G;
            for (int64_t k = 0; k < G; ++k) {
              g[k] = (xi[k] * lniw[k] + lnis[k]) + (xr[k] * lnw[k] + lnb[k]) + (bias ? bias[k] : T(0));
            }
            activate_ifg(s, g, cp, pci, pcf, fb);
            activate_o(s, g, c, pco);
          }
        }
        const T* dho = dhh_ + b * H;
        T* dcr = dcp_ + b * H;
        T* da = dgxt + b * G;
        // th = tanh(LN_c(c_t)), recomputed from the saved c_t (and its statistics) in one vectorisable pass.
        T* th = th_buf.data_ptr<T>() + b * H;
        T mean = 0, rstd = 1;
        T* xh = lncw ? xhc.data_ptr<T>() + b * H : nullptr;
        if (lncw) {
          mean = *step_row<T>(mean_c, t, b, 1);
          rstd = *step_row<T>(rstd_c, t, b, 1);
          for (int64_t j = 0; j < H; ++j) {
            xh[j] = (c[j] - mean) * rstd;
            th[j] = xh[j] * lncw[j] + lncb[j];
          }
        } else {
          std::copy(c, c + H, th);
        }
        tanh_(th, H);
        const T* dch_row = nullptr;
        if (lncw) {
          // dcn = dh * o * (1 - th^2), then back through LN_c, whose xhat was rebuilt from the statistics of c.
          T* dn = dcn.data_ptr<T>() + b * H;
          for (int64_t j = 0; j < H; ++j) dn[j] = dho[j] * gr[s.off_o + j] * (T(1) - th[j] * th[j]);
          T* dcl = dch.data_ptr<T>() + b * H;
          layer_norm_row_backward(dn, xh, rstd, lncw, H, dcl);
          dch_row = dcl;
        }
        // The gate loop is compiled once per combination of variant flags: with the flags as constants (and `omp
        // simd`, as the rows written never overlap the rows read, which the compiler cannot prove) it vectorises;
        // with the flags tested inside, GCC keeps it scalar. Peepholes are p_i, p_o and (not coupled) p_f.
        auto gates_backward = [&](auto coupled_flag, auto peephole_flag, auto ln_c_flag) {
          constexpr bool coupled = decltype(coupled_flag)::value, peephole = decltype(peephole_flag)::value;
          constexpr bool ln_c = decltype(ln_c_flag)::value;
          #pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            const T i = gr[j], g = gr[s.off_g + j], o = gr[s.off_o + j];
            const T f = coupled ? T(1) - i : gr[s.off_f + j];
            const T thj = th[j];
            T dcj = ln_c ? dcr[j] + dch_row[j] : dcr[j] + dho[j] * o * (T(1) - thj * thj);
            const T dao = dho[j] * thj * o * (T(1) - o);
            if constexpr (peephole) dcj += dao * pco[j];
            const T di = dcj * g, dg = dcj * i, df = dcj * cp[j];
            const T dag = dg * (T(1) - g * g);
            T dai, daf = 0;
            if constexpr (coupled) {
              dai = (di - df) * i * (T(1) - i);  // f = 1 - i
            } else {
              dai = di * i * (T(1) - i);
              daf = df * f * (T(1) - f);
              da[s.off_f + j] = daf;
            }
            T dcprev = dcj * f;
            if constexpr (peephole) dcprev += dai * pci[j];
            if constexpr (peephole && !coupled) dcprev += daf * pcf[j];
            da[j] = dai;
            da[s.off_g + j] = dag;
            da[s.off_o + j] = dao;
            dcr[j] = dcprev;
          }
        };
        auto with_coupling = [&](auto peephole_flag, auto ln_c_flag) {
          if (s.coupled) {
            gates_backward(std::true_type{}, peephole_flag, ln_c_flag);
          } else {
            gates_backward(std::false_type{}, peephole_flag, ln_c_flag);
          }
        };
        if (pci) {
          lncw ? with_coupling(std::true_type{}, std::true_type{}) : with_coupling(std::true_type{}, std::false_type{});
        } else {
          lncw ? with_coupling(std::false_type{}, std::true_type{}) : with_coupling(std::false_type{}, std::false_type{});
        }
        if (lnw) layer_norm_row_backward(da, xhat_t + b * G, *step_row<T>(rstd_hh, t, b, 1), lnw, G, dght + b * G);
        if (lniw) {
          layer_norm_row_backward(da, xi, step_row<T>(stats_ih, t, b, 2)[1], lniw, G, step_row<T>(dgx, t, b, G));
        }
        // h_{t-1} gets only the recurrent GEMM's gradient (added below); the carried value is used up.
        std::fill(dhp_ + b * P, dhp_ + (b + 1) * P, T(0));
      }
    });
    sum_rows(dgxt, G, xhat_t, G, B, G, lengths, t, acc_lnw, acc_b);
    if (lniw) sum_rows(dgxt, G, xhat_ih.data_ptr<T>(), G, B, G, lengths, t, acc_lniw, nullptr);
    if (lncw) sum_rows(dcn.data_ptr<T>(), H, xhc.data_ptr<T>(), H, B, H, lengths, t, acc_lncw, acc_lncb);
    if (pci) sum_rows(dgxt, G, cprev, H, B, H, lengths, t, acc_ci, nullptr);
    if (pcf) sum_rows(dgxt + s.off_f, G, cprev, H, B, H, lengths, t, acc_cf, nullptr);
    if (pco) sum_rows(dgxt + s.off_o, G, ct, H, B, H, lengths, t, acc_co, nullptr);
    recurrent(dght, G, dhp_, /*accumulate=*/true);  // (B,G·H) @ (G·H,P)
    if (dw_hh.defined() && t % chunk == 0) add_weight_grad(dw_hh, dgh, t, std::min(chunk, s.T - t), h0, out);
  }
}

std::vector<Tensor> lstm_backward(const Tensor& dout_in, const Tensor& dh_n, const Tensor& dc_n, const Tensor& h0,
                                  const Tensor& c0, const Tensor& w_hh, const OptTensor& b_hh,
                                  const OptTensor& ln_hh_b, const OptTensor& ln_ih_s, double forget_bias,
                                  const OptTensor& w_hr,
                                  const OptTensor& w_ci, const OptTensor& w_cf, const OptTensor& w_co,
                                  const OptTensor& ln_hh_w, const OptTensor& ln_c_w, const OptTensor& ln_c_b,
                                  const OptTensor& ln_ih_w, bool coupled, const OptTensor& lengths,
                                  const Tensor& out, const Tensor& gates, const Tensor& cs, const Tensor& xhat_hh,
                                  const Tensor& rstd_hh, const Tensor& mean_c, const Tensor& rstd_c,
                                  const OptTensor& a_ih, const Tensor& stats_ih) {
  const Tensor dout = contiguous_buffer(dout_in);  // (T,B,·), read row by row
  auto given = [](const OptTensor& w) { return w.has_value() && w->defined(); };
  TORCH_CHECK(given(ln_ih_w) == given(a_ih), "lstm_backward: a fused LN_ih needs W_ih x");
  const LSTMShape s = lstm_shape(given(a_ih) ? *a_ih : gates, c0, h0, coupled);  // (T, B, G·H) either way
  const int64_t* len = ptr_or_null<int64_t>(lengths);
  const bool zero = len != nullptr;  // rows of ended sequences are never written
  auto opts = dout.options();
  Tensor dh = dh_n.clone(), dc = dc_n.clone();
  Tensor dgx = buffer({s.T, s.B, s.G}, opts, zero);
  const bool proj = given(w_hr), ln = given(ln_hh_w);
  TORCH_CHECK(ln || !given(ln_ih_w), "lstm_backward: a fused LN_ih comes with LN_hh (layer_norm)");
  // Without layer norm dgh is dgx, kept whole, whose weight GEMM runs once over all steps and rows after the loop.
  const bool whole_dgh = !ln;
  Tensor dw_hh = buffer({s.G, s.P}, opts, true);
  Tensor dhp = proj ? buffer({s.T, s.B, s.P}, opts, zero) : none_like(dout);
  // db, dln_hh_w, dln_c_w, dln_c_b, dci, dcf, dco, dln_ih_w (see above)
  auto accumulators = [&] {
    return std::vector<Tensor>{accumulator(s.G, true, opts),        accumulator(s.G, ln, opts),
                               accumulator(s.H, ln, opts),          accumulator(s.H, ln, opts),
                               accumulator(s.H, given(w_ci), opts), accumulator(s.H, given(w_cf), opts),
                               accumulator(s.H, given(w_co), opts), accumulator(s.G, given(ln_ih_w), opts)};
  };
  std::vector<Tensor> acc = accumulators();
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "lstm_backward", [&] {
    backward_slices(s.B, recurrent_bytes(w_hh, w_hr), whole_dgh, dw_hh, acc, accumulators,
                    [&](int64_t b0, int64_t n, Tensor& dw, std::vector<Tensor>& a) {
      LSTMShape part = s;
      part.B = n;
      Tensor dh_s = state_rows(dh, b0, n), dc_s = state_rows(dc, b0, n), dgx_s = batch_rows(dgx, b0, n);
      Tensor dgh_s = whole_dgh ? dgx_s : buffer({chunk_steps(s.T, n), n, s.G}, opts, false);
      Tensor dhp_s = batch_rows(dhp, b0, n);
      backward_impl<scalar_t>(part, batch_rows(dout, b0, n), dh_s, dc_s, w_hh, b_hh, ln_hh_b, ln_ih_s, forget_bias,
                              w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_c_w, ln_c_b, ln_ih_w, len ? len + b0 : nullptr,
                              state_rows(c0, b0, n), batch_rows(gates, b0, n), batch_rows(cs, b0, n),
                              batch_rows(xhat_hh, b0, n), batch_rows(rstd_hh, b0, n), batch_rows(mean_c, b0, n),
                              batch_rows(rstd_c, b0, n), batch_rows(a_ih, b0, n), batch_rows(stats_ih, b0, n),
                              state_rows(h0, b0, n), batch_rows(out, b0, n), dgx_s, dgh_s, dw, dhp_s, a);
    });
  });
  if (whole_dgh) add_weight_grad(dw_hh, dgx, 0, s.T, h0, out);
  std::vector<Tensor> result = {dgx, dw_hh, dhp, dh, dc};
  for (const Tensor& a : acc) result.push_back(a.to(dout.scalar_type()));
  return result;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_forward_input", &lstm_forward_input);
  m.def("lstm_backward", &lstm_backward);
}

}  // namespace gatedrnn
