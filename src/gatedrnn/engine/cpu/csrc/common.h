// Shared pieces of the fused CPU kernels: activations, row-wise layer norm, the time mask, GEMM helpers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace gatedrnn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr double kLayerNormEps = 1e-5;  // torch.nn.LayerNorm's default, as cells/base.py LN_EPS

// The activations run as simple loops over contiguous blocks so that the compiler vectorises them (with
// -ffast-math, glibc's vector exp and tanh); one scalar call per element would dominate a step at small batch.
template <typename T>
inline void sigmoid_(T* a, int64_t n) {
  for (int64_t k = 0; k < n; ++k) a[k] = T(1) / (T(1) + std::exp(-a[k]));
}

template <typename T>
inline void tanh_(T* a, int64_t n) {
  for (int64_t k = 0; k < n; ++k) a[k] = std::tanh(a[k]);
}

// y = x + a (+ bias): the pre-activation of a block of gates.
template <typename T>
inline void add_(T* __restrict y, const T* __restrict x, const T* __restrict a, const T* __restrict bias, int64_t n) {
  if (bias) {
    for (int64_t k = 0; k < n; ++k) y[k] = x[k] + a[k] + bias[k];
  } else {
    for (int64_t k = 0; k < n; ++k) y[k] = x[k] + a[k];
  }
}

// Pointer to a tensor's data, or nullptr for an absent optional parameter.
template <typename T>
inline const T* ptr_or_null(const OptTensor& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// Rows of B handed to one thread in the fused elementwise passes: small batches stay on the calling thread,
// where a thread pool wake-up would cost more than the pass itself.
inline int64_t row_grain(int64_t row_width) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_width));
}

// Whether sequence b takes step t (lengths == nullptr: every sequence has all T steps).
inline bool active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// Layer norm's row sums run in the row's own type over blocks of kRowBlock elements, which the compiler turns into
// vector loops, and the block sums are added in double: the rounding error of a float32 sum then grows with the
// block, not with the row (G·H = 2048 and more), at the speed of float vector arithmetic.
constexpr int64_t kRowBlock = 128;

// Mean and 1/sqrt(var + eps) of one row, in two passes (the variance as the mean of squared deviations, which
// does not cancel when the mean is large against the spread).
template <typename T>
inline void row_moments(const T* x, int64_t n, T& mean, T& rstd) {
  double sum = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kRowBlock) {
    const int64_t k1 = std::min(n, k0 + kRowBlock);
    T s = 0;
    for (int64_t k = k0; k < k1; ++k) s += x[k];
    sum += double(s);
  }
  mean = T(sum / double(n));
  double squares = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kRowBlock) {
    const int64_t k1 = std::min(n, k0 + kRowBlock);
    T s = 0;
    for (int64_t k = k0; k < k1; ++k) s += (x[k] - mean) * (x[k] - mean);
    squares += double(s);
  }
  rstd = T(1.0 / std::sqrt(squares / double(n) + kLayerNormEps));
}

// Layer norm of one row, in place: x <- (x - mean) * rstd * w + b. Stores xhat = (x - mean) * rstd where asked
// (backward needs it) and returns rstd where asked.
template <typename T>
inline void layer_norm_row(T* x, int64_t n, const T* w, const T* b, T* xhat, T* rstd_out) {
  T mean, rstd;
  row_moments(x, n, mean, rstd);
  if (xhat) {
    for (int64_t k = 0; k < n; ++k) {
      xhat[k] = (x[k] - mean) * rstd;
      x[k] = xhat[k] * w[k] + b[k];
    }
  } else {
    for (int64_t k = 0; k < n; ++k) x[k] = (x[k] - mean) * rstd * w[k] + b[k];
  }
  if (rstd_out) *rstd_out = rstd;
}

// Gradient of y = xhat * w + b with respect to x, one row:
// dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)).  dx may alias dy or xhat.
template <typename T>
inline void layer_norm_row_backward(const T* dy, const T* xhat, T rstd, const T* w, int64_t n, T* dx) {
  double s1 = 0, s2 = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kRowBlock) {
    const int64_t k1 = std::min(n, k0 + kRowBlock);
    T a1 = 0, a2 = 0;
    for (int64_t k = k0; k < k1; ++k) {
      const T g = dy[k] * w[k];
      a1 += g;
      a2 += g * xhat[k];
    }
    s1 += double(a1);
    s2 += double(a2);
  }
  const T m1 = T(s1 / double(n)), m2 = T(s2 / double(n));
  for (int64_t k = 0; k < n; ++k) dx[k] = rstd * (dy[k] * w[k] - m1 - xhat[k] * m2);
}

// Per-column sums of one step's rows, added to double accumulators, skipping ended sequences:
//   acc_yx[j] += sum_b y[b,j] * x[b,j]   (when acc_yx is given)
//   acc_y[j]  += sum_b y[b,j]            (when acc_y is given)
// The vector parameters' gradients (b_hh, layer-norm gains and shifts, peepholes) are such sums over time and
// batch. Taken each step, they read rows that the step has just written and that are still in cache; summed after
// the loop they would be extra passes over (T,B,·) tensors and their temporaries. Every column is summed in the
// same order (t descending, then b), whatever the thread count.
template <typename T>
inline void sum_rows(const T* y, int64_t y_stride, const T* x, int64_t x_stride, int64_t B, int64_t n,
                     const int64_t* lengths, int64_t t, double* acc_yx, double* acc_y) {
  at::parallel_for(0, n, row_grain(B), [&](int64_t j0, int64_t j1) {
    for (int64_t b = 0; b < B; ++b) {
      if (!active(lengths, b, t)) continue;
      const T* yr = y + b * y_stride;
      if (acc_yx) {
        const T* xr = x + b * x_stride;
        for (int64_t j = j0; j < j1; ++j) acc_yx[j] += double(yr[j]) * double(xr[j]);
      }
      if (acc_y) {
        for (int64_t j = j0; j < j1; ++j) acc_y[j] += double(yr[j]);
      }
    }
  });
}

// A zeroed double accumulator of length n for sum_rows, or an empty tensor when that sum is not needed.
inline Tensor accumulator(int64_t n, bool used, const at::TensorOptions& opts) {
  return at::zeros({used ? n : 0}, opts.dtype(at::kDouble));
}

inline double* acc_or_null(Tensor& acc) {
  return acc.numel() ? acc.data_ptr<double>() : nullptr;
}

// dW_hh += sum over the steps t0..t0+n-1 of dgh_t^T h_{t-1}, as GEMMs: dgh holds those n steps (n, B, R); the
// rows h_{t-1} are h0 (B, W) for t = 0 and out[t-1] of out (T, B, W) after.
inline void add_weight_grad(Tensor& dw, const Tensor& dgh, int64_t t0, int64_t n, const Tensor& h0,
                            const Tensor& out) {
  Tensor d = dgh.narrow(0, 0, n);
  if (t0 == 0) {
    dw.addmm_(d[0].t(), h0);  // (R, B) @ (B, W)
    d = d.narrow(0, 1, n - 1);
    t0 = 1;
    --n;
  }
  if (n > 0) {
    const int64_t B = dgh.size(1);
    dw.addmm_(d.reshape({n * B, dgh.size(2)}).t(), out.narrow(0, t0 - 1, n).reshape({n * B, out.size(2)}));
  }
}

// Steps per GEMM of the weight gradient when its left factor (dgh) is kept only for that GEMM: enough rows
// (steps * B >= kChunkRows) for the GEMM to run as fast as one over all steps, in a buffer far smaller than (T, B, ·).
constexpr int64_t kChunkRows = 1024;

inline int64_t chunk_steps(int64_t T, int64_t B) {
  return std::min(T, std::max<int64_t>(1, (kChunkRows + B - 1) / B));
}

// The per-step products. With one sequence (B = 1) they are matrix-vector products: BLAS gemv reads the weights
// once, where gemm would first pack (copy) the whole weight matrix on every step.

// out = a @ w^T, overwriting out; a (B, K), w (N, K), out (B, N).
inline void mm_nt(Tensor& out, const Tensor& a, const Tensor& w) {
  if (a.size(0) == 1) {
    Tensor o = out.select(0, 0);
    at::mv_out(o, w, a.select(0, 0));
  } else {
    at::mm_out(out, a, w.t());
  }
}

// out = a @ w, overwriting out; a (B, N), w (N, K), out (B, K).
inline void mm_nn(Tensor& out, const Tensor& a, const Tensor& w) {
  if (a.size(0) == 1) {
    Tensor o = out.select(0, 0);
    at::mv_out(o, w.t(), a.select(0, 0));
  } else {
    at::mm_out(out, a, w);
  }
}

// out += a @ w; a (B, N), w (N, K), out (B, K).
inline void addmm_nn(Tensor& out, const Tensor& a, const Tensor& w) {
  if (a.size(0) == 1) {
    out.select(0, 0).addmv_(w.t(), a.select(0, 0));
  } else {
    out.addmm_(a, w);
  }
}

// A saved buffer: zero-filled where masked rows are never written (so sums over time see zeros there).
inline Tensor buffer(at::IntArrayRef shape, const at::TensorOptions& opts, bool zero) {
  return zero ? at::zeros(shape, opts) : at::empty(shape, opts);
}

inline Tensor none_like(const Tensor& like) {
  return at::empty({0}, like.options());
}

}  // namespace gatedrnn
