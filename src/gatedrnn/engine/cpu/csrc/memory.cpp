// Memory on huge pages (common.h, BlockCache): the input projection of every step into one such block, and what the
// cache holds between calls with an op that frees it.
//
// The input projection a = x W_ih^T (+ b_ih) is the largest tensor of a call, (T, B, G·H): 50 MiB at B 64, T 100,
// H 512 (LSTM). Made by ATen's linear it is fresh memory from malloc, faulted in 4 KiB pages on its first write.
// Measured on this 2-core machine (one thread, LSTM I 256, H 512, median of 8 calls, two alternating runs each; the
// output's gradient of out.sum() was made contiguous the same way, common.h contiguous_buffer):
//   no_grad forward:  12 800 page faults, 173-180 ms (ATen's linear) -> 540 faults, 146-148 ms (here)
//   forward+backward: 13 900-15 800 faults, 473-499 ms -> 1 700-2 700 faults, 428-441 ms
// The arithmetic is ATen's (addmm or mm, so MKL where torch has it).
#include <torch/library.h>

#include "common.h"

namespace gatedrnn {

Tensor input_product(const Tensor& x, const Tensor& w, const OptTensor& b) {
  TORCH_CHECK(x.dim() >= 1 && w.dim() == 2 && x.size(-1) == w.size(1),
              "input_product: x (..., I) and w (G·H, I) expected, got ", x.sizes(), " and ", w.sizes());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.size(0);
  Tensor out = buffer(shape, x.options(), false);
  Tensor out2 = out.view({-1, w.size(0)});
  project_into(out2, x.reshape({-1, x.size(-1)}), w, b);
  return out;
}

namespace {

int64_t cached_bytes() {
  return int64_t(BlockCache::instance().held());
}

void empty_cache() {
  BlockCache::instance().clear();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("input_product", &input_product);
  m.def("cached_bytes", &cached_bytes);
  m.def("empty_cache", &empty_cache);
}

}  // namespace gatedrnn
