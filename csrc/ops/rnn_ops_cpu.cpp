// CPU implementations of the rnn_ext ops: the partitioned loop of
// rnn_ext/partition.h run by the CPU executor (cpu/persistent.h).  This file
// allocates every buffer before the loop and computes the weight gradients
// after it; nothing in between calls ATen.
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "cpu/persistent.h"
#include "ops/cpu_workers.h"
#include "ops/sequence.h"

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

// Slices in whole cache lines of fp32 when every worker gets several; ragged
// (one unit) otherwise, so small layers still spread over the workers.
int64_t align_for(int64_t H, int64_t workers) { return H >= 64 * workers ? 16 : 1; }

template <typename T>
using AccOf = at::opmath_type<T>;

// A zero initial state (what the modules pass when hx is None) makes step
// 0's recurrent product zero: skipping it saves 1/T of the recurrent work.
bool all_zero(const Tensor& t) { return t.count_nonzero().item<int64_t>() == 0; }

const int64_t* active_rows(const Lengths& L) {
  return L.prefix ? L.active.data() : nullptr;
}

struct CpuLoops {
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
      const OptTensor& lengths, bool training) {
    using Acc = AccOf<T>;
    const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2) / 4;
    const int64_t P = w_hr ? w_hr->size(0) : 0, Hin = P > 0 ? P : H;
    const auto opts = gx.options();
    const auto acc = opts.dtype(acc_dtype(gx.scalar_type()));
    // Inference keeps two steps of workspace (the cell state of step t-1 is
    // read at step t) and one of projection input.
    const int64_t ws_steps = training ? T_ : std::min<int64_t>(T_, 2);
    const int64_t proj_steps = P > 0 ? (training ? T_ : 1) : 0;
    Tensor y = at::empty({T_, B, Hin}, opts);
    Tensor ws = at::empty({ws_steps, B, 5 * H}, acc);
    Tensor proj_in = at::empty({proj_steps, B, H}, opts);
    const Tensor bias = b_hh ? *b_hh : at::zeros({4 * H}, opts);
    const Tensor c0_acc = c0.to(acc.dtype()).contiguous();
    Tensor h_n = h0.clone(at::MemoryFormat::Contiguous);
    Tensor c_n = c0.clone(at::MemoryFormat::Contiguous);
    const Lengths L = prepare_lengths(lengths, T_, B, gx.device());
    const int64_t K = workers_for(B, H, 4, Hin);
    Tensor gates = at::empty({B, 4 * H}, acc);
    Tensor proj_acc = at::empty({P > 0 ? B : 0, P}, acc);
    partition::LSTMForwardSeq<T, Acc> s{
        T_, B, H, P, K, align_for(H, K), L.data(), active_rows(L),
        ptr<const T>(gx), ptr<const T>(w_hh), ptr<const T>(w_hr), ptr<const T>(bias),
        ptr<const T>(h0), all_zero(h0), ptr<const Acc>(c0_acc), ptr<Acc>(ws), ws_steps,
        ptr<T>(proj_in), std::max<int64_t>(proj_steps, 1), ptr<T>(y), ptr<Acc>(gates),
        ptr<Acc>(proj_acc), ptr<T>(h_n), ptr<T>(c_n)};
    cpu::run<T, Acc>(s, K, [](const auto& seq, int64_t k, auto& ex) {
      partition::lstm_forward_worker(seq, k, ex);
    });
    return {y, h_n, c_n, ws, proj_in};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
      const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
      const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
      const OptTensor& lengths, const OptTensor& grad_ws) {
    using Acc = AccOf<T>;
    const int64_t T_ = y.size(0), B = y.size(1), H = ws.size(2) / 5;
    const int64_t P = w_hr ? w_hr->size(0) : 0, Hin = P > 0 ? P : H;
    const auto opts = y.options();
    const auto acc = ws.scalar_type();
    Tensor d_gates = at::empty({T_, B, 4 * H}, opts);
    Tensor dh_state = grad_h_n.to(acc, /*non_blocking=*/false, /*copy=*/true);
    Tensor dc_state = grad_c_n.to(acc, /*non_blocking=*/false, /*copy=*/true);
    const Tensor c0_acc = c0.to(acc).contiguous();
    Tensor d_proj = at::empty({P > 0 ? T_ : 0, B, P}, opts);
    Tensor dh_pre = at::empty({P > 0 ? B : 0, H}, ws.options());
    const Lengths L = prepare_lengths(lengths, T_, B, y.device());
    const int64_t K = workers_for(B, H, 4, Hin);
    partition::LSTMBackwardSeq<T, Acc> s{
        T_, B, H, P, K, align_for(H, K), L.data(), active_rows(L),
        ptr<const T>(w_hh), ptr<const T>(w_hr), ptr<const Acc>(ws),
        ptr<const Acc>(c0_acc), ptr<const Acc>(grad_ws), ptr<const T>(grad_y),
        ptr<Acc>(dh_state), ptr<Acc>(dc_state), ptr<T>(d_gates), ptr<T>(d_proj),
        ptr<Acc>(dh_pre)};
    cpu::run<T, Acc>(s, K, [](const auto& seq, int64_t k, auto& ex) {
      partition::lstm_backward_worker(seq, k, ex);
    });
    auto [dw_hh, db_hh, dw_hr] = lstm_weight_grads(d_gates, h0, y, d_proj, proj_in);
    return {d_gates, dw_hh, db_hh, dw_hr, dh_state.to(y.scalar_type()),
            dc_state.to(y.scalar_type())};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> gru_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool training) {
    using Acc = AccOf<T>;
    const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2) / 3;
    const auto opts = gx.options();
    const auto acc = opts.dtype(acc_dtype(gx.scalar_type()));
    // Inference: nothing reads the workspace of an earlier step.
    const int64_t ws_steps = training ? T_ : 1;
    Tensor y = at::empty({T_, B, H}, opts);
    Tensor ws = at::empty({ws_steps, B, 4 * H}, acc);
    const Tensor bias = b_hh ? *b_hh : at::zeros({3 * H}, opts);
    Tensor h_n = h0.clone(at::MemoryFormat::Contiguous);
    const Lengths L = prepare_lengths(lengths, T_, B, gx.device());
    const int64_t K = workers_for(B, H, 3, H);
    Tensor gates = at::empty({B, 3 * H}, acc);
    partition::GRUForwardSeq<T, Acc> s{
        T_, B, H, K, align_for(H, K), L.data(), active_rows(L),
        ptr<const T>(gx), ptr<const T>(w_hh), ptr<const T>(bias), ptr<const T>(h0),
        all_zero(h0), ptr<Acc>(ws), ws_steps, ptr<T>(y), ptr<Acc>(gates), ptr<T>(h_n)};
    cpu::run<T, Acc>(s, K, [](const auto& seq, int64_t k, auto& ex) {
      partition::gru_forward_worker(seq, k, ex);
    });
    return {y, h_n, ws};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
      const Tensor& h0, const Tensor& y, const Tensor& ws,
      const OptTensor& lengths, const OptTensor& grad_ws) {
    using Acc = AccOf<T>;
    const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
    const auto opts = y.options();
    Tensor d_gates = at::empty({T_, B, 3 * H}, opts);
    Tensor d_hh = at::empty({T_, B, 3 * H}, opts);
    Tensor dh_state = grad_h_n.to(ws.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    const Lengths L = prepare_lengths(lengths, T_, B, y.device());
    const int64_t K = workers_for(B, H, 3, H);
    partition::GRUBackwardSeq<T, Acc> s{
        T_, B, H, K, align_for(H, K), L.data(), active_rows(L),
        ptr<const T>(w_hh), ptr<const Acc>(ws), ptr<const Acc>(grad_ws),
        ptr<const T>(grad_y), ptr<const T>(h0), ptr<const T>(y), ptr<Acc>(dh_state),
        ptr<T>(d_gates), ptr<T>(d_hh)};
    cpu::run<T, Acc>(s, K, [](const auto& seq, int64_t k, auto& ex) {
      partition::gru_backward_worker(seq, k, ex);
    });
    auto [dw_hh, db_hh] = gru_weight_grads(d_hh, h0, y);
    return {d_gates, dw_hh, db_hh, dh_state.to(y.scalar_type())};
  }
};

}  // namespace

int64_t set_cpu_workers(int64_t workers) {
  return forced_workers.exchange(std::max<int64_t>(0, workers));
}

TORCH_LIBRARY_IMPL(rnn_ext, CPU, m) {
  m.impl("lstm_forward", &lstm_forward<CpuLoops>);
  m.impl("lstm_infer", &lstm_infer<CpuLoops>);
  m.impl("lstm_backward", &lstm_backward<CpuLoops>);
  m.impl("gru_forward", &gru_forward<CpuLoops>);
  m.impl("gru_infer", &gru_infer<CpuLoops>);
  m.impl("gru_backward", &gru_backward<CpuLoops>);
}

}  // namespace rnn_ext
