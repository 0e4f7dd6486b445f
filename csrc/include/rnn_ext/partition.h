// The partitioned recurrence: one algorithm for the whole sequence, written
// once for every device.  No PyTorch, no device code here: an executor
// supplies the device's pieces (CPU: cpu/persistent.h).
//
// K workers share a layer direction.  Worker k owns a slice of hidden units
// with all their gates (4 for LSTM, 3 for GRU, 1 for RNN), so the pointwise update of
// its units needs nothing from other workers:
//
//   forward step t   every worker reads all of h_{t-1}, multiplies it by its
//                    own rows of W_hh (kept resident for the whole sequence),
//                    runs the pointwise step for its units, writes its slice
//                    of h_t; then all meet at one barrier.  With a projection
//                    (LSTM proj_size), a second phase computes the projection
//                    column slice by slice, with a second barrier.
//   backward step t  dh for a worker's units needs the gate gradients of
//                    every unit at step t+1: the worker multiplies them by
//                    its columns of W_hh (dh_slice += d_gates_{t+1} W_hh[:,
//                    slice]), runs the pointwise backward for its units,
//                    writes its slice of the gate gradients; one barrier
//                    (two with a projection).  Weight gradients stay one large
//                    product after the loop (the caller's).
//
// Each worker runs the same function with its own k, like a CUDA block: the
// functions below are that program.  An executor `ex` provides
//   ex.resident_rows(w, H, G, Hin, u)   worker's rows of w [G*H, Hin] (the G
//                                       gates of units u) where they stay for
//                                       the sequence, as GateRows
//   ex.resident_columns(w, ldw, k, cols)
//                                       worker's block of w [k, ldw] at
//                                       columns cols, [k, |cols|], where it
//                                       stays for the sequence, as
//                                       ResidentColumns (the backward's
//                                       operand of gemm_nn)
//   ex.gemm_resident(m, k, a, lda, rows, G, n, c, ldc)
//                                       c[m, G*n] = a[m,k] times the G gates'
//                                       rows (n each) of `rows`, transposed:
//                                       gate g in columns [g*n, (g+1)*n)
//                                       (k = 0: c = 0)
//                                       (k = 0: c = 0, or unchanged with acc)
//   ex.gemm_nn(m, n, k, a, lda, w, ldw, c, ldc, acc)  c[m,n] (+)= a[m,k] w[k,n]
//   ex.elements(step, j0, j1)           the pointwise step (step_kernels.h) for
//                                       all batch rows and units [j0, j1)
//   ex.for_each(b0, b1, j0, j1, f)      f(b, j) over a block (small glue loops)
//   ex.barrier()                        all workers meet
//   ex.barrier_arrive(), ex.barrier_wait()
//                                       the same barrier in two halves, with
//                                       work between them that no other
//                                       worker waits for (the input phase)
//   Exec::kInputPhase                   whether it runs the input phase
//                                       (InputPhase below) where asked
// GEMM inputs are in the storage type T, outputs in the accumulation type
// Acc, so what is carried from step to step is never rounded to fp16/bf16.
//
// Variable lengths keep the semantics of the step kernels: a row is active
// at step t while t < lengths[b]; an inactive row writes zeros to its
// outputs and workspace and leaves every carried state alone.  With lengths
// sorted in decreasing order (`active` given), the GEMMs of step t cover
// only the rows still active.  Final states are written at each row's last
// step, so no gather is needed after the loop.
#pragma once

#include <stdint.h>

#include <type_traits>

#include "rnn_ext/step_kernels.h"

namespace rnn_ext {
namespace partition {

struct Slice {
  int64_t begin, end;
  RNN_HD int64_t size() const { return end - begin; }
};

// [0, n) cut into K contiguous slices, the k-th of them.  Slices are whole
// multiples of `align` (vector width, MMA tile) except the last one, which
// holds the partial chunk; the workers with one chunk more than the others
// are the last ones, so the partial chunk evens out and sizes differ by at
// most one `align`.  With more workers than chunks, the first workers get
// empty slices (and still meet at every barrier).
RNN_HD Slice split(int64_t n, int64_t K, int64_t k, int64_t align) {
  const int64_t chunks = (n + align - 1) / align;
  const int64_t base = chunks / K, extra = chunks % K, plain = K - extra;
  const int64_t c0 = k * base + (k > plain ? k - plain : 0);
  const int64_t c1 = c0 + base + (k >= plain ? 1 : 0);
  const int64_t b = c0 * align, e = c1 * align;
  return {b < n ? b : n, e < n ? e : n};
}

// A worker's rows of W_hh: those of gate g at gate(g), |u| rows of `ld`
// elements.  In place in W_hh on the CPU (its cache keeps them); a GPU
// executor copies them on chip once.
template <typename T>
struct GateRows {
  const T* w;
  int64_t gate_stride, ld;
  // The same rows transposed, [ld, G*|u|] with gate g in columns
  // [g*|u|, (g+1)*|u|), in whatever blocking the executor's GEMM wants (the
  // CPU's brgemm multiplies by [K, N] panels), where it wants them so; else null.
  const T* wt = nullptr;
  RNN_HD const T* gate(int64_t g) const { return w + g * gate_stride; }
};

// A worker's columns of a weight: the [k, |cols|] block, rows `ld` apart.
// In place on the CPU (w + cols.begin, ld = the weight's row length); a GPU
// executor copies them on chip once.
template <typename T>
struct ResidentColumns {
  const T* w;
  int64_t ld;
};

// Rows the GEMMs of step t cover: the rows still active when lengths are
// sorted in decreasing order (`active`, per step), else all B.
RNN_HD int64_t gemm_rows(const int64_t* active, int64_t t, int64_t B) {
  return active ? active[t] : B;
}

// Whether step t is row b's last (where its final state is taken).
RNN_HD bool last_step(const int64_t* lengths, int64_t b, int64_t t, int64_t T) {
  return lengths ? t == lengths[b] - 1 : t == T - 1;
}

// Whether step t is some row's last: the steps where final states are
// copied (without lengths only the last), so that the others do not test
// every element.
RNN_HD bool some_row_ends(const int64_t* lengths, int64_t B, int64_t t, int64_t T) {
  if (!lengths) return t == T - 1;
  for (int64_t b = 0; b < B; ++b)
    if (t == lengths[b] - 1) return true;
  return false;
}

// The input phase: the input gates x_t W_ih^T computed inside the loop
// instead of by one large product before it (gx).  Worker k multiplies all
// of x_t by its own rows of W_ih, resident like W_hh's, into its block of
// `gates` ([B, G, |u|] at B*G*u.begin, the layout of the recurrent
// product's scratch).  Only the worker reads its block, so step t+1's input
// gates are computed between arriving at step t's barrier and waiting at
// it: the work no step depends on fills the wait for the slowest worker.
// On the CPU at small batch the per-worker products also run faster than
// one [T*B, I] x [I, G*H] product (benchmarks/NOTES.md).  Storage and
// accumulation types must be one (fp32, fp64): the products' outputs are
// read as the step's gx.  An executor runs it only where it says so
// (Exec::kInputPhase: the CPU's); elsewhere its branches are constant-false
// and compile away, so that the GPU kernels keep their registers.
template <typename T>
struct InputPhase {
  const T* x = nullptr;     // [steps, B, I], or null: gx holds the input gates
  const T* w_ih = nullptr;  // [G*H, I]
  int64_t I = 0;
  T* gates = nullptr;       // [B, G*H] scratch
  RNN_HD bool on() const { return x != nullptr; }
};

// x_t times the worker's rows of W_ih into its block (the input phase).
// T != Acc never runs it (the ops check); it compiles to nothing there.
template <class Exec, typename T, typename Acc>
RNN_HD void input_gates_product(Exec& ex, const InputPhase<T>& in, const GateRows<T>& w_ih,
                                int64_t t, int64_t rows, int64_t B, int G, Slice u) {
  if constexpr (std::is_same<T, Acc>::value) {
    if (u.size() > 0)
      ex.gemm_resident(rows, in.I, in.x + t * B * in.I, in.I, w_ih, G, u.size(),
                       in.gates + B * G * u.begin, G * u.size());
  }
}

// Its backward: the input's gradient d_x_t = d_gates_t W_ih computed inside
// the backward loop.  Worker k owns a slice of the input's columns and keeps
// W_ih's block at those columns resident; step t's gate gradients are
// complete once every worker has passed step t's barrier, so d_x_t is
// computed between arriving at step t-1's barrier and waiting at it (and
// d_x_0 after the loop).  All B rows: a finished row's gate gradients are
// zeros, so is its d_x.  T == Acc only, as above.
template <typename T>
struct InputGradPhase {
  const T* w_ih = nullptr;  // [G*H, I], or null: the caller computes d_x
  int64_t I = 0;
  T* d_x = nullptr;         // [steps, B, I] out
  RNN_HD bool on() const { return w_ih != nullptr; }
};

template <class Exec, typename T, typename Acc>
RNN_HD void input_grad_product(Exec& ex, const InputGradPhase<T>& in,
                               const ResidentColumns<T>& w_ih, const T* d_gates, int64_t t,
                               int64_t B, int64_t G, Slice cols) {
  if constexpr (std::is_same<T, Acc>::value) {
    if (cols.size() > 0)
      ex.gemm_nn(B, cols.size(), G, d_gates + t * B * G, G, w_ih.w, w_ih.ld,
                 in.d_x + t * B * in.I + cols.begin, in.I, false);
  }
}

// ---------------------------------------------------------------- LSTM ----
template <typename T, typename Acc>
struct LSTMForwardSeq {
  int64_t steps, B, H, P;  // P = 0: no projection
  int64_t workers, align;
  const int64_t* lengths;  // [B] or null
  const int64_t* active;   // [steps] rows active per step (sorted lengths) or null
  const T* gx;             // [steps, B, 4H] input gates
  const T* w_hh;           // [4H, Hin] (Hin = P or H)
  const T* w_hr;           // [P, H] or null
  const T* b_hh;           // [4H] (zeros for a layer without bias)
  const T* h0;             // [B, Hin]
  bool h0_zero;            // h0 is all zeros: step 0 needs no recurrent product
  const Acc* c0;           // [B, H]
  Acc* ws;                 // [ws_steps, B, 5H]: i, f, g, o, c of step t at
  int64_t ws_steps;        //   t % ws_steps (steps: training; 2: inference)
  T* proj_in;              // [proj_steps, B, H], likewise (P > 0)
  int64_t proj_steps;
  T* y;                    // [steps, B, Hout]
  Acc* gates;              // [B, 4H] scratch: worker block [B, 4, |u|] at B*4*u.begin
  Acc* proj_acc;           // [B, P] scratch (P > 0)
  T* h_n;                  // [B, Hout], filled with h0 by the caller
  T* c_n;                  // [B, H], filled with c0 by the caller
  // The input phase (see InputPhase): with x given, gx is not read and b_hh
  // is the sum of both biases.
  InputPhase<T> in{};
};

template <class Exec, typename T, typename Acc>
RNN_HD void lstm_forward_worker(const LSTMForwardSeq<T, Acc>& s, int64_t k, Exec& ex) {
  const int64_t B = s.B, H = s.H, P = s.P, Hin = P > 0 ? P : H;
  const Slice u = split(H, s.workers, k, s.align);
  const Slice pc = split(P, s.workers, k, s.align);
  const int64_t nu = u.size();
  const GateRows<T> w = ex.resident_rows(s.w_hh, H, 4, Hin, u);
  // The projection's rows this worker multiplies by: W_hr's rows of its columns.
  const GateRows<T> wr = P > 0 ? ex.resident_rows(s.w_hr, P, 1, H, pc) : GateRows<T>{s.w_hr, 0, H};
  const InputPhase<T>& in = s.in;
  const bool in_loop = Exec::kInputPhase && in.on();
  const GateRows<T> wi = in_loop ? ex.resident_rows(in.w_ih, H, 4, in.I, u) : GateRows<T>{};
  if (in_loop) input_gates_product<Exec, T, Acc>(ex, in, wi, 0, gemm_rows(s.active, 0, B), B, 4, u);
  Acc* gates = s.gates + B * 4 * u.begin;
  for (int64_t t = 0; t < s.steps; ++t) {
    const int64_t n = gemm_rows(s.active, t, B);
    const T* h_prev = t == 0 ? s.h0 : s.y + (t - 1) * B * Hin;
    Acc* ws = s.ws + (t % s.ws_steps) * B * 5 * H;
    T* h_out = P > 0 ? s.proj_in + (t % s.proj_steps) * B * H : s.y + t * B * H;
    if (nu > 0) {
      const int64_t depth = t == 0 && s.h0_zero ? 0 : Hin;  // 0: the product is zero
      ex.gemm_resident(n, depth, h_prev, Hin, w, 4, nu, gates, 4 * nu);
      const Acc* c_prev = t == 0 ? s.c0 : s.ws + ((t - 1) % s.ws_steps) * B * 5 * H + 4 * H;
      LSTMForwardStep<T, Acc> p{B, H, t, s.lengths, s.gx + t * B * 4 * H, gates,
                                s.b_hh, c_prev, t == 0 ? H : 5 * H, ws, h_out,
                                4 * nu, nu, u.begin};
      if (in_loop) {  // the worker's block, laid out as the recurrent product's
        p.gx = in.gates + B * 4 * u.begin;
        p.gx_ld = 4 * nu;
        p.gx_gs = nu;
        p.gx_j0 = u.begin;
      }
      ex.elements(p, u.begin, u.end);
      const int64_t T_ = s.steps;
      const int64_t* len = s.lengths;
      T* h_n = s.h_n;
      T* c_n = s.c_n;
      const bool proj = P > 0;
      if (some_row_ends(len, B, t, T_))
        ex.for_each(0, B, u.begin, u.end, [=](int64_t b, int64_t j) {
          if (last_step(len, b, t, T_)) {
            c_n[b * H + j] = from_acc<T>(ws[b * 5 * H + 4 * H + j]);
            if (!proj) h_n[b * H + j] = h_out[b * H + j];
          }
        });
    }
    if (in_loop && t + 1 < s.steps) {
      ex.barrier_arrive();
      input_gates_product<Exec, T, Acc>(ex, in, wi, t + 1, gemm_rows(s.active, t + 1, B), B, 4, u);
      ex.barrier_wait();
    } else {
      ex.barrier();
    }
    if (P > 0) {
      T* y = s.y + t * B * P;
      if (pc.size() > 0) {
        ex.gemm_resident(n, H, h_out, H, wr, 1, pc.size(), s.proj_acc + pc.begin, P);
        const Acc* acc = s.proj_acc;
        const int64_t* len = s.lengths;
        const int64_t T_ = s.steps;
        T* h_n = s.h_n;
        ex.for_each(0, B, pc.begin, pc.end, [=](int64_t b, int64_t c) {
          const bool on = b < n && row_active(len, b, t);
          y[b * P + c] = on ? from_acc<T>(acc[b * P + c]) : zero<T>();
          if (on && last_step(len, b, t, T_)) h_n[b * P + c] = y[b * P + c];
        });
      }
      ex.barrier();
    }
  }
}

template <typename T, typename Acc>
struct LSTMBackwardSeq {
  int64_t steps, B, H, P;
  int64_t workers, align;
  const int64_t* lengths;
  const int64_t* active;
  const T* w_hh;           // [4H, Hin]
  const T* w_hr;           // [P, H] or null
  const Acc* ws;           // [steps, B, 5H] from forward
  const Acc* c0;           // [B, H]
  const Acc* grad_ws;      // [steps, B, 5H] or null
  const T* grad_y;         // [steps, B, Hout]
  Acc* dh_state;           // [B, Hout] in: grad_h_n; out: grad_h0
  Acc* dc_state;           // [B, H] in: grad_c_n; out: grad_c0
  T* d_gates;              // [steps, B, 4H] out
  T* d_proj;               // [steps, B, P] out (P > 0)
  Acc* dh_pre;             // [B, H] scratch (P > 0)
  bool grad_h0 = true;     // false: h0's gradient is not wanted; the product
                           //   that turns dh into it is skipped (the caller
                           //   then zeros dh_state)
  InputGradPhase<T> in{};  // the input's gradient in the loop, or off
};

template <class Exec, typename T, typename Acc>
RNN_HD void lstm_backward_worker(const LSTMBackwardSeq<T, Acc>& s, int64_t k, Exec& ex) {
  const int64_t B = s.B, H = s.H, P = s.P, Hin = P > 0 ? P : H;
  const Slice u = split(H, s.workers, k, s.align);
  const Slice pc = split(P, s.workers, k, s.align);
  // The columns of the carried dh this worker accumulates: its projection
  // columns with a projection, else its units.
  const Slice dcols = P > 0 ? pc : u;
  const ResidentColumns<T> w = ex.resident_columns(s.w_hh, Hin, 4 * H, dcols);
  const ResidentColumns<T> wr =
      P > 0 ? ex.resident_columns(s.w_hr, H, P, u) : ResidentColumns<T>{s.w_hr, H};
  const InputGradPhase<T>& in = s.in;
  const bool in_loop = Exec::kInputPhase && in.on();
  const Slice ic = in_loop ? split(in.I, s.workers, k, s.align) : Slice{0, 0};
  const ResidentColumns<T> wi =
      in_loop ? ex.resident_columns(in.w_ih, in.I, 4 * H, ic) : ResidentColumns<T>{};
  for (int64_t t = s.steps - 1; t >= 0; --t) {
    const int64_t n = gemm_rows(s.active, t, B);
    if (t + 1 < s.steps && dcols.size() > 0)
      ex.gemm_nn(gemm_rows(s.active, t + 1, B), dcols.size(), 4 * H,
                 s.d_gates + (t + 1) * B * 4 * H, 4 * H, w.w, w.ld,
                 s.dh_state + dcols.begin, Hin, true);
    const T* grad_y = s.grad_y + t * B * Hin;
    if (P > 0) {
      T* d_proj = s.d_proj + t * B * P;
      if (pc.size() > 0) {
        ProjGradStep<T, Acc> pp{B, P, t, s.lengths, s.dh_state, grad_y, d_proj};
        ex.elements(pp, pc.begin, pc.end);
      }
      ex.barrier();
      if (u.size() > 0)
        ex.gemm_nn(n, u.size(), P, d_proj, P, wr.w, wr.ld, s.dh_pre + u.begin, H, false);
    }
    if (u.size() > 0) {
      LSTMBackwardStep<T, Acc> p{
          B, H, t, s.lengths, s.ws + t * B * 5 * H,
          t == 0 ? s.c0 : s.ws + (t - 1) * B * 5 * H + 4 * H, t == 0 ? H : 5 * H,
          s.grad_ws ? s.grad_ws + t * B * 5 * H : nullptr,
          P > 0 ? s.dh_pre : nullptr, s.dh_state, grad_y, s.dc_state,
          s.d_gates + t * B * 4 * H};
      ex.elements(p, u.begin, u.end);
    }
    if (in_loop && t + 1 < s.steps) {
      ex.barrier_arrive();
      input_grad_product<Exec, T, Acc>(ex, in, wi, s.d_gates, t + 1, B, 4 * H, ic);
      ex.barrier_wait();
    } else {
      ex.barrier();
    }
  }
  // What flows into h0: the product of step 0's gate gradients.
  if (s.grad_h0 && dcols.size() > 0)
    ex.gemm_nn(gemm_rows(s.active, 0, B), dcols.size(), 4 * H, s.d_gates, 4 * H, w.w, w.ld,
               s.dh_state + dcols.begin, Hin, true);
  if (in_loop) input_grad_product<Exec, T, Acc>(ex, in, wi, s.d_gates, 0, B, 4 * H, ic);
}

// ----------------------------------------------------------------- GRU ----
template <typename T, typename Acc>
struct GRUForwardSeq {
  int64_t steps, B, H;
  int64_t workers, align;
  const int64_t* lengths;
  const int64_t* active;
  const T* gx;             // [steps, B, 3H]
  const T* w_hh;           // [3H, H]
  const T* b_hh;           // [3H]
  const T* h0;             // [B, H]
  bool h0_zero;            // as in LSTMForwardSeq
  Acc* ws;                 // [ws_steps, B, 4H]: r, z, n, hn of step t at
  int64_t ws_steps;        //   t % ws_steps (steps: training; 1: inference)
  T* y;                    // [steps, B, H]
  Acc* gates;              // [B, 3H] scratch: worker block [B, 3, |u|]
  T* h_n;                  // [B, H], filled with h0 by the caller
};

template <class Exec, typename T, typename Acc>
RNN_HD void gru_forward_worker(const GRUForwardSeq<T, Acc>& s, int64_t k, Exec& ex) {
  const int64_t B = s.B, H = s.H;
  const Slice u = split(H, s.workers, k, s.align);
  const int64_t nu = u.size();
  const GateRows<T> w = ex.resident_rows(s.w_hh, H, 3, H, u);
  Acc* gates = s.gates + B * 3 * u.begin;
  for (int64_t t = 0; t < s.steps; ++t) {
    if (nu > 0) {
      const T* h_prev = t == 0 ? s.h0 : s.y + (t - 1) * B * H;
      T* y = s.y + t * B * H;
      const int64_t n = gemm_rows(s.active, t, B);
      const int64_t depth = t == 0 && s.h0_zero ? 0 : H;
      ex.gemm_resident(n, depth, h_prev, H, w, 3, nu, gates, 3 * nu);
      GRUForwardStep<T, Acc> p{B, H, t, s.lengths, s.gx + t * B * 3 * H, gates, s.b_hh,
                               h_prev, s.ws + (t % s.ws_steps) * B * 4 * H, y,
                               3 * nu, nu, u.begin};
      ex.elements(p, u.begin, u.end);
      const int64_t T_ = s.steps;
      const int64_t* len = s.lengths;
      T* h_n = s.h_n;
      if (some_row_ends(len, B, t, T_))
        ex.for_each(0, B, u.begin, u.end, [=](int64_t b, int64_t j) {
          if (last_step(len, b, t, T_)) h_n[b * H + j] = y[b * H + j];
        });
    }
    ex.barrier();
  }
}

template <typename T, typename Acc>
struct GRUBackwardSeq {
  int64_t steps, B, H;
  int64_t workers, align;
  const int64_t* lengths;
  const int64_t* active;
  const T* w_hh;           // [3H, H]
  const Acc* ws;           // [steps, B, 4H] from forward
  const Acc* grad_ws;      // [steps, B, 4H] or null
  const T* grad_y;         // [steps, B, H]
  const T* h0;             // [B, H]
  const T* y;              // [steps, B, H] forward output
  Acc* dh_state;           // [B, H] in: grad_h_n; out: grad_h0
  T* d_gates;              // [steps, B, 3H] out: gradient of the input gates
  T* d_hh;                 // [steps, B, 3H] out: gradient of h W_hh^T + b_hh
  bool grad_h0 = true;     // as in LSTMBackwardSeq
};

template <class Exec, typename T, typename Acc>
RNN_HD void gru_backward_worker(const GRUBackwardSeq<T, Acc>& s, int64_t k, Exec& ex) {
  const int64_t B = s.B, H = s.H;
  const Slice u = split(H, s.workers, k, s.align);
  const ResidentColumns<T> w = ex.resident_columns(s.w_hh, H, 3 * H, u);
  for (int64_t t = s.steps - 1; t >= 0; --t) {
    if (u.size() > 0) {
      if (t + 1 < s.steps)
        ex.gemm_nn(gemm_rows(s.active, t + 1, B), u.size(), 3 * H,
                   s.d_hh + (t + 1) * B * 3 * H, 3 * H, w.w, w.ld,
                   s.dh_state + u.begin, H, true);
      GRUBackwardStep<T, Acc> p{B, H, t, s.lengths, s.ws + t * B * 4 * H,
                                t == 0 ? s.h0 : s.y + (t - 1) * B * H,
                                s.grad_ws ? s.grad_ws + t * B * 4 * H : nullptr,
                                s.dh_state, s.grad_y + t * B * H,
                                s.d_gates + t * B * 3 * H, s.d_hh + t * B * 3 * H};
      ex.elements(p, u.begin, u.end);
    }
    ex.barrier();
  }
  if (s.grad_h0 && u.size() > 0)
    ex.gemm_nn(gemm_rows(s.active, 0, B), u.size(), 3 * H, s.d_hh, 3 * H, w.w, w.ld,
               s.dh_state + u.begin, H, true);
}

// ----------------------------------------------------------------- RNN ----
template <typename T, typename Acc>
struct RNNForwardSeq {
  int64_t steps, B, H;
  int64_t workers, align;
  const int64_t* lengths;
  const int64_t* active;
  const T* gx;             // [steps, B, H]
  const T* w_hh;           // [H, H]
  const T* b_hh;           // [H]
  const T* h0;             // [B, H]
  bool h0_zero;            // as in LSTMForwardSeq
  Acc* ws;                 // [ws_steps, B, H]: the activated h of step t at
  int64_t ws_steps;        //   t % ws_steps (steps: training; 1: inference)
  T* y;                    // [steps, B, H]
  Acc* gates;              // [B, H] scratch: worker block [B, |u|]
  T* h_n;                  // [B, H], filled with h0 by the caller
  bool relu;               // nonlinearity: relu, else tanh
};

template <class Exec, typename T, typename Acc>
RNN_HD void rnn_forward_worker(const RNNForwardSeq<T, Acc>& s, int64_t k, Exec& ex) {
  const int64_t B = s.B, H = s.H;
  const Slice u = split(H, s.workers, k, s.align);
  const int64_t nu = u.size();
  const GateRows<T> w = ex.resident_rows(s.w_hh, H, 1, H, u);
  Acc* gates = s.gates + B * u.begin;
  for (int64_t t = 0; t < s.steps; ++t) {
    if (nu > 0) {
      const T* h_prev = t == 0 ? s.h0 : s.y + (t - 1) * B * H;
      T* y = s.y + t * B * H;
      const int64_t depth = t == 0 && s.h0_zero ? 0 : H;
      ex.gemm_resident(gemm_rows(s.active, t, B), depth, h_prev, H, w, 1, nu, gates, nu);
      RNNForwardStep<T, Acc> p{B, H, t, s.lengths, s.gx + t * B * H, gates, s.b_hh, h_prev,
                               s.ws + (t % s.ws_steps) * B * H, y, s.relu, nu, nu, u.begin};
      ex.elements(p, u.begin, u.end);
      const int64_t T_ = s.steps;
      const int64_t* len = s.lengths;
      T* h_n = s.h_n;
      if (some_row_ends(len, B, t, T_))
        ex.for_each(0, B, u.begin, u.end, [=](int64_t b, int64_t j) {
          if (last_step(len, b, t, T_)) h_n[b * H + j] = y[b * H + j];
        });
    }
    ex.barrier();
  }
}

template <typename T, typename Acc>
struct RNNBackwardSeq {
  int64_t steps, B, H;
  int64_t workers, align;
  const int64_t* lengths;
  const int64_t* active;
  const T* w_hh;           // [H, H]
  const Acc* ws;           // [steps, B, H] from forward
  const Acc* grad_ws;      // [steps, B, H] or null
  const T* grad_y;         // [steps, B, H]
  Acc* dh_state;           // [B, H] in: grad_h_n; out: grad_h0
  T* d_gates;              // [steps, B, H] out: gradient of the pre-activation
  bool relu;
  bool grad_h0 = true;     // as in LSTMBackwardSeq
};

template <class Exec, typename T, typename Acc>
RNN_HD void rnn_backward_worker(const RNNBackwardSeq<T, Acc>& s, int64_t k, Exec& ex) {
  const int64_t B = s.B, H = s.H;
  const Slice u = split(H, s.workers, k, s.align);
  const ResidentColumns<T> w = ex.resident_columns(s.w_hh, H, H, u);
  for (int64_t t = s.steps - 1; t >= 0; --t) {
    if (u.size() > 0) {
      if (t + 1 < s.steps)
        ex.gemm_nn(gemm_rows(s.active, t + 1, B), u.size(), H, s.d_gates + (t + 1) * B * H, H,
                   w.w, w.ld, s.dh_state + u.begin, H, true);
      RNNBackwardStep<T, Acc> p{B, H, t, s.lengths, s.ws + t * B * H,
                                s.grad_ws ? s.grad_ws + t * B * H : nullptr, s.dh_state,
                                s.grad_y + t * B * H, s.d_gates + t * B * H, s.relu};
      ex.elements(p, u.begin, u.end);
    }
    ex.barrier();
  }
  if (s.grad_h0 && u.size() > 0)
    ex.gemm_nn(gemm_rows(s.active, 0, B), u.size(), H, s.d_gates, H, w.w, w.ld,
               s.dh_state + u.begin, H, true);
}

// ------------------------------------------------ both directions at once --
// A bidirectional layer's two directions in one launch (or one team): the
// first a.workers workers run direction a, the next b.workers direction b
// (each with its own k from 0), and every worker meets every barrier.  That
// holds because both programs pass the same barriers: the same steps, and
// the same phases per step (a projection in both or in neither), which the
// host checks with same_barriers() before the launch.
template <typename T, typename Acc>
RNN_HD int64_t barriers_per_step(const LSTMForwardSeq<T, Acc>& s) { return s.P > 0 ? 2 : 1; }
template <typename T, typename Acc>
RNN_HD int64_t barriers_per_step(const LSTMBackwardSeq<T, Acc>& s) { return s.P > 0 ? 2 : 1; }
template <class Seq>
RNN_HD int64_t barriers_per_step(const Seq&) { return 1; }

template <class Seq>
RNN_HD bool same_barriers(const Seq& a, const Seq& b) {
  return a.steps == b.steps && barriers_per_step(a) == barriers_per_step(b);
}

// worker(seq, k, ex) of partition.h for worker k of the pair.
template <class Exec, class Seq, class Worker>
RNN_HD void pair_worker(const Seq& a, const Seq& b, int64_t k, Exec& ex, Worker worker) {
  if (k < a.workers) worker(a, k, ex);
  else worker(b, k - a.workers, ex);
}

}  // namespace partition
}  // namespace rnn_ext
