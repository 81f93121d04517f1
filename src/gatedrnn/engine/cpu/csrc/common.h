// Shared pieces of the fused CPU kernels: activations, row-wise layer norm, the time mask, the per-step products.
#pragma once

// ATen's parts that the kernels use, not all of ATen/ATen.h (every operator's declaration): each translation unit
// parses these headers, most of the compile time of all but the kernels' units, and ATen.h took about 2 s more of
// CPU per unit (g++ 12).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <type_traits>
#include <vector>

#include "activations.h"
#include "rules.h"

// GCC vectorises loops with 256-bit vectors by default even where 512-bit ones exist; the gate loops here are long
// and regular (and glibc has 16-wide exp and tanh), so they run faster with the full width.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

namespace gatedrnn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr double kLayerNormEps = 1e-5;  // torch.nn.LayerNorm's default, as cells/base.py LN_EPS

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

// Layer norm's row sums run in the row's own type over blocks of kRowBlock elements, as vector loops (`omp simd`
// reductions: strict IEEE arithmetic keeps a plain sum in order, so scalar), and the block sums are added in double: the rounding error of a float32 sum then grows with the
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
    #pragma omp simd reduction(+ : s)
    for (int64_t k = k0; k < k1; ++k) s += x[k];
    sum += double(s);
  }
  mean = T(sum / double(n));
  double squares = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kRowBlock) {
    const int64_t k1 = std::min(n, k0 + kRowBlock);
    T s = 0;
    #pragma omp simd reduction(+ : s)
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
    #pragma omp simd reduction(+ : a1, a2)
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

// LN_ih, fused into the step's pass over its rows: the kernels receive a = W_ih x (T,B,G·H) and normalise each row
// as the step reaches it, while the row is in L1, instead of the layer making a normalised (T,B,G·H) copy of a
// before the loop (one more pass over memory and as many freshly allocated pages). One row, into gx:
//   gx = (a - mean) * rstd * w + shift      (shift = LN_ih's shift + b_ih)
// Returns gx; stores (mean, rstd) in stats[0..1] where asked (backward rebuilds xhat from a and them).
template <typename T>
inline const T* input_norm_row(const T* a, int64_t n, const T* w, const T* shift, T* gx, T* stats) {
  T mean, rstd;
  row_moments(a, n, mean, rstd);
  for (int64_t k = 0; k < n; ++k) gx[k] = (a[k] - mean) * rstd * w[k] + shift[k];
  if (stats) {
    stats[0] = mean;
    stats[1] = rstd;
  }
  return gx;
}

// Backward of input_norm_row: xhat = (a - mean) * rstd rebuilt into xhat (kept for the sum of LN_ih's gain
// gradient), then da from dgx, the gradient of gx (layer_norm_row_backward; da may alias dgx).
template <typename T>
inline void input_norm_row_backward(const T* dgx, const T* a, const T* stats, const T* w, int64_t n, T* xhat,
                                    T* da) {
  const T mean = stats[0], rstd = stats[1];
  for (int64_t k = 0; k < n; ++k) xhat[k] = (a[k] - mean) * rstd;
  layer_norm_row_backward(dgx, xhat, rstd, w, n, da);
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


// Blocks of whole 2 MiB pages, advised onto huge pages and kept from one call to the next, for the buffers of 2 MiB
// and more. With 4 KiB pages the first write to each page of a fresh buffer costs a page fault, over 10,000 a call at
// (B,T,H) = (64,100,512); huge pages took a one-thread GRU forward that saves for backward from 82 to 70 ms and its
// backward from 140 to 126 ms (2-core Sapphire Rapids VM). A call at (B,T,H) = (64,100,512) makes about 190 MiB of them (the input
// projection, the saved gates and states, the gradient of the gates); handed back to the OS after each call, this VM
// backed them anew on the next one at a varying cost. Measured inside `gatedrnn bench` (one thread, 5 rounds): an
// LSTM forward+backward took 497-729 ms with 52-240 ms of system time, and 421-487 ms with 0-16 ms once its blocks
// were kept; GRU 363-412 -> 317-425 ms. A block is handed out again only after the tensor that held it is freed (its
// deleter gives it back). At most kLimit bytes are kept; clear() (the op empty_cache) frees them all.
class BlockCache {
 public:
  static constexpr size_t kPage = size_t(2) << 20;
  static constexpr size_t kLimit = size_t(512) << 20;

  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive static destruction
    return *cache;
  }

  // A block of `size` bytes (a multiple of kPage), 2 MiB aligned: a cached one of that size, else a new one.
  void* take(size_t size) {
    {
      std::lock_guard<std::mutex> guard(lock_);
      auto it = free_.find(size);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        held_ -= size;
        return p;
      }
    }
    void* p = std::aligned_alloc(kPage, size);
    TORCH_CHECK(p != nullptr, "gatedrnn cpu engine: out of memory allocating ", size, " bytes");
#if defined(MADV_HUGEPAGE)
    madvise(p, size, MADV_HUGEPAGE);
#endif
    return p;
  }

  // Keeps a block for the next call, dropping the largest kept ones (and, past the limit, this one) to stay
  // within the limit.
  void give(void* p, size_t size) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> guard(lock_);
      while (held_ + size > kLimit && !free_.empty()) {
        auto it = std::prev(free_.end());  // the largest
        held_ -= it->first;
        drop.push_back(it->second);
        free_.erase(it);
      }
      if (held_ + size <= kLimit) {
        free_.emplace(size, p);
        held_ += size;
      } else {
        drop.push_back(p);
      }
    }
    for (void* q : drop) std::free(q);
  }

  // Bytes kept now.
  size_t held() {
    std::lock_guard<std::mutex> guard(lock_);
    return held_;
  }

  // Frees every kept block.
  void clear() {
    std::multimap<size_t, void*> drop;
    {
      std::lock_guard<std::mutex> guard(lock_);
      drop.swap(free_);
      held_ = 0;
    }
    for (auto& [size, p] : drop) std::free(p);
  }

 private:
  std::mutex lock_;
  std::multimap<size_t, void*> free_;
  size_t held_ = 0;
};

// A buffer made by a call (the (T,B,·) tensors, dW_hh, packed weights): of 2 MiB and more, a block of BlockCache
// on huge pages; zero-filled when asked: where masked rows are never written (so sums over time see zeros there),
// or to accumulate into.
inline Tensor buffer(at::IntArrayRef shape, const at::TensorOptions& opts, bool zero) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t bytes = size_t(numel) * opts.dtype().itemsize();
  Tensor t;
  if (bytes >= BlockCache::kPage) {
    const size_t size = (bytes + BlockCache::kPage - 1) / BlockCache::kPage * BlockCache::kPage;
    void* p = BlockCache::instance().take(size);
    t = at::from_blob(p, shape, [size](void* q) { BlockCache::instance().give(q, size); }, opts);
  } else {
    t = at::empty(shape, opts);
  }
  if (zero) t.zero_();
  return t;
}

// The per-step products y = x @ A, where A (a weight or its transpose) is the same at every step of a call.
// StepProduct prepares A once per call (the constructor) so that the time loop only does arithmetic on raw pointers:
// no Tensor is made and no ATen op is dispatched inside it, which at B = 1 would cost more than the product itself.
//   B = 1: a matrix-vector product over A packed in column blocks (gemv_packed below): each block's rows are
//          stored one after the other, so the weights stream from cache in one sequential pass.
//   B > 1, float32, torch built with MKL: MKL's packed GEMM (cblas_sgemm_pack once per call, cblas_sgemm_compute
//          per step): a plain GEMM would re-pack the whole weight matrix on every step.
//   otherwise: ATen's mm on tensors wrapping the raw pointers.
// A call of few steps at small batch (short_call) prepares nothing: its products are direct, from W as stored.

// Native SIMD width: the packed kernels are written with GCC/Clang vector types of this size, which the compiler
// lowers to whatever instructions the target has (-march=native), so there is one portable code path.
#if defined(__AVX512F__)
constexpr int64_t kVecBytes = 64;
#elif defined(__AVX__)
constexpr int64_t kVecBytes = 32;
#else
constexpr int64_t kVecBytes = 16;
#endif

template <typename T>
struct Simd {
  typedef T Vec __attribute__((vector_size(kVecBytes)));
  static constexpr int64_t kLanes = kVecBytes / int64_t(sizeof(T));
};

// Vectors per column block: 8 accumulators keep both FMA pipes busy and leave registers for the loads.
constexpr int64_t kBlockVecs = 8;

// Column blocks of a packed A of width `cols`: full blocks of kBlockVecs vectors, then a remainder split into
// 4, 2 and 1 vectors (the last one padded with zeros); f(col0, vecs) for each, left to right.
template <typename T, typename F>
inline void for_each_block(int64_t cols, F&& f) {
  constexpr int64_t L = Simd<T>::kLanes;
  int64_t col0 = 0, vecs = (cols + L - 1) / L;
  for (int64_t nv : {kBlockVecs, int64_t(4), int64_t(2), int64_t(1)}) {
    for (; vecs >= nv; vecs -= nv, col0 += nv * L) f(col0, nv);
  }
}

// One column block of y = x @ A over A's rows [r0, r1): y[0 : NV*L] (+)= sum_r x[r] * A[r, block], reading the
// block's rows from p in turn, ld elements apart (NV*L in a packed block; a weight's row stride where the product
// reads the weight as stored). A product formed in parts, over ranges of rows, accumulates.
template <typename T, int64_t NV>
inline void gemv_block(const T* __restrict p, int64_t ld, const T* __restrict x, int64_t r0, int64_t r1,
                       T* __restrict y, bool accumulate) {
  using V = typename Simd<T>::Vec;
  constexpr int64_t L = Simd<T>::kLanes;
  V acc[NV] = {};
  if (accumulate) std::memcpy(acc, y, sizeof(acc));
  p += r0 * ld;
  for (int64_t r = r0; r < r1; ++r, p += ld) {
    const T xr = x[r];
    for (int64_t j = 0; j < NV; ++j) {
      V a;
      std::memcpy(&a, p + j * L, sizeof(V));
      acc[j] += xr * a;
    }
  }
  std::memcpy(y, acc, sizeof(acc));
}

// y (+)= x @ A over A's rows [r0, r1), for A (rows x cols) packed in column blocks; y has cols rounded up to whole
// vectors (the padding columns of the last block).
template <typename T>
inline void gemv_packed(const T* packed, const T* x, int64_t rows, int64_t cols, int64_t r0, int64_t r1, T* y,
                        bool accumulate) {
  for_each_block<T>(cols, [&](int64_t col0, int64_t nv) {
    const T* block = packed + col0 * rows;
    switch (nv) {
      case kBlockVecs: gemv_block<T, kBlockVecs>(block, kBlockVecs * Simd<T>::kLanes, x, r0, r1, y + col0, accumulate); break;
      case 4: gemv_block<T, 4>(block, 4 * Simd<T>::kLanes, x, r0, r1, y + col0, accumulate); break;
      case 2: gemv_block<T, 2>(block, 2 * Simd<T>::kLanes, x, r0, r1, y + col0, accumulate); break;
      default: gemv_block<T, 1>(block, 1 * Simd<T>::kLanes, x, r0, r1, y + col0, accumulate); break;
    }
  });
}

// Fills one column block of a packed A = W^T from W's rows: block[r * stride + c] = row(c)[r] for c < width and
// r < rows (the padding columns are left alone). The transpose goes through tiles of one cache line of each of the
// block's rows of W, so every line of W is read once, whole; a walk down the columns reads one element per line and,
// with W's rows a power of two bytes apart, keeps evicting its own lines from the L1 sets they share (measured:
// 300 µs to pack a 1024x256 float W, against the microseconds of one step).
template <typename T, typename Row>
inline void pack_transposed_block(Row&& row, int64_t width, int64_t rows, int64_t stride, T* __restrict block) {
  constexpr int64_t tile = 64 / int64_t(sizeof(T));
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t r1 = std::min(rows, r0 + tile);
    for (int64_t c = 0; c < width; ++c) {
      const T* __restrict w = row(c);
      for (int64_t r = r0; r < r1; ++r) block[r * stride + c] = w[r];
    }
  }
}

// Direct products, for calls of few steps (ShortRule below): y = x @ A read from the weight W as stored (row-major,
// N x K with leading dimension ld), where packing W (a pass that reads and writes all of it) would cost more than
// the steps it speeds up. A one-step generation call at B = 1, H = 256 packs a 1 MiB W_hh for one product.

// Sum of a vector's lanes.
template <typename T>
inline T lane_sum(typename Simd<T>::Vec v) {
  T s = 0;
  for (int64_t l = 0; l < Simd<T>::kLanes; ++l) s += v[l];
  return s;
}

// A = W^T, R rows of W at once: y_b[c] (+)= dot(W[c, 0:K], x_b) for the R rows c = 0..R-1 from w, for each of the
// B rows x_b of x (row stride ldx) into y_b (row stride ldy). The R rows are R independent accumulator chains (the
// FMA latency is hidden) and stay in L1 while every x_b is multiplied with them.
template <typename T, int64_t R>
inline void dot_rows(const T* __restrict w, int64_t ld, int64_t K, const T* __restrict x, int64_t ldx, int64_t B,
                     T* __restrict y, int64_t ldy, bool accumulate) {
  using V = typename Simd<T>::Vec;
  constexpr int64_t L = Simd<T>::kLanes;
  const int64_t Kv = K / L * L;
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x + b * ldx;
    V acc[R] = {};
    for (int64_t k = 0; k < Kv; k += L) {
      V xv;
      std::memcpy(&xv, xb + k, sizeof(V));
      for (int64_t r = 0; r < R; ++r) {
        V a;
        std::memcpy(&a, w + r * ld + k, sizeof(V));
        acc[r] += a * xv;
      }
    }
    T* yb = y + b * ldy;
    for (int64_t r = 0; r < R; ++r) {
      T s = lane_sum<T>(acc[r]);
      for (int64_t k = Kv; k < K; ++k) s += w[r * ld + k] * xb[k];
      yb[r] = accumulate ? yb[r] + s : s;
    }
  }
}

// A = W^T over W's rows [c0, c1) (the columns of y): groups of 8 rows, then 4, 2, 1.
template <typename T>
inline void direct_product_t(const T* w, int64_t ld, int64_t K, int64_t c0, int64_t c1, const T* x, int64_t ldx,
                             int64_t B, T* y, int64_t ldy, bool accumulate) {
  int64_t c = c0;
  for (; c + 8 <= c1; c += 8) dot_rows<T, 8>(w + c * ld, ld, K, x, ldx, B, y + c, ldy, accumulate);
  for (; c + 4 <= c1; c += 4) dot_rows<T, 4>(w + c * ld, ld, K, x, ldx, B, y + c, ldy, accumulate);
  for (; c + 2 <= c1; c += 2) dot_rows<T, 2>(w + c * ld, ld, K, x, ldx, B, y + c, ldy, accumulate);
  for (; c < c1; ++c) dot_rows<T, 1>(w + c * ld, ld, K, x, ldx, B, y + c, ldy, accumulate);
}

// A = W over W's columns [c0, c1), c0 and c1 multiples of the vector width or c1 = N: whole vectors in blocks of
// kBlockVecs, 4, 2, 1 (for_each_block; gemv_block reading W's rows where they are stored), then the last columns
// that fill no vector one at a time.
template <typename T>
inline void direct_product(const T* w, int64_t ld, int64_t K, int64_t c0, int64_t c1, const T* x, int64_t ldx,
                           int64_t B, T* y, int64_t ldy, bool accumulate) {
  constexpr int64_t L = Simd<T>::kLanes;
  const int64_t whole = (c1 - c0) / L * L;
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x + b * ldx;
    T* yb = y + b * ldy;
    for_each_block<T>(whole, [&](int64_t col0, int64_t nv) {
      const int64_t c = c0 + col0;
      switch (nv) {
        case kBlockVecs: gemv_block<T, kBlockVecs>(w + c, ld, xb, 0, K, yb + c, accumulate); break;
        case 4: gemv_block<T, 4>(w + c, ld, xb, 0, K, yb + c, accumulate); break;
        case 2: gemv_block<T, 2>(w + c, ld, xb, 0, K, yb + c, accumulate); break;
        default: gemv_block<T, 1>(w + c, ld, xb, 0, K, yb + c, accumulate); break;
      }
    });
    for (int64_t c = c0 + whole; c < c1; ++c) {
      T s = 0;
      for (int64_t r = 0; r < K; ++r) s += xb[r] * w[r * ld + c];
      yb[c] = accumulate ? yb[c] + s : s;
    }
  }
}

// Whether a call's products are direct (ShortRule, rules.h): a call of few steps at small batch.
inline bool short_call(int64_t steps, int64_t batch) {
  return steps * batch <= short_rule().max_rows.load();
}

// How many slices the batch of a call splits into among the threads (SplitRule, rules.h), for recurrent weights of
// `weight_bytes`: 1 on one thread, inside another parallel region, with weights over max_weight_bytes or fewer than
// 2 * min_rows rows.
inline int64_t batch_parts(int64_t batch, int64_t weight_bytes) {
  const SplitRule& rule = split_rule();
  if (at::in_parallel_region() || weight_bytes > rule.max_weight_bytes.load()) return 1;
  const int64_t per = std::max<int64_t>(1, rule.min_rows.load());
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), batch / per));
}

// body(p, b0, n) for each slice p of `parts`, rows [b0, b0 + n) of the batch, one slice per thread; body(0, 0, B)
// alone for one part.
template <typename F>
void for_batch_parts(int64_t B, int64_t parts, F&& body) {
  if (parts <= 1) {
    body(int64_t(0), int64_t(0), B);
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    const at::NoGradGuard no_grad;  // grad mode is per thread, and a worker's is on: the kernels' ATen ops need it off
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b0 = p * B / parts, b1 = (p + 1) * B / parts;
      body(p, b0, b1 - b0);
    }
  });
}

// body(b0, n) for each slice [b0, b0 + n) of the batch, one slice per thread (batch_parts), or body(0, B) alone.
template <typename F>
void for_batch_slices(int64_t B, int64_t weight_bytes, F&& body) {
  for_batch_parts(B, batch_parts(B, weight_bytes), [&](int64_t, int64_t b0, int64_t n) { body(b0, n); });
}

// A backward's batch split among the threads, as its forward's (batch_parts): body(b0, n, dw, acc) runs the backward
// of rows [b0, b0 + n) into its own weight gradient dw and sums acc, which are dw_hh and `acc` themselves when there is
// one slice, else fresh zeros (make_acc() for the sums) added into them afterwards. With whole_dgh the kernel keeps
// dgh whole (it is dgx) and forms no weight gradient itself: dw is undefined, and the caller forms dw_hh with one
// GEMM over all steps and rows after this.
template <typename MakeAcc, typename F>
void backward_slices(int64_t B, int64_t weight_bytes, bool whole_dgh, Tensor& dw_hh, std::vector<Tensor>& acc,
                     MakeAcc make_acc, F&& body) {
  const int64_t parts = batch_parts(B, weight_bytes);
  std::vector<Tensor> part_dw(parts);
  std::vector<std::vector<Tensor>> part_acc(parts);
  for_batch_parts(B, parts, [&](int64_t p, int64_t b0, int64_t n) {
    part_dw[p] = whole_dgh ? Tensor() : parts == 1 ? dw_hh : at::zeros_like(dw_hh);
    part_acc[p] = parts == 1 ? acc : make_acc();
    body(b0, n, part_dw[p], part_acc[p]);
  });
  for (int64_t p = 0; p < parts && parts > 1; ++p) {
    if (part_dw[p].defined()) dw_hh.add_(part_dw[p]);
    for (size_t k = 0; k < acc.size(); ++k) acc[k].add_(part_acc[p][k]);
  }
}

// Rows [b0, b0 + n) of an optional (T, B, ...) tensor.
inline OptTensor batch_rows(const OptTensor& t, int64_t b0, int64_t n) {
  return t.has_value() && t->defined() ? OptTensor(t->narrow(1, b0, n)) : t;
}

// Bytes of a weight, 0 where it is not given.
inline int64_t bytes_of(const OptTensor& t) {
  return t.has_value() && t->defined() ? int64_t(t->nbytes()) : 0;
}

// Rows [b0, b0 + n) of a (T, B, ...) tensor (a view whose step stride stays B rows), or `t` itself where it is a
// placeholder (none_like: nothing saved).
inline Tensor batch_rows(const Tensor& t, int64_t b0, int64_t n) {
  return t.dim() >= 2 ? t.narrow(1, b0, n) : t;
}

// Rows [b0, b0 + n) of a (B, W) state: contiguous, a view.
inline Tensor state_rows(const Tensor& t, int64_t b0, int64_t n) {
  return t.narrow(0, b0, n);
}

// Row b of step t of a (T, B, W) tensor or one of its batch_rows views (step stride t.stride(0)).
template <typename T>
inline T* step_row(const Tensor& t, int64_t step, int64_t b, int64_t width) {
  return t.data_ptr<T>() + step * t.stride(0) + b * width;
}

// Columns of y per thread in a direct product: enough rows of W (at least kDirectGrainBytes of it) that waking a
// second thread pays; a product under that stays on the calling thread.
constexpr int64_t kDirectGrainBytes = int64_t(256) << 10;

// The MKL packed-GEMM entry points, weak so that the library loads (and falls back to ATen) with a torch built
// without MKL; torch with MKL exports them from libtorch_cpu. CBLAS constants: RowMajor 101, NoTrans 111, Trans 112,
// Packed 151, CblasBMatrix 162.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

inline bool mkl_packed_gemm_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

template <typename T>
class StepProduct {
 public:
  // A = w^T (transposed) or w, for w (N, K) with unit column stride (a weight or a block of its rows); batch rows
  // of x per call.
  // `steps`: how many products the call will form (its time steps).
  StepProduct(const Tensor& w, bool transposed, int64_t batch, int64_t steps)
      : rows_(transposed ? w.size(1) : w.size(0)), cols_(transposed ? w.size(0) : w.size(1)), batch_(batch),
        transposed_(transposed), direct_(short_call(steps, batch)) {
    TORCH_CHECK(w.stride(1) == 1, "StepProduct: the weight's rows must be contiguous");
    const T* src = w.data_ptr<T>();
    const int64_t ld = w.stride(0);
    if (direct_) {
      a_ = w;
    } else if (batch == 1) {
      constexpr int64_t L = Simd<T>::kLanes;
      const int64_t padded = (cols_ + L - 1) / L * L;
      packed_ = at::empty({rows_ * padded}, w.options());
      out_ = at::empty({padded}, w.options());
      T* p = packed_.data_ptr<T>();
      std::fill(p, p + rows_ * padded, T(0));  // the padding columns of the last vector
      for_each_block<T>(cols_, [&](int64_t col0, int64_t nv) {
        T* block = p + col0 * rows_;
        const int64_t width = std::min(nv * L, cols_ - col0);
        // w^T through line-sized tiles (pack_transposed_block); w itself row by row, reads and writes sequential.
        if (transposed) {
          pack_transposed_block([&](int64_t j) { return src + (col0 + j) * ld; }, width, rows_, nv * L, block);
        } else {
          for (int64_t r = 0; r < rows_; ++r) {
            std::copy(src + r * ld + col0, src + r * ld + col0 + width, block + r * nv * L);
          }
        }
      });
    } else if (std::is_same_v<T, float> && mkl_packed_gemm_available()) {
      const size_t bytes = cblas_sgemm_pack_get_size(162, int(batch), int(cols_), int(rows_));
      packed_ = buffer({int64_t((bytes + sizeof(T) - 1) / sizeof(T))}, w.options(), false);  // MiBs, every call
      // B of C = X @ B is A: w itself (NoTrans, rows_ x cols_ with leading dimension ld) or w^T (Trans).
      cblas_sgemm_pack(101, 162, transposed ? 112 : 111, int(batch), int(cols_), int(rows_), 1.0f,
                       reinterpret_cast<const float*>(src), int(ld), reinterpret_cast<float*>(packed_.data_ptr<T>()));
      mkl_ = true;
    } else {
      a_ = transposed ? w.t() : w;
    }
  }

  // y (batch, cols) = x @ A, or y += x @ A when accumulate; x (batch, rows) with row stride ldx, y contiguous.
  void operator()(const T* x, int64_t ldx, T* y, bool accumulate) const {
    if (direct_) {
      direct(x, ldx, y, accumulate);
    } else if (batch_ == 1) {
      T* out = out_.data_ptr<T>();
      gemv_packed(packed_.data_ptr<T>(), x, rows_, cols_, 0, rows_, out, /*accumulate=*/false);
      if (accumulate) {
        for (int64_t c = 0; c < cols_; ++c) y[c] += out[c];
      } else {
        std::copy(out, out + cols_, y);
      }
    } else if (mkl_) {
      cblas_sgemm_compute(101, 111, 151, int(batch_), int(cols_), int(rows_), reinterpret_cast<const float*>(x),
                          int(ldx), reinterpret_cast<const float*>(packed_.data_ptr<T>()), int(cols_),
                          accumulate ? 1.0f : 0.0f, reinterpret_cast<float*>(y), int(cols_));
    } else {
      const auto opts = a_.options();
      Tensor xt = at::from_blob(const_cast<T*>(x), {batch_, rows_}, {ldx, 1}, opts);
      Tensor yt = at::from_blob(y, {batch_, cols_}, opts);
      if (accumulate) {
        yt.addmm_(xt, a_);
      } else {
        at::mm_out(yt, xt, a_);
      }
    }
  }

 private:
  // The direct product, its columns split among threads where W is large (kDirectGrainBytes): a column of y is a
  // row of W (A = W^T) or a column of W (A = W), rows_ elements of W either way. Without transposing, each thread's
  // columns start on a whole vector.
  void direct(const T* x, int64_t ldx, T* y, bool accumulate) const {
    constexpr int64_t L = Simd<T>::kLanes;
    const T* w = a_.data_ptr<T>();
    const int64_t ld = a_.stride(0), K = rows_;
    const int64_t grain = std::max<int64_t>(1, kDirectGrainBytes / (K * int64_t(sizeof(T))));
    if (transposed_) {
      at::parallel_for(0, cols_, grain, [&](int64_t c0, int64_t c1) {
        direct_product_t(w, ld, K, c0, c1, x, ldx, batch_, y, cols_, accumulate);
      });
    } else {
      at::parallel_for(0, (cols_ + L - 1) / L, (grain + L - 1) / L, [&](int64_t v0, int64_t v1) {
        direct_product(w, ld, K, v0 * L, std::min(cols_, v1 * L), x, ldx, batch_, y, cols_, accumulate);
      });
    }
  }

  int64_t rows_, cols_, batch_;
  bool transposed_, direct_;
  bool mkl_ = false;
  Tensor packed_, out_, a_;
};


// t itself where contiguous, else a contiguous copy in a buffer. The gradient of the output often is not: after
// out.sum().backward() it is one value expanded to (T,B,·), whose .contiguous() would be fresh 4 KiB-faulted memory.
inline Tensor contiguous_buffer(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor c = buffer(t.sizes(), t.options(), false);
  c.copy_(t);
  return c;
}

// The input projection of every step, x (..., I) W^T (G·H, I) (+ b (G·H)) -> (..., G·H), in a buffer (memory.cpp).
Tensor input_product(const Tensor& x, const Tensor& w, const OptTensor& b);

// out (N, G·H) = x (N, I) W^T (+ b): ATen's GEMM (MKL where torch has it) into memory the caller chose.
inline void project_into(Tensor& out, const Tensor& x, const Tensor& w, const OptTensor& b) {
  const at::NoGradGuard no_grad;  // out= ops refuse tensors that require grad; grad mode is per thread
  if (b.has_value() && b->defined()) {
    at::addmm_out(out, *b, x, w.t());
  } else {
    at::mm_out(out, x, w.t());
  }
}

// The input projection's rows of step t for a kernel's time loop: a slice of the caller's (T, B, W) gx, or, for a
// forward without saving from the layer's input x (T, B, I), formed a chunk of steps at a time (x W^T (+ b), one
// GEMM of about kChunkRows rows per chunk) into one small buffer that each chunk reuses. The whole (T, B, W) tensor
// is then never made: at B 32, T 100, W 1024 that is 13 MiB of fresh memory a call, and its rows are read back
// from L2 soon after they are written. Steps are asked for in order (t = 0, 1, ...).
template <typename T>
class StepInput {
 public:
  using Scalar = T;

  explicit StepInput(const Tensor& gx)
      : full_(gx.data_ptr<T>()), batch_(gx.size(1)), width_(gx.size(2)), step_stride_(gx.stride(0)) {}

  StepInput(const Tensor& x, const Tensor& w, const OptTensor& b)
      : x_(x.contiguous()), w_(w.contiguous()), b_(b), batch_(x.size(1)), width_(w.size(0)) {
    const int64_t max_steps = std::max<int64_t>(1, kChunkBytes / (batch_ * width_ * int64_t(sizeof(T))));
    steps_ = std::clamp<int64_t>((kChunkRows + batch_ - 1) / batch_, 1, max_steps);
    steps_ = std::min(steps_, x.size(0));
    chunk_ = at::empty({steps_ * batch_, width_}, x.options());
  }

  // (B, W): row b of step t at b * W. gx may be a batch_rows view (rows of a step contiguous, steps further apart).
  const T* operator()(int64_t t) {
    if (full_) return full_ + t * step_stride_;
    if (t < first_ || t >= first_ + count_) fill(t);
    return chunk_.data_ptr<T>() + (t - first_) * batch_ * width_;
  }

 private:
  static constexpr int64_t kChunkRows = 512;       // rows of one GEMM: as fast as one over all steps (MKL, measured)
  static constexpr int64_t kChunkBytes = 2 << 20;  // at most about one core's L2

  void fill(int64_t t) {
    first_ = t;
    count_ = std::min(steps_, x_.size(0) - t);
    Tensor rows = chunk_.narrow(0, 0, count_ * batch_);
    project_into(rows, x_.narrow(0, t, count_).reshape({count_ * batch_, x_.size(2)}), w_, b_);
  }

  const T* full_ = nullptr;
  Tensor x_, w_;
  OptTensor b_;
  int64_t batch_, width_, step_stride_ = 0, steps_ = 0, first_ = 0, count_ = 0;
  Tensor chunk_;
};

inline Tensor none_like(const Tensor& like) {
  return at::empty({0}, like.options());
}

}  // namespace gatedrnn
