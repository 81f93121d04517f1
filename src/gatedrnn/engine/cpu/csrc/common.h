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

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
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

// Layer norm of one row, in place: x <- (x - mean) * rstd * w + b. Stores xhat = (x - mean) * rstd where asked
// (backward needs it) and returns mean and rstd.
template <typename T>
inline void layer_norm_row(T* x, int64_t n, const T* w, const T* b, T* xhat, T* mean_out, T* rstd_out) {
  // Row statistics in double: in float32 the rounding of long sums would dominate the kernels' error.
  double mean = 0;
  for (int64_t k = 0; k < n; ++k) mean += x[k];
  mean /= double(n);
  double var = 0;
  for (int64_t k = 0; k < n; ++k) var += (x[k] - mean) * (x[k] - mean);
  var /= double(n);
  const T m = T(mean), rstd = T(1.0 / std::sqrt(var + kLayerNormEps));
  for (int64_t k = 0; k < n; ++k) {
    const T xh = (x[k] - m) * rstd;
    if (xhat) xhat[k] = xh;
    x[k] = xh * w[k] + b[k];
  }
  if (mean_out) *mean_out = m;
  if (rstd_out) *rstd_out = rstd;
}

// Gradient of y = xhat * w + b with respect to x, one row:
// dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)).  dx may alias dy.
template <typename T>
inline void layer_norm_row_backward(const T* dy, const T* xhat, T rstd, const T* w, int64_t n, T* dx) {
  double s1 = 0, s2 = 0;
  for (int64_t k = 0; k < n; ++k) {
    const double g = dy[k] * w[k];
    s1 += g;
    s2 += g * xhat[k];
  }
  const T m1 = T(s1 / double(n)), m2 = T(s2 / double(n));
  for (int64_t k = 0; k < n; ++k) dx[k] = rstd * (dy[k] * w[k] - m1 - xhat[k] * m2);
}

// out = a @ b^T (b given as stored, rows = outputs), overwriting out.
inline void mm_nt(Tensor& out, const Tensor& a, const Tensor& b) {
  at::mm_out(out, a, b.t());
}

// A saved buffer: zero-filled where masked rows are never written (so sums over time see zeros there).
inline Tensor buffer(at::IntArrayRef shape, const at::TensorOptions& opts, bool zero) {
  return zero ? at::zeros(shape, opts) : at::empty(shape, opts);
}

inline Tensor none_like(const Tensor& like) {
  return at::empty({0}, like.options());
}

}  // namespace gatedrnn
