// The measured rules that choose a kernel's path (declared in rules.h), and an op for each that sets it and returns
// the previous value: tests move a rule to run two paths at the same shapes, to check the calls on either side of
// it, and to compare a path with the reference engine where the default rule would not choose it.
#include <torch/library.h>

#include <vector>

#include "rules.h"

namespace gatedrnn {

// --- ShortRule: direct products for calls of few steps ---

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

// --- SplitRule: a batch split among the threads ---

// Measured on this 2-core machine, two threads, forward without autograd, T 100, I 64, float32, ms per call (median of
// 7, three alternating rounds), batch shared by every step (threaded GEMM, parallel gate pass) / split:
//   H 128 (LSTM W_hh 256 KiB): B 8  gru 1.24-1.33 / 0.85-1.00, lstm 1.31-1.37 / 1.07-1.14;
//                              B 16 gru 1.97-2.09 / 1.27-1.32, lstm 2.12-2.19 / 1.65-1.69.
//   H 256 (GRU 768 KiB, LSTM 1 MiB): B 2 gru 1.02-1.10 / 1.05-1.18, lstm 1.19-1.28 / 1.36-1.48;
//                              B 4 gru 1.59-1.89 / 1.37-1.46, lstm 1.83-1.98 / 1.91-2.07;
//                              B 8 gru 2.46-2.58 / 1.95-2.14, lstm 2.85-2.97 / 2.64-2.73;
//                              B 16 gru 4.31-4.51 / 3.39-3.49, lstm 5.36-5.90 / 4.58-4.69;
//                              B 32 (I 65) gru 7.24-8.02 / 6.14-6.58, rnn 3.21-3.28 / 2.35-2.43.
//   H 512 (GRU 3 MiB, LSTM 4 MiB): B 4 gru 4.64-4.85 / 13.2-15.0; B 8 gru 7.46-7.77 / 14.5-15.3, lstm 10.8-11.8 /
//                              20.0-20.2; B 16 gru 12.7-13.0 / 16.1-16.8; B 64 (I 256) gru 54.1-56.0 / 54.4-54.9.
// Forward+backward, the backward split the same way (ms, shared / split): H 128 B 8 gru 3.25-3.40 / 2.78-2.93,
//   lstm 3.62-3.64 / 3.13-3.25; T 200, B 16 gru 10.5-10.8 / 7.5-8.0, lstm 12.8-14.0 / 10.9-11.1; H 256 B 8 gru
//   6.47-6.96 / 6.08-6.73, lstm 8.57-9.08 / 7.69-7.78; B 16 gru 13.2-14.8 / 11.2-12.4, lstm 15.4-15.9 / 13.1-13.6;
//   B 32 (I 65) gru 22.7-23.2 / 21.1-21.7, gru reset-before 23.2-25.3 / 20.5-23.0, gru layer_norm 28.1-28.5 /
//   24.2-24.7, lstm 28.7-30.7 / 26.4-28.5, lstm layer_norm 36.6-37.4 / 34.9-35.8, rnn 8.0-8.3 / 6.5-6.6.
// Beyond a core's 2 MiB L2 every thread streams the weights from memory each step; within it the split gains from 4
// rows a thread. Hence 1 MiB and 4 rows.
SplitRule& split_rule() {
  static SplitRule rule{{4}, {int64_t(1) << 20}};
  return rule;
}

// --- TeamRule: the threaded small-batch recurrence ---

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

// Each sets its rule and returns the previous value: max_rows; [min_rows, max_weight_bytes]; [max_batch, min_hidden].
int64_t set_short_rule(int64_t max_rows) {
  return short_rule().max_rows.exchange(max_rows);
}

std::vector<int64_t> set_split_rule(int64_t min_rows, int64_t max_weight_bytes) {
  SplitRule& rule = split_rule();
  return {rule.min_rows.exchange(min_rows), rule.max_weight_bytes.exchange(max_weight_bytes)};
}

std::vector<int64_t> set_team_rule(int64_t max_batch, int64_t min_hidden) {
  TeamRule& rule = team_rule();
  return {rule.max_batch.exchange(max_batch), rule.min_hidden.exchange(min_hidden)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("set_short_rule", &set_short_rule);
  m.def("set_split_rule", &set_split_rule);
  m.def("set_team_rule", &set_team_rule);
}

}  // namespace gatedrnn
