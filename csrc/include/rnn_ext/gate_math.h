// One LSTM step and one GRU step, forward and backward, for a single hidden
// unit.  This is the only place the gate formulas are written down: the CPU
// kernels and the CUDA kernels both call these functions.  No PyTorch here.
//
// Formulas and gate order are exactly those of torch.nn:
//   LSTM (i, f, g, o):  c' = f*c + i*g,  h' = o*tanh(c')
//   GRU  (r, z, n):     n = tanh(x_n + r*(W_hn h + b_hn)),  h' = (1-z)*n + z*h
//   RNN:                h' = tanh(pre) or relu(pre), pre = x W_ih^T + b_ih + h W_hh^T + b_hh
// `Acc` is the accumulation type: float for fp16/bf16 storage, else the
// storage type itself.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RNN_HD __host__ __device__ __forceinline__
#else
#define RNN_HD inline
#endif

namespace rnn_ext {
namespace gates {

#if !defined(__CUDA_ARCH__)
// fp32 exp on the host: Cephes-style range reduction and polynomial (about
// 1 ulp), written without branches or calls so that the CPU loops
// vectorise; libm's expf is a call per element and dominated the CPU step.
// fp64 keeps libm, and the GPU keeps its own expf.
inline float host_expf(float x) {
  x = x < -87.3365f ? -87.3365f : (x > 88.7228f ? 88.7228f : x);
  const float fx = x * 1.44269504088896341f + 0.5f;
  int n = static_cast<int>(fx);
  n -= static_cast<float>(n) > fx ? 1 : 0;  // floor
  const float nf = static_cast<float>(n);
  const float r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int i; float f; } scale;
  scale.i = (n + 127) << 23;  // 2^n
  return p * scale.f;
}
#endif

RNN_HD float exp_(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return host_expf(x);
#endif
}
RNN_HD double exp_(double x) { return exp(x); }
#if !defined(__CUDA_ARCH__)
// fp32 tanh on the host, branch-free like host_expf.  For |x| >= 0.625,
// 1 - 2 / (e^{2x} + 1), exact at both tails.  Near 0 that form cancels (its
// error is about one ulp of 1, not of tanh(x)), so for |x| < 0.625 an odd
// polynomial x + x^3 P(x^2) takes over: P is a minimax fit of
// (tanh(x)/x - 1)/x^2 on that interval, within about one ulp of tanh.  Both
// are computed and one is selected by a bit mask: a plain `?:` here made
// GCC 12 give up vectorising every step loop that calls tanh (the loops ran
// scalar, a third of a CPU LSTM step), and a mask blend is exact where an
// arithmetic blend (w*small + (1-w)*large) would not be.
inline float host_tanhf(float x) {
  const float z = x * x;
  float p = -5.7170446962e-3f;
  p = p * z + 2.0650586113e-2f;
  p = p * z - 5.3743496537e-2f;
  p = p * z + 1.3331490755e-1f;
  p = p * z - 3.3333283663e-1f;
  const float small = x + x * z * p;
  const float large = 1.0f - 2.0f / (host_expf(2.0f * x) + 1.0f);
  union { float f; uint32_t u; } s, l;
  s.f = small;
  l.f = large;
  const uint32_t use_small = 0u - static_cast<uint32_t>(fabsf(x) < 0.625f);
  l.u = (s.u & use_small) | (l.u & ~use_small);
  return l.f;
}
#endif

RNN_HD float tanh_(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  return host_tanhf(x);
#endif
}
RNN_HD double tanh_(double x) { return tanh(x); }

template <typename Acc>
RNN_HD Acc sigmoid(Acc x) {
  return Acc(1) / (Acc(1) + exp_(-x));
}

// ---------------------------------------------------------------- LSTM ----

template <typename Acc>
struct LSTMForward {
  Acc i, f, g, o;  // activated gates
  Acc c;           // new cell state
  Acc h;           // new hidden state before any projection: o * tanh(c)
};

// pre_*: pre-activations, i.e. (x W_ih^T + b_ih + h W_hh^T + b_hh) per gate.
template <typename Acc>
RNN_HD LSTMForward<Acc> lstm_forward(Acc pre_i, Acc pre_f, Acc pre_g,
                                     Acc pre_o, Acc c_prev) {
  LSTMForward<Acc> r;
  r.i = sigmoid(pre_i);
  r.f = sigmoid(pre_f);
  r.g = tanh_(pre_g);
  r.o = sigmoid(pre_o);
  r.c = r.f * c_prev + r.i * r.g;
  r.h = r.o * tanh_(r.c);
  return r;
}

template <typename Acc>
struct LSTMBackward {
  Acc pre_i, pre_f, pre_g, pre_o;  // gradients of the pre-activations
  Acc c_prev;                      // gradient flowing into c_{t-1}
};

// dh: gradient of h (before projection); dc: gradient of c arriving from the
// next step and from c_n.  d_act_*, d_c_extra: gradients a caller placed
// directly on the saved activations and cell state (0 when nobody looks).
template <typename Acc>
RNN_HD LSTMBackward<Acc> lstm_backward(Acc i, Acc f, Acc g, Acc o, Acc c,
                                       Acc c_prev, Acc dh, Acc dc,
                                       Acc d_act_i = 0, Acc d_act_f = 0,
                                       Acc d_act_g = 0, Acc d_act_o = 0,
                                       Acc d_c_extra = 0) {
  const Acc tc = tanh_(c);
  dc += d_c_extra + dh * o * (Acc(1) - tc * tc);
  const Acc di = dc * g + d_act_i;
  const Acc df = dc * c_prev + d_act_f;
  const Acc dg = dc * i + d_act_g;
  const Acc d_o = dh * tc + d_act_o;
  LSTMBackward<Acc> r;
  r.pre_i = di * i * (Acc(1) - i);
  r.pre_f = df * f * (Acc(1) - f);
  r.pre_g = dg * (Acc(1) - g * g);
  r.pre_o = d_o * o * (Acc(1) - o);
  r.c_prev = dc * f;
  return r;
}

// ----------------------------------------------------------------- GRU ----

template <typename Acc>
struct GRUForward {
  Acc r, z, n;  // activated gates
  Acc h;        // new hidden state
};

// pre_r, pre_z: full pre-activations; x_n: input part of the n gate
// (x W_in^T + b_in); hn: recurrent part (h W_hn^T + b_hn), which the reset
// gate multiplies, as in nn.GRU and cuDNN.
template <typename Acc>
RNN_HD GRUForward<Acc> gru_forward(Acc pre_r, Acc pre_z, Acc x_n, Acc hn,
                                   Acc h_prev) {
  GRUForward<Acc> out;
  out.r = sigmoid(pre_r);
  out.z = sigmoid(pre_z);
  out.n = tanh_(x_n + out.r * hn);
  out.h = (Acc(1) - out.z) * out.n + out.z * h_prev;
  return out;
}

template <typename Acc>
struct GRUBackward {
  Acc pre_r, pre_z;  // gradients of r and z pre-activations (input and hidden)
  Acc x_n;           // gradient of the input part of n
  Acc hn;            // gradient of the recurrent part of n (W_hn h + b_hn)
  Acc h_prev;        // gradient flowing directly into h_{t-1} (through z)
};

template <typename Acc>
RNN_HD GRUBackward<Acc> gru_backward(Acc r, Acc z, Acc n, Acc hn, Acc h_prev,
                                     Acc dh, Acc d_act_r = 0, Acc d_act_z = 0,
                                     Acc d_act_n = 0, Acc d_hn_extra = 0) {
  const Acc dn = dh * (Acc(1) - z) + d_act_n;
  const Acc dz = dh * (h_prev - n) + d_act_z;
  GRUBackward<Acc> out;
  out.x_n = dn * (Acc(1) - n * n);
  const Acc dr = out.x_n * hn + d_act_r;
  out.hn = out.x_n * r + d_hn_extra;
  out.pre_r = dr * r * (Acc(1) - r);
  out.pre_z = dz * z * (Acc(1) - z);
  out.h_prev = dh * z;
  return out;
}

// ----------------------------------------------------------------- RNN ----
// The Elman cell of nn.RNN: one activation of the summed pre-activation.
// kReLU picks relu over tanh at compile time, so a CPU loop over a row
// keeps no branch on it.
template <bool kReLU, typename Acc>
RNN_HD Acc rnn_forward(Acc pre) {
  if constexpr (kReLU)
    return pre > Acc(0) ? pre : Acc(0);
  else
    return tanh_(pre);
}

// h: the activated output of the step (what the workspace keeps); dh: its
// gradient (d_act, one a caller placed on the saved activation, included).
// Returns the gradient of the pre-activation.  relu's gradient at 0 is 0,
// as in torch (threshold_backward on the result).
template <bool kReLU, typename Acc>
RNN_HD Acc rnn_backward(Acc h, Acc dh) {
  if constexpr (kReLU)
    return h > Acc(0) ? dh : Acc(0);
  else
    return dh * (Acc(1) - h * h);
}

}  // namespace gates
}  // namespace rnn_ext
