// The CPU executor of the partitioned loop (rnn_ext/partition.h): workers
// are the threads of one OpenMP team that lives for the whole sequence; each
// reads only its own rows of W_hh (so they stay in its core's cache when
// they fit: W_hh's gate-major layout already makes each gate's rows of a
// slice contiguous, so nothing is repacked), multiplies with
// single-threaded BLAS, runs the vectorised step loops of rnn_cpu.h over its
// units, and meets the others at a spin-then-block barrier.  No PyTorch and
// no allocation inside the time loop.
#pragma once

#include <omp.h>
#include <stdint.h>

#include <atomic>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <thread>

#include "cpu/blas.h"
#include "cpu/rnn_cpu.h"
#include "rnn_ext/partition.h"

namespace rnn_ext {
namespace cpu {

// A reusable barrier for a fixed number of threads.  Waiters spin first (a
// step of the loop takes microseconds, far less than a sleep and wake-up),
// then sleep on a futex, so that oversubscribed or descheduled workers do
// not burn the cores the others need.  The last thread to arrive starts a
// new generation and wakes sleepers only if there are any.
class Barrier {
 public:
  explicit Barrier(int threads) : threads_(threads) {}

  void arrive_and_wait() { wait(arrive()); }

  // The barrier in two halves: arrive() counts this thread in; wait(ticket)
  // returns once every thread has arrived.  Between them a thread may do
  // work that no other thread waits for.
  struct Ticket {
    int gen;
    bool done;  // this thread arrived last (or is alone): nothing to wait for
  };
  Ticket arrive() {
    if (threads_ <= 1) return {0, true};
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) wake_all();
      return {gen, true};
    }
    return {gen, false};
  }
  void wait(Ticket ticket) {
    if (ticket.done) return;
    const int gen = ticket.gen;
    for (int i = 0; i < kSpins; ++i) {
      if (generation_.load(std::memory_order_acquire) != gen) return;
      pause();
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (generation_.load(std::memory_order_seq_cst) == gen) sleep_while(gen);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  static constexpr int kSpins = 1 << 14;  // about 10-50 us

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
  }
  void sleep_while(int gen) {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAIT_PRIVATE, gen,
            nullptr, nullptr, 0);
#else
    std::this_thread::yield();
#endif
  }
  void wake_all() {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAKE_PRIVATE, 1 << 30,
            nullptr, nullptr, 0);
#endif
  }

  const int threads_;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
  alignas(64) std::atomic<int> sleepers_{0};
};
static_assert(sizeof(std::atomic<int>) == sizeof(int), "futex needs a plain int");

// What partition.h asks of a device, for one CPU worker.  With fp32 and
// oneDNN's brgemm linked (blas.h), the worker's rows of W_hh (and W_hr) are
// transposed once per call into its own slabs, [Hin, G*|u|] with all gates
// side by side, in panels of blas::panel_width() columns (blas::pack_panels), so that a
// step's recurrent product is a few brgemm calls whose JIT kernels (one per
// row count and panel width) serve every step; the backward's
// products read W_hh's columns in place, already a [K, N] operand.  Else
// (fp64, fp16/bf16, no PyTorch) MKL or the plain loops, in place.
template <typename T, typename Acc>
struct Executor {
  static constexpr bool kBrgemmType =
      std::is_same<T, float>::value && std::is_same<Acc, float>::value;

  Barrier* sync;
  bool brgemm = kBrgemmType && blas::brgemm_enabled();
  int64_t batch = 0;  // the sequence's batch (run() sets it)

  // At B = 1 a step reads the whole of W_hh per multiply-add row: it is
  // bound by the cache's bandwidth, and the panels (a second copy of the
  // matrix) pay only up to a size that depends on the CPU
  // (blas::single_row_panel_bytes); past it MKL multiplies W_hh in place.
  static size_t single_row_panel_bytes() {
    return static_cast<size_t>(blas::single_row_panel_bytes().load(std::memory_order_relaxed));
  }
  // Transposed rows: at most W_hh's, W_hr's and W_ih's (the input phase).
  static constexpr int kSlabs = 3;
  std::vector<T> slabs[kSlabs];
  int slabs_used = 0;

  // Slabs up to this size stay allocated with the thread between calls
  // (OpenMP keeps its threads): a fresh allocation per call cost its page
  // faults and zero-fill, as much as the transposition itself at T = 24.
  // Larger ones are the call's own and freed after it.
  static constexpr size_t kKeptSlabBytes = size_t(8) << 20;
  static std::vector<T>& kept_slab(int i) {
    static thread_local std::vector<T> kept[kSlabs];
    return kept[i];
  }

  Executor(Barrier* barrier) : sync(barrier) {}
  ~Executor() {
    if (brgemm) blas::brgemm_release();
  }
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Called before the time loop: the transposition is per call, not per
  // step.
  partition::GateRows<T> resident_rows(const T* w, int64_t H, int64_t G, int64_t Hin,
                                       partition::Slice u) {
    partition::GateRows<T> rows{w + u.begin * Hin, H * Hin, Hin};
    const int64_t nu = u.size();
    const bool panels = batch >= 2 || static_cast<size_t>(G * H * Hin) * sizeof(T) <= single_row_panel_bytes();
    if (brgemm && panels && nu > 0 && slabs_used < kSlabs) {
      const size_t size = static_cast<size_t>(Hin * G * nu);
      const int i = slabs_used++;
      std::vector<T>& slab = size * sizeof(T) <= kKeptSlabBytes ? kept_slab(i) : slabs[i];
      if (slab.size() < size) slab.resize(size);
      // Column j of the product is unit j % nu of gate j / nu.
      blas::pack_panels(G * nu, Hin, [&](int64_t j) { return rows.gate(j / nu) + (j % nu) * Hin; },
                        slab.data());
      rows.wt = slab.data();
    }
    return rows;
  }
  // In place: gemm_nn packs the block into panels on its first product
  // (column_panels), where that pays.
  partition::ResidentColumns<T> resident_columns(const T* w, int64_t ldw, int64_t /*k*/,
                                                 partition::Slice cols) {
    return {w + cols.begin, ldw};
  }
  void gemm_resident(int64_t m, int64_t k, const T* a, int64_t lda,
                     const partition::GateRows<T>& rows, int G, int64_t n, Acc* c,
                     int64_t ldc) {
    if constexpr (kBrgemmType) {
      // Every row count, one included, where the rows were packed
      // (resident_rows): at B = 1 too the panels beat MKL's matrix-vector path.
      if (rows.wt)
        return blas::brgemm_panels(m, G * n, k, a, lda, rows.wt, c, ldc);
    }
    for (int g = 0; g < G; ++g)
      blas::gemm(true, m, n, k, a, lda, rows.gate(g), rows.ld, c + g * n, ldc, false);
  }
  void gemm_nt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* w,
               int64_t ldw, Acc* c, int64_t ldc, bool accumulate) {
    blas::gemm(true, m, n, k, a, lda, w, ldw, c, ldc, accumulate);
  }
  void gemm_nn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* w,
               int64_t ldw, Acc* c, int64_t ldc, bool accumulate) {
    if constexpr (kBrgemmType) {
      if (brgemm && m > 0 && n > 0 && k > 0) {
        // The backward's operand is the same block of W_hh (or W_hr) every
        // step: copied once, on first use, into panels like the forward's
        // (the copy needs no transposition).  In place, with rows ldw apart,
        // brgemm beats MKL only while rows are short (1.6x-1.8x at ldw = 256,
        // 512; 0.6x at 1024): at H = 768 the backward's product ran at 133
        // GFLOP/s against the forward's 188.
        if (const T* panels = column_panels(w, n, k, ldw))
          return blas::brgemm_panels(m, n, k, a, lda, panels, c, ldc, accumulate);
        if (ldw <= 512) return blas::brgemm_nn(m, n, k, a, lda, w, ldw, c, ldc, accumulate);
      }
    }
    blas::gemm(false, m, n, k, a, lda, w, ldw, c, ldc, accumulate);
  }

  // The panels of w's [k, n] block (rows ldw apart), packed on first use;
  // null where they are not worth keeping (see single_row_panel_bytes) or do
  // not fit the slabs.
  struct ColumnPanels {
    const T* w = nullptr;
    int64_t n = 0, k = 0, ldw = 0;
    const T* panels = nullptr;
  };
  ColumnPanels column_slabs[kSlabs];
  const T* column_panels(const T* w, int64_t n, int64_t k, int64_t ldw) {
    for (const ColumnPanels& c : column_slabs)
      if (c.w == w && c.n == n && c.k == k && c.ldw == ldw) return c.panels;
    if (slabs_used >= kSlabs) return nullptr;
    if (batch < 2 && static_cast<size_t>(k * ldw) * sizeof(T) > single_row_panel_bytes()) return nullptr;
    const size_t size = static_cast<size_t>(k * n);
    const int i = slabs_used++;
    std::vector<T>& slab = size * sizeof(T) <= kKeptSlabBytes ? kept_slab(i) : slabs[i];
    if (slab.size() < size) slab.resize(size);
    blas::pack_panels_of_rows(n, k, w, ldw, slab.data());
    column_slabs[i] = ColumnPanels{w, n, k, ldw, slab.data()};
    return slab.data();
  }
  void elements(const LSTMForwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    lstm_forward_rows(p, 0, p.B, j0, j1);
  }
  void elements(const LSTMBackwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    lstm_backward_rows(p, 0, p.B, j0, j1);
  }
  void elements(const ProjGradStep<T, Acc>& p, int64_t j0, int64_t j1) {
    proj_grad_rows(p, 0, p.B, j0, j1);
  }
  void elements(const GRUForwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    gru_forward_rows(p, 0, p.B, j0, j1);
  }
  void elements(const GRUBackwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    gru_backward_rows(p, 0, p.B, j0, j1);
  }
  void elements(const RNNForwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    rnn_forward_rows(p, 0, p.B, j0, j1);
  }
  void elements(const RNNBackwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    rnn_backward_rows(p, 0, p.B, j0, j1);
  }
  template <class F>
  void for_each(int64_t b0, int64_t b1, int64_t j0, int64_t j1, F f) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = j0; j < j1; ++j) f(b, j);
  }
  void barrier() { sync->arrive_and_wait(); }
  // The input phase (partition.h): between the halves of a step's barrier.
  static constexpr bool kInputPhase = true;
  void barrier_arrive() { ticket = sync->arrive(); }
  void barrier_wait() { sync->wait(ticket); }
  Barrier::Ticket ticket{0, true};
};

// Runs `worker(seq, k, executor)` for k in [0, K) on K threads, K = the
// team OpenMP actually grants for `workers` (fewer inside a parallel
// region); seq.workers is set to it, so the partition matches the team.
template <typename T, typename Acc, class Seq, class Worker>
void run(Seq seq, int64_t workers, Worker worker) {
  if (workers <= 1) {
    seq.workers = 1;
    Barrier sync(1);
    Executor<T, Acc> ex{&sync};
    ex.batch = seq.B;
    blas::SingleThreaded one;
    worker(seq, 0, ex);
    return;
  }
  Barrier* sync = nullptr;  // shared: made by one thread once the team is known
#pragma omp parallel num_threads(static_cast<int>(workers)) shared(sync)
  {
    const int K = omp_get_num_threads();
#pragma omp single
    sync = new Barrier(K);
    // (the end of `single` is a barrier: every thread sees `sync` now)
    Seq mine = seq;
    mine.workers = K;
    Executor<T, Acc> ex{sync};
    ex.batch = seq.B;
    blas::SingleThreaded one;
    worker(mine, omp_get_thread_num(), ex);
  }
  delete sync;
}

// Both directions of a bidirectional layer on one team (partition.h's
// pair_worker): half of the granted threads run a, the rest b, all meeting
// at one barrier per phase; a team of one runs a, then b.  The sequences
// must pass the same barriers (partition::same_barriers).
template <typename T, typename Acc, class Seq, class Worker>
void run_pair(Seq a, Seq b, int64_t workers, Worker worker) {
  if (workers <= 1) {
    run<T, Acc>(a, 1, worker);
    run<T, Acc>(b, 1, worker);
    return;
  }
  Barrier* sync = nullptr;
#pragma omp parallel num_threads(static_cast<int>(workers)) shared(sync)
  {
    const int K = omp_get_num_threads();
#pragma omp single
    sync = new Barrier(K);
    Seq mine_a = a, mine_b = b;
    mine_a.workers = K / 2;
    mine_b.workers = K - K / 2;
    Executor<T, Acc> ex{sync};
    ex.batch = a.B;
    blas::SingleThreaded one;
    if (K == 1) {  // granted one thread inside a parallel region
      mine_a.workers = mine_b.workers = 1;
      worker(mine_a, 0, ex);
      worker(mine_b, 0, ex);
    } else {
      partition::pair_worker(mine_a, mine_b, omp_get_thread_num(), ex, worker);
    }
  }
  delete sync;
}

}  // namespace cpu
}  // namespace rnn_ext
