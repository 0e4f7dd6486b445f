// One fused pointwise kernel per step kind: each thread handles one
// (batch row, hidden unit) element through the shared element functions of
// step_kernels.h, so the gate math is the very code the CPU runs.
#include "cuda/half_convert.cuh"
#include "cuda/rnn_cuda.h"

#include <algorithm>

namespace rnn_ext {
namespace cuda {
namespace {

#define RNN_EXT_ELEMENT_OP(Name, fn)                                   \
  struct Name {                                                        \
    template <class P>                                                 \
    __device__ __forceinline__ static void run(const P& p, int64_t b,  \
                                               int64_t j) {            \
      fn(p, b, j);                                                     \
    }                                                                  \
  };
RNN_EXT_ELEMENT_OP(LSTMForwardOp, lstm_forward_element)
RNN_EXT_ELEMENT_OP(LSTMBackwardOp, lstm_backward_element)
RNN_EXT_ELEMENT_OP(ProjGradOp, proj_grad_element)
RNN_EXT_ELEMENT_OP(GRUForwardOp, gru_forward_element)
RNN_EXT_ELEMENT_OP(GRUBackwardOp, gru_backward_element)
RNN_EXT_ELEMENT_OP(RNNForwardOp, rnn_forward_element)
RNN_EXT_ELEMENT_OP(RNNBackwardOp, rnn_backward_element)
#undef RNN_EXT_ELEMENT_OP

template <class Op, class P>
__global__ void step_kernel(const P p, int64_t width) {
  const int64_t n = p.B * width;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    Op::run(p, i / width, i % width);
}

template <class Op, class P>
cudaError_t launch(const P& p, int64_t width, cudaStream_t stream) {
  const int64_t n = p.B * width;
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65535);
  step_kernel<Op><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p, width);
  return cudaGetLastError();
}

}  // namespace

template <typename T, typename Acc>
cudaError_t lstm_forward_step(const LSTMForwardStep<T, Acc>& p, cudaStream_t s) {
  return launch<LSTMForwardOp>(p, p.H, s);
}
template <typename T, typename Acc>
cudaError_t lstm_backward_step(const LSTMBackwardStep<T, Acc>& p, cudaStream_t s) {
  return launch<LSTMBackwardOp>(p, p.H, s);
}
template <typename T, typename Acc>
cudaError_t proj_grad_step(const ProjGradStep<T, Acc>& p, cudaStream_t s) {
  return launch<ProjGradOp>(p, p.P, s);
}
template <typename T, typename Acc>
cudaError_t gru_forward_step(const GRUForwardStep<T, Acc>& p, cudaStream_t s) {
  return launch<GRUForwardOp>(p, p.H, s);
}
template <typename T, typename Acc>
cudaError_t gru_backward_step(const GRUBackwardStep<T, Acc>& p, cudaStream_t s) {
  return launch<GRUBackwardOp>(p, p.H, s);
}

template <typename T, typename Acc>
cudaError_t rnn_forward_step(const RNNForwardStep<T, Acc>& p, cudaStream_t s) {
  return launch<RNNForwardOp>(p, p.H, s);
}
template <typename T, typename Acc>
cudaError_t rnn_backward_step(const RNNBackwardStep<T, Acc>& p, cudaStream_t s) {
  return launch<RNNBackwardOp>(p, p.H, s);
}

#define RNN_EXT_INSTANTIATE(T, Acc)                                              \
  template cudaError_t lstm_forward_step<T, Acc>(const LSTMForwardStep<T, Acc>&, \
                                                 cudaStream_t);                  \
  template cudaError_t lstm_backward_step<T, Acc>(                               \
      const LSTMBackwardStep<T, Acc>&, cudaStream_t);                            \
  template cudaError_t proj_grad_step<T, Acc>(const ProjGradStep<T, Acc>&,       \
                                              cudaStream_t);                     \
  template cudaError_t gru_forward_step<T, Acc>(const GRUForwardStep<T, Acc>&,   \
                                                cudaStream_t);                   \
  template cudaError_t gru_backward_step<T, Acc>(const GRUBackwardStep<T, Acc>&, \
                                                 cudaStream_t);                  \
  template cudaError_t rnn_forward_step<T, Acc>(const RNNForwardStep<T, Acc>&,   \
                                                cudaStream_t);                   \
  template cudaError_t rnn_backward_step<T, Acc>(const RNNBackwardStep<T, Acc>&, \
                                                 cudaStream_t);
RNN_EXT_INSTANTIATE(float, float)
RNN_EXT_INSTANTIATE(double, double)
RNN_EXT_INSTANTIATE(__half, float)
RNN_EXT_INSTANTIATE(__nv_bfloat16, float)
#undef RNN_EXT_INSTANTIATE

}  // namespace cuda
}  // namespace rnn_ext
