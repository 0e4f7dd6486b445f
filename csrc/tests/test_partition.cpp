// C++ tests of the partitioned loop without PyTorch: the split of units over
// workers, the CPU barrier under contention, and whole LSTM/GRU sequences
// run by K workers (with the plain-loop GEMMs, as no BLAS is linked here)
// against one worker.
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "cpu/persistent.h"
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

static std::vector<double> randn(size_t n, std::mt19937& g, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// One LSTM sequence with a projection and unsorted lengths on K workers.
static std::vector<double> lstm_sequence(int64_t K) {
  const int64_t T = 6, B = 3, H = 13, P = 5;
  std::mt19937 g(7);
  auto gx = randn(T * B * 4 * H, g), w = randn(4 * H * P, g, 0.4), wr = randn(P * H, g, 0.4);
  auto bias = randn(4 * H, g), h0 = randn(B * P, g), c0 = randn(B * H, g);
  std::vector<int64_t> lengths = {4, 6, 0};
  std::vector<double> ws(T * B * 5 * H), proj_in(T * B * H), y(T * B * P), gates(B * 4 * H),
      proj_acc(B * P), h_n(h0), c_n(c0);
  partition::LSTMForwardSeq<double, double> s{
      T, B, H, P, K, 1, lengths.data(), nullptr, gx.data(), w.data(), wr.data(), bias.data(),
      h0.data(), false, c0.data(), ws.data(), T, proj_in.data(), T, y.data(), gates.data(),
      proj_acc.data(), h_n.data(), c_n.data()};
  cpu::run<double, double>(s, K, [](const auto& seq, int64_t k, auto& ex) {
    partition::lstm_forward_worker(seq, k, ex);
  });
  std::vector<double> out(y);
  out.insert(out.end(), h_n.begin(), h_n.end());
  out.insert(out.end(), c_n.begin(), c_n.end());
  // Backward through the same sequence.
  auto grad_y = randn(T * B * P, g);
  std::vector<double> dh(B * P, 0.5), dc(B * H, -0.25), d_gates(T * B * 4 * H),
      d_proj(T * B * P), dh_pre(B * H);
  partition::LSTMBackwardSeq<double, double> b{
      T, B, H, P, K, 1, lengths.data(), nullptr, w.data(), wr.data(), ws.data(), c0.data(),
      nullptr, grad_y.data(), dh.data(), dc.data(), d_gates.data(), d_proj.data(), dh_pre.data()};
  cpu::run<double, double>(b, K, [](const auto& seq, int64_t k, auto& ex) {
    partition::lstm_backward_worker(seq, k, ex);
  });
  out.insert(out.end(), d_gates.begin(), d_gates.end());
  out.insert(out.end(), dh.begin(), dh.end());
  out.insert(out.end(), dc.begin(), dc.end());
  return out;
}

static std::vector<double> gru_sequence(int64_t K) {
  const int64_t T = 5, B = 4, H = 11;
  std::mt19937 g(11);
  auto gx = randn(T * B * 3 * H, g), w = randn(3 * H * H, g, 0.4), bias = randn(3 * H, g);
  auto h0 = randn(B * H, g);
  std::vector<int64_t> lengths = {5, 4, 2, 1}, active = {4, 3, 2, 2, 1};  // sorted
  std::vector<double> ws(T * B * 4 * H), y(T * B * H), gates(B * 3 * H), h_n(h0);
  partition::GRUForwardSeq<double, double> s{T, B, H, K, 1, lengths.data(), active.data(),
                                             gx.data(), w.data(), bias.data(), h0.data(),
                                             false, ws.data(), T, y.data(), gates.data(), h_n.data()};
  cpu::run<double, double>(s, K, [](const auto& seq, int64_t k, auto& ex) {
    partition::gru_forward_worker(seq, k, ex);
  });
  auto grad_y = randn(T * B * H, g);
  std::vector<double> dh(B * H, 0.3), d_gates(T * B * 3 * H), d_hh(T * B * 3 * H);
  partition::GRUBackwardSeq<double, double> b{T, B, H, K, 1, lengths.data(), active.data(),
                                              w.data(), ws.data(), nullptr, grad_y.data(),
                                              h0.data(), y.data(), dh.data(), d_gates.data(),
                                              d_hh.data()};
  cpu::run<double, double>(b, K, [](const auto& seq, int64_t k, auto& ex) {
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
  for (int64_t K : {2, 3, 5, 16}) {
    const auto lstm = lstm_sequence(K), gru = gru_sequence(K);
    double worst = 0;
    for (size_t i = 0; i < lstm.size(); ++i) worst = std::max(worst, std::fabs(lstm[i] - lstm1[i]));
    for (size_t i = 0; i < gru.size(); ++i) worst = std::max(worst, std::fabs(gru[i] - gru1[i]));
    EXPECT(worst < 1e-12, "%ld workers differ from one by %g", (long)K, worst);
    bool finite = true;
    for (double x : lstm) finite = finite && std::isfinite(x);
    EXPECT(finite, "%ld workers: non-finite LSTM result", (long)K);
  }
}

int main() {
  test_split();
  test_barrier();
  test_sequences();
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("partition tests passed\n");
  return 0;
}
