// Clockwork RNN recurrence (cells/clockwork.py), forward and backward.
// The H units form g modules, the first H mod g of H / g + 1 units, the others of H / g (module_start); module i
// (period T_i) updates at step t only if t mod T_i == 0 and reads only the units of modules j >= i (W_hh is block
// upper-triangular). A step computes the rows of the active modules alone, each against the columns it reads: its
// cost is that of its active modules, and the unused blocks of W_hh are never read (their gradient is zero).
#include <torch/library.h>

#include "common.h"

namespace gatedrnn {
namespace {

// The modules active at step t (t mod T_i == 0), in order.
std::vector<int64_t> active_modules(const std::vector<int64_t>& periods, int64_t t) {
  std::vector<int64_t> found;
  for (size_t i = 0; i < periods.size(); ++i) {
    if (t % periods[i] == 0) found.push_back(int64_t(i));
  }
  return found;
}

// The first unit of module i (i = g: H), as cells/clockwork.py splits the units.
inline int64_t module_start(int64_t i, int64_t H, int64_t g) {
  return i * (H / g) + std::min(i, H % g);
}

// At most this many sequences, the products of a step are dot products over raw pointers (no ATen call in the
// time loop); above, one GEMM per active module.
constexpr int64_t kDirectBatch = 4;

// y (n, k) = x[:, c0:] (n, H - c0) @ W[c0 : c0 + k, c0:]^T for the module of units [c0, c0 + k); x rows of stride
// ldx.
template <typename T>
void module_product(const T* w, int64_t H, int64_t c0, int64_t k, const T* x, int64_t ldx, int64_t n, T* y,
                    int64_t ldy) {
  const int64_t width = H - c0;
  for (int64_t b = 0; b < n; ++b) {
    const T* xb = x + b * ldx + c0;
    for (int64_t r = 0; r < k; ++r) {
      const T* wr = w + (c0 + r) * H + c0;
      T s = 0;
      #pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < width; ++c) s += wr[c] * xb[c];
      y[b * ldy + r] = s;
    }
  }
}

template <typename T>
void forward_impl(const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh, const std::vector<int64_t>& periods,
                  int64_t start, bool relu, const int64_t* lengths, Tensor& h_state, Tensor& out) {
  const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2);
  const int64_t g = int64_t(periods.size());
  const T* bias = ptr_or_null<T>(b_hh);
  const T* w = w_hh.data_ptr<T>();
  Tensor prod = at::empty({B, H}, gx.options());  // (B, H): W_hh h_{t-1}, the active modules' units only
  T* hs = h_state.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const std::vector<int64_t> modules = active_modules(periods, start + t);
    for (int64_t i : modules) {  // all products before any unit of h_t is written: they read h_{t-1}
      const int64_t j0 = module_start(i, H, g), k = module_start(i + 1, H, g) - j0;
      if (B <= kDirectBatch) {
        module_product<T>(w, H, j0, k, hs, H, B, prod.data_ptr<T>() + j0, H);
      } else {
        Tensor y = prod.narrow(1, j0, k);
        y.addmm_(h_state.narrow(1, j0, H - j0), w_hh.narrow(0, j0, k).narrow(1, j0, H - j0).t(), 0, 1);
      }
    }
    const T* x_t = step_row<T>(gx, t, 0, H);
    T* outt = step_row<T>(out, t, 0, H);
    at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* o = outt + b * H;
        if (!active(lengths, b, t)) {
          std::fill(o, o + H, T(0));
          continue;
        }
        T* h = hs + b * H;
        for (int64_t i : modules) {
          const int64_t j0 = module_start(i, H, g), k = module_start(i + 1, H, g) - j0;
          const T* y = prod.data_ptr<T>() + b * H + j0;
          const T* x = x_t + b * H + j0;
          const T* bj = bias ? bias + j0 : nullptr;
          T* hj = h + j0;
          for (int64_t j = 0; j < k; ++j) {
            const T a = x[j] + y[j] + (bj ? bj[j] : T(0));
            hj[j] = relu ? gatedrnn::relu(a) : tanh(a);
          }
        }
        std::copy(h, h + H, o);
      }
    });
  }
}

// Step t of gx is step start + t of the module clocks. Returns out (T,B,H): h_t at every step, zero past each
// length, and h_n (B,H). Backward needs only out (h_t is both the activation's derivative's argument and the right
// factor of dW_hh) and h0.
std::vector<Tensor> clockwork_forward(const Tensor& gx, const Tensor& h0, const Tensor& w_hh, const OptTensor& b_hh,
                                      std::vector<int64_t> periods, int64_t start, bool relu,
                                      const OptTensor& lengths) {
  const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2);
  TORCH_CHECK(!periods.empty(), "clockwork_forward: expected at least one period");
  const Tensor x = gx.contiguous();
  const Tensor w = w_hh.contiguous();
  const OptTensor b = b_hh.has_value() && b_hh->defined() ? OptTensor(b_hh->contiguous()) : OptTensor();
  const OptTensor len = lengths.has_value() && lengths->defined() ? OptTensor(lengths->contiguous()) : OptTensor();
  Tensor h_state = h0.contiguous().clone();
  Tensor out = buffer({T_, B, H}, x.options(), false);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "clockwork_forward", [&] {
    forward_impl<scalar_t>(x, w, b, periods, start, relu, ptr_or_null<int64_t>(len), h_state, out);
  });
  return {out, h_state};
}

// Backward through time. At step t, for a sequence that takes it, the gradient reaching h_t (from later steps, dh,
// and from the output, dout_t) goes to the pre-activation of the active units (dgx = gradient · act'), and passes
// unchanged to h_{t-1} for the units that kept their state; W_hh's active blocks then send dgx back to the units
// they read. dW_hh's block (i, j >= i) sums dgx_i^T h_{t-1, j} over the steps where module i is active; db sums dgx.
// Returns dgx (T,B,H) (the gradient of gx and, summed, of b_hh), dW_hh (H,H), dh0 (B,H), db (H).
template <typename T>
void backward_impl(const Tensor& dout, const Tensor& h0, const Tensor& w_hh, const std::vector<int64_t>& periods,
                   int64_t start, bool relu, const int64_t* lengths, const Tensor& out, Tensor& dh, Tensor& dgx,
                   Tensor& dw_hh, Tensor& db) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t g = int64_t(periods.size());
  T* dhp = dh.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const std::vector<int64_t> modules = active_modules(periods, start + t);
    std::vector<char> updates(size_t(g), 0);
    for (int64_t i : modules) updates[size_t(i)] = 1;
    const T* doutt = step_row<T>(dout, t, 0, H);
    const T* outt = step_row<T>(out, t, 0, H);
    T* dgxt = step_row<T>(dgx, t, 0, H);
    at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!active(lengths, b, t)) continue;  // the state was kept: its gradient passes on unchanged
        T* d = dhp + b * H;
        const T* h = outt + b * H;
        const T* dob = doutt + b * H;
        T* da = dgxt + b * H;
        for (int64_t i = 0; i < g; ++i) {
          const int64_t j0 = module_start(i, H, g), j1 = module_start(i + 1, H, g);
          if (updates[size_t(i)]) {
            for (int64_t j = j0; j < j1; ++j) {
              const T grad = d[j] + dob[j];
              da[j] = relu ? relu_backward(grad, h[j]) : grad * (T(1) - h[j] * h[j]);
              d[j] = 0;  // h_{t-1} of an active unit gets only the recurrent products' gradient, added below
            }
          } else {
            for (int64_t j = j0; j < j1; ++j) d[j] += dob[j];
          }
        }
      }
    });
    const Tensor h_prev = t > 0 ? out.select(0, t - 1) : h0;  // (B, H); rows of ended sequences have dgx = 0
    const Tensor dgx_t = dgx.select(0, t);
    for (int64_t i : modules) {
      const int64_t j0 = module_start(i, H, g), k = module_start(i + 1, H, g) - j0, width = H - j0;
      const Tensor da = dgx_t.narrow(1, j0, k);  // (B, k)
      Tensor dh_cols = dh.narrow(1, j0, width);
      dh_cols.addmm_(da, w_hh.narrow(0, j0, k).narrow(1, j0, width));  // (B, k) @ (k, width)
      Tensor dw = dw_hh.narrow(0, j0, k).narrow(1, j0, width);
      dw.addmm_(da.t(), h_prev.narrow(1, j0, width));  // (k, B) @ (B, width)
      db.narrow(0, j0, k).add_(da.sum(0));
    }
  }
}

std::vector<Tensor> clockwork_backward(const Tensor& dout_in, const Tensor& dh_n, const Tensor& h0,
                                       const Tensor& w_hh, std::vector<int64_t> periods, int64_t start, bool relu,
                                       const OptTensor& lengths, const Tensor& out) {
  const Tensor dout = dout_in.contiguous();
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const OptTensor len = lengths.has_value() && lengths->defined() ? OptTensor(lengths->contiguous()) : OptTensor();
  auto opts = dout.options();
  Tensor dh = dh_n.contiguous().clone();
  Tensor dgx = buffer({T_, B, H}, opts, true);  // inactive units and ended sequences keep 0
  Tensor dw_hh = at::zeros({H, H}, opts);
  Tensor db = at::zeros({H}, opts);
  const Tensor w = w_hh.contiguous();
  const Tensor h_0 = h0.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "clockwork_backward", [&] {
    backward_impl<scalar_t>(dout, h_0, w, periods, start, relu, ptr_or_null<int64_t>(len), out.contiguous(), dh, dgx,
                            dw_hh, db);
  });
  return {dgx, dw_hh, dh, db};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("clockwork_forward", &clockwork_forward);
  m.def("clockwork_backward", &clockwork_backward);
}

}  // namespace gatedrnn
