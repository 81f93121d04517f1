// The rule that chooses direct products for calls of few steps (common.h, ShortRule), and an op that sets it (tests
// move the threshold to run both paths at the same shapes, and to check the calls on either side of it).
#include <torch/library.h>

#include "common.h"

namespace gatedrnn {

// Measured on this 2-core machine (loaded) with the lstm_forward op without saving, direct against packed (the team
// at B = 1), µs per call, median of 200 interleaved:
//   one thread, B 1: H 128 T 1 15/47, T 8 44/65, T 16 69/83; H 256 T 1 61/206, T 8 148/260, T 16 231/325.
//   two threads, B 1: H 128 T 8 43/45, T 16 68/56; H 256 T 8 98/139, T 16 164/185.
//   one thread, B 2: H 128 T 4 37/42; B 4: H 128 T 2 35/42, T 4 51/55; B 8: H 128 T 1 38/47, T 2 60/61.
//   two threads, B 4: H 128 T 4 64/61; B 8: H 128 T 1 27/24, H 256 T 1 62/76, T 2 101/102.
// Packing W costs about as much as a few direct products, whatever the size, and each further row of the call
// (step or sequence) gains the packed product's lead: the two meet at about 8 to 16 rows, hence 8.
ShortRule& short_rule() {
  static ShortRule rule{{8}};
  return rule;
}

namespace {

// Sets max_rows and returns the previous value.
int64_t set_short_rule(int64_t max_rows) {
  return short_rule().max_rows.exchange(max_rows);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("set_short_rule", &set_short_rule);
}

}  // namespace gatedrnn
