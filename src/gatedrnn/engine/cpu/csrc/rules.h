// The measured rules that choose a kernel's path, one value each that tests can move (rules.cpp holds the defaults,
// how they were measured, and the ops that set them). Atomics: a test thread sets them while others read them.
#pragma once

#include <atomic>
#include <cstdint>

namespace gatedrnn {

// When a call's products are direct (no packing): when its steps times its batch rows, the rows that go through
// the recurrent product, are at most max_rows. The recurrent loops then also stay on the single-thread path
// (team.h packs its slices of W_hh per call as well). Read by short_call (common.h).
struct ShortRule {
  std::atomic<int64_t> max_rows;
};
ShortRule& short_rule();

// Forwards and backwards above batch 1 split the batch among the threads: each thread runs the whole recurrence of
// its own rows (the sequences are independent), with its own per-step GEMM and gate passes, and the threads never
// meet inside the time loop (a backward's weight gradients and sums are each slice's own, added up after). Sharing
// every step instead (a threaded GEMM, then a parallel pass over the rows) costs two fork-joins a step. But each
// thread then streams all of the recurrent weights every step, so the split is taken only where they fit a core's
// L2 with room (at most max_weight_bytes) and each thread gets at least min_rows rows. Read by batch_parts
// (common.h).
struct SplitRule {
  std::atomic<int64_t> min_rows, max_weight_bytes;
};
SplitRule& split_rule();

// When the small-batch loop (team.h) runs instead of the single-thread loops, and with how many threads:
// batch <= max_batch, for variants without row-wide statistics (layer norm and proj_size keep the single-thread
// loops, whose per-row passes need the whole row); a team of at::get_num_threads() threads when hidden >= min_hidden,
// else one thread. Read by team_size (team.h).
struct TeamRule {
  std::atomic<int64_t> max_batch, min_hidden;
};
TeamRule& team_rule();

}  // namespace gatedrnn
