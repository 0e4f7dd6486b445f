// CPU kernels for the pointwise part of one step: plain loops over a block
// of batch rows and hidden units, calling the shared element functions.  The
// CPU executor of the partitioned loop (cpu/persistent.h) runs each worker's
// block of units through them.  No PyTorch here, so the C++ tests can use
// these directly.
#pragma once

#include "rnn_ext/step_kernels.h"

namespace rnn_ext {
namespace cpu {

// Each step kind is compiled for several x86-64 levels (AVX-512, AVX2+FMA,
// baseline SSE2) and the loader picks the widest the CPU has: the build
// stays portable and the loop runs as wide as ATen's own activations.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// flatten: every element function is inlined into the clone, so that it is
// vectorised with the loop; GCC left the largest (lstm_backward_active)
// out of line, a scalar call per element.
#define RNN_EXT_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#define RNN_EXT_INLINE __attribute__((always_inline))
#else
#define RNN_EXT_CPU_CLONES
#define RNN_EXT_INLINE
#endif

// Each row is tested once; the inner loop over its hidden units runs the
// active or the inactive element, inlined, and `omp simd` vectorises it
// (the elements of a step never overlap, so there is no aliasing to check).
// Everything is inlined into the cloned step function, so that it is all
// compiled for the clone's instruction set.
template <typename Params, typename Active, typename Inactive>
RNN_EXT_INLINE inline void rows(const Params& p, int64_t j_begin, int64_t j_end,
                                int64_t b_begin, int64_t b_end, Active active,
                                Inactive inactive) {
  for (int64_t b = b_begin; b < b_end; ++b) {
    if (row_active(p.lengths, b, p.t)) {
#pragma omp simd
      for (int64_t j = j_begin; j < j_end; ++j) active(b, j);
    } else {
      for (int64_t j = j_begin; j < j_end; ++j) inactive(b, j);
    }
  }
}

// Rows [b0, b1) and units (or projection columns) [j0, j1) of one step.
#define RNN_EXT_ROWS(name, ...)                                          \
  rows(                                                                  \
      p, j0, j1, b0, b1,                                                 \
      [&](int64_t b, int64_t j) RNN_EXT_INLINE { __VA_ARGS__(p, b, j); }, \
      [&](int64_t b, int64_t j) RNN_EXT_INLINE { name##_inactive(p, b, j); })

template <typename T, typename Acc>
RNN_EXT_CPU_CLONES void lstm_forward_rows(const LSTMForwardStep<T, Acc>& p, int64_t b0, int64_t b1,
                                          int64_t j0, int64_t j1) {
  RNN_EXT_ROWS(lstm_forward, lstm_forward_active);
}

template <typename T, typename Acc>
RNN_EXT_CPU_CLONES void lstm_backward_rows(const LSTMBackwardStep<T, Acc>& p, int64_t b0, int64_t b1,
                                           int64_t j0, int64_t j1) {
  if (p.grad_ws && p.dh_direct) RNN_EXT_ROWS(lstm_backward, lstm_backward_active<true, true>);
  else if (p.grad_ws) RNN_EXT_ROWS(lstm_backward, lstm_backward_active<true, false>);
  else if (p.dh_direct) RNN_EXT_ROWS(lstm_backward, lstm_backward_active<false, true>);
  else RNN_EXT_ROWS(lstm_backward, lstm_backward_active<false, false>);
}

template <typename T, typename Acc>
RNN_EXT_CPU_CLONES void proj_grad_rows(const ProjGradStep<T, Acc>& p, int64_t b0, int64_t b1,
                                       int64_t j0, int64_t j1) {
  RNN_EXT_ROWS(proj_grad, proj_grad_active);
}

template <typename T, typename Acc>
RNN_EXT_CPU_CLONES void gru_forward_rows(const GRUForwardStep<T, Acc>& p, int64_t b0, int64_t b1,
                                         int64_t j0, int64_t j1) {
  RNN_EXT_ROWS(gru_forward, gru_forward_active);
}

template <typename T, typename Acc>
RNN_EXT_CPU_CLONES void gru_backward_rows(const GRUBackwardStep<T, Acc>& p, int64_t b0, int64_t b1,
                                          int64_t j0, int64_t j1) {
  if (p.grad_ws) RNN_EXT_ROWS(gru_backward, gru_backward_active<true>);
  else RNN_EXT_ROWS(gru_backward, gru_backward_active<false>);
}
template <typename T, typename Acc>
RNN_EXT_CPU_CLONES void rnn_forward_rows(const RNNForwardStep<T, Acc>& p, int64_t b0, int64_t b1,
                                         int64_t j0, int64_t j1) {
  if (p.relu) RNN_EXT_ROWS(rnn_forward, rnn_forward_active<true>);
  else RNN_EXT_ROWS(rnn_forward, rnn_forward_active<false>);
}

template <typename T, typename Acc>
RNN_EXT_CPU_CLONES void rnn_backward_rows(const RNNBackwardStep<T, Acc>& p, int64_t b0, int64_t b1,
                                          int64_t j0, int64_t j1) {
  if (p.relu && p.grad_ws) RNN_EXT_ROWS(rnn_backward, rnn_backward_active<true, true>);
  else if (p.relu) RNN_EXT_ROWS(rnn_backward, rnn_backward_active<true, false>);
  else if (p.grad_ws) RNN_EXT_ROWS(rnn_backward, rnn_backward_active<false, true>);
  else RNN_EXT_ROWS(rnn_backward, rnn_backward_active<false, false>);
}
#undef RNN_EXT_ROWS

}  // namespace cpu
}  // namespace rnn_ext
