// Small batches: the recurrence of one layer run by a team of threads that split the hidden units.
//
// At batch 1 a step is a matrix-vector product W_hh h_{t-1} (G·H x H) and a pass over G·H gates. On one thread the
// product streams all of W_hh from L2 every step, which bounds the step (a 512x128 float W_hh is 256 KiB: 1.39 µs at
// the 188 GB/s measured on this machine's L2). A team of n threads splits the hidden units: thread k owns units
// [j0, j1) and computes every gate of them, so it needs only its own rows of W_hh (1/n of it), packs them once per
// call into its own workspace (first touched by that thread, so they sit in its core's L2), and writes its slice
// of h_t. Threads meet once per step (h_t is double-buffered: everyone reads all of h_{t-1}, writes its slice of
// h_t), at a spin barrier.
//
// The team is an OpenMP parallel region of at::get_num_threads() threads (torch.set_num_threads), or of one thread
// where a step is too small to share (team_size), partitioned by the team it actually gets (omp_get_num_threads()):
// inside another parallel region that is one thread, and the same code then runs alone. Alone, it still beats the
// single-thread loops at batch 1: one fused pass over the gates, and the packed weights in memory reused across
// calls.
#pragma once

#include <omp.h>

#include <atomic>
#include <exception>
#include <mutex>
#include <thread>

#include "common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace gatedrnn {

// Threads for the small-batch loop of a forward over `steps` steps (TeamRule, rules.h), or 0 for the single-thread
// loops: always 0 for a variant with row-wide statistics (layer norm, proj_size) and for a call of few steps
// (short_call: direct products, no team). Inside another parallel region the team would have one thread anyway.
inline int team_size(bool row_wide, int64_t steps, int64_t batch, int64_t hidden) {
  const TeamRule& rule = team_rule();
  if (row_wide || short_call(steps, batch) || batch > rule.max_batch.load()) return 0;
  return hidden >= rule.min_hidden.load() && !at::in_parallel_region() ? at::get_num_threads() : 1;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// A barrier of announcements: each member writes the phase it has reached (1, 2, ...) into its own cache line and
// waits until every other member has announced the same phase. With two members that is one line sent each way,
// both at once (a shared counter would be a read-modify-write of one line by each member in turn, and then one more
// line for the release). Waiters spin for a bounded time (a step is a few µs, and a futex sleep and wake-up would
// cost as much), then yield the core: on an oversubscribed machine the member being waited for may need it.
// `abort` releases every waiter (a member failed), and wait then returns false.
class SpinBarrier {
 public:
  explicit SpinBarrier(int members) : phase_(members) {}

  // Member k has reached phase p.
  void arrive(int k, int64_t p) { phase_[k].value.store(p, std::memory_order_release); }

  // Waits until all n members have reached phase p; false if the team was aborted.
  bool await(int n, int64_t p) {
    for (int j = 0; j < n; ++j) {
      for (int64_t spins = 0; phase_[j].value.load(std::memory_order_acquire) < p; ++spins) {
        if (aborted_.load(std::memory_order_relaxed)) return false;
        if (spins < kSpins) {
          cpu_relax();
        } else {
          std::this_thread::yield();
        }
      }
    }
    return true;
  }

  void abort() { aborted_.store(true, std::memory_order_relaxed); }

 private:
  // About 20-40 µs of pause instructions (~100 cycles each on recent x86) before yielding.
  static constexpr int64_t kSpins = 256;
  struct alignas(64) Phase {
    std::atomic<int64_t> value{0};
  };
  std::vector<Phase> phase_;  // one line per member
  std::atomic<bool> aborted_{false};
};

// One member's view of the team: its index k of n, its units [j0, j1), and the barrier.
struct TeamMember {
  int k, n;
  int64_t j0, j1;
  SpinBarrier* barrier;
  int64_t phase = 0;

  int64_t units() const { return j1 - j0; }

  // A sync in two halves, so that a member can work between them on what needs nothing from the others:
  // arrive() announces that this member has done its part of the next phase; await_all() waits until every member
  // has (unwinding the member if another one failed).
  void arrive() { barrier->arrive(k, ++phase); }

  void await_all() {
    if (!barrier->await(n, phase)) throw Aborted{};
  }

  void sync() {
    arrive();
    await_all();
  }

  struct Aborted {};
};

// Runs body(member) on every member of a team of up to `requested` threads that split `units` hidden units
// in slices of a multiple of `align` units (a cache line of them, so that two members never write the same line of
// h_t). A slice may be empty (fewer units than members); its member still takes part in every sync. An exception in
// one member aborts the others' syncs and is rethrown here.
template <typename F>
void run_team(int requested, int64_t units, int64_t align, F&& body) {
  SpinBarrier barrier(requested);
  std::exception_ptr error;
  std::mutex error_lock;
#pragma omp parallel num_threads(requested)
  {
    const int n = omp_get_num_threads(), k = omp_get_thread_num();
    const int64_t per = ((units + n - 1) / n + align - 1) / align * align;
    TeamMember member{k, n, std::min(units, k * per), std::min(units, (k + 1) * per), &barrier};
    try {
      body(member);
    } catch (const TeamMember::Aborted&) {
      // another member failed; its error is the one reported
    } catch (...) {
      {
        std::lock_guard<std::mutex> guard(error_lock);
        if (!error) error = std::current_exception();
      }
      barrier.abort();
    }
  }
  if (error) std::rethrow_exception(error);
}

// The rows of W (N x K, row-major) that one member needs: the blocks of rows [first + j0, first + j1) for each first
// in `firsts` (one per gate), packed as the columns of A = rows^T for the column-block kernel, in a per-thread
// workspace that lives across calls (the pages are this thread's, already touched, and stay in its core's caches
// between calls). For each of `batch` rows x: y (nb·units) = rows @ x, y[q·units + j] being row firsts[q] + j0 + j of
// W times x. The product can be formed in parts, over ranges of x's entries (of A's rows), so that a member can
// start with the entries it wrote itself before the others' are there.
template <typename T>
class SliceProduct {
 public:
  SliceProduct(const T* w, int64_t ld, int64_t K, const std::vector<int64_t>& firsts, int64_t j0, int64_t j1,
               int64_t batch, int slot)
      : rows_(K), cols_(int64_t(firsts.size()) * (j1 - j0)) {
    constexpr int64_t L = Simd<T>::kLanes;
    padded_ = (cols_ + L - 1) / L * L;
    // Vector loads that straddle two cache lines would read twice the lines: the packed rows start on a line.
    constexpr int64_t line = 64 / int64_t(sizeof(T));
    const int64_t size = rows_ * padded_ + batch * padded_ + line;
    std::vector<T>& ws = workspace(slot);
    if (int64_t(ws.size()) < size) ws.resize(size);
    const int64_t skip = (line - int64_t(reinterpret_cast<uintptr_t>(ws.data()) / sizeof(T)) % line) % line;
    packed_ = ws.data() + skip;
    out_ = packed_ + rows_ * padded_;
    std::vector<const T*> src;  // row pointers of W, column c of A
    for (int64_t first : firsts) {
      for (int64_t j = j0; j < j1; ++j) src.push_back(w + (first + j) * ld);
    }
    for_each_block<T>(cols_, [&](int64_t col0, int64_t nv) {
      T* block = packed_ + col0 * rows_;
      const int64_t width = std::min(nv * L, cols_ - col0);
      pack_transposed_block([&](int64_t c) { return src[col0 + c]; }, width, rows_, nv * L, block);
      for (int64_t r = 0; r < rows_; ++r) std::fill(block + r * nv * L + width, block + (r + 1) * nv * L, T(0));
    });
  }

  // The whole product for row b: y_b, valid until the next product for that row.
  const T* operator()(const T* x, int64_t b) {
    part(x, 0, rows_, b, /*accumulate=*/false);
    return out_ + b * padded_;
  }

  // The same product in two parts around a wait for the others: own() over x's entries [j0, j1) (this member's own
  // units, which it wrote itself), then rest() over the other entries, which returns y_b.
  void own(const T* x, int64_t j0, int64_t j1, int64_t b) { part(x, j0, j1, b, /*accumulate=*/false); }

  const T* rest(const T* x, int64_t j0, int64_t j1, int64_t b) {
    part(x, 0, j0, b, /*accumulate=*/true);
    part(x, j1, rows_, b, /*accumulate=*/true);
    return out_ + b * padded_;
  }

 private:
  // y_b = the product over x's entries [r0, r1) (A's rows), or y_b += it when accumulate.
  void part(const T* x, int64_t r0, int64_t r1, int64_t b, bool accumulate) {
    gemv_packed(packed_, x, rows_, cols_, r0, r1, out_ + b * padded_, accumulate);
  }

  static std::vector<T>& workspace(int slot) {
    thread_local std::vector<T> ws[2];
    return ws[slot];
  }

  int64_t rows_, cols_, padded_;
  T* packed_;
  T* out_;
};

// gru_forward_input's and rnn_forward_input's frame: a forward without saving from the layer's input x (T, B, I),
// checked against w_ih (G·H, I). Where the team would run the call, whole(gx) runs it on the input projection made
// whole (one GEMM, input_product); elsewhere chunks(input, h_state, out, lengths) runs the time loop on a StepInput of
// x, which forms the projection a chunk of steps at a time, for each slice of the batch (for_batch_slices: the
// views of that slice's rows, and its lengths). Returns out, h_n.
template <typename Whole, typename Chunks>
std::vector<Tensor> forward_from_input(const char* op, const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih,
                                       const Tensor& h0, const Tensor& w_hh, const OptTensor& lengths,
                                       bool row_wide, Whole whole, Chunks chunks) {
  TORCH_CHECK(x.dim() == 3 && w_ih.dim() == 2 && x.size(2) == w_ih.size(1), op,
              ": x (T, B, I) and w_ih (G·H, I) expected, got ", x.sizes(), " and ", w_ih.sizes());
  const int64_t T_ = x.size(0), B = x.size(1), H = h0.size(1);
  if (team_size(row_wide, T_, B, H)) {
    std::vector<Tensor> r = whole(input_product(x, w_ih, b_ih));
    return {r[0], r[1]};
  }
  const int64_t* len = ptr_or_null<int64_t>(lengths);
  Tensor h_state = h0.clone();
  Tensor out = buffer({T_, B, H}, x.options(), false);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "forward_from_input", [&] {
    for_batch_slices(B, int64_t(w_hh.nbytes()), [&](int64_t b0, int64_t n) {
      StepInput<scalar_t> input(batch_rows(x, b0, n), w_ih, b_ih);
      Tensor h = state_rows(h_state, b0, n), o = batch_rows(out, b0, n);
      chunks(input, h, o, len ? len + b0 : nullptr);
    });
  });
  return {out, h_state};
}

// A member's own input projection (lstm.cpp forward_team): slot 0 its product, slot 1 its rows of W_ih. Per
// thread, like SliceProduct's workspace, so that the pages are already this thread's on the next call.
template <typename T>
std::vector<T>& input_workspace(int slot) {
  thread_local std::vector<T> ws[2];
  return ws[slot];
}

// The head of a team step whose product reads all of h_{t-1} (B rows of width H): each active row's part over the
// member's own units of h_{t-1}, which it wrote itself, while the others finish theirs; then the wait until all of
// h_{t-1} is written. SliceProduct::rest adds the other units' part after it.
template <typename T>
void own_part_then_wait(SliceProduct<T>& product, TeamMember& m, const T* h, int64_t B, int64_t H,
                        const int64_t* lengths, int64_t t) {
  for (int64_t b = 0; b < B && m.units() > 0; ++b) {
    if (active(lengths, b, t)) product.own(h + b * H, m.j0, m.j1, b);
  }
  m.await_all();
}

// Units per cache line of T: the alignment of the members' slices.
template <typename T>
constexpr int64_t line_units() {
  return 64 / int64_t(sizeof(T));
}

}  // namespace gatedrnn
