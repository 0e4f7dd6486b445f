// CPU implementations of the rnn_ext ops: the partitioned loop of
// rnn_ext/partition.h (ops/partitioned.h) run by the CPU executor
// (cpu/persistent.h): how many workers, and how they run.
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cpu/persistent.h"
#include "ops/cpu_workers.h"
#include "ops/onednn_products.h"
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

  static int64_t workers(int64_t B, int64_t H, int64_t G, int64_t Hin, const Tensor&,
                         bool /*backward*/) {
    return workers_for(B, H, G, Hin);
  }
  // Both directions on one team: a forced count per direction (so that
  // each direction is cut exactly as its single-direction call cuts it),
  // else each direction's own count, the two together at most the threads.
  static int64_t pair_workers(int64_t B, int64_t H, int64_t G, int64_t Hin, const Tensor&,
                              bool /*backward*/) {
    const int64_t forced = forced_workers.load(std::memory_order_relaxed);
    if (forced > 0) return 2 * forced;
    if (at::in_parallel_region()) return 1;
    return std::min<int64_t>(at::get_num_threads(), 2 * workers_for(B, H, G, Hin));
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
  template <class Seq>
  static void lstm_forward_pair(const Seq& a, const Seq& b, int64_t K) {
    run_pair(a, b, K, [](const auto& seq, int64_t k, auto& ex) { partition::lstm_forward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void lstm_backward_pair(const Seq& a, const Seq& b, int64_t K) {
    run_pair(a, b, K, [](const auto& seq, int64_t k, auto& ex) { partition::lstm_backward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void gru_forward_pair(const Seq& a, const Seq& b, int64_t K) {
    run_pair(a, b, K, [](const auto& seq, int64_t k, auto& ex) { partition::gru_forward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void gru_backward_pair(const Seq& a, const Seq& b, int64_t K) {
    run_pair(a, b, K, [](const auto& seq, int64_t k, auto& ex) { partition::gru_backward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void rnn_forward_pair(const Seq& a, const Seq& b, int64_t K) {
    run_pair(a, b, K, [](const auto& seq, int64_t k, auto& ex) { partition::rnn_forward_worker(seq, k, ex); });
  }
  template <class Seq>
  static void rnn_backward_pair(const Seq& a, const Seq& b, int64_t K) {
    run_pair(a, b, K, [](const auto& seq, int64_t k, auto& ex) { partition::rnn_backward_worker(seq, k, ex); });
  }

 private:
  template <template <typename, typename> class SeqT, typename T, typename Acc, class F>
  static void run(const SeqT<T, Acc>& s, int64_t K, F worker) {
    cpu::run<T, Acc>(s, K, worker);
  }
  template <template <typename, typename> class SeqT, typename T, typename Acc, class F>
  static void run_pair(const SeqT<T, Acc>& a, const SeqT<T, Acc>& b, int64_t K, F worker) {
    cpu::run_pair<T, Acc>(a, b, K, worker);
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

  // The pair ops (both directions of a bidirectional layer): on one team
  // (cpu::run_pair), or, with RNN_EXT_CPU_PAIR=0, one direction after the
  // other on the single-direction loops, each with its own workers (for
  // measuring the two against each other).  The stepwise loops run one
  // direction after the other.
#define RNN_EXT_CPU_PAIR_ROUTE(name)                                        \
  template <typename T, typename... Args>                                  \
  static auto name(const Args&... args) {                                  \
    return stepwise.load(std::memory_order_relaxed)                        \
               ? PairOfSingles<StepwiseCpuLoops>::name<T>(args...)         \
               : PartitionedCpuLoops::name<T>(args..., pair_on_one_team()); \
  }
  RNN_EXT_CPU_PAIR_ROUTE(lstm_forward_pair)
  RNN_EXT_CPU_PAIR_ROUTE(lstm_backward_pair)
  RNN_EXT_CPU_PAIR_ROUTE(gru_forward_pair)
  RNN_EXT_CPU_PAIR_ROUTE(gru_backward_pair)
  RNN_EXT_CPU_PAIR_ROUTE(rnn_forward_pair)
  RNN_EXT_CPU_PAIR_ROUTE(rnn_backward_pair)
#undef RNN_EXT_CPU_PAIR_ROUTE

  // RNN_EXT_CPU_PAIR: "0" one direction after the other; unset or anything
  // else one team (read per call, so that a benchmark can switch it).
  static bool pair_on_one_team() {
    const char* v = std::getenv("RNN_EXT_CPU_PAIR");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }
};

// ------------------------------------------------------------------ cells --
// One step of LSTMCell, GRUCell and RNNCell: the input projection (one ATen
// GEMM, as F.linear computes it) and the sequence loop above at T = 1, in
// one op call, so that a decoder's step pays one trip through the
// dispatcher instead of several.  The *_cell ops are inference (no
// workspace); *_cell_forward keeps what *_cell_backward reads.

Tensor cell_input_gates(const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih) {
  return (b_ih ? at::addmm(*b_ih, x, w_ih.t()) : at::mm(x, w_ih.t())).unsqueeze(0);
}

Tensor state_or_zeros(const OptTensor& s, const Tensor& x, int64_t H) {
  return s ? s->contiguous() : at::zeros({x.size(0), H}, x.options());
}

std::tuple<Tensor, Tensor, Tensor> lstm_cell_run(const Tensor& x, const OptTensor& hx,
                                                 const OptTensor& cx, const Tensor& w_ih,
                                                 const Tensor& w_hh, const OptTensor& b_ih,
                                                 const OptTensor& b_hh, bool training) {
  const int64_t H = check_cell("rnn_ext::lstm_cell", 4, x, hx, cx, w_ih, w_hh, b_ih, b_hh);
  const Tensor gx = cell_input_gates(x, w_ih, b_ih);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(x.scalar_type(), "rnn_ext::lstm_cell", [&] {
    out = CpuLoops::template lstm_forward<scalar_t>(
        gx, w_hh.contiguous(), contiguous(b_hh), std::nullopt, state_or_zeros(hx, x, H),
        state_or_zeros(cx, x, H), std::nullopt, training);
  });
  return {std::get<1>(out), std::get<2>(out), std::get<3>(out)};
}

std::tuple<Tensor, Tensor> lstm_cell(const Tensor& x, const OptTensor& hx, const OptTensor& cx,
                                     const Tensor& w_ih, const Tensor& w_hh,
                                     const OptTensor& b_ih, const OptTensor& b_hh) {
  auto [h, c, ws] = lstm_cell_run(x, hx, cx, w_ih, w_hh, b_ih, b_hh, false);
  return {h, c};
}

std::tuple<Tensor, Tensor, Tensor> lstm_cell_forward(const Tensor& x, const Tensor& hx,
                                                     const Tensor& cx, const Tensor& w_ih,
                                                     const Tensor& w_hh, const OptTensor& b_ih,
                                                     const OptTensor& b_hh) {
  return lstm_cell_run(x, hx, cx, w_ih, w_hh, b_ih, b_hh, true);
}

// The gradients of the input projection from those of the input gates
// d_gates [B, G]: input, W_ih (and b_ih, where it differs from b_hh's).
std::tuple<Tensor, Tensor> input_projection_grads(const Tensor& d_gates, const Tensor& x,
                                                  const Tensor& w_ih) {
  return {at::mm(d_gates, w_ih), at::mm(d_gates.t(), x)};
}

void check_cell_backward(const char* op, const Tensor& x, const Tensor& h,
                         const Tensor& ws, int64_t H, int64_t ws_width) {
  check_same(op, "h", h, x, {x.size(0), H});
  TORCH_CHECK(ws.dim() == 3 && ws.size(0) == 1 && ws.size(1) == x.size(0) &&
                  ws.size(2) == ws_width && ws.scalar_type() == acc_dtype(x.scalar_type()) &&
                  ws.device() == x.device(),
              op, ": workspace does not match the input");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward(
    const Tensor& grad_h, const Tensor& grad_c, const Tensor& x, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& h,
    const Tensor& ws) {
  const char* op = "rnn_ext::lstm_cell_backward";
  const int64_t H = check_cell(op, 4, x, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t B = x.size(0);
  check_same(op, "grad_h", grad_h, x, {B, H});
  check_same(op, "grad_c", grad_c, x, {B, H});
  check_cell_backward(op, x, h, ws, H, 5 * H);
  // The step's output is h itself: its gradient is grad_h_n, and grad_output is zero.
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> g;
  RNN_EXT_DISPATCH(x.scalar_type(), "rnn_ext::lstm_cell_backward", [&] {
    g = CpuLoops::template lstm_backward<scalar_t>(
        at::zeros({1, B, H}, x.options()), grad_h.contiguous(), grad_c.contiguous(),
        w_hh.contiguous(), std::nullopt, hx.contiguous(), cx.contiguous(),
        h.contiguous().unsqueeze(0), ws.contiguous(), at::empty({0, B, H}, x.options()),
        std::nullopt, std::nullopt, /*grad_h0=*/true);
  });
  auto& [d_gates, dw_hh, db_hh, dw_hr, dh0, dc0] = g;
  auto [dx, dw_ih] = input_projection_grads(d_gates[0], x, w_ih);
  // Both biases add to the same gates: one gradient, two tensors.
  return {dx, dh0, dc0, dw_ih, dw_hh, db_hh.clone(), db_hh};
}

std::tuple<Tensor, Tensor> gru_cell_run(const Tensor& x, const OptTensor& hx, const Tensor& w_ih,
                                        const Tensor& w_hh, const OptTensor& b_ih,
                                        const OptTensor& b_hh, bool training) {
  const int64_t H = check_cell("rnn_ext::gru_cell", 3, x, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh);
  const Tensor gx = cell_input_gates(x, w_ih, b_ih);
  std::tuple<Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(x.scalar_type(), "rnn_ext::gru_cell", [&] {
    out = CpuLoops::template gru_forward<scalar_t>(gx, w_hh.contiguous(), contiguous(b_hh),
                                                   state_or_zeros(hx, x, H), std::nullopt,
                                                   training);
  });
  return {std::get<1>(out), std::get<2>(out)};
}

Tensor gru_cell(const Tensor& x, const OptTensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                const OptTensor& b_ih, const OptTensor& b_hh) {
  return std::get<0>(gru_cell_run(x, hx, w_ih, w_hh, b_ih, b_hh, false));
}

std::tuple<Tensor, Tensor> gru_cell_forward(const Tensor& x, const Tensor& hx, const Tensor& w_ih,
                                            const Tensor& w_hh, const OptTensor& b_ih,
                                            const OptTensor& b_hh) {
  return gru_cell_run(x, hx, w_ih, w_hh, b_ih, b_hh, true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward(
    const Tensor& grad_h, const Tensor& x, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h, const Tensor& ws) {
  const char* op = "rnn_ext::gru_cell_backward";
  const int64_t H = check_cell(op, 3, x, hx, std::nullopt, w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t B = x.size(0);
  check_same(op, "grad_h", grad_h, x, {B, H});
  check_cell_backward(op, x, h, ws, H, 4 * H);
  std::tuple<Tensor, Tensor, Tensor, Tensor> g;
  RNN_EXT_DISPATCH(x.scalar_type(), "rnn_ext::gru_cell_backward", [&] {
    g = CpuLoops::template gru_backward<scalar_t>(
        at::zeros({1, B, H}, x.options()), grad_h.contiguous(), w_hh.contiguous(),
        hx.contiguous(), h.contiguous().unsqueeze(0), ws.contiguous(), std::nullopt,
        std::nullopt, /*grad_h0=*/true);
  });
  auto& [d_gates, dw_hh, db_hh, dh0] = g;
  const Tensor d_in = d_gates[0];
  auto [dx, dw_ih] = input_projection_grads(d_in, x, w_ih);
  return {dx, dh0, dw_ih, dw_hh, d_in.sum(0), db_hh};
}

std::tuple<Tensor, Tensor> rnn_cell_run(const Tensor& x, const OptTensor& hx, const Tensor& w_ih,
                                        const Tensor& w_hh, const OptTensor& b_ih,
                                        const OptTensor& b_hh, c10::string_view nonlinearity,
                                        bool training) {
  const char* op = "rnn_ext::rnn_cell";
  const bool relu = rnn_is_relu(op, nonlinearity);
  const int64_t H = check_cell(op, 1, x, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh);
  const Tensor gx = cell_input_gates(x, w_ih, b_ih);
  std::tuple<Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(x.scalar_type(), "rnn_ext::rnn_cell", [&] {
    out = CpuLoops::template rnn_forward<scalar_t>(gx, w_hh.contiguous(), contiguous(b_hh),
                                                   state_or_zeros(hx, x, H), std::nullopt,
                                                   relu, training);
  });
  return {std::get<1>(out), std::get<2>(out)};
}

Tensor rnn_cell(const Tensor& x, const OptTensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                const OptTensor& b_ih, const OptTensor& b_hh, c10::string_view nonlinearity) {
  return std::get<0>(rnn_cell_run(x, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity, false));
}

std::tuple<Tensor, Tensor> rnn_cell_forward(const Tensor& x, const Tensor& hx, const Tensor& w_ih,
                                            const Tensor& w_hh, const OptTensor& b_ih,
                                            const OptTensor& b_hh, c10::string_view nonlinearity) {
  return rnn_cell_run(x, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity, true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_cell_backward(
    const Tensor& grad_h, const Tensor& x, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h, const Tensor& ws, c10::string_view nonlinearity) {
  const char* op = "rnn_ext::rnn_cell_backward";
  const bool relu = rnn_is_relu(op, nonlinearity);
  const int64_t H = check_cell(op, 1, x, hx, std::nullopt, w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t B = x.size(0);
  check_same(op, "grad_h", grad_h, x, {B, H});
  check_cell_backward(op, x, h, ws, H, H);
  std::tuple<Tensor, Tensor, Tensor, Tensor> g;
  RNN_EXT_DISPATCH(x.scalar_type(), "rnn_ext::rnn_cell_backward", [&] {
    g = CpuLoops::template rnn_backward<scalar_t>(
        at::zeros({1, B, H}, x.options()), grad_h.contiguous(), w_hh.contiguous(),
        hx.contiguous(), h.contiguous().unsqueeze(0), ws.contiguous(), std::nullopt,
        std::nullopt, relu, /*grad_h0=*/true);
  });
  auto& [d_gates, dw_hh, db_hh, dh0] = g;
  auto [dx, dw_ih] = input_projection_grads(d_gates[0], x, w_ih);
  // One gate gradient serves both biases.
  return {dx, dh0, dw_ih, dw_hh, db_hh.clone(), db_hh};
}

// ------------------------------------------------------------- layers --
// An LSTM layer direction with its input projection.  In fp32 and fp64 the
// partitioned loop computes the input gates itself (partition.h's input
// phase); other dtypes, and the stepwise loop, project first.
bool input_phase_runs(at::ScalarType dtype) {
  return !stepwise.load(std::memory_order_relaxed) &&
         (dtype == at::kFloat || dtype == at::kDouble);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_run(
    const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih, const Tensor& w_hh,
    const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths, bool training) {
  const char* op = training ? "rnn_ext::lstm_layer_forward" : "rnn_ext::lstm_layer_infer";
  TORCH_CHECK(x.dim() == 3, op, ": input must be 3-D [T, B, I], got ", x.dim(), "-D");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % 4 == 0, op,
              ": expected w_hh of shape [4H, H] (or [4H, P]), got ", w_hh.sizes());
  TORCH_CHECK(w_ih.scalar_type() == x.scalar_type() && w_ih.device() == x.device(), op,
              ": w_ih (", w_ih.scalar_type(), " on ", w_ih.device(),
              ") must have the input's dtype and device (", x.scalar_type(), " on ",
              x.device(), ")");
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == w_hh.size(0) && w_ih.size(1) == x.size(2), op,
              ": expected w_ih of shape [", w_hh.size(0), ", ", x.size(2), "], got ",
              w_ih.sizes());
  if (b_ih) check_same(op, "b_ih", *b_ih, w_ih, {w_ih.size(0)});
  const int64_t T_ = x.size(0), B = x.size(1), G = w_ih.size(0);
  // The other arguments as lstm_forward checks them, against a stand-in for
  // the input gates of the right shape (one element, expanded: no memory).
  check_lstm_forward(at::empty({1}, x.options()).expand({T_, B, G}), w_hh, b_hh, w_hr, h0, c0,
                     lengths, op);
  if (!input_phase_runs(x.scalar_type()))
    return lstm_forward_checked<CpuLoops>(at::linear(x, w_ih, b_ih), w_hh, b_hh, w_hr, h0, c0,
                                          lengths, training);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_ext::lstm_layer_forward", [&] {
    out = PartitionedCpuLoops::lstm_layer_forward<scalar_t>(
        x.contiguous(), w_ih.contiguous(), contiguous(b_ih), w_hh.contiguous(), contiguous(b_hh),
        contiguous(w_hr), h0.contiguous(), c0.contiguous(), lengths, training);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward(
    const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih, const Tensor& w_hh,
    const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  return lstm_layer_run(x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, lengths, true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_layer_infer(
    const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih, const Tensor& w_hh,
    const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  auto [y, h_n, c_n, ws, proj_in] =
      lstm_layer_run(x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, lengths, false);
  return {y, h_n, c_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const Tensor& y, const Tensor& ws, const Tensor& proj_in, const OptTensor& lengths,
    bool grad_h0) {
  const char* op = "rnn_ext::lstm_layer_backward";
  check_lstm_backward(op, grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, std::nullopt);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == w_hh.size(0), op, ": expected w_ih of shape [",
              w_hh.size(0), ", I], got ", w_ih.sizes());
  check_same(op, "w_ih", w_ih, y, w_ih.sizes());
  if (!input_phase_runs(y.scalar_type())) {
    auto [d_gates, dw_hh, db_hh, dw_hr, dh0, dc0] = lstm_backward<CpuLoops>(
        grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, proj_in, lengths, std::nullopt,
        grad_h0);
    return {at::matmul(d_gates, w_ih), d_gates, dw_hh, db_hh, dw_hr, dh0, dc0};
  }
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rnn_ext::lstm_layer_backward", [&] {
    out = PartitionedCpuLoops::lstm_layer_backward<scalar_t>(
        grad_y.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), w_ih.contiguous(),
        w_hh.contiguous(), contiguous(w_hr), h0.contiguous(), c0.contiguous(), y.contiguous(),
        ws.contiguous(), proj_in.contiguous(), lengths, grad_h0);
  });
  return out;
}

Tensor transposed_product_op(const Tensor& a, const Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(0) == b.size(0),
              "rnn_ext::transposed_product: expected a [N, M] and b [N, K], got a of shape ",
              a.sizes(), " and b of shape ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(),
              "rnn_ext::transposed_product: a and b must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
  return transposed_product(a.contiguous(), b.contiguous());
}

Tensor short_linear_op(const Tensor& x, const Tensor& w, const OptTensor& b) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "rnn_ext::short_linear: expected x [N, K] and w [M, K], got x of shape ", x.sizes(),
              " and w of shape ", w.sizes());
  TORCH_CHECK(!b || (b->dim() == 1 && b->size(0) == w.size(0)),
              "rnn_ext::short_linear: expected b of shape [", w.size(0), "]");
  TORCH_CHECK(x.scalar_type() == w.scalar_type() && (!b || b->scalar_type() == w.scalar_type()),
              "rnn_ext::short_linear: x, w and b must have the same dtype");
  return short_linear(x, w, b);
}

}  // namespace

int64_t set_cpu_workers(int64_t workers) {
  return forced_workers.exchange(std::max<int64_t>(0, workers));
}

bool set_cpu_stepwise(bool on) { return stepwise.exchange(on); }

int64_t set_single_row_panel_bytes(int64_t bytes) {
  return cpu::blas::single_row_panel_bytes().exchange(std::max<int64_t>(0, bytes));
}

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
  m.impl("lstm_pair_forward", &lstm_pair_forward<CpuLoops>);
  m.impl("lstm_pair_infer", &lstm_pair_infer<CpuLoops>);
  m.impl("lstm_pair_backward", &lstm_pair_backward<CpuLoops>);
  m.impl("gru_pair_forward", &gru_pair_forward<CpuLoops>);
  m.impl("gru_pair_infer", &gru_pair_infer<CpuLoops>);
  m.impl("gru_pair_backward", &gru_pair_backward<CpuLoops>);
  m.impl("rnn_pair_forward", &rnn_pair_forward<CpuLoops>);
  m.impl("rnn_pair_infer", &rnn_pair_infer<CpuLoops>);
  m.impl("rnn_pair_backward", &rnn_pair_backward<CpuLoops>);
  m.impl("lstm_cell", &lstm_cell);
  m.impl("lstm_cell_forward", &lstm_cell_forward);
  m.impl("lstm_cell_backward", &lstm_cell_backward);
  m.impl("gru_cell", &gru_cell);
  m.impl("gru_cell_forward", &gru_cell_forward);
  m.impl("gru_cell_backward", &gru_cell_backward);
  m.impl("rnn_cell", &rnn_cell);
  m.impl("rnn_cell_forward", &rnn_cell_forward);
  m.impl("rnn_cell_backward", &rnn_cell_backward);
  m.impl("lstm_layer_forward", &lstm_layer_forward);
  m.impl("lstm_layer_infer", &lstm_layer_infer);
  m.impl("lstm_layer_backward", &lstm_layer_backward);
  m.impl("transposed_product", &transposed_product_op);
  m.impl("short_linear", &short_linear_op);
}

}  // namespace rnn_ext
