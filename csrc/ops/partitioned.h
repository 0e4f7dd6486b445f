// The partitioned loop (rnn_ext/partition.h) as the ops' entry points call
// it (Loops of sequence.h): allocate every buffer, fill the sequence
// descriptions, let the device's `Runner` run the workers, and compute the
// weight gradients after the loop.  Nothing between the allocations and
// the weight gradients calls ATen.
//
// A Runner provides
//   kernel_type<T>                     the kernels' storage type for ATen's T
//   workers(B, H, G, Hin, like, backward)
//                                      how many workers for this layer's
//                                      forward or backward loop
//   align(H, workers)                  the granularity of the unit slices
//   h0_zero(h0, macs)                  whether step 0 may skip its product
//                                      (macs: its multiply-adds)
//   active(L, like)                    per-step active rows on the device, or undefined
//   lstm_forward / lstm_backward / gru_forward / gru_backward /
//   rnn_forward / rnn_backward (seq, workers)
#pragma once

#include <algorithm>

#include "ops/buffer_pool.h"
#include "ops/sequence.h"
#include "rnn_ext/partition.h"

namespace rnn_ext {

template <class Runner>
struct PartitionedLoops {
  template <typename T>
  using KT = typename Runner::template kernel_type<T>;

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
      const OptTensor& lengths, bool training) {
    using K_ = KT<T>;
    using Acc = at::opmath_type<T>;
    const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2) / 4;
    const int64_t P = w_hr ? w_hr->size(0) : 0, Hin = P > 0 ? P : H;
    const auto opts = gx.options();
    const auto acc = opts.dtype(acc_dtype(gx.scalar_type()));
    // Inference keeps two steps of workspace (the cell state of step t-1 is
    // read at step t) and one of projection input.
    const int64_t ws_steps = training ? T_ : std::min<int64_t>(T_, 2);
    const int64_t proj_steps = P > 0 ? (training ? T_ : 1) : 0;
    Tensor y = at::empty({T_, B, Hin}, opts);
    Tensor ws = reusable_empty({ws_steps, B, 5 * H}, acc);
    Tensor proj_in = at::empty({proj_steps, B, H}, opts);
    const Tensor bias = b_hh ? *b_hh : at::zeros({4 * H}, opts);
    const Tensor c0_acc = c0.to(acc.dtype()).contiguous();
    Tensor h_n = h0.clone(at::MemoryFormat::Contiguous);
    Tensor c_n = c0.clone(at::MemoryFormat::Contiguous);
    const Lengths L = prepare_lengths(lengths, T_, B, gx.device());
    const Tensor active = Runner::active(L, gx);
    const int64_t K = Runner::workers(B, H, 4, Hin, gx, false);
    Tensor gates = at::empty({B, 4 * H}, acc);
    Tensor proj_acc = at::empty({P > 0 ? B : 0, P}, acc);
    partition::LSTMForwardSeq<K_, Acc> s{
        T_, B, H, P, K, Runner::align(H, K), L.data(), ptr<const int64_t>(active),
        ptr<const K_>(gx), ptr<const K_>(w_hh), ptr<const K_>(w_hr), ptr<const K_>(bias),
        ptr<const K_>(h0), Runner::h0_zero(h0, B * 4 * H * Hin), ptr<const Acc>(c0_acc), ptr<Acc>(ws),
        ws_steps, ptr<K_>(proj_in), std::max<int64_t>(proj_steps, 1), ptr<K_>(y),
        ptr<Acc>(gates), ptr<Acc>(proj_acc), ptr<K_>(h_n), ptr<K_>(c_n)};
    Runner::lstm_forward(s, K);
    return {y, h_n, c_n, ws, proj_in};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
      const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
      const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
      const OptTensor& lengths, const OptTensor& grad_ws) {
    using K_ = KT<T>;
    using Acc = at::opmath_type<T>;
    const int64_t T_ = y.size(0), B = y.size(1), H = ws.size(2) / 5;
    const int64_t P = w_hr ? w_hr->size(0) : 0, Hin = P > 0 ? P : H;
    const auto opts = y.options();
    const auto acc = ws.scalar_type();
    Tensor d_gates = reusable_empty({T_, B, 4 * H}, opts);
    Tensor dh_state = grad_h_n.to(acc, /*non_blocking=*/false, /*copy=*/true);
    Tensor dc_state = grad_c_n.to(acc, /*non_blocking=*/false, /*copy=*/true);
    const Tensor c0_acc = c0.to(acc).contiguous();
    Tensor d_proj = at::empty({P > 0 ? T_ : 0, B, P}, opts);
    Tensor dh_pre = at::empty({P > 0 ? B : 0, H}, ws.options());
    const Lengths L = prepare_lengths(lengths, T_, B, y.device());
    const Tensor active = Runner::active(L, y);
    const int64_t K = Runner::workers(B, H, 4, Hin, y, true);
    partition::LSTMBackwardSeq<K_, Acc> s{
        T_, B, H, P, K, Runner::align(H, K), L.data(), ptr<const int64_t>(active),
        ptr<const K_>(w_hh), ptr<const K_>(w_hr), ptr<const Acc>(ws),
        ptr<const Acc>(c0_acc), ptr<const Acc>(grad_ws), ptr<const K_>(grad_y),
        ptr<Acc>(dh_state), ptr<Acc>(dc_state), ptr<K_>(d_gates), ptr<K_>(d_proj),
        ptr<Acc>(dh_pre)};
    Runner::lstm_backward(s, K);
    auto [dw_hh, db_hh, dw_hr] = lstm_weight_grads(d_gates, h0, y, d_proj, proj_in);
    return {d_gates, dw_hh, db_hh, dw_hr, dh_state.to(y.scalar_type()),
            dc_state.to(y.scalar_type())};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> gru_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool training) {
    using K_ = KT<T>;
    using Acc = at::opmath_type<T>;
    const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2) / 3;
    const auto opts = gx.options();
    const auto acc = opts.dtype(acc_dtype(gx.scalar_type()));
    // Inference: nothing reads the workspace of an earlier step.
    const int64_t ws_steps = training ? T_ : 1;
    Tensor y = at::empty({T_, B, H}, opts);
    Tensor ws = reusable_empty({ws_steps, B, 4 * H}, acc);
    const Tensor bias = b_hh ? *b_hh : at::zeros({3 * H}, opts);
    Tensor h_n = h0.clone(at::MemoryFormat::Contiguous);
    const Lengths L = prepare_lengths(lengths, T_, B, gx.device());
    const Tensor active = Runner::active(L, gx);
    const int64_t K = Runner::workers(B, H, 3, H, gx, false);
    Tensor gates = at::empty({B, 3 * H}, acc);
    partition::GRUForwardSeq<K_, Acc> s{
        T_, B, H, K, Runner::align(H, K), L.data(), ptr<const int64_t>(active),
        ptr<const K_>(gx), ptr<const K_>(w_hh), ptr<const K_>(bias), ptr<const K_>(h0),
        Runner::h0_zero(h0, B * 3 * H * H), ptr<Acc>(ws), ws_steps, ptr<K_>(y), ptr<Acc>(gates),
        ptr<K_>(h_n)};
    Runner::gru_forward(s, K);
    return {y, h_n, ws};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
      const Tensor& h0, const Tensor& y, const Tensor& ws,
      const OptTensor& lengths, const OptTensor& grad_ws) {
    using K_ = KT<T>;
    using Acc = at::opmath_type<T>;
    const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
    const auto opts = y.options();
    Tensor d_gates = reusable_empty({T_, B, 3 * H}, opts);
    Tensor d_hh = reusable_empty({T_, B, 3 * H}, opts);
    Tensor dh_state = grad_h_n.to(ws.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    const Lengths L = prepare_lengths(lengths, T_, B, y.device());
    const Tensor active = Runner::active(L, y);
    const int64_t K = Runner::workers(B, H, 3, H, y, true);
    partition::GRUBackwardSeq<K_, Acc> s{
        T_, B, H, K, Runner::align(H, K), L.data(), ptr<const int64_t>(active),
        ptr<const K_>(w_hh), ptr<const Acc>(ws), ptr<const Acc>(grad_ws),
        ptr<const K_>(grad_y), ptr<const K_>(h0), ptr<const K_>(y), ptr<Acc>(dh_state),
        ptr<K_>(d_gates), ptr<K_>(d_hh)};
    Runner::gru_backward(s, K);
    auto [dw_hh, db_hh] = gru_weight_grads(d_hh, h0, y);
    return {d_gates, dw_hh, db_hh, dh_state.to(y.scalar_type())};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> rnn_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool relu, bool training) {
    using K_ = KT<T>;
    using Acc = at::opmath_type<T>;
    const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2);
    const auto opts = gx.options();
    const auto acc = opts.dtype(acc_dtype(gx.scalar_type()));
    const int64_t ws_steps = training ? T_ : 1;
    Tensor y = at::empty({T_, B, H}, opts);
    Tensor ws = reusable_empty({ws_steps, B, H}, acc);
    const Tensor bias = b_hh ? *b_hh : at::zeros({H}, opts);
    Tensor h_n = h0.clone(at::MemoryFormat::Contiguous);
    const Lengths L = prepare_lengths(lengths, T_, B, gx.device());
    const Tensor active = Runner::active(L, gx);
    const int64_t K = Runner::workers(B, H, 1, H, gx, false);
    Tensor gates = at::empty({B, H}, acc);
    partition::RNNForwardSeq<K_, Acc> s{
        T_, B, H, K, Runner::align(H, K), L.data(), ptr<const int64_t>(active),
        ptr<const K_>(gx), ptr<const K_>(w_hh), ptr<const K_>(bias), ptr<const K_>(h0),
        Runner::h0_zero(h0, B * H * H), ptr<Acc>(ws), ws_steps, ptr<K_>(y), ptr<Acc>(gates),
        ptr<K_>(h_n), relu};
    Runner::rnn_forward(s, K);
    return {y, h_n, ws};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
      const Tensor& h0, const Tensor& y, const Tensor& ws,
      const OptTensor& lengths, const OptTensor& grad_ws, bool relu) {
    using K_ = KT<T>;
    using Acc = at::opmath_type<T>;
    const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
    Tensor d_gates = reusable_empty({T_, B, H}, y.options());
    Tensor dh_state = grad_h_n.to(ws.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    const Lengths L = prepare_lengths(lengths, T_, B, y.device());
    const Tensor active = Runner::active(L, y);
    const int64_t K = Runner::workers(B, H, 1, H, y, true);
    partition::RNNBackwardSeq<K_, Acc> s{
        T_, B, H, K, Runner::align(H, K), L.data(), ptr<const int64_t>(active),
        ptr<const K_>(w_hh), ptr<const Acc>(ws), ptr<const Acc>(grad_ws),
        ptr<const K_>(grad_y), ptr<Acc>(dh_state), ptr<K_>(d_gates), relu};
    Runner::rnn_backward(s, K);
    // One gradient serves the input gates and the recurrent product.
    auto [dw_hh, db_hh] = gru_weight_grads(d_gates, h0, y);
    return {d_gates, dw_hh, db_hh, dh_state.to(y.scalar_type())};
  }
};

}  // namespace rnn_ext
