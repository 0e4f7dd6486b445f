// CPU kernels for the pointwise part of one step: plain loops over a range
// of batch rows, calling the shared element functions.  The caller (the
// PyTorch glue) splits the batch over threads and does the GEMMs with ATen.
// No PyTorch here, so the C++ tests can use these directly.
#pragma once

#include "rnn_ext/step_kernels.h"

namespace rnn_ext {
namespace cpu {

// Each row is tested once; the inner loop over its hidden units runs the
// active or the inactive element, inlined, and `omp simd` vectorises it
// (the elements of a step never overlap, so there is no aliasing to check).
template <typename Params, typename Active, typename Inactive>
inline void rows(const Params& p, int64_t width, int64_t b_begin,
                 int64_t b_end, Active active, Inactive inactive) {
  for (int64_t b = b_begin; b < b_end; ++b) {
    if (row_active(p.lengths, b, p.t)) {
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) active(b, j);
    } else {
      for (int64_t j = 0; j < width; ++j) inactive(b, j);
    }
  }
}

#define RNN_EXT_ROWS(name, width, ...)                                        \
  rows(p, width, b0, b1, [&](int64_t b, int64_t j) { __VA_ARGS__(p, b, j); }, \
       [&](int64_t b, int64_t j) { name##_inactive(p, b, j); })

template <typename T, typename Acc>
void lstm_forward_rows(const LSTMForwardStep<T, Acc>& p, int64_t b0, int64_t b1) {
  RNN_EXT_ROWS(lstm_forward, p.H, lstm_forward_active);
}

template <typename T, typename Acc>
void lstm_backward_rows(const LSTMBackwardStep<T, Acc>& p, int64_t b0, int64_t b1) {
  if (p.grad_ws && p.dh_direct) RNN_EXT_ROWS(lstm_backward, p.H, lstm_backward_active<true, true>);
  else if (p.grad_ws) RNN_EXT_ROWS(lstm_backward, p.H, lstm_backward_active<true, false>);
  else if (p.dh_direct) RNN_EXT_ROWS(lstm_backward, p.H, lstm_backward_active<false, true>);
  else RNN_EXT_ROWS(lstm_backward, p.H, lstm_backward_active<false, false>);
}

template <typename T, typename Acc>
void proj_grad_rows(const ProjGradStep<T, Acc>& p, int64_t b0, int64_t b1) {
  RNN_EXT_ROWS(proj_grad, p.P, proj_grad_active);
}

template <typename T, typename Acc>
void gru_forward_rows(const GRUForwardStep<T, Acc>& p, int64_t b0, int64_t b1) {
  RNN_EXT_ROWS(gru_forward, p.H, gru_forward_active);
}

template <typename T, typename Acc>
void gru_backward_rows(const GRUBackwardStep<T, Acc>& p, int64_t b0, int64_t b1) {
  if (p.grad_ws) RNN_EXT_ROWS(gru_backward, p.H, gru_backward_active<true>);
  else RNN_EXT_ROWS(gru_backward, p.H, gru_backward_active<false>);
}
#undef RNN_EXT_ROWS

}  // namespace cpu
}  // namespace rnn_ext
