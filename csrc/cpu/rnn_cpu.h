// CPU kernels for the pointwise part of one step: plain loops over a range
// of batch rows, calling the shared element functions.  The caller (the
// PyTorch glue) splits the batch over threads and does the GEMMs with ATen.
// No PyTorch here, so the C++ tests can use these directly.
#pragma once

#include "rnn_ext/step_kernels.h"

namespace rnn_ext {
namespace cpu {

template <typename Params, typename Element>
inline void for_rows(const Params& p, int64_t width, int64_t b_begin,
                     int64_t b_end, Element element) {
  for (int64_t b = b_begin; b < b_end; ++b)
    for (int64_t j = 0; j < width; ++j) element(p, b, j);
}

template <typename T, typename Acc>
void lstm_forward_rows(const LSTMForwardStep<T, Acc>& p, int64_t b0,
                       int64_t b1) {
  for_rows(p, p.H, b0, b1, lstm_forward_element<T, Acc>);
}

template <typename T, typename Acc>
void lstm_backward_rows(const LSTMBackwardStep<T, Acc>& p, int64_t b0,
                        int64_t b1) {
  for_rows(p, p.H, b0, b1, lstm_backward_element<T, Acc>);
}

template <typename T, typename Acc>
void proj_grad_rows(const ProjGradStep<T, Acc>& p, int64_t b0, int64_t b1) {
  for_rows(p, p.P, b0, b1, proj_grad_element<T, Acc>);
}

template <typename T, typename Acc>
void gru_forward_rows(const GRUForwardStep<T, Acc>& p, int64_t b0,
                      int64_t b1) {
  for_rows(p, p.H, b0, b1, gru_forward_element<T, Acc>);
}

template <typename T, typename Acc>
void gru_backward_rows(const GRUBackwardStep<T, Acc>& p, int64_t b0,
                       int64_t b1) {
  for_rows(p, p.H, b0, b1, gru_backward_element<T, Acc>);
}

}  // namespace cpu
}  // namespace rnn_ext
