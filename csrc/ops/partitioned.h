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
//   pair_workers(B, H, G, Hin, like, backward)
//                                      the workers of one launch (team) that
//                                      runs both directions of a
//                                      bidirectional layer: a.workers =
//                                      total / 2, b.workers the rest
//   lstm_forward_pair ... rnn_backward_pair (a, b, total)
//                                      both directions in that one launch
//                                      (partition::pair_worker)
//
// The pair ops (*_pair below) take both directions stacked on a leading
// dimension of 2 and write each direction's outputs into its half of
// stacked buffers.  `together` runs them in one launch; else one after the
// other, each with the workers its single-direction call would have.
#pragma once

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "ops/buffer_pool.h"
#include "ops/sequence.h"
#include "rnn_ext/partition.h"

namespace rnn_ext {

// Where a call's large outputs live: its own buffers (pair = null), or half
// `dir` of buffers [2, ...] shared by both directions of a pair op, which
// direction 0's call allocates.  Only buffers no GEMM reads are shared: a
// half starts wherever the first half ends, and MKL's fp64 products round
// differently by their operands' alignment, so the buffers the products read
// (the outputs, which are the next step's input; the gate gradients) are
// each direction's own, as in a single-direction call, and stacked after the
// loop.  That keeps a pair bitwise the two single-direction calls.
struct Halves {
  Tensor* pair = nullptr;  // one slot per buffer of the op
  int64_t dir = 0;

  Tensor get(int slot, at::IntArrayRef shape, const at::TensorOptions& opts,
             bool reusable) const {
    if (pair == nullptr) return reusable ? reusable_empty(shape, opts) : at::empty(shape, opts);
    Tensor& both = pair[slot];
    if (!both.defined()) {
      std::vector<int64_t> stacked{2};
      stacked.insert(stacked.end(), shape.begin(), shape.end());
      both = reusable ? reusable_empty(stacked, opts) : at::empty(stacked, opts);
    }
    return both[dir];
  }
};

// Both directions' results stacked on a new leading dimension; `first`,
// where given, is the first result already stacked (written in place).
template <typename... Ts, size_t... I>
std::tuple<Ts...> stack_each(const std::tuple<Ts...>& a, const std::tuple<Ts...>& b,
                             const Tensor& first, std::index_sequence<I...>) {
  return {(I == 0 && first.defined() ? first : at::stack({std::get<I>(a), std::get<I>(b)}))...};
}
template <typename... Ts>
std::tuple<Ts...> stack_each(const std::tuple<Ts...>& a, const std::tuple<Ts...>& b,
                             const Tensor& first = Tensor()) {
  return stack_each(a, b, first, std::index_sequence_for<Ts...>{});
}

template <class Runner>
struct PartitionedLoops {
  template <typename T>
  using KT = typename Runner::template kernel_type<T>;
  template <typename T>
  using Acc = at::opmath_type<T>;

  // A layer's input and W_ih, for the input phase of partition.h (CPU, fp32
  // and fp64): the loop computes the input gates itself.
  struct LayerInput {
    const Tensor& x;  // [T, B, I]
    const Tensor& w_ih;
    const OptTensor& b_ih;
  };

  // One direction's call: its buffers (kept alive until it finishes), its
  // sequence description and its workers.  Filled in place (the sequence
  // points into the buffers and into L).
  template <typename T>
  struct LSTMForwardCall {
    Tensor y, h_n, c_n, ws, proj_in, bias, c0_acc, active, gates, proj_acc, x_gates;
    Lengths L;
    partition::LSTMForwardSeq<KT<T>, Acc<T>> s{};
    int64_t K = 1, H = 0;
  };
  template <typename T>
  struct LSTMBackwardCall {
    Tensor d_gates, dh_state, dc_state, c0_acc, d_proj, dh_pre, active, d_x;
    Tensor h0, y, proj_in;  // for the weight gradients
    Lengths L;
    partition::LSTMBackwardSeq<KT<T>, Acc<T>> s{};
    int64_t K = 1, H = 0;
  };
  template <typename T>
  struct GRUForwardCall {
    Tensor y, h_n, ws, bias, active, gates;
    Lengths L;
    partition::GRUForwardSeq<KT<T>, Acc<T>> s{};
    int64_t K = 1, H = 0;
  };
  template <typename T>
  struct GRUBackwardCall {
    Tensor d_gates, d_hh, dh_state, active, h0, y;
    Lengths L;
    partition::GRUBackwardSeq<KT<T>, Acc<T>> s{};
    int64_t K = 1, H = 0;
  };
  template <typename T>
  struct RNNForwardCall {
    Tensor y, h_n, ws, bias, active, gates;
    Lengths L;
    partition::RNNForwardSeq<KT<T>, Acc<T>> s{};
    int64_t K = 1, H = 0;
  };
  template <typename T>
  struct RNNBackwardCall {
    Tensor d_gates, dh_state, active, h0, y;
    Lengths L;
    partition::RNNBackwardSeq<KT<T>, Acc<T>> s{};
    int64_t K = 1, H = 0;
  };

  // ---------------------------------------------------------------- LSTM --
  template <typename T>
  static void lstm_forward_prepare(LSTMForwardCall<T>& c, const Tensor& gx, const Tensor& w_hh,
                                   const OptTensor& b_hh, const OptTensor& w_hr,
                                   const Tensor& h0, const Tensor& c0,
                                   const OptTensor& lengths, bool training, Halves out,
                                   const LayerInput* in = nullptr) {
    using K_ = KT<T>;
    using A = Acc<T>;
    // gx is undefined with `in`: the input phase computes the gates.
    const Tensor& like = in ? in->x : gx;
    const int64_t T_ = like.size(0), B = like.size(1), H = w_hh.size(0) / 4;
    const int64_t P = w_hr ? w_hr->size(0) : 0, Hin = P > 0 ? P : H;
    const auto opts = like.options();
    const auto acc = opts.dtype(acc_dtype(like.scalar_type()));
    // Inference keeps two steps of workspace (the cell state of step t-1 is
    // read at step t) and one of projection input.
    const int64_t ws_steps = training ? T_ : std::min<int64_t>(T_, 2);
    const int64_t proj_steps = P > 0 ? (training ? T_ : 1) : 0;
    c.y = at::empty({T_, B, Hin}, opts);
    c.ws = out.get(0, {ws_steps, B, 5 * H}, acc, true);
    c.proj_in = at::empty({proj_steps, B, H}, opts);
    c.bias = layer_bias(b_hh, in, 4 * H, opts);
    c.c0_acc = c0.to(acc.dtype()).contiguous();
    c.h_n = h0.clone(at::MemoryFormat::Contiguous);
    c.c_n = c0.clone(at::MemoryFormat::Contiguous);
    c.L = prepare_lengths(lengths, T_, B, like.device());
    c.active = Runner::active(c.L, like);
    c.K = Runner::workers(B, H, 4, Hin, like, false);
    c.H = H;
    c.gates = at::empty({B, 4 * H}, acc);
    c.proj_acc = at::empty({P > 0 ? B : 0, P}, acc);
    c.s = partition::LSTMForwardSeq<K_, A>{
        T_, B, H, P, c.K, Runner::align(H, c.K), c.L.data(), ptr<const int64_t>(c.active),
        ptr<const K_>(gx), ptr<const K_>(w_hh), ptr<const K_>(w_hr), ptr<const K_>(c.bias),
        ptr<const K_>(h0), Runner::h0_zero(h0, B * 4 * H * Hin), ptr<const A>(c.c0_acc),
        ptr<A>(c.ws), ws_steps, ptr<K_>(c.proj_in), std::max<int64_t>(proj_steps, 1),
        ptr<K_>(c.y), ptr<A>(c.gates), ptr<A>(c.proj_acc), ptr<K_>(c.h_n), ptr<K_>(c.c_n)};
    if (in) {
      c.x_gates = at::empty({B, 4 * H}, opts);
      c.s.in = partition::InputPhase<K_>{ptr<const K_>(in->x), ptr<const K_>(in->w_ih),
                                         in->x.size(2), ptr<K_>(c.x_gates)};
    }
  }

  // The bias the step adds: b_hh, or with the input phase b_ih + b_hh (the
  // loop's input gates are the bare product); zeros for neither.
  static Tensor layer_bias(const OptTensor& b_hh, const LayerInput* in, int64_t G,
                           const at::TensorOptions& opts) {
    const OptTensor none;
    const OptTensor& b_ih = in ? in->b_ih : none;
    if (b_ih && b_hh) return *b_ih + *b_hh;
    if (b_ih) return *b_ih;
    if (b_hh) return *b_hh;
    return at::zeros({G}, opts);
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
      const OptTensor& lengths, bool training) {
    LSTMForwardCall<T> c;
    lstm_forward_prepare<T>(c, gx, w_hh, b_hh, w_hr, h0, c0, lengths, training, {});
    Runner::lstm_forward(c.s, c.K);
    return {c.y, c.h_n, c.c_n, c.ws, c.proj_in};
  }

  // The layer with its input projection in the loop (the input phase):
  // lstm_forward's results for gx = x W_ih^T + b_ih.
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward(
      const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih, const Tensor& w_hh,
      const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
      const OptTensor& lengths, bool training) {
    LSTMForwardCall<T> c;
    const LayerInput in{x, w_ih, b_ih};
    lstm_forward_prepare<T>(c, Tensor(), w_hh, b_hh, w_hr, h0, c0, lengths, training, {}, &in);
    Runner::lstm_forward(c.s, c.K);
    return {c.y, c.h_n, c.c_n, c.ws, c.proj_in};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_pair(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
      const OptTensor& lengths, bool training, bool together) {
    Tensor both[1];
    LSTMForwardCall<T> a, b;
    lstm_forward_prepare<T>(a, gx[0], w_hh[0], direction_of(b_hh, 0), direction_of(w_hr, 0), h0[0], c0[0],
                            lengths, training, {both, 0});
    lstm_forward_prepare<T>(b, gx[1], w_hh[1], direction_of(b_hh, 1), direction_of(w_hr, 1), h0[1], c0[1],
                            lengths, training, {both, 1});
    const int64_t P = w_hr ? w_hr->size(1) : 0;
    run_pair(a, b, together, 4, P > 0 ? P : a.H, gx, false,
             [](const auto& s, int64_t K) { Runner::lstm_forward(s, K); },
             [](const auto& sa, const auto& sb, int64_t K) { Runner::lstm_forward_pair(sa, sb, K); });
    return {at::stack({a.y, b.y}), at::stack({a.h_n, b.h_n}), at::stack({a.c_n, b.c_n}), both[0],
            at::stack({a.proj_in, b.proj_in})};
  }

  template <typename T>
  static void lstm_backward_prepare(LSTMBackwardCall<T>& c, const Tensor& grad_y,
                                    const Tensor& grad_h_n, const Tensor& grad_c_n,
                                    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
                                    const Tensor& c0, const Tensor& y, const Tensor& ws,
                                    const Tensor& proj_in, const OptTensor& lengths,
                                    const OptTensor& grad_ws, bool grad_h0) {
    using K_ = KT<T>;
    using A = Acc<T>;
    const int64_t T_ = y.size(0), B = y.size(1), H = ws.size(2) / 5;
    const int64_t P = w_hr ? w_hr->size(0) : 0, Hin = P > 0 ? P : H;
    const auto opts = y.options();
    const auto acc = ws.scalar_type();
    c.d_gates = reusable_empty({T_, B, 4 * H}, opts);
    c.dh_state = grad_h_n.to(acc, /*non_blocking=*/false, /*copy=*/true);
    c.dc_state = grad_c_n.to(acc, /*non_blocking=*/false, /*copy=*/true);
    c.c0_acc = c0.to(acc).contiguous();
    c.d_proj = at::empty({P > 0 ? T_ : 0, B, P}, opts);
    c.dh_pre = at::empty({P > 0 ? B : 0, H}, ws.options());
    c.h0 = h0;
    c.y = y;
    c.proj_in = proj_in;
    c.L = prepare_lengths(lengths, T_, B, y.device());
    c.active = Runner::active(c.L, y);
    c.K = Runner::workers(B, H, 4, Hin, y, true);
    c.H = H;
    c.s = partition::LSTMBackwardSeq<K_, A>{
        T_, B, H, P, c.K, Runner::align(H, c.K), c.L.data(), ptr<const int64_t>(c.active),
        ptr<const K_>(w_hh), ptr<const K_>(w_hr), ptr<const A>(ws),
        ptr<const A>(c.c0_acc), ptr<const A>(grad_ws), ptr<const K_>(grad_y),
        ptr<A>(c.dh_state), ptr<A>(c.dc_state), ptr<K_>(c.d_gates), ptr<K_>(c.d_proj),
        ptr<A>(c.dh_pre), grad_h0};
  }

  // The layer's backward with the input's gradient in the loop (the input
  // phase's backward, partition.h): lstm_backward's results after d_x =
  // d_gates W_ih for x [T, B, I].
  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_ih,
      const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
      const Tensor& y, const Tensor& ws, const Tensor& proj_in, const OptTensor& lengths,
      bool grad_h0) {
    using K_ = KT<T>;
    LSTMBackwardCall<T> c;
    lstm_backward_prepare<T>(c, grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, proj_in,
                             lengths, std::nullopt, grad_h0);
    const int64_t I = w_ih.size(1);
    c.d_x = at::empty({y.size(0), y.size(1), I}, y.options());
    c.s.in = partition::InputGradPhase<K_>{ptr<const K_>(w_ih), I, ptr<K_>(c.d_x)};
    Runner::lstm_backward(c.s, c.K);
    auto [d_gates, dw_hh, db_hh, dw_hr, dh0, dc0] = lstm_backward_finish<T>(c);
    return {c.d_x, d_gates, dw_hh, db_hh, dw_hr, dh0, dc0};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_finish(
      const LSTMBackwardCall<T>& c) {
    const int64_t B = c.h0.size(0), Hin = c.h0.size(1);
    auto [dw_hh, db_hh, dw_hr] = lstm_weight_grads(c.d_gates, c.h0, c.y, c.d_proj, c.proj_in,
                                                   Runner::h0_zero(c.h0, B * 4 * c.H * Hin));
    if (!c.s.grad_h0) c.dh_state.zero_();
    return {c.d_gates, dw_hh, db_hh, dw_hr, c.dh_state.to(c.y.scalar_type()),
            c.dc_state.to(c.y.scalar_type())};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
      const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
      const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
      const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
    LSTMBackwardCall<T> c;
    lstm_backward_prepare<T>(c, grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, proj_in,
                             lengths, grad_ws, grad_h0);
    Runner::lstm_backward(c.s, c.K);
    return lstm_backward_finish<T>(c);
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_pair(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
      const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
      const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
      const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0, bool together) {
    LSTMBackwardCall<T> a, b;
    for (int64_t d = 0; d < 2; ++d)
      lstm_backward_prepare<T>(d == 0 ? a : b, grad_y[d], grad_h_n[d], grad_c_n[d], w_hh[d],
                               direction_of(w_hr, d), h0[d], c0[d], y[d], ws[d], proj_in[d], lengths,
                               direction_of(grad_ws, d), grad_h0);
    run_pair(a, b, together, 4, y.size(3), y, true,
             [](const auto& s, int64_t K) { Runner::lstm_backward(s, K); },
             [](const auto& sa, const auto& sb, int64_t K) { Runner::lstm_backward_pair(sa, sb, K); });
    // The weight gradients after the loop, per direction.
    return stack_each(lstm_backward_finish<T>(a), lstm_backward_finish<T>(b));
  }

  // ----------------------------------------------------------------- GRU --
  template <typename T>
  static void gru_forward_prepare(GRUForwardCall<T>& c, const Tensor& gx, const Tensor& w_hh,
                                  const OptTensor& b_hh, const Tensor& h0,
                                  const OptTensor& lengths, bool training, Halves out) {
    using K_ = KT<T>;
    using A = Acc<T>;
    const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2) / 3;
    const auto opts = gx.options();
    const auto acc = opts.dtype(acc_dtype(gx.scalar_type()));
    // Inference: nothing reads the workspace of an earlier step.
    const int64_t ws_steps = training ? T_ : 1;
    c.y = at::empty({T_, B, H}, opts);
    c.ws = out.get(0, {ws_steps, B, 4 * H}, acc, true);
    c.bias = b_hh ? *b_hh : at::zeros({3 * H}, opts);
    c.h_n = h0.clone(at::MemoryFormat::Contiguous);
    c.L = prepare_lengths(lengths, T_, B, gx.device());
    c.active = Runner::active(c.L, gx);
    c.K = Runner::workers(B, H, 3, H, gx, false);
    c.H = H;
    c.gates = at::empty({B, 3 * H}, acc);
    c.s = partition::GRUForwardSeq<K_, A>{
        T_, B, H, c.K, Runner::align(H, c.K), c.L.data(), ptr<const int64_t>(c.active),
        ptr<const K_>(gx), ptr<const K_>(w_hh), ptr<const K_>(c.bias), ptr<const K_>(h0),
        Runner::h0_zero(h0, B * 3 * H * H), ptr<A>(c.ws), ws_steps, ptr<K_>(c.y),
        ptr<A>(c.gates), ptr<K_>(c.h_n)};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> gru_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool training) {
    GRUForwardCall<T> c;
    gru_forward_prepare<T>(c, gx, w_hh, b_hh, h0, lengths, training, {});
    Runner::gru_forward(c.s, c.K);
    return {c.y, c.h_n, c.ws};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> gru_forward_pair(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool training, bool together) {
    Tensor both[1];
    GRUForwardCall<T> a, b;
    for (int64_t d = 0; d < 2; ++d)
      gru_forward_prepare<T>(d == 0 ? a : b, gx[d], w_hh[d], direction_of(b_hh, d), h0[d], lengths,
                             training, {both, d});
    run_pair(a, b, together, 3, a.H, gx, false,
             [](const auto& s, int64_t K) { Runner::gru_forward(s, K); },
             [](const auto& sa, const auto& sb, int64_t K) { Runner::gru_forward_pair(sa, sb, K); });
    return {at::stack({a.y, b.y}), at::stack({a.h_n, b.h_n}), both[0]};
  }

  template <typename T>
  static void gru_backward_prepare(GRUBackwardCall<T>& c, const Tensor& grad_y,
                                   const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h0,
                                   const Tensor& y, const Tensor& ws, const OptTensor& lengths,
                                   const OptTensor& grad_ws, bool grad_h0, Halves out) {
    using K_ = KT<T>;
    using A = Acc<T>;
    const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
    const auto opts = y.options();
    c.d_gates = out.get(0, {T_, B, 3 * H}, opts, true);
    c.d_hh = reusable_empty({T_, B, 3 * H}, opts);
    c.dh_state = grad_h_n.to(ws.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    c.h0 = h0;
    c.y = y;
    c.L = prepare_lengths(lengths, T_, B, y.device());
    c.active = Runner::active(c.L, y);
    c.K = Runner::workers(B, H, 3, H, y, true);
    c.H = H;
    c.s = partition::GRUBackwardSeq<K_, A>{
        T_, B, H, c.K, Runner::align(H, c.K), c.L.data(), ptr<const int64_t>(c.active),
        ptr<const K_>(w_hh), ptr<const A>(ws), ptr<const A>(grad_ws),
        ptr<const K_>(grad_y), ptr<const K_>(h0), ptr<const K_>(y), ptr<A>(c.dh_state),
        ptr<K_>(c.d_gates), ptr<K_>(c.d_hh), grad_h0};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward_finish(const GRUBackwardCall<T>& c) {
    const int64_t B = c.h0.size(0);
    auto [dw_hh, db_hh] =
        gru_weight_grads(c.d_hh, c.h0, c.y, Runner::h0_zero(c.h0, B * 3 * c.H * c.H));
    if (!c.s.grad_h0) c.dh_state.zero_();
    return {c.d_gates, dw_hh, db_hh, c.dh_state.to(c.y.scalar_type())};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
      const Tensor& h0, const Tensor& y, const Tensor& ws,
      const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
    GRUBackwardCall<T> c;
    gru_backward_prepare<T>(c, grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, grad_h0, {});
    Runner::gru_backward(c.s, c.K);
    return gru_backward_finish<T>(c);
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward_pair(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
      const Tensor& h0, const Tensor& y, const Tensor& ws,
      const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0, bool together) {
    Tensor both[1];
    GRUBackwardCall<T> a, b;
    for (int64_t d = 0; d < 2; ++d)
      gru_backward_prepare<T>(d == 0 ? a : b, grad_y[d], grad_h_n[d], w_hh[d], h0[d], y[d],
                              ws[d], lengths, direction_of(grad_ws, d), grad_h0, {both, d});
    run_pair(a, b, together, 3, a.H, y, true,
             [](const auto& s, int64_t K) { Runner::gru_backward(s, K); },
             [](const auto& sa, const auto& sb, int64_t K) { Runner::gru_backward_pair(sa, sb, K); });
    return stack_each(gru_backward_finish<T>(a), gru_backward_finish<T>(b), both[0]);
  }

  // ----------------------------------------------------------------- RNN --
  template <typename T>
  static void rnn_forward_prepare(RNNForwardCall<T>& c, const Tensor& gx, const Tensor& w_hh,
                                  const OptTensor& b_hh, const Tensor& h0,
                                  const OptTensor& lengths, bool relu, bool training,
                                  Halves out) {
    using K_ = KT<T>;
    using A = Acc<T>;
    const int64_t T_ = gx.size(0), B = gx.size(1), H = gx.size(2);
    const auto opts = gx.options();
    const auto acc = opts.dtype(acc_dtype(gx.scalar_type()));
    const int64_t ws_steps = training ? T_ : 1;
    c.y = at::empty({T_, B, H}, opts);
    c.ws = out.get(0, {ws_steps, B, H}, acc, true);
    c.bias = b_hh ? *b_hh : at::zeros({H}, opts);
    c.h_n = h0.clone(at::MemoryFormat::Contiguous);
    c.L = prepare_lengths(lengths, T_, B, gx.device());
    c.active = Runner::active(c.L, gx);
    c.K = Runner::workers(B, H, 1, H, gx, false);
    c.H = H;
    c.gates = at::empty({B, H}, acc);
    c.s = partition::RNNForwardSeq<K_, A>{
        T_, B, H, c.K, Runner::align(H, c.K), c.L.data(), ptr<const int64_t>(c.active),
        ptr<const K_>(gx), ptr<const K_>(w_hh), ptr<const K_>(c.bias), ptr<const K_>(h0),
        Runner::h0_zero(h0, B * H * H), ptr<A>(c.ws), ws_steps, ptr<K_>(c.y), ptr<A>(c.gates),
        ptr<K_>(c.h_n), relu};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> rnn_forward(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool relu, bool training) {
    RNNForwardCall<T> c;
    rnn_forward_prepare<T>(c, gx, w_hh, b_hh, h0, lengths, relu, training, {});
    Runner::rnn_forward(c.s, c.K);
    return {c.y, c.h_n, c.ws};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor> rnn_forward_pair(
      const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
      const Tensor& h0, const OptTensor& lengths, bool relu, bool training, bool together) {
    Tensor both[1];
    RNNForwardCall<T> a, b;
    for (int64_t d = 0; d < 2; ++d)
      rnn_forward_prepare<T>(d == 0 ? a : b, gx[d], w_hh[d], direction_of(b_hh, d), h0[d], lengths,
                             relu, training, {both, d});
    run_pair(a, b, together, 1, a.H, gx, false,
             [](const auto& s, int64_t K) { Runner::rnn_forward(s, K); },
             [](const auto& sa, const auto& sb, int64_t K) { Runner::rnn_forward_pair(sa, sb, K); });
    return {at::stack({a.y, b.y}), at::stack({a.h_n, b.h_n}), both[0]};
  }

  template <typename T>
  static void rnn_backward_prepare(RNNBackwardCall<T>& c, const Tensor& grad_y,
                                   const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h0,
                                   const Tensor& y, const Tensor& ws, const OptTensor& lengths,
                                   const OptTensor& grad_ws, bool relu, bool grad_h0) {
    using K_ = KT<T>;
    using A = Acc<T>;
    const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2);
    c.d_gates = reusable_empty({T_, B, H}, y.options());
    c.dh_state = grad_h_n.to(ws.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    c.h0 = h0;
    c.y = y;
    c.L = prepare_lengths(lengths, T_, B, y.device());
    c.active = Runner::active(c.L, y);
    c.K = Runner::workers(B, H, 1, H, y, true);
    c.H = H;
    c.s = partition::RNNBackwardSeq<K_, A>{
        T_, B, H, c.K, Runner::align(H, c.K), c.L.data(), ptr<const int64_t>(c.active),
        ptr<const K_>(w_hh), ptr<const A>(ws), ptr<const A>(grad_ws),
        ptr<const K_>(grad_y), ptr<A>(c.dh_state), ptr<K_>(c.d_gates), relu, grad_h0};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward_finish(const RNNBackwardCall<T>& c) {
    // One gradient serves the input gates and the recurrent product.
    const int64_t B = c.h0.size(0);
    auto [dw_hh, db_hh] =
        gru_weight_grads(c.d_gates, c.h0, c.y, Runner::h0_zero(c.h0, B * 1 * c.H * c.H));
    if (!c.s.grad_h0) c.dh_state.zero_();
    return {c.d_gates, dw_hh, db_hh, c.dh_state.to(c.y.scalar_type())};
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
      const Tensor& h0, const Tensor& y, const Tensor& ws,
      const OptTensor& lengths, const OptTensor& grad_ws, bool relu, bool grad_h0) {
    RNNBackwardCall<T> c;
    rnn_backward_prepare<T>(c, grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, relu, grad_h0);
    Runner::rnn_backward(c.s, c.K);
    return rnn_backward_finish<T>(c);
  }

  template <typename T>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward_pair(
      const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
      const Tensor& h0, const Tensor& y, const Tensor& ws,
      const OptTensor& lengths, const OptTensor& grad_ws, bool relu, bool grad_h0,
      bool together) {
    RNNBackwardCall<T> a, b;
    for (int64_t d = 0; d < 2; ++d)
      rnn_backward_prepare<T>(d == 0 ? a : b, grad_y[d], grad_h_n[d], w_hh[d], h0[d], y[d],
                              ws[d], lengths, direction_of(grad_ws, d), relu, grad_h0);
    run_pair(a, b, together, 1, a.H, y, true,
             [](const auto& s, int64_t K) { Runner::rnn_backward(s, K); },
             [](const auto& sa, const auto& sb, int64_t K) { Runner::rnn_backward_pair(sa, sb, K); });
    return stack_each(rnn_backward_finish<T>(a), rnn_backward_finish<T>(b));
  }

 private:
  // Both prepared directions: in one launch (team) of Runner::pair_workers,
  // half the workers each (the slices re-cut for that count), or one after
  // the other with the workers each was prepared with.
  template <class Call, class One, class Both>
  static void run_pair(Call& a, Call& b, bool together, int64_t G, int64_t Hin,
                       const Tensor& like, bool backward, One one, Both both) {
    TORCH_CHECK(partition::same_barriers(a.s, b.s),
                "rnn_ext: the two directions of a pair op must have the same steps and "
                "the same projection");
    if (!together) {
      one(a.s, a.K);
      one(b.s, b.K);
      return;
    }
    const int64_t total = Runner::pair_workers(a.s.B, a.H, G, Hin, like, backward);
    const int64_t ka = std::max<int64_t>(total / 2, 1), kb = std::max<int64_t>(total - total / 2, 1);
    a.s.workers = ka;
    a.s.align = Runner::align(a.H, ka);
    b.s.workers = kb;
    b.s.align = Runner::align(b.H, kb);
    both(a.s, b.s, total);
  }
};

}  // namespace rnn_ext
