// C++ tests of the partitioned loop without PyTorch: the split of units over
// workers, the CPU barrier under contention, and whole LSTM/GRU sequences
// run by K workers (with the plain-loop GEMMs, as no BLAS is linked here)
// against one worker; and the same sequences with the CUDA executor's
// shared-memory copies of the weights emulated on the CPU (the packing of
// cuda/resident.h into exactly the bytes the launch requests).
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "cpu/persistent.h"
#include "cuda/resident.h"
#include "tests/expect.h"

using namespace rnn_ext;

static void test_split() {
  for (int64_t n : {0, 1, 3, 16, 37, 100, 1024}) {
    for (int64_t K : {1, 2, 3, 5, 8, 13}) {
      for (int64_t align : {1, 4, 16}) {
        int64_t next = 0, smallest = n, largest = 0;
        for (int64_t k = 0; k < K; ++k) {
          const partition::Slice s = partition::split(n, K, k, align);
          EXPECT(s.begin == next, "split(%ld,%ld,%ld) slice %ld starts at %ld", (long)n, (long)K,
                 (long)align, (long)k, (long)s.begin);
          EXPECT(s.size() >= 0, "negative slice");
          EXPECT(s.end == n || s.size() % align == 0, "slice not aligned");
          next = s.end;
          if (s.size() > 0 || n == 0) {
            smallest = std::min(smallest, s.size());
            largest = std::max(largest, s.size());
          }
        }
        EXPECT(next == n, "split(%ld,%ld,%ld) covers [0,%ld)", (long)n, (long)K, (long)align,
               (long)next);
        if (n >= K * align)  // balanced: sizes differ by at most one chunk
          EXPECT(largest - smallest <= align, "split(%ld,%ld,%ld) unbalanced", (long)n, (long)K,
                 (long)align);
      }
    }
  }
}

static void test_barrier() {
  // Each thread writes its phase number, meets the others, then checks that
  // every thread reached the same phase: a barrier that let one through early
  // would show an older number.
  for (int threads : {2, 3, 8}) {
    cpu::Barrier barrier(threads);
    std::vector<std::atomic<int>> phase(threads);
    std::atomic<int> bad{0};
    std::vector<std::thread> pool;
    for (int k = 0; k < threads; ++k) {
      pool.emplace_back([&, k] {
        for (int p = 1; p <= 500; ++p) {
          phase[k].store(p);
          barrier.arrive_and_wait();
          for (int q = 0; q < threads; ++q)
            if (phase[q].load() < p) ++bad;
          barrier.arrive_and_wait();
        }
      });
    }
    for (auto& t : pool) t.join();
    EXPECT(bad.load() == 0, "barrier with %d threads let %d through early", threads, bad.load());
  }
}

// The CUDA executor's weight copies (cuda/persistent.cu's resident_rows,
// resident_columns and gemm_resident) on a CPU worker: its "shared memory"
// is exactly the bytes the launch gives every block
// (resident::worker_bytes of the largest worker), filled with the kernel's
// packing functions by kThreads emulated threads, and every product reads
// the copies.  A region that does not fit counts as a miss (the kernel would
// read in place; with the launch's size there must be none).
template <typename T, typename Acc>
struct SharedCopyExecutor : cpu::Executor<T, Acc> {
  static constexpr int64_t kThreads = 64;
  std::vector<double> shared;  // doubles: 8-byte aligned storage
  resident::Shelf shelf;
  int misses = 0;

  SharedCopyExecutor(cpu::Barrier* sync, int64_t bytes)
      : cpu::Executor<T, Acc>(sync), shared((bytes + 7) / 8) {
    shelf = {reinterpret_cast<unsigned char*>(shared.data()), bytes};
  }
  partition::GateRows<T> resident_rows(const T* w, int64_t H, int64_t G, int64_t Hin,
                                       partition::Slice u) {
    partition::GateRows<T> rows{w + u.begin * Hin, H * Hin, Hin};
    const int64_t nu = u.size();
    T* copy = nu > 0 ? shelf.take<T>(Hin * G * nu) : nullptr;
    if (nu > 0 && copy == nullptr) ++misses;
    if (copy == nullptr) return rows;
    for (int64_t tid = 0; tid < kThreads; ++tid)
      resident::pack_rows_transposed(rows, G, nu, Hin, copy, tid, kThreads);
    rows.wt = copy;
    return rows;
  }
  partition::ResidentColumns<T> resident_columns(const T* w, int64_t ldw, int64_t k,
                                                 partition::Slice cols) {
    const int64_t n = cols.size();
    T* copy = n > 0 ? shelf.take<T>(k * n) : nullptr;
    if (n > 0 && copy == nullptr) ++misses;
    if (copy == nullptr) return {w + cols.begin, ldw};
    for (int64_t tid = 0; tid < kThreads; ++tid)
      resident::pack_columns(w + cols.begin, ldw, k, n, copy, tid, kThreads);
    return {copy, n};
  }
  void gemm_resident(int64_t m, int64_t k, const T* a, int64_t lda,
                     const partition::GateRows<T>& rows, int G, int64_t n, Acc* c, int64_t ldc) {
    // In place where the copy missed (as the kernel does; counted above).
    if (rows.wt == nullptr)
      return cpu::Executor<T, Acc>::gemm_resident(m, k, a, lda, rows, G, n, c, ldc);
    this->gemm_nn(m, G * n, k, a, lda, rows.wt, G * n, c, ldc, false);
  }
};

// How a test sequence runs: the CPU executor, or the emulated shared-memory
// copies, with slices in chunks of `align` units.
struct RunMode {
  bool shared_copies;
  int64_t align;
};
static int shared_misses = 0;

// worker(seq, k, ex) on K threads.  G gates, P projection columns: the
// shared-memory size, as the launch computes it.
template <class Seq, class Worker>
static void run_workers(Seq seq, int64_t K, RunMode mode, int64_t G, int64_t P, bool backward,
                        Worker worker) {
  seq.align = mode.align;
  if (!mode.shared_copies) return cpu::run<double, double>(seq, K, worker);
  seq.workers = K;
  const int64_t bytes =
      resident::worker_bytes(seq.H, P, G, K, mode.align, sizeof(double), backward);
  cpu::Barrier sync(static_cast<int>(K));
  std::vector<std::thread> pool;
  std::atomic<int> misses{0};
  for (int64_t k = 0; k < K; ++k)
    pool.emplace_back([&, k] {
      SharedCopyExecutor<double, double> ex(&sync, bytes);
      worker(seq, k, ex);
      misses += ex.misses;
    });
  for (auto& t : pool) t.join();
  shared_misses += misses.load();
}

static std::vector<double> randn(size_t n, std::mt19937& g, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// One LSTM sequence with a projection and unsorted lengths: its buffers.
struct LSTMCase {
  static constexpr int64_t T = 6, B = 3, H = 13, P = 5;
  std::mt19937 g;
  std::vector<double> gx, w, wr, bias, h0, c0, ws, proj_in, y, gates, proj_acc, h_n, c_n, grad_y, dh,
      dc, d_gates, d_proj, dh_pre;
  std::vector<int64_t> lengths = {4, 6, 0};
  explicit LSTMCase(unsigned seed) : g(seed) {
    gx = randn(T * B * 4 * H, g), w = randn(4 * H * P, g, 0.4), wr = randn(P * H, g, 0.4);
    bias = randn(4 * H, g), h0 = randn(B * P, g), c0 = randn(B * H, g);
    grad_y = randn(T * B * P, g);
    ws.resize(T * B * 5 * H), proj_in.resize(T * B * H), y.resize(T * B * P);
    gates.resize(B * 4 * H), proj_acc.resize(B * P), h_n = h0, c_n = c0;
    dh.assign(B * P, 0.5), dc.assign(B * H, -0.25), d_gates.resize(T * B * 4 * H);
    d_proj.resize(T * B * P), dh_pre.resize(B * H);
  }
  partition::LSTMForwardSeq<double, double> forward(int64_t K) {
    return {T, B, H, P, K, 1, lengths.data(), nullptr, gx.data(), w.data(), wr.data(), bias.data(),
            h0.data(), false, c0.data(), ws.data(), T, proj_in.data(), T, y.data(), gates.data(),
            proj_acc.data(), h_n.data(), c_n.data()};
  }
  // Backward through the same sequence (after forward()).
  partition::LSTMBackwardSeq<double, double> backward(int64_t K) {
    return {T, B, H, P, K, 1, lengths.data(), nullptr, w.data(), wr.data(), ws.data(), c0.data(),
            nullptr, grad_y.data(), dh.data(), dc.data(), d_gates.data(), d_proj.data(), dh_pre.data()};
  }
  std::vector<double> results() const {
    std::vector<double> out(y);
    for (const auto* v : {&h_n, &c_n, &d_gates, &dh, &dc}) out.insert(out.end(), v->begin(), v->end());
    return out;
  }
};

const auto lstm_forward_program = [](const auto& seq, int64_t k, auto& ex) {
  partition::lstm_forward_worker(seq, k, ex);
};
const auto lstm_backward_program = [](const auto& seq, int64_t k, auto& ex) {
  partition::lstm_backward_worker(seq, k, ex);
};

// The LSTM case on K workers.
static std::vector<double> lstm_sequence(int64_t K, RunMode mode = {false, 1}, unsigned seed = 7) {
  LSTMCase c(seed);
  run_workers(c.forward(K), K, mode, 4, LSTMCase::P, false, lstm_forward_program);
  run_workers(c.backward(K), K, mode, 4, LSTMCase::P, true, lstm_backward_program);
  return c.results();
}

// Two LSTM cases (seeds 7 and 8) as the two directions of one layer, on one
// team of `workers` threads meeting at one barrier (cpu::run_pair, the
// CUDA kernels' pair launch): both results, a's then b's.
static std::vector<double> lstm_pair(int64_t workers) {
  LSTMCase a(7), b(8);
  EXPECT(partition::same_barriers(a.forward(1), b.forward(1)), "pair: barriers differ");
  cpu::run_pair<double, double>(a.forward(1), b.forward(1), workers, lstm_forward_program);
  cpu::run_pair<double, double>(a.backward(1), b.backward(1), workers, lstm_backward_program);
  std::vector<double> out = a.results(), more = b.results();
  out.insert(out.end(), more.begin(), more.end());
  return out;
}

static std::vector<double> gru_sequence(int64_t K, RunMode mode = {false, 1}) {
  const int64_t T = 5, B = 4, H = 11;
  std::mt19937 g(11);
  auto gx = randn(T * B * 3 * H, g), w = randn(3 * H * H, g, 0.4), bias = randn(3 * H, g);
  auto h0 = randn(B * H, g);
  std::vector<int64_t> lengths = {5, 4, 2, 1}, active = {4, 3, 2, 2, 1};  // sorted
  std::vector<double> ws(T * B * 4 * H), y(T * B * H), gates(B * 3 * H), h_n(h0);
  partition::GRUForwardSeq<double, double> s{T, B, H, K, 1, lengths.data(), active.data(),
                                             gx.data(), w.data(), bias.data(), h0.data(),
                                             false, ws.data(), T, y.data(), gates.data(), h_n.data()};
  run_workers(s, K, mode, 3, 0, false, [](const auto& seq, int64_t k, auto& ex) {
    partition::gru_forward_worker(seq, k, ex);
  });
  auto grad_y = randn(T * B * H, g);
  std::vector<double> dh(B * H, 0.3), d_gates(T * B * 3 * H), d_hh(T * B * 3 * H);
  partition::GRUBackwardSeq<double, double> b{T, B, H, K, 1, lengths.data(), active.data(),
                                              w.data(), ws.data(), nullptr, grad_y.data(),
                                              h0.data(), y.data(), dh.data(), d_gates.data(),
                                              d_hh.data()};
  run_workers(b, K, mode, 3, 0, true, [](const auto& seq, int64_t k, auto& ex) {
    partition::gru_backward_worker(seq, k, ex);
  });
  std::vector<double> out(y);
  out.insert(out.end(), h_n.begin(), h_n.end());
  out.insert(out.end(), d_gates.begin(), d_gates.end());
  out.insert(out.end(), d_hh.begin(), d_hh.end());
  out.insert(out.end(), dh.begin(), dh.end());
  return out;
}

static void test_sequences() {
  const auto lstm1 = lstm_sequence(1), gru1 = gru_sequence(1);
  struct Case {
    int64_t K;
    RunMode mode;
  };
  const Case cases[] = {{2, {false, 1}}, {3, {false, 1}}, {5, {false, 1}}, {16, {false, 1}},
                        {1, {true, 1}},  {3, {true, 1}},  {5, {true, 2}},  {16, {true, 1}},
                        {2, {true, 4}}};
  for (const Case& c : cases) {
    const int64_t K = c.K;
    const auto lstm = lstm_sequence(K, c.mode), gru = gru_sequence(K, c.mode);
    double worst = 0;
    for (size_t i = 0; i < lstm.size(); ++i) worst = std::max(worst, std::fabs(lstm[i] - lstm1[i]));
    for (size_t i = 0; i < gru.size(); ++i) worst = std::max(worst, std::fabs(gru[i] - gru1[i]));
    EXPECT(worst < 1e-12, "%ld workers (shared copies %d, align %ld) differ from one by %g",
           (long)K, c.mode.shared_copies, (long)c.mode.align, worst);
    bool finite = true;
    for (double x : lstm) finite = finite && std::isfinite(x);
    EXPECT(finite, "%ld workers: non-finite LSTM result", (long)K);
  }
  EXPECT(shared_misses == 0, "%d weight copies did not fit the launch's shared memory",
         shared_misses);
}

// Both directions on one team: the same numbers as each direction alone,
// however the team splits (an odd team gives b one worker more).  And a
// projection in one direction only would not meet the same barriers.
static void test_pairs() {
  std::vector<double> want = lstm_sequence(1), b = lstm_sequence(1, {false, 1}, 8);
  want.insert(want.end(), b.begin(), b.end());
  for (int64_t workers : {1, 2, 3, 7}) {
    const std::vector<double> got = lstm_pair(workers);
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
    EXPECT(got.size() == want.size() && worst < 1e-12, "pair on %ld workers differs by %g",
           (long)workers, worst);
  }
  LSTMCase a(7);
  auto plain = a.forward(1), projected = a.forward(1);
  plain.P = 0;
  EXPECT(!partition::same_barriers(plain, projected), "projection in one direction only");
  projected.steps = 5;
  plain.P = projected.P;
  EXPECT(!partition::same_barriers(plain, projected), "different step counts");
}

int main() {
  test_split();
  test_barrier();
  test_sequences();
  test_pairs();
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("partition tests passed\n");
  return 0;
}
