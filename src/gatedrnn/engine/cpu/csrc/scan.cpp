// The linear scan h_t = a_t * h_{t-1} + b_t of every linear-recurrence cell (minGRU, minLSTM), elementwise over the
// B·H lanes; engine/scan.py has the math, its plain-PyTorch reference and the derivatives (themselves scans).
//
// Work is split into items of (a chunk of steps) x (a block of lanes). With one chunk, each item runs its lanes
// through all T steps: one pass, reading a and b and writing h once. Where the lanes are too few to keep every
// thread busy (small batch, long sequence), the steps are cut into K chunks, run in two passes:
//   1. each chunk but the last composes its steps from the identity: (A, B) = (a_s ... a_1, the state reached
//      from h = 0), the chunk as one affine map h -> A h + B;
//   2. the carries, chunk by chunk (K small, all lanes at once): the state entering chunk k+1 is
//      A_k * carry_k + B_k, from carry_0 = h0;
//   3. each chunk runs its steps again from its carry, writing h.
// Strict IEEE arithmetic (build.py): products that underflow become 0, as in the sequential loop.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace gatedrnn {
namespace {

using at::Tensor;

constexpr int64_t kLanes = 1024;      // lanes per work item: rows of a few KiB, long enough to vectorise
constexpr int64_t kMinChunkSteps = 32;  // shorter chunks cost more in the extra pass than they gain

// Row of step s (processing order) in a (T, N) array.
template <typename P>
inline P row(P base, int64_t s, int64_t steps, int64_t lanes, bool reverse) {
  return base + (reverse ? steps - 1 - s : s) * lanes;
}

template <typename T>
void scan_kernel(const T* a, const T* b, const T* h0, T* h, int64_t steps, int64_t lanes, bool reverse,
                 int64_t chunks) {
  const int64_t blocks = (lanes + kLanes - 1) / kLanes;
  const int64_t per_chunk = (steps + chunks - 1) / chunks;
  chunks = (steps + per_chunk - 1) / per_chunk;  // no empty chunk at the end
  std::vector<T> composed;                       // (2, K - 1, N): A then B of each chunk but the last
  std::vector<T> carries;                        // (K, N): the state entering each chunk
  if (chunks > 1) {
    composed.resize(2 * (chunks - 1) * lanes);
    carries.resize(chunks * lanes);
    T* A_all = composed.data();
    T* B_all = composed.data() + (chunks - 1) * lanes;
    at::parallel_for(0, (chunks - 1) * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t k = item / blocks, n0 = (item % blocks) * kLanes, n1 = std::min(lanes, n0 + kLanes);
        T* A = A_all + k * lanes;
        T* B = B_all + k * lanes;
        std::fill(A + n0, A + n1, T(1));
        std::fill(B + n0, B + n1, T(0));
        for (int64_t s = k * per_chunk; s < (k + 1) * per_chunk; ++s) {
          const T* a_s = row(a, s, steps, lanes, reverse);
          const T* b_s = row(b, s, steps, lanes, reverse);
          for (int64_t n = n0; n < n1; ++n) {
            B[n] = a_s[n] * B[n] + b_s[n];
            A[n] = a_s[n] * A[n];
          }
        }
      }
    });
    std::copy(h0, h0 + lanes, carries.data());
    at::parallel_for(0, lanes, kLanes, [&](int64_t n0, int64_t n1) {
      for (int64_t k = 0; k + 1 < chunks; ++k) {
        const T* A = A_all + k * lanes;
        const T* B = B_all + k * lanes;
        const T* in = carries.data() + k * lanes;
        T* out = carries.data() + (k + 1) * lanes;
        for (int64_t n = n0; n < n1; ++n) out[n] = A[n] * in[n] + B[n];
      }
    });
  }
  at::parallel_for(0, chunks * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / blocks, n0 = (item % blocks) * kLanes, n1 = std::min(lanes, n0 + kLanes);
      const T* prev = chunks > 1 ? carries.data() + k * lanes : h0;
      for (int64_t s = k * per_chunk; s < std::min(steps, (k + 1) * per_chunk); ++s) {
        const T* a_s = row(a, s, steps, lanes, reverse);
        const T* b_s = row(b, s, steps, lanes, reverse);
        T* h_s = row(h, s, steps, lanes, reverse);
        for (int64_t n = n0; n < n1; ++n) h_s[n] = a_s[n] * prev[n] + b_s[n];
        prev = h_s;
      }
    }
  });
}

// Chunks over time for a call: 1 where the blocks of lanes already give every thread work, else enough chunks for
// the threads, each at least kMinChunkSteps long. `requested` > 0 sets it (the tests run every path).
int64_t choose_chunks(int64_t steps, int64_t lanes, int64_t requested) {
  if (requested > 0) return std::min(requested, steps);
  const int64_t blocks = (lanes + kLanes - 1) / kLanes, threads = at::get_num_threads();
  if (blocks >= threads) return 1;
  return std::max<int64_t>(1, std::min((threads + blocks - 1) / blocks, steps / kMinChunkSteps));
}

Tensor linear_scan(const Tensor& a, const Tensor& b, const Tensor& h0, bool reverse, int64_t chunks) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && h0.device().is_cpu(), "linear_scan: CPU tensors expected");
  TORCH_CHECK(a.dim() >= 1 && a.sizes() == b.sizes(), "linear_scan: a and b of one shape (T, ...) expected, got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(h0.sizes() == a.sizes().slice(1), "linear_scan: h0 of shape ", a.sizes().slice(1), " expected, got ",
              h0.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.scalar_type() == h0.scalar_type(),
              "linear_scan: a, b and h0 of one dtype expected");
  const Tensor ac = a.contiguous(), bc = b.contiguous(), h0c = h0.contiguous();
  Tensor h = at::empty(a.sizes(), a.options());
  const int64_t steps = a.size(0), lanes = steps ? a.numel() / steps : 0;
  if (steps == 0 || lanes == 0) return h;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "linear_scan", [&] {
    scan_kernel<scalar_t>(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(),
                          h.data_ptr<scalar_t>(), steps, lanes, reverse, choose_chunks(steps, lanes, chunks));
  });
  return h;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("linear_scan", &linear_scan);
}

}  // namespace gatedrnn
