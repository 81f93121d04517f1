// The fused kernels' sigma and tanh (activations.h) as ops over a tensor, so that tests check them directly against
// torch's on every input, the extremes included.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "activations.h"

namespace gatedrnn {
namespace {

using at::Tensor;

template <typename F>
Tensor elementwise(const Tensor& x, const char* name, F&& f) {
  TORCH_CHECK(x.device().is_cpu(), name, ": expected a CPU tensor");
  Tensor y = x.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "activation", [&] { f(y.data_ptr<scalar_t>(), y.numel()); });
  return y;
}

Tensor sigmoid_op(const Tensor& x) {
  return elementwise(x, "sigmoid", [](auto* a, int64_t n) { sigmoid_(a, n); });
}

Tensor tanh_op(const Tensor& x) {
  return elementwise(x, "tanh", [](auto* a, int64_t n) { tanh_(a, n); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("sigmoid", &sigmoid_op);
  m.def("tanh", &tanh_op);
}

}  // namespace gatedrnn
