// CPU implementations of the rnn_ext ops: the partitioned loop of
// rnn_ext/partition.h (ops/partitioned.h) run by the CPU executor
// (cpu/persistent.h): how many workers, and how they run.
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "cpu/persistent.h"
#include "ops/cpu_workers.h"
#include "ops/partitioned.h"

namespace rnn_ext {
namespace cpu {
namespace blas {
template <>
struct Float16Format<c10::BFloat16> {
  static constexpr bool bf16 = true;
};
template <>
struct Float16Format<c10::Half> {
  static constexpr bool bf16 = false;
};
}  // namespace blas
}  // namespace cpu

namespace {

std::atomic<int64_t> forced_workers{0};
std::atomic<bool> stepwise{false};

// A worker should have enough arithmetic per step to pay for its barrier and
// its BLAS call (together about a microsecond): about 32K multiply-adds, a
// few microseconds on one core.  Measured with `python -m benchmarks` on 2
// cores (benchmarks/NOTES.md).
constexpr int64_t kMacsPerWorker = 1 << 15;

int64_t workers_for(int64_t B, int64_t H, int64_t G, int64_t Hin) {
  const int64_t forced = forced_workers.load(std::memory_order_relaxed);
  if (forced > 0) return forced;
  // Inside a parallel region (a caller's at::parallel_for), more threads
  // would oversubscribe the cores the caller already uses.
  if (at::in_parallel_region()) return 1;
  const int64_t by_work = B * G * H * Hin / kMacsPerWorker;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), by_work));
}

// The CPU's pieces of the partitioned loop (ops/partitioned.h).
struct CpuRunner {
  template <typename T>
  using kernel_type = T;

  static int64_t workers(int64_t B, int64_t H, int64_t G, int64_t Hin, const Tensor&) {
    return workers_for(B, H, G, Hin);
  }
  // Slices in whole cache lines of fp32 when every worker gets several;
  // ragged (one unit) otherwise, so small layers still spread over workers.
  static int64_t align(int64_t H, int64_t workers) { return H >= 64 * workers ? 16 : 1; }
  // A zero initial state (what the modules pass when hx is None) makes step
  // 0's recurrent product zero: skipping it saves 1/T of the recurrent work.
  // The test costs a few microseconds of dispatch, so small products (a
  // decoder's single steps) are not worth it.
  static bool h0_zero(const Tensor& h0, int64_t macs) {
    return macs >= (1 << 18) && h0.count_nonzero().item<int64_t>() == 0;
  }
  static Tensor active(const Lengths& L, const Tensor&) {
    return L.prefix ? at::from_blob(const_cast<int64_t*>(L.active.data()),
                                    {static_cast<int64_t>(L.active.size())}, at::kLong)
                    : Tensor();
  }
  template <class Seq>
  static void lstm_forward(const Seq& s, int64_t K) {
    run(s, K, [](const auto& seq, int64_t k, auto& ex) { partition::lstm_forward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void lstm_backward(const Seq& s, int64_t K) {
    run(s, K, [](const auto& seq, int64_t k, auto& ex) { partition::lstm_backward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void gru_forward(const Seq& s, int64_t K) {
    run(s, K, [](const auto& seq, int64_t k, auto& ex) { partition::gru_forward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void gru_backward(const Seq& s, int64_t K) {
    run(s, K, [](const auto& seq, int64_t k, auto& ex) { partition::gru_backward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void rnn_forward(const Seq& s, int64_t K) {
    run(s, K, [](const auto& seq, int64_t k, auto& ex) { partition::rnn_forward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void rnn_backward(const Seq& s, int64_t K) {
    run(s, K, [](const auto& seq, int64_t k, auto& ex) { partition::rnn_backward_worker(seq, k, ex); });
  }

 private:
  template <template <typename, typename> class SeqT, typename T, typename Acc, class F>
  static void run(const SeqT<T, Acc>& s, int64_t K, F worker) {
    cpu::run<T, Acc>(s, K, worker);
  }
};

using PartitionedCpuLoops = PartitionedLoops<CpuRunner>;

// The CPU's pieces of the stepwise loop (ops/sequence.h), which is the CUDA
// backend's default loop: running it here tests its logic on every build.
struct CpuSteps {
  template <typename T>
  using kernel_type = T;

  template <typename T>
  struct Gemm {
    using Acc = at::opmath_type<T>;
    explicit Gemm(const Tensor&) {}
    template <typename C>
    void operator()(bool w_transposed, int64_t m, int64_t n, int64_t k, const T* a,
                    int64_t lda, const T* w, int64_t ldw, C* c, int64_t ldc,
                    bool accumulate) const {
      if (m <= 0 || n <= 0) return;
      if constexpr (std::is_same_v<C, Acc>)
        cpu::blas::gemm(w_transposed, m, n, k, a, lda, w, ldw, c, ldc, accumulate);
      else  // a 16-bit output (the projection)
        cpu::blas::gemm_loops<T, C, Acc>(w_transposed, m, n, k, a, lda, w, ldw, c, ldc,
                                         accumulate);
    }
  };

  template <class T, class A>
  static void lstm_forward(const LSTMForwardStep<T, A>& p) { cpu::lstm_forward_rows(p, 0, p.B, 0, p.H); }
  template <class T, class A>
  static void lstm_backward(const LSTMBackwardStep<T, A>& p) { cpu::lstm_backward_rows(p, 0, p.B, 0, p.H); }
  template <class T, class A>
  static void proj_grad(const ProjGradStep<T, A>& p) { cpu::proj_grad_rows(p, 0, p.B, 0, p.P); }
  template <class T, class A>
  static void gru_forward(const GRUForwardStep<T, A>& p) { cpu::gru_forward_rows(p, 0, p.B, 0, p.H); }
  template <class T, class A>
  static void gru_backward(const GRUBackwardStep<T, A>& p) { cpu::gru_backward_rows(p, 0, p.B, 0, p.H); }
  template <class T, class A>
  static void rnn_forward(const RNNForwardStep<T, A>& p) { cpu::rnn_forward_rows(p, 0, p.B, 0, p.H); }
  template <class T, class A>
  static void rnn_backward(const RNNBackwardStep<T, A>& p) { cpu::rnn_backward_rows(p, 0, p.B, 0, p.H); }
};

using StepwiseCpuLoops = StepwiseLoops<CpuSteps>;

// Each op runs the partitioned loops, or the stepwise ones when set.
struct CpuLoops {
#define RNN_EXT_CPU_ROUTE(name)                                             \
  template <typename T, typename... Args>                                  \
  static auto name(const Args&... args) {                                  \
    return stepwise.load(std::memory_order_relaxed)                        \
               ? StepwiseCpuLoops::name<T>(args...)                        \
               : PartitionedCpuLoops::name<T>(args...);                    \
  }
  RNN_EXT_CPU_ROUTE(lstm_forward)
  RNN_EXT_CPU_ROUTE(lstm_backward)
  RNN_EXT_CPU_ROUTE(gru_forward)
  RNN_EXT_CPU_ROUTE(gru_backward)
  RNN_EXT_CPU_ROUTE(rnn_forward)
  RNN_EXT_CPU_ROUTE(rnn_backward)
#undef RNN_EXT_CPU_ROUTE
};

}  // namespace

int64_t set_cpu_workers(int64_t workers) {
  return forced_workers.exchange(std::max<int64_t>(0, workers));
}

bool set_cpu_stepwise(bool on) { return stepwise.exchange(on); }

TORCH_LIBRARY_IMPL(rnn_ext, CPU, m) {
  m.impl("lstm_forward", &lstm_forward<CpuLoops>);
  m.impl("lstm_infer", &lstm_infer<CpuLoops>);
  m.impl("lstm_backward", &lstm_backward<CpuLoops>);
  m.impl("gru_forward", &gru_forward<CpuLoops>);
  m.impl("gru_infer", &gru_infer<CpuLoops>);
  m.impl("gru_backward", &gru_backward<CpuLoops>);
  m.impl("rnn_forward", &rnn_forward<CpuLoops>);
  m.impl("rnn_infer", &rnn_infer<CpuLoops>);
  m.impl("rnn_backward", &rnn_backward<CpuLoops>);
}

}  // namespace rnn_ext
