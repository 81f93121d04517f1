// The rule that chooses the threaded small-batch recurrence (team.h), and an op that sets it (tests force the team
// onto every shape with it, to compare it with the reference engine where the default rule would not choose it).
#include <torch/library.h>

#include "team.h"

namespace gatedrnn {

// Measured on this 2-core machine with the lstm_forward op (T 256, float32; µs per step, small-batch loop against
// the single-thread loops, best of repeats on a loaded machine):
//   one thread, B 1: H 32 0.17 / 0.21, H 64 0.58 / 0.65, H 128 2.02 / 2.11, H 256 8.03 / 8.52, H 512 215 / 217.
//   one thread, B 2: H 64 1.12 / 1.38, H 128 4.01 / 3.36, H 256 15.4 / 10.6; B 4, H 128: 7.79 / 4.73. Above one
//     sequence each row streams the weights again, where MKL's packed GEMM streams them once for all rows.
//   two threads, B 1: H 32 0.37 / 0.20 (the per-step sync costs more than half of so small a step), H 64
//     0.54 / 0.65, H 128 1.42 / 2.06.
// Hence batch 1 only, and a team of all threads from H = 64.
TeamRule& team_rule() {
  static TeamRule rule{{1}, {64}};
  return rule;
}

namespace {

// Sets the rule and returns the previous one, [max_batch, min_hidden].
std::vector<int64_t> set_team_rule(int64_t max_batch, int64_t min_hidden) {
  TeamRule& rule = team_rule();
  return {rule.max_batch.exchange(max_batch), rule.min_hidden.exchange(min_hidden)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("set_team_rule", &set_team_rule);
}

}  // namespace gatedrnn
