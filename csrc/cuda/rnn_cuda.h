// CUDA kernels for the pointwise part of one step.  Raw pointers, sizes and
// a stream in, a cudaError_t out: no PyTorch, so this builds in seconds and
// CMake can build it alone.  Instantiated for (T, Acc) in
// {(float, float), (double, double), (__half, float), (__nv_bfloat16, float)}.
#pragma once

#include <cuda_runtime.h>

#include "rnn_ext/step_kernels.h"

namespace rnn_ext {
namespace cuda {

template <typename T, typename Acc>
cudaError_t lstm_forward_step(const LSTMForwardStep<T, Acc>& p, cudaStream_t s);
template <typename T, typename Acc>
cudaError_t lstm_backward_step(const LSTMBackwardStep<T, Acc>& p, cudaStream_t s);
template <typename T, typename Acc>
cudaError_t proj_grad_step(const ProjGradStep<T, Acc>& p, cudaStream_t s);
template <typename T, typename Acc>
cudaError_t gru_forward_step(const GRUForwardStep<T, Acc>& p, cudaStream_t s);
template <typename T, typename Acc>
cudaError_t gru_backward_step(const GRUBackwardStep<T, Acc>& p, cudaStream_t s);
template <typename T, typename Acc>
cudaError_t rnn_forward_step(const RNNForwardStep<T, Acc>& p, cudaStream_t s);
template <typename T, typename Acc>
cudaError_t rnn_backward_step(const RNNBackwardStep<T, Acc>& p, cudaStream_t s);

}  // namespace cuda
}  // namespace rnn_ext
