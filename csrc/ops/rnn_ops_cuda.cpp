// CUDA implementations of the rnn_ext ops: the time loop of sequence.h with
// the CUDA pointwise kernels, on PyTorch's current stream.  Compiled only
// when the extension is built with CUDA.
#include <torch/library.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/rnn_cuda.h"
#include "ops/sequence.h"

namespace rnn_ext {
namespace {

template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

inline void check_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "rnn_ext: CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

struct CudaSteps {
  template <typename T>
  using kernel_type = typename CudaType<T>::type;

  static cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }
  template <class T, class A>
  static void lstm_forward(const LSTMForwardStep<T, A>& p) { check_launch(cuda::lstm_forward_step(p, stream())); }
  template <class T, class A>
  static void lstm_backward(const LSTMBackwardStep<T, A>& p) { check_launch(cuda::lstm_backward_step(p, stream())); }
  template <class T, class A>
  static void proj_grad(const ProjGradStep<T, A>& p) { check_launch(cuda::proj_grad_step(p, stream())); }
  template <class T, class A>
  static void gru_forward(const GRUForwardStep<T, A>& p) { check_launch(cuda::gru_forward_step(p, stream())); }
  template <class T, class A>
  static void gru_backward(const GRUBackwardStep<T, A>& p) { check_launch(cuda::gru_backward_step(p, stream())); }
  template <class T, class A>
  static void rnn_forward(const RNNForwardStep<T, A>& p) { check_launch(cuda::rnn_forward_step(p, stream())); }
  template <class T, class A>
  static void rnn_backward(const RNNBackwardStep<T, A>& p) { check_launch(cuda::rnn_backward_step(p, stream())); }
};

// The dispatcher does not set the device for custom ops: each entry point
// guards it.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cuda(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  c10::cuda::CUDAGuard guard(gx.device());
  return lstm_forward<CudaSteps>(gx, w_hh, b_hh, w_hr, h0, c0, lengths);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
    const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
    const OptTensor& lengths, const OptTensor& grad_ws) {
  c10::cuda::CUDAGuard guard(y.device());
  return lstm_backward<CudaSteps>(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0,
                                  c0, y, ws, proj_in, lengths, grad_ws);
}

std::tuple<Tensor, Tensor, Tensor> gru_forward_cuda(const Tensor& gx,
                                                    const Tensor& w_hh,
                                                    const OptTensor& b_hh,
                                                    const Tensor& h0,
                                                    const OptTensor& lengths) {
  c10::cuda::CUDAGuard guard(gx.device());
  return gru_forward<CudaSteps>(gx, w_hh, b_hh, h0, lengths);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws) {
  c10::cuda::CUDAGuard guard(y.device());
  return gru_backward<CudaSteps>(grad_y, grad_h_n, w_hh, h0, y, ws, lengths,
                                 grad_ws);
}

std::tuple<Tensor, Tensor, Tensor> rnn_forward_cuda(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& lengths, c10::string_view nonlinearity) {
  c10::cuda::CUDAGuard guard(gx.device());
  return rnn_forward<CudaSteps>(gx, w_hh, b_hh, h0, lengths, nonlinearity);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws,
    c10::string_view nonlinearity) {
  c10::cuda::CUDAGuard guard(y.device());
  return rnn_backward<CudaSteps>(grad_y, grad_h_n, w_hh, h0, y, ws, lengths,
                                 grad_ws, nonlinearity);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward_cuda);
  m.impl("lstm_backward", &lstm_backward_cuda);
  m.impl("gru_forward", &gru_forward_cuda);
  m.impl("gru_backward", &gru_backward_cuda);
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("rnn_backward", &rnn_backward_cuda);
}

}  // namespace rnn_ext
