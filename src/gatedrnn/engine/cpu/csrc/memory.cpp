// What the kernels' block cache (common.h BlockCache) holds between calls, and an op that frees it.
#include <torch/library.h>

#include "common.h"

namespace gatedrnn {
namespace {

int64_t cached_bytes() {
  return int64_t(BlockCache::instance().held());
}

void empty_cache() {
  BlockCache::instance().clear();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("cached_bytes", &cached_bytes);
  m.def("empty_cache", &empty_cache);
}

}  // namespace gatedrnn
