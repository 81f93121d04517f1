// Elman RNN recurrence (cells/rnn.py: tanh or relu, optional layer norm), forward and backward.
// Per step: one GEMM gh = h W_hh^T and one fused pass (layer norm, bias, activation, mask).
#include <torch/library.h>

#include "common.h"
#include "team.h"

namespace gatedrnn {
namespace {

template <typename T>
void forward_impl(StepInput<T>& input, const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& ln_w,
                  const OptTensor& ln_b, const OptTensor& ln_ih_w, const OptTensor& ln_ih_s, bool relu,
                  const int64_t* lengths, Tensor& h_state, Tensor& out, Tensor& xhat, Tensor& rstd,
                  Tensor& stats_ih, bool save) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const T* bias = ptr_or_null<T>(b_hh);
  const T *lnw = ptr_or_null<T>(ln_w), *lnb = ptr_or_null<T>(ln_b);
  const T *lniw = ptr_or_null<T>(ln_ih_w), *lnis = ptr_or_null<T>(ln_ih_s);  // fused LN_ih: gx holds W_ih x
  Tensor gh = at::empty({B, H}, h_state.options());                                 // (B, H)
  Tensor gx_norm = lniw ? at::empty({B, H}, h_state.options()) : Tensor();          // (B, H): LN_ih(W_ih x)
  T* hs = h_state.data_ptr<T>();
  const StepProduct<T> recurrent(w_hh, /*transposed=*/true, B, T_);  // h W_hh^T
  for (int64_t t = 0; t < T_; ++t) {
    recurrent(hs, H, gh.data_ptr<T>(), /*accumulate=*/false);
    const T* x_t = input(t);
    T* outt = step_row<T>(out, t, 0, H);
    at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* o = outt + b * H;
        if (!active(lengths, b, t)) {
          std::fill(o, o + H, T(0));
          continue;
        }
        T* a = gh.data_ptr<T>() + b * H;
        if (lnw) {
          layer_norm_row(a, H, lnw, lnb, save ? step_row<T>(xhat, t, b, H) : nullptr,
                         save ? step_row<T>(rstd, t, b, 1) : nullptr);
        }
        const T* x = x_t + b * H;
        if (lniw) {
          x = input_norm_row(x, H, lniw, lnis, gx_norm.data_ptr<T>() + b * H,
                             save ? step_row<T>(stats_ih, t, b, 2) : nullptr);
        }
        add_(o, x, a, bias, H);
        if (relu) {
          for (int64_t j = 0; j < H; ++j) o[j] = gatedrnn::relu(o[j]);
        } else {
          tanh_(o, H);
        }
        std::copy(o, o + H, hs + b * H);
      }
    });
  }
}

// The small-batch recurrence (team.h), without layer norm (its statistics are over whole rows): member k computes
// h' = act(x + W_hh h + b) for its units [j0, j1) from its own rows of W_hh. Outputs are those of forward_impl.
template <typename T>
void forward_team(int threads, const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh, bool relu,
                  const int64_t* lengths, Tensor& h_state, Tensor& out) {
  const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2);
  const Tensor zero_bias = b_hh.has_value() && b_hh->defined() ? Tensor() : at::zeros({H}, gx.options());
  const T* bias = zero_bias.defined() ? zero_bias.data_ptr<T>() : b_hh->data_ptr<T>();
  Tensor h_other = at::empty({B, H}, gx.options());  // (B, H): h_t at odd t; h_state holds h_t at even t
  T* hbuf[2] = {h_state.data_ptr<T>(), h_other.data_ptr<T>()};
  const T* gxp = gx.data_ptr<T>();
  T* outp = out.data_ptr<T>();

  run_team(threads, H, line_units<T>(), [&](TeamMember& m) {
    const int64_t j0 = m.j0, nk = m.units();
    SliceProduct<T> recurrent(w_hh.data_ptr<T>(), w_hh.stride(0), H, {0}, j0, m.j1, B, /*slot=*/0);
    const T* bj = bias + j0;
    for (int64_t t = 0; t < T_; ++t) {
      const T* hp = hbuf[t % 2];
      T* hn = hbuf[(t + 1) % 2];
      own_part_then_wait(recurrent, m, hp, B, H, lengths, t);  // W_hh h_{t-1} over the own units, then the wait
      for (int64_t b = 0; b < B && nk > 0; ++b) {
        T* h_new = hn + b * H + j0;
        T* o_out = outp + (t * B + b) * H + j0;
        if (!active(lengths, b, t)) {
          std::copy(hp + b * H + j0, hp + b * H + j0 + nk, h_new);
          std::fill(o_out, o_out + nk, T(0));
          continue;
        }
        const T* y = recurrent.rest(hp + b * H, j0, m.j1, b);
        const T* x = gxp + (t * B + b) * H + j0;
        if (relu) {
          #pragma omp simd
          for (int64_t j = 0; j < nk; ++j) {
            const T a = x[j] + y[j] + bj[j];
            h_new[j] = o_out[j] = gatedrnn::relu(a);
          }
        } else {
          #pragma omp simd
          for (int64_t j = 0; j < nk; ++j) h_new[j] = o_out[j] = tanh(x[j] + y[j] + bj[j]);
        }
      }
      m.arrive();  // this member's units of h_t are written
    }
  });
  if (T_ % 2) h_state.copy_(h_other);
}

// Saved tensors: out (T,B,H), the output itself (kept anyway): the activation's derivative is a function of
// h_t, and h_{t-1} is the right factor of dW_hh; with layer_norm also xhat (T,B,H) and rstd (T,B) for LN backward.
// With ln_ih_w and ln_ih_s (LN_ih's gain, and its shift + b_ih) given, gx is W_ih x and LN_ih runs in the kernel;
// then stats_ih (T,B,2) holds the mean and 1/std of each row of W_ih x, from which (and from W_ih x, which the
// caller keeps) backward rebuilds LN_ih's xhat.
std::vector<Tensor> rnn_forward(const Tensor& gx, const Tensor& h0, const Tensor& w_hh, const OptTensor& b_hh,
                                const OptTensor& ln_w, const OptTensor& ln_b, const OptTensor& ln_ih_w,
                                const OptTensor& ln_ih_s, bool relu, const OptTensor& lengths, bool save) {
  const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2);
  const int64_t* len = ptr_or_null<int64_t>(lengths);
  const bool ln = ln_w.has_value() && ln_w->defined();
  auto opts = gx.options();
  Tensor h_state = h0.clone();
  Tensor out = buffer({T_, B, H}, opts, false);
  Tensor xhat = save && ln ? buffer({T_, B, H}, opts, len != nullptr) : none_like(gx);
  Tensor rstd = save && ln ? buffer({T_, B}, opts, len != nullptr) : none_like(gx);
  const bool ln_ih = ln_ih_w.has_value() && ln_ih_w->defined();
  Tensor stats_ih = save && ln_ih ? buffer({T_, B, 2}, opts, len != nullptr) : none_like(gx);
  const int team = team_size(ln || ln_ih, T_, B, H);
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "rnn_forward", [&] {
    if (team) {
      forward_team<scalar_t>(team, gx, w_hh, b_hh, relu, len, h_state, out);
      return;
    }
    for_batch_slices(B, int64_t(w_hh.nbytes()), [&](int64_t b0, int64_t n) {
      StepInput<scalar_t> input(batch_rows(gx, b0, n));
      Tensor h = state_rows(h_state, b0, n), o = batch_rows(out, b0, n), xh = batch_rows(xhat, b0, n);
      Tensor rs = batch_rows(rstd, b0, n), st = batch_rows(stats_ih, b0, n);
      forward_impl<scalar_t>(input, w_hh, b_hh, ln_w, ln_b, ln_ih_w, ln_ih_s, relu, len ? len + b0 : nullptr, h, o,
                             xh, rs, st, save);
    });
  });
  return {out, h_state, xhat, rstd, stats_ih};
}

// rnn_forward without saving, from the layer's input x (T, B, I) rather than gx (b_ih left out by the caller with
// LN_ih given, as for rnn_forward): the time loop forms the input projection a chunk of steps at a time
// (StepInput); where the team runs the call, it is one GEMM first (input_product). Returns out, h_n.
std::vector<Tensor> rnn_forward_input(const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih, const Tensor& h0,
                                      const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& ln_w,
                                      const OptTensor& ln_b, const OptTensor& ln_ih_w, const OptTensor& ln_ih_s,
                                      bool relu, const OptTensor& lengths) {
  const bool row_wide = (ln_w.has_value() && ln_w->defined()) || (ln_ih_w.has_value() && ln_ih_w->defined());
  auto whole = [&](const Tensor& gx) {
    return rnn_forward(gx, h0, w_hh, b_hh, ln_w, ln_b, ln_ih_w, ln_ih_s, relu, lengths, false);
  };
  auto chunks = [&](auto& input, Tensor& h_state, Tensor& out, const int64_t* len) {
    using T = typename std::decay_t<decltype(input)>::Scalar;
    Tensor unsaved = none_like(x);
    forward_impl<T>(input, w_hh, b_hh, ln_w, ln_b, ln_ih_w, ln_ih_s, relu, len, h_state, out, unsaved, unsaved,
                    unsaved, false);
  };
  return forward_from_input("rnn_forward_input", x, w_ih, b_ih, h0, w_hh, lengths, row_wide, whole, chunks);
}

// Backward through time: dgx (T,B,H) = gradient of the pre-activation (of gx, b_hh and LN's output), dh0,
// dw_hh (H,H) = sum_t dgh_t^T h_{t-1} as GEMMs over chunks of steps (add_weight_grad; dgh, the gradient of W_hh h_{t-1}
// before LN, is dgx itself kept whole without layer norm, dw_hh then undefined here and formed by the caller over all
// steps and rows at once; with it a buffer of chunk_steps steps), and summed here
// step by step (sum_rows): db (H) = sum of dgx (b_hh and LN's shift), dln_w (H) = sum of dgx * xhat (LN's gain,
// layer_norm only). With LN_ih fused, dgx is the gradient of the step's LN_ih(W_ih x), in a (B,H) buffer, the (T,B,H)
// result is instead the gradient of W_ih x, dln_ih_w (H) = sum of dgx * xhat_ih is LN_ih's gain's, and db is also
// LN_ih's shift's (and b_ih's).
template <typename T>
void backward_impl(const Tensor& dout, Tensor& dh, const Tensor& w_hh, const OptTensor& ln_w,
                   const OptTensor& ln_ih_w, bool relu, const int64_t* lengths, const Tensor& h0, const Tensor& out,
                   const Tensor& xhat, const Tensor& rstd, const OptTensor& a_ih, const Tensor& stats_ih, Tensor& dgx,
                   Tensor& dgh, Tensor& dw_hh, Tensor& acc_b, Tensor& acc_lnw, Tensor& acc_lniw) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t chunk = dgh.size(0);  // steps held by dgh: all T, or chunk_steps with layer norm
  const T* lnw = ptr_or_null<T>(ln_w);
  const T* lniw = ptr_or_null<T>(ln_ih_w);
  // fused LN_ih: this step's dgx (the gradient of LN_ih(W_ih x)) and xhat_ih, each (B, H)
  Tensor dgx_step = lniw ? at::empty({B, H}, dout.options()) : Tensor();
  Tensor xhat_ih = lniw ? at::empty({B, H}, dout.options()) : Tensor();
  T* dhp = dh.data_ptr<T>();
  const StepProduct<T> recurrent(w_hh, /*transposed=*/false, B, T_);  // dgh W_hh
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* doutt = step_row<T>(dout, t, 0, H);
    const T* outt = step_row<T>(out, t, 0, H);
    T* dgxt = lniw ? dgx_step.data_ptr<T>() : step_row<T>(dgx, t, 0, H);
    T* dght = step_row<T>(dgh, t % chunk, 0, H);
    const T* xh = lnw ? step_row<T>(xhat, t, 0, H) : nullptr;
    at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!active(lengths, b, t)) {  // the gradient passes through unchanged; the reused dgh row is cleared
          if (lnw) std::fill(dght + b * H, dght + (b + 1) * H, T(0));
          continue;
        }
        T* d = dhp + b * H;
        const T* h = outt + b * H;
        T* da = dgxt + b * H;
        for (int64_t j = 0; j < H; ++j) {
          const T g = d[j] + doutt[b * H + j];
          da[j] = relu ? relu_backward(g, h[j]) : g * (T(1) - h[j] * h[j]);
          d[j] = 0;  // h_{t-1} gets only the recurrent GEMM's gradient, added below
        }
        if (lnw) {
          layer_norm_row_backward(da, xh + b * H, *step_row<T>(rstd, t, b, 1), lnw, H, dght + b * H);
        }
        if (lniw) {
          input_norm_row_backward(da, step_row<T>(*a_ih, t, b, H), step_row<T>(stats_ih, t, b, 2), lniw, H,
                                  xhat_ih.data_ptr<T>() + b * H, step_row<T>(dgx, t, b, H));
        }
      }
    });
    sum_rows(dgxt, H, xh, H, B, H, lengths, t, acc_or_null(acc_lnw), acc_or_null(acc_b));
    if (lniw) sum_rows(dgxt, H, xhat_ih.data_ptr<T>(), H, B, H, lengths, t, acc_or_null(acc_lniw), nullptr);
    recurrent(dght, H, dhp, /*accumulate=*/true);  // (B,H) @ (H,H)
    if (dw_hh.defined() && t % chunk == 0) add_weight_grad(dw_hh, dgh, t, std::min(chunk, T_ - t), h0, out);
  }
}

std::vector<Tensor> rnn_backward(const Tensor& dout_in, const Tensor& dh_n, const Tensor& h0, const Tensor& w_hh,
                                 const OptTensor& ln_w, const OptTensor& ln_ih_w, bool relu, const OptTensor& lengths,
                                 const Tensor& out, const Tensor& xhat, const Tensor& rstd, const OptTensor& a_ih,
                                 const Tensor& stats_ih) {
  const Tensor dout = contiguous_buffer(dout_in);  // (T,B,·), read row by row
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t* len = ptr_or_null<int64_t>(lengths);
  const bool ln = ln_w.has_value() && ln_w->defined();
  const bool zero = len != nullptr;  // rows of ended sequences are never written
  const bool ln_ih = ln_ih_w.has_value() && ln_ih_w->defined();
  TORCH_CHECK(ln || !ln_ih, "rnn_backward: a fused LN_ih comes with LN_hh (layer_norm)");
  auto opts = dout.options();
  Tensor dh = dh_n.clone();
  Tensor dgx = buffer(out.sizes(), opts, zero);
  // Without layer norm dgh is dgx, kept whole, whose weight GEMM runs once over all steps and rows after the loop.
  const bool whole_dgh = !ln;
  Tensor dw_hh = buffer({H, H}, opts, true);
  // db, dln_w, dln_ih_w (see above)
  auto accumulators = [&] {
    return std::vector<Tensor>{accumulator(H, true, opts), accumulator(H, ln, opts), accumulator(H, ln_ih, opts)};
  };
  std::vector<Tensor> acc = accumulators();
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "rnn_backward", [&] {
    backward_slices(B, int64_t(w_hh.nbytes()), whole_dgh, dw_hh, acc, accumulators,
                    [&](int64_t b0, int64_t n, Tensor& dw, std::vector<Tensor>& a) {
      Tensor dh_s = state_rows(dh, b0, n), dgx_s = batch_rows(dgx, b0, n);
      Tensor dgh_s = whole_dgh ? dgx_s : buffer({chunk_steps(T_, n), n, H}, opts, false);
      backward_impl<scalar_t>(batch_rows(dout, b0, n), dh_s, w_hh, ln_w, ln_ih_w, relu, len ? len + b0 : nullptr,
                              state_rows(h0, b0, n), batch_rows(out, b0, n), batch_rows(xhat, b0, n),
                              batch_rows(rstd, b0, n), batch_rows(a_ih, b0, n), batch_rows(stats_ih, b0, n), dgx_s,
                              dgh_s, dw, a[0], a[1], a[2]);
    });
  });
  if (whole_dgh) add_weight_grad(dw_hh, dgx, 0, T_, h0, out);
  const auto dtype = dout.scalar_type();
  return {dgx, dw_hh, dh, acc[0].to(dtype), acc[1].to(dtype), acc[2].to(dtype)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_forward_input", &rnn_forward_input);
  m.def("rnn_backward", &rnn_backward);
}

}  // namespace gatedrnn
