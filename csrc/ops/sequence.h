// The stepwise time loop (the CUDA backend's default): per step, one GEMM
// for the recurrent product and one fused pointwise kernel, both from
// `Steps`, the device's policy.  Steps provides
//   kernel_type<T>       the kernels' storage type for ATen's T
//   Gemm<KT>             constructed once per call from a tensor on the
//                        device; gemm(w_transposed, m, n, k, a, lda, w, ldw,
//                        c, ldc, accumulate) with the shapes of cpu/blas.h,
//                        c in Acc or (projection) in KT
//   lstm_forward(p) ...  the pointwise step of step_kernels.h
// CudaSteps (rnn_ops_cuda.cpp) calls cuBLASLt on raw pointers (ops/
// cublas_gemm.h) and the CUDA step kernels: inside the time loop there is no
// ATen call, no slicing and no allocation, only the two launches.  CpuSteps
// (rnn_ops_cpu.cpp) runs the very same loops on the CPU with its BLAS and
// step loops, so every line of their pointer arithmetic runs in `make test`
// (rnn_ext._C._set_cpu_stepwise; the CPU ops otherwise run the partitioned
// loop of partition.h).  Nothing in the loop reads device memory on the host.
//
// Two facts keep the loop free of copies:
//  * The GEMM input at step t is the output of step t-1 for every row.  A
//    finished row (t >= length) has garbage there, but its pointwise element
//    ignores the product and keeps its state; an active row's previous output
//    is its real state.  h_n and c_n are gathered once after the loop.
//  * Backward carries dh in one [B, H] buffer: the pointwise kernel consumes
//    it for active rows, and the GEMM accumulates (beta = 1) the next
//    contribution into it, so a finished row keeps grad_h_n until its last
//    step.
// The recurrent product and the carried dh are kept in the accumulation
// type (fp32 for fp16/bf16), so no carried quantity is rounded every step.
// With lengths on the host that are sorted in decreasing order, the GEMMs of
// step t cover only the rows still active.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "ops/onednn_products.h"
#include "rnn_ext/step_kernels.h"

namespace rnn_ext {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

template <typename KT>
KT* ptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<KT*>(t.data_ptr())
                                      : nullptr;
}
template <typename KT>
KT* ptr(const OptTensor& t) {
  return t.has_value() ? ptr<KT>(*t) : nullptr;
}

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// Lengths as the kernels see them, plus what the host knows of them.
struct Lengths {
  Tensor on_device;             // int64 [B] on the input's device, or undefined
  std::vector<int64_t> active;  // active rows per step, when sorted on host
  bool prefix = false;          // active rows of step t are rows [0, active[t])

  int64_t rows(int64_t t, int64_t B) const { return prefix ? active[t] : B; }
  // The rows the stepwise loop's GEMM of step t covers: the active ones
  // rounded up to a power of two (at most B), so that a sequence sees few
  // distinct GEMM shapes (each distinct shape costs cuBLASLt a heuristic
  // query).  The extra rows are finished ones, which is harmless: forward,
  // their product is ignored by the step; backward, their gate gradients
  // are zero, so accumulating adds nothing.
  int64_t gemm_rows(int64_t t, int64_t B) const {
    const int64_t n = rows(t, B);
    if (n == 0 || n == B) return n;
    int64_t p = 1;
    while (p < n) p <<= 1;
    return p < B ? p : B;
  }
  const int64_t* data() const { return ptr<const int64_t>(on_device); }
};

Lengths prepare_lengths(const OptTensor& lengths, int64_t T, int64_t B,
                        const at::Device& device);

// h_n (or c_n) gathered at each row's last step: out[t = len-1], or init
// where len == 0.  Without lengths, the last step.
Tensor gather_final(const Tensor& seq, const Tensor& init,
                    const OptTensor& lengths, const Lengths& L);

// dW_hh = sum over t of d[t]^T h_prev(t), where h_prev(0) = h0 and
// h_prev(t) = y[t-1]: one large product over steps 1.. (through oneDNN
// where that is faster, ops/onednn_products.h) and one for step 0.
// Rows that were inactive have zero gradients, so their (zeroed) outputs
// contribute nothing.  `h0_zero` (h0 is all zeros, what the modules pass
// when hx is None): step 0 adds nothing and its product is skipped, 1/T of
// the work (half of it at T = 2).
inline Tensor recurrent_weight_grad(const Tensor& d, const Tensor& h0, const Tensor& y,
                                    bool h0_zero) {
  const int64_t T_ = d.size(0), B = d.size(1), G = d.size(2), Hin = h0.size(1);
  if (T_ == 1 && h0_zero) return at::zeros({G, Hin}, d.options());
  if (T_ == 1) return at::mm(d[0].t(), h0);
  const Tensor rest = d.narrow(0, 1, T_ - 1).reshape({(T_ - 1) * B, G});
  const Tensor prev = y.narrow(0, 0, T_ - 1).reshape({(T_ - 1) * B, Hin});
  Tensor dw = transposed_product(rest, prev);
  if (!h0_zero) dw.addmm_(d[0].t(), h0);
  return dw;
}

// Weight gradients of an LSTM layer after its time loop, each one large
// product over all steps.  Returns (dW_hh, db_hh, dW_hr).
inline std::tuple<Tensor, Tensor, Tensor> lstm_weight_grads(
    const Tensor& d_gates, const Tensor& h0, const Tensor& y,
    const Tensor& d_proj, const Tensor& proj_in, bool h0_zero = false) {
  const int64_t T_ = d_gates.size(0), B = d_gates.size(1);
  Tensor dw_hh = recurrent_weight_grad(d_gates, h0, y, h0_zero);
  Tensor db_hh = d_gates.sum(at::IntArrayRef{0, 1});
  Tensor dw_hr = d_proj.numel() > 0
                     ? transposed_product(d_proj.reshape({T_ * B, d_proj.size(2)}),
                                        proj_in.reshape({T_ * B, proj_in.size(2)}))
                     : at::empty({0}, y.options());
  return {dw_hh, db_hh, dw_hr};
}

// Likewise for a GRU layer, from the gradients of h W_hh^T + b_hh (and for
// an RNN layer, whose one gate gradient is also that of the product).
inline std::tuple<Tensor, Tensor> gru_weight_grads(const Tensor& d_hh, const Tensor& h0,
                                                   const Tensor& y, bool h0_zero = false) {
  return {recurrent_weight_grad(d_hh, h0, y, h0_zero), d_hh.sum(at::IntArrayRef{0, 1})};
}

// The six loops.  Every buffer is allocated before the loop; inside it,
// steps address their slices by pointer arithmetic and call only the
// device's GEMM and pointwise step (two calls per step; three forward and
// four backward with proj_size).
template <class Steps, typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_loop(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  using KT = typename Steps::template kernel_type<T>;
  using Acc = at::opmath_type<T>;
  const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2) / 4;
  const int64_t P = w_hr ? w_hr->size(0) : 0;
  const int64_t Hout = P > 0 ? P : H;
  const auto opts = gx.options();
  Tensor y = at::empty({T_, B, Hout}, opts);
  Tensor ws = at::empty({T_, B, 5 * H}, opts.dtype(acc_dtype(gx.scalar_type())));
  Tensor proj_in = at::empty({P > 0 ? T_ : 0, B, H}, opts);
  Tensor gh = at::empty({B, 4 * H}, ws.options());
  const Tensor bias = b_hh ? *b_hh : at::zeros({4 * H}, opts);
  const Tensor c0_acc = c0.to(ws.scalar_type()).contiguous();
  const Lengths L = prepare_lengths(lengths, T_, B, gx.device());
  typename Steps::template Gemm<KT> gemm(gx);
  const KT* gx_p = ptr<const KT>(gx);
  const KT* w_p = ptr<const KT>(w_hh);
  const KT* w_hr_p = ptr<const KT>(w_hr);
  const KT* bias_p = ptr<const KT>(bias);
  const KT* h0_p = ptr<const KT>(h0);
  const Acc* c0_p = ptr<const Acc>(c0_acc);
  Acc* ws_p = ptr<Acc>(ws);
  Acc* gh_p = ptr<Acc>(gh);
  KT* y_p = ptr<KT>(y);
  KT* proj_in_p = ptr<KT>(proj_in);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = L.gemm_rows(t, B);
    const KT* h_prev = t == 0 ? h0_p : y_p + (t - 1) * B * Hout;
    gemm(true, n, 4 * H, Hout, h_prev, Hout, w_p, Hout, gh_p, 4 * H, false);
    const Acc* c_prev = t == 0 ? c0_p : ws_p + (t - 1) * B * 5 * H + 4 * H;
    LSTMForwardStep<KT, Acc> p{B, H, t, L.data(), gx_p + t * B * 4 * H, gh_p, bias_p,
                               c_prev, t == 0 ? H : 5 * H, ws_p + t * B * 5 * H,
                               P > 0 ? proj_in_p + t * B * H : y_p + t * B * H};
    Steps::lstm_forward(p);
    // All B rows: a finished row's projection input is zero (the step wrote
    // it), so its output is the zero a padded output must be, with no
    // separate fill.
    if (P > 0) gemm(true, B, P, H, proj_in_p + t * B * H, H, w_hr_p, H, y_p + t * B * P, P, false);
  }
  Tensor h_n = gather_final(y, h0, lengths, L);
  Tensor c_n = gather_final(ws.narrow(2, 4 * H, H), c0, lengths, L).to(gx.scalar_type());
  return {y, h_n, c_n, ws, proj_in};
}

template <class Steps, typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_loop(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
    const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
    const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
  using KT = typename Steps::template kernel_type<T>;
  using Acc = at::opmath_type<T>;
  const int64_t T_ = y.size(0), B = y.size(1), H = ws.size(2) / 5;
  const int64_t P = w_hr ? w_hr->size(0) : 0;
  const int64_t Hout = y.size(2);
  const auto opts = y.options();
  const Lengths L = prepare_lengths(lengths, T_, B, y.device());
  Tensor d_gates = at::empty({T_, B, 4 * H}, opts);
  Tensor dh_state = grad_h_n.to(ws.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  Tensor dc_state = grad_c_n.to(ws.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  const Tensor c0_acc = c0.to(ws.scalar_type()).contiguous();
  Tensor d_proj = at::empty({P > 0 ? T_ : 0, B, P}, opts);
  Tensor dh_pre = at::empty({P > 0 ? B : 0, H}, ws.options());
  typename Steps::template Gemm<KT> gemm(y);
  const KT* w_p = ptr<const KT>(w_hh);
  const KT* w_hr_p = ptr<const KT>(w_hr);
  const Acc* ws_p = ptr<const Acc>(ws);
  const Acc* c0_p = ptr<const Acc>(c0_acc);
  const Acc* grad_ws_p = ptr<const Acc>(grad_ws);
  const KT* grad_y_p = ptr<const KT>(grad_y);
  Acc* dh_p = ptr<Acc>(dh_state);
  Acc* dc_p = ptr<Acc>(dc_state);
  Acc* dh_pre_p = ptr<Acc>(dh_pre);
  KT* d_gates_p = ptr<KT>(d_gates);
  KT* d_proj_p = ptr<KT>(d_proj);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = L.gemm_rows(t, B);
    if (P > 0) {
      ProjGradStep<KT, Acc> pp{B, P, t, L.data(), dh_p, grad_y_p + t * B * P,
                               d_proj_p + t * B * P};
      Steps::proj_grad(pp);
      gemm(false, n, H, P, d_proj_p + t * B * P, P, w_hr_p, H, dh_pre_p, H, false);
    }
    LSTMBackwardStep<KT, Acc> p{
        B, H, t, L.data(), ws_p + t * B * 5 * H,
        t == 0 ? c0_p : ws_p + (t - 1) * B * 5 * H + 4 * H, t == 0 ? H : 5 * H,
        grad_ws_p ? grad_ws_p + t * B * 5 * H : nullptr, P > 0 ? dh_pre_p : nullptr, dh_p,
        grad_y_p + t * B * Hout, dc_p, d_gates_p + t * B * 4 * H};
    Steps::lstm_backward(p);
    if (t > 0 || grad_h0)  // step 0's product is h0's gradient
      gemm(false, n, Hout, 4 * H, d_gates_p + t * B * 4 * H, 4 * H, w_p, Hout, dh_p, Hout, true);
  }
  if (!grad_h0) dh_state.zero_();
  auto [dw_hh, db_hh, dw_hr] = lstm_weight_grads(d_gates, h0, y, d_proj, proj_in);
  return {d_gates, dw_hh, db_hh, dw_hr, dh_state.to(y.scalar_type()),
          dc_state.to(y.scalar_type())};
}

template <class Steps, typename T>
std::tuple<Tensor, Tensor, Tensor> gru_forward_loop(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& lengths) {
  using KT = typename Steps::template kernel_type<T>;
  using Acc = at::opmath_type<T>;
  const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2) / 3;
  const auto opts = gx.options();
  Tensor y = at::empty({T_, B, H}, opts);
  Tensor ws = at::empty({T_, B, 4 * H}, opts.dtype(acc_dtype(gx.scalar_type())));
  Tensor gh = at::empty({B, 3 * H}, ws.options());
  const Tensor bias = b_hh ? *b_hh : at::zeros({3 * H}, opts);
  const Lengths L = prepare_lengths(lengths, T_, B, gx.device());
  typename Steps::template Gemm<KT> gemm(gx);
  const KT* gx_p = ptr<const KT>(gx);
  const KT* w_p = ptr<const KT>(w_hh);
  const KT* bias_p = ptr<const KT>(bias);
  const KT* h0_p = ptr<const KT>(h0);
  Acc* ws_p = ptr<Acc>(ws);
  Acc* gh_p = ptr<Acc>(gh);
  KT* y_p = ptr<KT>(y);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = L.gemm_rows(t, B);
    const KT* h_prev = t == 0 ? h0_p : y_p + (t - 1) * B * H;
    gemm(true, n, 3 * H, H, h_prev, H, w_p, H, gh_p, 3 * H, false);
    GRUForwardStep<KT, Acc> p{B, H, t, L.data(), gx_p + t * B * 3 * H, gh_p, bias_p,
                              h_prev, ws_p + t * B * 4 * H, y_p + t * B * H};
    Steps::gru_forward(p);
  }
  return {y, gather_final(y, h0, lengths, L), ws};
}

template <class Steps, typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward_loop(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
  using KT = typename Steps::template kernel_type<T>;
  using Acc = at::opmath_type<T>;
  const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
  const auto opts = y.options();
  const Lengths L = prepare_lengths(lengths, T_, B, y.device());
  Tensor d_gates = at::empty({T_, B, 3 * H}, opts);
  Tensor d_hh = at::empty({T_, B, 3 * H}, opts);
  Tensor dh_state = grad_h_n.to(acc_dtype(y.scalar_type()), /*non_blocking=*/false, /*copy=*/true);
  typename Steps::template Gemm<KT> gemm(y);
  const KT* w_p = ptr<const KT>(w_hh);
  const KT* h0_p = ptr<const KT>(h0);
  const KT* y_p = ptr<const KT>(y);
  const Acc* ws_p = ptr<const Acc>(ws);
  const Acc* grad_ws_p = ptr<const Acc>(grad_ws);
  const KT* grad_y_p = ptr<const KT>(grad_y);
  Acc* dh_p = ptr<Acc>(dh_state);
  KT* d_gates_p = ptr<KT>(d_gates);
  KT* d_hh_p = ptr<KT>(d_hh);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = L.gemm_rows(t, B);
    GRUBackwardStep<KT, Acc> p{
        B, H, t, L.data(), ws_p + t * B * 4 * H, t == 0 ? h0_p : y_p + (t - 1) * B * H,
        grad_ws_p ? grad_ws_p + t * B * 4 * H : nullptr, dh_p, grad_y_p + t * B * H,
        d_gates_p + t * B * 3 * H, d_hh_p + t * B * 3 * H};
    Steps::gru_backward(p);
    if (t > 0 || grad_h0)  // step 0's product is part of h0's gradient
      gemm(false, n, H, 3 * H, d_hh_p + t * B * 3 * H, 3 * H, w_p, H, dh_p, H, true);
  }
  if (!grad_h0) dh_state.zero_();
  auto [dw_hh, db_hh] = gru_weight_grads(d_hh, h0, y);
  return {d_gates, dw_hh, db_hh, dh_state.to(y.scalar_type())};
}

template <class Steps, typename T>
std::tuple<Tensor, Tensor, Tensor> rnn_forward_loop(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& lengths, bool relu) {
  using KT = typename Steps::template kernel_type<T>;
  using Acc = at::opmath_type<T>;
  const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2);
  const auto opts = gx.options();
  Tensor y = at::empty({T_, B, H}, opts);
  Tensor ws = at::empty({T_, B, H}, opts.dtype(acc_dtype(gx.scalar_type())));
  Tensor gh = at::empty({B, H}, ws.options());
  const Tensor bias = b_hh ? *b_hh : at::zeros({H}, opts);
  const Lengths L = prepare_lengths(lengths, T_, B, gx.device());
  typename Steps::template Gemm<KT> gemm(gx);
  const KT* gx_p = ptr<const KT>(gx);
  const KT* w_p = ptr<const KT>(w_hh);
  const KT* bias_p = ptr<const KT>(bias);
  const KT* h0_p = ptr<const KT>(h0);
  Acc* ws_p = ptr<Acc>(ws);
  Acc* gh_p = ptr<Acc>(gh);
  KT* y_p = ptr<KT>(y);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = L.gemm_rows(t, B);
    const KT* h_prev = t == 0 ? h0_p : y_p + (t - 1) * B * H;
    gemm(true, n, H, H, h_prev, H, w_p, H, gh_p, H, false);
    RNNForwardStep<KT, Acc> p{B, H, t, L.data(), gx_p + t * B * H, gh_p, bias_p, h_prev,
                              ws_p + t * B * H, y_p + t * B * H, relu};
    Steps::rnn_forward(p);
  }
  return {y, gather_final(y, h0, lengths, L), ws};
}

template <class Steps, typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward_loop(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws, bool relu, bool grad_h0) {
  using KT = typename Steps::template kernel_type<T>;
  using Acc = at::opmath_type<T>;
  const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
  const auto opts = y.options();
  const Lengths L = prepare_lengths(lengths, T_, B, y.device());
  Tensor d_gates = at::empty({T_, B, H}, opts);
  Tensor dh_state = grad_h_n.to(acc_dtype(y.scalar_type()), /*non_blocking=*/false, /*copy=*/true);
  typename Steps::template Gemm<KT> gemm(y);
  const KT* w_p = ptr<const KT>(w_hh);
  const Acc* ws_p = ptr<const Acc>(ws);
  const Acc* grad_ws_p = ptr<const Acc>(grad_ws);
  const KT* grad_y_p = ptr<const KT>(grad_y);
  Acc* dh_p = ptr<Acc>(dh_state);
  KT* d_gates_p = ptr<KT>(d_gates);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = L.gemm_rows(t, B);
    RNNBackwardStep<KT, Acc> p{B, H, t, L.data(), ws_p + t * B * H,
                               grad_ws_p ? grad_ws_p + t * B * H : nullptr, dh_p,
                               grad_y_p + t * B * H, d_gates_p + t * B * H, relu};
    Steps::rnn_backward(p);
    if (t > 0 || grad_h0)  // step 0's product is h0's gradient
      gemm(false, n, H, H, d_gates_p + t * B * H, H, w_p, H, dh_p, H, true);
  }
  if (!grad_h0) dh_state.zero_();
  // One gradient serves the input gates and the recurrent product.
  auto [dw_hh, db_hh] = gru_weight_grads(d_gates, h0, y);
  return {d_gates, dw_hh, db_hh, dh_state.to(y.scalar_type())};
}

// The stepwise loops as the entry points below call them.  They always keep
// the workspace (the inference ops then drop it).
template <class Steps>
struct StepwiseLoops {
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
      const OptTensor& lengths, bool /*training*/) {
    return lstm_forward_loop<Steps, T>(gx, w_hh, b_hh, w_hr, h0, c0, lengths);
  }
  template <typename T, typename... Args>
  static auto lstm_backward(const Args&... args) {
    return lstm_backward_loop<Steps, T>(args...);
  }
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> gru_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool /*training*/) {
    return gru_forward_loop<Steps, T>(gx, w_hh, b_hh, h0, lengths);
  }
  template <typename T, typename... Args>
  static auto gru_backward(const Args&... args) {
    return gru_backward_loop<Steps, T>(args...);
  }
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> rnn_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool relu, bool /*training*/) {
    return rnn_forward_loop<Steps, T>(gx, w_hh, b_hh, h0, lengths, relu);
  }
  template <typename T, typename... Args>
  static auto rnn_backward(const Args&... args) {
    return rnn_backward_loop<Steps, T>(args...);
  }
};

}  // namespace rnn_ext

// ------------------------------------------------------------------------
// Checked entry points, shared by every device: validate, make contiguous,
// dispatch on dtype, then run the device's `Loops` (StepwiseLoops below, or
// the CPU's partitioned loops in rnn_ops_cpu.cpp).  Loops::lstm_forward and
// gru_forward take a flag `training`: without it they may keep no workspace
// (the inference ops return none).
namespace rnn_ext {

// Throws a clear error naming the problem; returns nothing.
// `op` names the op in the errors.
void check_lstm_forward(const Tensor& gx, const Tensor& w_hh,
                        const OptTensor& b_hh, const OptTensor& w_hr,
                        const Tensor& h0, const Tensor& c0,
                        const OptTensor& lengths,
                        const char* op = "rnn_ext::lstm_forward");
void check_gru_forward(const Tensor& gx, const Tensor& w_hh,
                       const OptTensor& b_hh, const Tensor& h0,
                       const OptTensor& lengths,
                       const char* op = "rnn_ext::gru_forward");
void check_same(const char* op, const char* name, const Tensor& t,
                const Tensor& like, at::IntArrayRef shape);
void check_rnn_forward(const Tensor& gx, const Tensor& w_hh,
                       const OptTensor& b_hh, const Tensor& h0,
                       const OptTensor& lengths,
                       const char* op = "rnn_ext::rnn_forward");
// A pair op's argument: `dims`-D with a leading dimension of 2 (direction 0,
// then direction 1); `shape` describes it in the error.
void check_pair(const char* op, const char* name, const Tensor& t, int64_t dims,
                const char* shape);
int64_t check_cell(const char* op, int64_t gates, const Tensor& x,
                   const OptTensor& hx, const OptTensor& cx,
                   const Tensor& w_ih, const Tensor& w_hh,
                   const OptTensor& b_ih, const OptTensor& b_hh);
// "tanh" -> false, "relu" -> true; anything else is an error naming it.
bool rnn_is_relu(const char* op, c10::string_view nonlinearity);

inline OptTensor contiguous(const OptTensor& t) {
  return t ? OptTensor(t->contiguous()) : std::nullopt;
}

// Direction `dir` of a pair op's optional argument.
inline OptTensor direction_of(const OptTensor& t, int64_t dir) {
  return t ? OptTensor((*t)[dir]) : std::nullopt;
}

#define RNN_EXT_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_checked(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths, bool training) {
  check_lstm_forward(gx, w_hh, b_hh, w_hr, h0, c0, lengths);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(gx.scalar_type(), "rnn_ext::lstm_forward", [&] {
    out = Loops::template lstm_forward<scalar_t>(
        gx.contiguous(), w_hh.contiguous(), contiguous(b_hh),
        contiguous(w_hr), h0.contiguous(), c0.contiguous(), lengths, training);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  return lstm_forward_checked<Loops>(gx, w_hh, b_hh, w_hr, h0, c0, lengths, true);
}

// Inference: outputs and final states only.
template <class Loops>
std::tuple<Tensor, Tensor, Tensor> lstm_infer(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  auto [y, h_n, c_n, ws, proj_in] =
      lstm_forward_checked<Loops>(gx, w_hh, b_hh, w_hr, h0, c0, lengths, false);
  return {y, h_n, c_n};
}

inline void check_lstm_backward(const char* op, const Tensor& grad_y, const Tensor& grad_h_n,
                                const Tensor& grad_c_n, const Tensor& w_hh,
                                const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
                                const Tensor& y, const Tensor& ws, const OptTensor& grad_ws) {
  TORCH_CHECK(y.dim() == 3 && ws.dim() == 3 && ws.size(2) % 5 == 0,
              op, ": output must be [T, B, H] and workspace [T, B, 5H]");
  const int64_t T_ = y.size(0), B = y.size(1), H = ws.size(2) / 5;
  check_same(op, "grad_output", grad_y, y, y.sizes());
  check_same(op, "grad_h_n", grad_h_n, y, {B, y.size(2)});
  check_same(op, "grad_c_n", grad_c_n, y, {B, H});
  check_same(op, "h0", h0, y, {B, y.size(2)});
  check_same(op, "c0", c0, y, {B, H});
  check_same(op, "w_hh", w_hh, y, {4 * H, y.size(2)});
  if (w_hr) check_same(op, "w_hr", *w_hr, y, {y.size(2), H});
  TORCH_CHECK(ws.size(0) == T_ && ws.size(1) == B, op, ": workspace does not match output");
  if (grad_ws) TORCH_CHECK(grad_ws->sizes() == ws.sizes() && grad_ws->scalar_type() == ws.scalar_type(),
                           op, ": grad_workspace must match workspace");
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
    const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
    const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
  check_lstm_backward("rnn_ext::lstm_backward", grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0,
                      c0, y, ws, grad_ws);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(y.scalar_type(), "rnn_ext::lstm_backward", [&] {
    out = Loops::template lstm_backward<scalar_t>(
        grad_y.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(),
        w_hh.contiguous(), contiguous(w_hr), h0.contiguous(), c0.contiguous(),
        y.contiguous(), ws.contiguous(), proj_in.contiguous(), lengths,
        contiguous(grad_ws), grad_h0);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> gru_forward_checked(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& lengths, bool training) {
  check_gru_forward(gx, w_hh, b_hh, h0, lengths);
  std::tuple<Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(gx.scalar_type(), "rnn_ext::gru_forward", [&] {
    out = Loops::template gru_forward<scalar_t>(gx.contiguous(), w_hh.contiguous(),
                                                contiguous(b_hh), h0.contiguous(),
                                                lengths, training);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& gx,
                                               const Tensor& w_hh,
                                               const OptTensor& b_hh,
                                               const Tensor& h0,
                                               const OptTensor& lengths) {
  return gru_forward_checked<Loops>(gx, w_hh, b_hh, h0, lengths, true);
}

template <class Loops>
std::tuple<Tensor, Tensor> gru_infer(const Tensor& gx, const Tensor& w_hh,
                                     const OptTensor& b_hh, const Tensor& h0,
                                     const OptTensor& lengths) {
  auto [y, h_n, ws] = gru_forward_checked<Loops>(gx, w_hh, b_hh, h0, lengths, false);
  return {y, h_n};
}

// GRU's and RNN's backward: G = 3 (workspace 4H) or 1 (workspace H).
inline void check_gru_rnn_backward(const char* op, int64_t G, int64_t ws_width,
                                   const Tensor& grad_y, const Tensor& grad_h_n,
                                   const Tensor& w_hh, const Tensor& h0, const Tensor& y,
                                   const Tensor& ws, const OptTensor& grad_ws) {
  TORCH_CHECK(y.dim() == 3 && ws.dim() == 3, op, ": output must be [T, B, H]");
  const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
  check_same(op, "grad_output", grad_y, y, y.sizes());
  check_same(op, "grad_h_n", grad_h_n, y, {B, H});
  check_same(op, "h0", h0, y, {B, H});
  check_same(op, "w_hh", w_hh, y, {G * H, H});
  TORCH_CHECK(ws.size(0) == T_ && ws.size(1) == B && ws.size(2) == ws_width * H,
              op, ": workspace does not match output");
  if (grad_ws) TORCH_CHECK(grad_ws->sizes() == ws.sizes() && grad_ws->scalar_type() == ws.scalar_type(),
                           op, ": grad_workspace must match workspace");
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
  check_gru_rnn_backward("rnn_ext::gru_backward", 3, 4, grad_y, grad_h_n, w_hh, h0, y, ws,
                         grad_ws);
  std::tuple<Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(y.scalar_type(), "rnn_ext::gru_backward", [&] {
    out = Loops::template gru_backward<scalar_t>(
        grad_y.contiguous(), grad_h_n.contiguous(), w_hh.contiguous(),
        h0.contiguous(), y.contiguous(), ws.contiguous(), lengths,
        contiguous(grad_ws), grad_h0);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> rnn_forward_checked(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& lengths, c10::string_view nonlinearity,
    bool training) {
  const bool relu = rnn_is_relu("rnn_ext::rnn_forward", nonlinearity);
  check_rnn_forward(gx, w_hh, b_hh, h0, lengths);
  std::tuple<Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(gx.scalar_type(), "rnn_ext::rnn_forward", [&] {
    out = Loops::template rnn_forward<scalar_t>(gx.contiguous(), w_hh.contiguous(),
                                                contiguous(b_hh), h0.contiguous(),
                                                lengths, relu, training);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> rnn_forward(const Tensor& gx,
                                               const Tensor& w_hh,
                                               const OptTensor& b_hh,
                                               const Tensor& h0,
                                               const OptTensor& lengths,
                                               c10::string_view nonlinearity) {
  return rnn_forward_checked<Loops>(gx, w_hh, b_hh, h0, lengths, nonlinearity, true);
}

template <class Loops>
std::tuple<Tensor, Tensor> rnn_infer(const Tensor& gx, const Tensor& w_hh,
                                     const OptTensor& b_hh, const Tensor& h0,
                                     const OptTensor& lengths,
                                     c10::string_view nonlinearity) {
  auto [y, h_n, ws] = rnn_forward_checked<Loops>(gx, w_hh, b_hh, h0, lengths, nonlinearity, false);
  return {y, h_n};
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws,
    c10::string_view nonlinearity, bool grad_h0) {
  const char* op = "rnn_ext::rnn_backward";
  const bool relu = rnn_is_relu(op, nonlinearity);
  check_gru_rnn_backward(op, 1, 1, grad_y, grad_h_n, w_hh, h0, y, ws, grad_ws);
  std::tuple<Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(y.scalar_type(), "rnn_ext::rnn_backward", [&] {
    out = Loops::template rnn_backward<scalar_t>(
        grad_y.contiguous(), grad_h_n.contiguous(), w_hh.contiguous(),
        h0.contiguous(), y.contiguous(), ws.contiguous(), lengths,
        contiguous(grad_ws), relu, grad_h0);
  });
  return out;
}

// ------------------------------------------------------------- pair ops --
// Both directions of a bidirectional layer in one op call: every tensor
// argument (lengths aside, which both share) stacked on a leading dimension
// of 2, direction 0 then direction 1, whose input gates the caller has
// already reversed within lengths; the outputs stacked the same way.  The
// checks are the single-direction ops' on each half (both halves have the
// same shape once the leading dimension is 2).  Loops::*_pair run both
// halves: in one launch (team) where the device can, else one after the
// other (PairOfSingles).

// Each direction through Loops' single-direction loops, one after the
// other, the results stacked.
template <class Loops>
struct PairOfSingles {
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_pair(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& w_hr,
      const Tensor& h0, const Tensor& c0, const OptTensor& lengths, bool training) {
    auto one = [&](int64_t d) {
      return Loops::template lstm_forward<T>(gx[d], w_hh[d], direction_of(b_hh, d), direction_of(w_hr, d), h0[d],
                                             c0[d], lengths, training);
    };
    return stack_results(one(0), one(1));
  }
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_pair(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
      const OptTensor& w_hr, const Tensor& h0, const Tensor& c0, const Tensor& y,
      const Tensor& ws, const Tensor& proj_in, const OptTensor& lengths,
      const OptTensor& grad_ws, bool grad_h0) {
    auto one = [&](int64_t d) {
      return Loops::template lstm_backward<T>(grad_y[d], grad_h_n[d], grad_c_n[d], w_hh[d],
                                              direction_of(w_hr, d), h0[d], c0[d], y[d], ws[d],
                                              proj_in[d], lengths, direction_of(grad_ws, d),
                                              grad_h0);
    };
    return stack_results(one(0), one(1));
  }
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> gru_forward_pair(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h0,
      const OptTensor& lengths, bool training) {
    auto one = [&](int64_t d) {
      return Loops::template gru_forward<T>(gx[d], w_hh[d], direction_of(b_hh, d), h0[d], lengths,
                                            training);
    };
    return stack_results(one(0), one(1));
  }
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward_pair(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h0,
      const Tensor& y, const Tensor& ws, const OptTensor& lengths, const OptTensor& grad_ws,
      bool grad_h0) {
    auto one = [&](int64_t d) {
      return Loops::template gru_backward<T>(grad_y[d], grad_h_n[d], w_hh[d], h0[d], y[d], ws[d],
                                             lengths, direction_of(grad_ws, d), grad_h0);
    };
    return stack_results(one(0), one(1));
  }
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> rnn_forward_pair(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h0,
      const OptTensor& lengths, bool relu, bool training) {
    auto one = [&](int64_t d) {
      return Loops::template rnn_forward<T>(gx[d], w_hh[d], direction_of(b_hh, d), h0[d], lengths, relu,
                                            training);
    };
    return stack_results(one(0), one(1));
  }
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward_pair(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h0,
      const Tensor& y, const Tensor& ws, const OptTensor& lengths, const OptTensor& grad_ws,
      bool relu, bool grad_h0) {
    auto one = [&](int64_t d) {
      return Loops::template rnn_backward<T>(grad_y[d], grad_h_n[d], w_hh[d], h0[d], y[d], ws[d],
                                             lengths, direction_of(grad_ws, d), relu, grad_h0);
    };
    return stack_results(one(0), one(1));
  }

 private:
  template <typename... Ts, size_t... I>
  static std::tuple<Ts...> stack_results(const std::tuple<Ts...>& a, const std::tuple<Ts...>& b,
                                         std::index_sequence<I...>) {
    return {at::stack({std::get<I>(a), std::get<I>(b)})...};
  }
  template <typename... Ts>
  static std::tuple<Ts...> stack_results(const std::tuple<Ts...>& a, const std::tuple<Ts...>& b) {
    return stack_results(a, b, std::index_sequence_for<Ts...>{});
  }
};

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_pair_forward_checked(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths, bool training, const char* op) {
  check_pair(op, "input_gates", gx, 4, "[2, T, B, 4H]");
  check_pair(op, "w_hh", w_hh, 3, "[2, 4H, H or P]");
  if (b_hh) check_pair(op, "b_hh", *b_hh, 2, "[2, 4H]");
  if (w_hr) check_pair(op, "w_hr", *w_hr, 3, "[2, P, H]");
  check_pair(op, "h0", h0, 3, "[2, B, H or P]");
  check_pair(op, "c0", c0, 3, "[2, B, H]");
  check_lstm_forward(gx[0], w_hh[0], direction_of(b_hh, 0), direction_of(w_hr, 0), h0[0], c0[0], lengths, op);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(gx.scalar_type(), "rnn_ext::lstm_pair_forward", [&] {
    out = Loops::template lstm_forward_pair<scalar_t>(
        gx.contiguous(), w_hh.contiguous(), contiguous(b_hh), contiguous(w_hr),
        h0.contiguous(), c0.contiguous(), lengths, training);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_pair_forward(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  return lstm_pair_forward_checked<Loops>(gx, w_hh, b_hh, w_hr, h0, c0, lengths, true,
                                          "rnn_ext::lstm_pair_forward");
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> lstm_pair_infer(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  auto [y, h_n, c_n, ws, proj_in] = lstm_pair_forward_checked<Loops>(
      gx, w_hh, b_hh, w_hr, h0, c0, lengths, false, "rnn_ext::lstm_pair_infer");
  return {y, h_n, c_n};
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_pair_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
    const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
    const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
  const char* op = "rnn_ext::lstm_pair_backward";
  check_pair(op, "grad_output", grad_y, 4, "[2, T, B, H or P]");
  check_pair(op, "grad_h_n", grad_h_n, 3, "[2, B, H or P]");
  check_pair(op, "grad_c_n", grad_c_n, 3, "[2, B, H]");
  check_pair(op, "w_hh", w_hh, 3, "[2, 4H, H or P]");
  if (w_hr) check_pair(op, "w_hr", *w_hr, 3, "[2, P, H]");
  check_pair(op, "h0", h0, 3, "[2, B, H or P]");
  check_pair(op, "c0", c0, 3, "[2, B, H]");
  check_pair(op, "output", y, 4, "[2, T, B, H or P]");
  check_pair(op, "workspace", ws, 4, "[2, T, B, 5H]");
  check_pair(op, "proj_input", proj_in, 4, "[2, T or 0, B, H]");
  if (grad_ws) check_pair(op, "grad_workspace", *grad_ws, 4, "[2, T, B, 5H]");
  check_lstm_backward(op, grad_y[0], grad_h_n[0], grad_c_n[0], w_hh[0], direction_of(w_hr, 0), h0[0],
                      c0[0], y[0], ws[0], direction_of(grad_ws, 0));
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(y.scalar_type(), "rnn_ext::lstm_pair_backward", [&] {
    out = Loops::template lstm_backward_pair<scalar_t>(
        grad_y.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(),
        w_hh.contiguous(), contiguous(w_hr), h0.contiguous(), c0.contiguous(),
        y.contiguous(), ws.contiguous(), proj_in.contiguous(), lengths,
        contiguous(grad_ws), grad_h0);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> gru_pair_forward_checked(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h0,
    const OptTensor& lengths, bool training, const char* op) {
  check_pair(op, "input_gates", gx, 4, "[2, T, B, 3H]");
  check_pair(op, "w_hh", w_hh, 3, "[2, 3H, H]");
  if (b_hh) check_pair(op, "b_hh", *b_hh, 2, "[2, 3H]");
  check_pair(op, "h0", h0, 3, "[2, B, H]");
  check_gru_forward(gx[0], w_hh[0], direction_of(b_hh, 0), h0[0], lengths, op);
  std::tuple<Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(gx.scalar_type(), "rnn_ext::gru_pair_forward", [&] {
    out = Loops::template gru_forward_pair<scalar_t>(gx.contiguous(), w_hh.contiguous(),
                                                     contiguous(b_hh), h0.contiguous(),
                                                     lengths, training);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> gru_pair_forward(const Tensor& gx, const Tensor& w_hh,
                                                    const OptTensor& b_hh, const Tensor& h0,
                                                    const OptTensor& lengths) {
  return gru_pair_forward_checked<Loops>(gx, w_hh, b_hh, h0, lengths, true,
                                         "rnn_ext::gru_pair_forward");
}

template <class Loops>
std::tuple<Tensor, Tensor> gru_pair_infer(const Tensor& gx, const Tensor& w_hh,
                                          const OptTensor& b_hh, const Tensor& h0,
                                          const OptTensor& lengths) {
  auto [y, h_n, ws] = gru_pair_forward_checked<Loops>(gx, w_hh, b_hh, h0, lengths, false,
                                                      "rnn_ext::gru_pair_infer");
  return {y, h_n};
}

inline void check_gru_rnn_pair_backward(const char* op, const Tensor& grad_y,
                                        const Tensor& grad_h_n, const Tensor& w_hh,
                                        const Tensor& h0, const Tensor& y, const Tensor& ws,
                                        const OptTensor& grad_ws) {
  check_pair(op, "grad_output", grad_y, 4, "[2, T, B, H]");
  check_pair(op, "grad_h_n", grad_h_n, 3, "[2, B, H]");
  check_pair(op, "w_hh", w_hh, 3, "[2, G*H, H]");
  check_pair(op, "h0", h0, 3, "[2, B, H]");
  check_pair(op, "output", y, 4, "[2, T, B, H]");
  check_pair(op, "workspace", ws, 4, "[2, T, B, W]");
  if (grad_ws) check_pair(op, "grad_workspace", *grad_ws, 4, "[2, T, B, W]");
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_pair_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
  const char* op = "rnn_ext::gru_pair_backward";
  check_gru_rnn_pair_backward(op, grad_y, grad_h_n, w_hh, h0, y, ws, grad_ws);
  check_gru_rnn_backward(op, 3, 4, grad_y[0], grad_h_n[0], w_hh[0], h0[0], y[0], ws[0],
                         direction_of(grad_ws, 0));
  std::tuple<Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(y.scalar_type(), "rnn_ext::gru_pair_backward", [&] {
    out = Loops::template gru_backward_pair<scalar_t>(
        grad_y.contiguous(), grad_h_n.contiguous(), w_hh.contiguous(), h0.contiguous(),
        y.contiguous(), ws.contiguous(), lengths, contiguous(grad_ws), grad_h0);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> rnn_pair_forward_checked(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h0,
    const OptTensor& lengths, c10::string_view nonlinearity, bool training, const char* op) {
  const bool relu = rnn_is_relu(op, nonlinearity);
  check_pair(op, "input_gates", gx, 4, "[2, T, B, H]");
  check_pair(op, "w_hh", w_hh, 3, "[2, H, H]");
  if (b_hh) check_pair(op, "b_hh", *b_hh, 2, "[2, H]");
  check_pair(op, "h0", h0, 3, "[2, B, H]");
  check_rnn_forward(gx[0], w_hh[0], direction_of(b_hh, 0), h0[0], lengths, op);
  std::tuple<Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(gx.scalar_type(), "rnn_ext::rnn_pair_forward", [&] {
    out = Loops::template rnn_forward_pair<scalar_t>(gx.contiguous(), w_hh.contiguous(),
                                                     contiguous(b_hh), h0.contiguous(),
                                                     lengths, relu, training);
  });
  return out;
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor> rnn_pair_forward(const Tensor& gx, const Tensor& w_hh,
                                                    const OptTensor& b_hh, const Tensor& h0,
                                                    const OptTensor& lengths,
                                                    c10::string_view nonlinearity) {
  return rnn_pair_forward_checked<Loops>(gx, w_hh, b_hh, h0, lengths, nonlinearity, true,
                                         "rnn_ext::rnn_pair_forward");
}

template <class Loops>
std::tuple<Tensor, Tensor> rnn_pair_infer(const Tensor& gx, const Tensor& w_hh,
                                          const OptTensor& b_hh, const Tensor& h0,
                                          const OptTensor& lengths,
                                          c10::string_view nonlinearity) {
  auto [y, h_n, ws] = rnn_pair_forward_checked<Loops>(gx, w_hh, b_hh, h0, lengths, nonlinearity,
                                                      false, "rnn_ext::rnn_pair_infer");
  return {y, h_n};
}

template <class Loops>
std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_pair_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws,
    c10::string_view nonlinearity, bool grad_h0) {
  const char* op = "rnn_ext::rnn_pair_backward";
  const bool relu = rnn_is_relu(op, nonlinearity);
  check_gru_rnn_pair_backward(op, grad_y, grad_h_n, w_hh, h0, y, ws, grad_ws);
  check_gru_rnn_backward(op, 1, 1, grad_y[0], grad_h_n[0], w_hh[0], h0[0], y[0], ws[0],
                         direction_of(grad_ws, 0));
  std::tuple<Tensor, Tensor, Tensor, Tensor> out;
  RNN_EXT_DISPATCH(y.scalar_type(), "rnn_ext::rnn_pair_backward", [&] {
    out = Loops::template rnn_backward_pair<scalar_t>(
        grad_y.contiguous(), grad_h_n.contiguous(), w_hh.contiguous(), h0.contiguous(),
        y.contiguous(), ws.contiguous(), lengths, contiguous(grad_ws), relu, grad_h0);
  });
  return out;
}

}  // namespace rnn_ext
