// The pointwise part of one time step, for one (batch row, hidden unit)
// element.  Parameter structs hold raw pointers and sizes only, so the same
// element functions run in the CPU loops (cpu/rnn_cpu.h) and in the CUDA
// threads (cuda/rnn_cuda.cu).
//
// Layout conventions (all row-major, contiguous):
//   LSTM workspace per step: [B, 5H] = i, f, g, o, c   (activated gates, cell)
//   GRU  workspace per step: [B, 4H] = r, z, n, hn     (hn = W_hn h + b_hn)
//   RNN  workspace per step: [B, H]  = h               (the activated output)
// The workspace is in the accumulation type Acc (fp32 for fp16/bf16), so the
// LSTM cell state never round-trips through a low-precision format.
//
// Variable lengths: a row is active at step t when t < lengths[b].  An
// inactive row writes zeros to its outputs and workspace and leaves every
// carried state alone, so a finished sequence keeps its state.
#pragma once

#include <stdint.h>

#include "rnn_ext/gate_math.h"

namespace rnn_ext {

RNN_HD bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// Conversions between storage and accumulation types.  A plain cast works
// for float, double and c10's Half/BFloat16; the CUDA build specialises
// Convert for __half and __nv_bfloat16 (cuda/half_convert.cuh), because
// PyTorch compiles CUDA with the implicit half conversions switched off.
template <typename To, typename From>
struct Convert {
  RNN_HD static To run(From x) { return static_cast<To>(x); }
};

template <typename Acc, typename T>
RNN_HD Acc to_acc(T x) { return Convert<Acc, T>::run(x); }

template <typename T, typename Acc>
RNN_HD T from_acc(Acc x) { return Convert<T, Acc>::run(x); }

template <typename T>
RNN_HD T zero() { return from_acc<T>(0.0f); }

// Each step kind has an `_active` element (a row still running), an
// `_inactive` one (a row past its end), and `_element`, which picks one of
// the two (the CUDA threads call it).  The CPU loops test the row once and
// run the chosen one over the whole row, which keeps their inner loop free
// of branches so it vectorises.

// ------------------------------------------------------------ LSTM fwd ----
template <typename T, typename Acc>
struct LSTMForwardStep {
  int64_t B, H, t;
  const int64_t* lengths;  // [B] or null
  const T* gx;             // input gates at step t [B, 4H]
  const Acc* gh;           // h_{t-1} W_hh^T, in Acc (layout: gh_ld below)
  const T* b_hh;           // [4H] (zeros for a layer without bias)
  const Acc* c_prev;       // c_{t-1}: c0 (fp32 copy) or the cell column of
  int64_t c_prev_stride;   //   the previous workspace; row stride
  Acc* ws;                 // workspace of step t
  T* h_out;                // [B, H]: output (no projection) or projection input
  // Layout of gh: element (b, gate k, unit j) at b*gh_ld + k*gh_gs + j - gh_j0.
  // The defaults are the whole [B, 4H] product; a worker of the partitioned
  // loop (partition.h) passes its own [B, 4, units] block instead.
  int64_t gh_ld = 4 * H, gh_gs = H, gh_j0 = 0;
  // The same for gx: the whole [B, 4H] step of the input gates, or a
  // worker's block where the partitioned loop computes them (its input phase).
  int64_t gx_ld = 4 * H, gx_gs = H, gx_j0 = 0;
};

template <typename T, typename Acc>
RNN_HD void lstm_forward_active(const LSTMForwardStep<T, Acc>& p, int64_t b,
                                int64_t j) {
  const int64_t H = p.H;
  const T* gx = p.gx + b * p.gx_ld + (j - p.gx_j0);
  const Acc* gh = p.gh + b * p.gh_ld + (j - p.gh_j0);
  Acc pre[4];
  for (int k = 0; k < 4; ++k) {
    pre[k] = to_acc<Acc>(gx[k * p.gx_gs]) + gh[k * p.gh_gs] +
             to_acc<Acc>(p.b_hh[k * H + j]);
  }
  const auto r = gates::lstm_forward(pre[0], pre[1], pre[2], pre[3],
                                     p.c_prev[b * p.c_prev_stride + j]);
  Acc* ws = p.ws + b * 5 * H;
  ws[j] = r.i;
  ws[H + j] = r.f;
  ws[2 * H + j] = r.g;
  ws[3 * H + j] = r.o;
  ws[4 * H + j] = r.c;
  p.h_out[b * H + j] = from_acc<T>(r.h);
}

template <typename T, typename Acc>
RNN_HD void lstm_forward_inactive(const LSTMForwardStep<T, Acc>& p, int64_t b,
                                  int64_t j) {
  const int64_t H = p.H;
  for (int k = 0; k < 5; ++k) p.ws[b * 5 * H + k * H + j] = Acc(0);
  p.h_out[b * H + j] = zero<T>();
}

// ------------------------------------------------------------ LSTM bwd ----
template <typename T, typename Acc>
struct LSTMBackwardStep {
  int64_t B, H, t;
  const int64_t* lengths;
  const Acc* ws;           // workspace of step t
  const Acc* c_prev;       // c_{t-1}, as in LSTMForwardStep
  int64_t c_prev_stride;
  const Acc* grad_ws;      // gradient on the workspace at step t, or null
  // Where dh comes from.  With a projection: dh_direct [B, H] (already
  // multiplied by W_hr).  Without: dh_state [B, H] (carried from the step
  // after, cleared here once consumed) plus grad_y [B, H].  What is carried
  // from step to step is in Acc, so fp16/bf16 do not round it every step.
  const Acc* dh_direct;
  Acc* dh_state;
  const T* grad_y;
  Acc* dc_state;           // [B, H] gradient of the carried cell state
  T* grad_gates;           // [B, 4H] gradient of the pre-activations at step t
};

// kGradWs: p.grad_ws is set; kDirect: p.dh_direct is set.  Compile-time
// flags, so that the CPU loop over a row has no branch in it.
template <bool kGradWs, bool kDirect, typename T, typename Acc>
RNN_HD void lstm_backward_active(const LSTMBackwardStep<T, Acc>& p, int64_t b,
                                 int64_t j) {
  const int64_t H = p.H;
  const int64_t e = b * H + j;
  Acc dh;
  if constexpr (kDirect) {
    dh = p.dh_direct[e];
  } else {
    dh = p.dh_state[e] + to_acc<Acc>(p.grad_y[e]);
    p.dh_state[e] = Acc(0);
  }
  const Acc* ws = p.ws + b * 5 * H;
  Acc d_ws[5] = {0, 0, 0, 0, 0};
  if constexpr (kGradWs)
    for (int k = 0; k < 5; ++k) d_ws[k] = p.grad_ws[b * 5 * H + k * H + j];
  const auto r = gates::lstm_backward(
      ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j], ws[4 * H + j],
      p.c_prev[b * p.c_prev_stride + j], dh, p.dc_state[e], d_ws[0], d_ws[1],
      d_ws[2], d_ws[3], d_ws[4]);
  T* gg = p.grad_gates + b * 4 * H;
  gg[j] = from_acc<T>(r.pre_i);
  gg[H + j] = from_acc<T>(r.pre_f);
  gg[2 * H + j] = from_acc<T>(r.pre_g);
  gg[3 * H + j] = from_acc<T>(r.pre_o);
  p.dc_state[e] = r.c_prev;
}

template <typename T, typename Acc>
RNN_HD void lstm_backward_inactive(const LSTMBackwardStep<T, Acc>& p,
                                   int64_t b, int64_t j) {
  for (int k = 0; k < 4; ++k) p.grad_gates[b * 4 * p.H + k * p.H + j] = zero<T>();
}

// With a projection, the gradient of the projected output at step t is
// gathered first (dh_state + grad_y for active rows, 0 otherwise), so that
// it can be multiplied by W_hr and saved for dW_hr.
template <typename T, typename Acc>
struct ProjGradStep {
  int64_t B, P, t;
  const int64_t* lengths;
  Acc* dh_state;     // [B, P]
  const T* grad_y;   // [B, P]
  T* grad_proj;      // [B, P] out
};

template <typename T, typename Acc>
RNN_HD void proj_grad_active(const ProjGradStep<T, Acc>& p, int64_t b,
                             int64_t k) {
  const int64_t e = b * p.P + k;
  p.grad_proj[e] = from_acc<T>(p.dh_state[e] + to_acc<Acc>(p.grad_y[e]));
  p.dh_state[e] = Acc(0);
}

template <typename T, typename Acc>
RNN_HD void proj_grad_inactive(const ProjGradStep<T, Acc>& p, int64_t b,
                               int64_t k) {
  p.grad_proj[b * p.P + k] = zero<T>();
}

// ------------------------------------------------------------- GRU fwd ----
template <typename T, typename Acc>
struct GRUForwardStep {
  int64_t B, H, t;
  const int64_t* lengths;
  const T* gx;      // [B, 3H]
  const Acc* gh;    // h_{t-1} W_hh^T, in Acc; layout as in LSTMForwardStep
  const T* b_hh;    // [3H] (zeros for a layer without bias)
  const T* h_prev;  // [B, H]: h0 at t == 0, else output of step t-1
  Acc* ws;          // [B, 4H]
  T* y;             // [B, H]
  int64_t gh_ld = 3 * H, gh_gs = H, gh_j0 = 0;
};

template <typename T, typename Acc>
RNN_HD void gru_forward_inactive(const GRUForwardStep<T, Acc>& p, int64_t b,
                                 int64_t j) {
  for (int k = 0; k < 4; ++k) p.ws[b * 4 * p.H + k * p.H + j] = Acc(0);
  p.y[b * p.H + j] = zero<T>();
}

template <typename T, typename Acc>
RNN_HD void gru_forward_active(const GRUForwardStep<T, Acc>& p, int64_t b,
                               int64_t j) {
  const int64_t H = p.H;
  Acc* ws = p.ws + b * 4 * H;
  const T* gx = p.gx + b * 3 * H;
  const Acc* gh = p.gh + b * p.gh_ld + (j - p.gh_j0);
  Acc hh[3];
  for (int k = 0; k < 3; ++k) {
    hh[k] = gh[k * p.gh_gs] + to_acc<Acc>(p.b_hh[k * H + j]);
  }
  const auto r = gates::gru_forward(to_acc<Acc>(gx[j]) + hh[0],
                                    to_acc<Acc>(gx[H + j]) + hh[1],
                                    to_acc<Acc>(gx[2 * H + j]), hh[2],
                                    to_acc<Acc>(p.h_prev[b * H + j]));
  ws[j] = r.r;
  ws[H + j] = r.z;
  ws[2 * H + j] = r.n;
  ws[3 * H + j] = hh[2];
  p.y[b * H + j] = from_acc<T>(r.h);
}

// ------------------------------------------------------------- GRU bwd ----
template <typename T, typename Acc>
struct GRUBackwardStep {
  int64_t B, H, t;
  const int64_t* lengths;
  const Acc* ws;       // [B, 4H] at step t
  const T* h_prev;     // [B, H]
  const Acc* grad_ws;  // [B, 4H] or null
  Acc* dh_state;       // [B, H] in: carried gradient; out: direct part dh*z
  const T* grad_y;     // [B, H]
  T* grad_gates;       // [B, 3H] gradient of the input gates
  T* grad_hh;          // [B, 3H] gradient of h W_hh^T + b_hh
};

template <typename T, typename Acc>
RNN_HD void gru_backward_inactive(const GRUBackwardStep<T, Acc>& p, int64_t b,
                                  int64_t j) {
  for (int k = 0; k < 3; ++k)
    p.grad_gates[b * 3 * p.H + k * p.H + j] = p.grad_hh[b * 3 * p.H + k * p.H + j] = zero<T>();
}

template <bool kGradWs, typename T, typename Acc>
RNN_HD void gru_backward_active(const GRUBackwardStep<T, Acc>& p, int64_t b,
                                int64_t j) {
  const int64_t H = p.H;
  T* gx = p.grad_gates + b * 3 * H;
  T* gh = p.grad_hh + b * 3 * H;
  const int64_t e = b * H + j;
  const Acc dh = p.dh_state[e] + to_acc<Acc>(p.grad_y[e]);
  const Acc* ws = p.ws + b * 4 * H;
  Acc d_ws[4] = {0, 0, 0, 0};
  if constexpr (kGradWs)
    for (int k = 0; k < 4; ++k) d_ws[k] = p.grad_ws[b * 4 * H + k * H + j];
  const auto r = gates::gru_backward(ws[j], ws[H + j], ws[2 * H + j],
                                     ws[3 * H + j], to_acc<Acc>(p.h_prev[e]),
                                     dh, d_ws[0], d_ws[1], d_ws[2], d_ws[3]);
  gx[j] = gh[j] = from_acc<T>(r.pre_r);
  gx[H + j] = gh[H + j] = from_acc<T>(r.pre_z);
  gx[2 * H + j] = from_acc<T>(r.x_n);
  gh[2 * H + j] = from_acc<T>(r.hn);
  p.dh_state[e] = r.h_prev;
}

// ------------------------------------------------------------- RNN fwd ----
// The Elman cell of nn.RNN.  Same shape as GRUForwardStep; h_prev is not
// read by the math (the product gh already holds it) but is set like GRU's,
// so that an executor fills both kinds the same way.
template <typename T, typename Acc>
struct RNNForwardStep {
  int64_t B, H, t;
  const int64_t* lengths;
  const T* gx;      // [B, H]
  const Acc* gh;    // h_{t-1} W_hh^T, in Acc; layout as in LSTMForwardStep
  const T* b_hh;    // [H] (zeros for a layer without bias)
  const T* h_prev;  // [B, H]: h0 at t == 0, else output of step t-1
  Acc* ws;          // [B, H]: the activated output, kept in Acc for backward
  T* y;             // [B, H]
  bool relu;        // nonlinearity: relu (true) or tanh (false)
  int64_t gh_ld = H, gh_gs = H, gh_j0 = 0;
};

template <typename T, typename Acc>
RNN_HD void rnn_forward_inactive(const RNNForwardStep<T, Acc>& p, int64_t b,
                                 int64_t j) {
  p.ws[b * p.H + j] = Acc(0);
  p.y[b * p.H + j] = zero<T>();
}

template <bool kReLU, typename T, typename Acc>
RNN_HD void rnn_forward_active(const RNNForwardStep<T, Acc>& p, int64_t b,
                               int64_t j) {
  const int64_t e = b * p.H + j;
  const Acc h = gates::rnn_forward<kReLU>(to_acc<Acc>(p.gx[e]) + p.gh[b * p.gh_ld + j - p.gh_j0] +
                                          to_acc<Acc>(p.b_hh[j]));
  p.ws[e] = h;
  p.y[e] = from_acc<T>(h);
}

// ------------------------------------------------------------- RNN bwd ----
// The pre-activation is x W_ih^T + b_ih + h W_hh^T + b_hh, so one gradient
// serves the input gates and the recurrent product (GRU needs two).
template <typename T, typename Acc>
struct RNNBackwardStep {
  int64_t B, H, t;
  const int64_t* lengths;
  const Acc* ws;       // [B, H] at step t
  const Acc* grad_ws;  // [B, H] or null
  Acc* dh_state;       // [B, H] in: carried gradient; cleared once consumed
  const T* grad_y;     // [B, H]
  T* grad_gates;       // [B, H] gradient of the pre-activation
  bool relu;
};

template <typename T, typename Acc>
RNN_HD void rnn_backward_inactive(const RNNBackwardStep<T, Acc>& p, int64_t b,
                                  int64_t j) {
  p.grad_gates[b * p.H + j] = zero<T>();
}

template <bool kReLU, bool kGradWs, typename T, typename Acc>
RNN_HD void rnn_backward_active(const RNNBackwardStep<T, Acc>& p, int64_t b,
                                int64_t j) {
  const int64_t e = b * p.H + j;
  Acc dh = p.dh_state[e] + to_acc<Acc>(p.grad_y[e]);
  if constexpr (kGradWs) dh += p.grad_ws[e];
  p.grad_gates[e] = from_acc<T>(gates::rnn_backward<kReLU>(p.ws[e], dh));
  p.dh_state[e] = Acc(0);
}

// The element each CUDA thread runs: active or inactive, by its row.
#define RNN_EXT_ELEMENT(name, Step, active)                                \
  template <typename T, typename Acc>                                      \
  RNN_HD void name##_element(const Step<T, Acc>& p, int64_t b, int64_t j) { \
    if (row_active(p.lengths, b, p.t))                                     \
      active;                                                              \
    else                                                                   \
      name##_inactive(p, b, j);                                            \
  }
RNN_EXT_ELEMENT(lstm_forward, LSTMForwardStep, lstm_forward_active(p, b, j))
RNN_EXT_ELEMENT(proj_grad, ProjGradStep, proj_grad_active(p, b, j))
RNN_EXT_ELEMENT(gru_forward, GRUForwardStep, gru_forward_active(p, b, j))
RNN_EXT_ELEMENT(lstm_backward, LSTMBackwardStep,
                p.grad_ws ? (p.dh_direct ? lstm_backward_active<true, true>(p, b, j)
                                         : lstm_backward_active<true, false>(p, b, j))
                          : (p.dh_direct ? lstm_backward_active<false, true>(p, b, j)
                                         : lstm_backward_active<false, false>(p, b, j)))
RNN_EXT_ELEMENT(gru_backward, GRUBackwardStep,
                p.grad_ws ? gru_backward_active<true>(p, b, j)
                          : gru_backward_active<false>(p, b, j))
RNN_EXT_ELEMENT(rnn_forward, RNNForwardStep,
                p.relu ? rnn_forward_active<true>(p, b, j)
                       : rnn_forward_active<false>(p, b, j))
RNN_EXT_ELEMENT(rnn_backward, RNNBackwardStep,
                p.relu ? (p.grad_ws ? rnn_backward_active<true, true>(p, b, j)
                                    : rnn_backward_active<true, false>(p, b, j))
                       : (p.grad_ws ? rnn_backward_active<false, true>(p, b, j)
                                    : rnn_backward_active<false, false>(p, b, j)))
#undef RNN_EXT_ELEMENT

}  // namespace rnn_ext
