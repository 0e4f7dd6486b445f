// CUDA implementations of the rnn_ext ops: the stepwise time loop of
// sequence.h with cuBLASLt GEMMs on raw pointers (ops/cublas_gemm.h) and the
// CUDA pointwise kernels, on PyTorch's current stream; or, when asked for,
// the persistent kernels.  Compiled only when the extension is built with CUDA.
#include <torch/library.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>
#include <tuple>

#include "cuda/persistent.h"
#include "ops/cublas_gemm.h"
#include "cuda/rnn_cuda.h"
#include "ops/partitioned.h"
#include "rnn_ext/fit.h"

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
  template <typename KT>
  using Gemm = cuda_blas::LtGemm<KT>;

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

using StepwiseCudaLoops = StepwiseLoops<CudaSteps>;

// fp32 products of the persistent kernels on the tf32 tile: the switch the
// stepwise path's cuBLASLt GEMMs follow (torch.backends.cuda.matmul.
// allow_tf32), read at each op call, by the fit rule (which sizes for the
// kernel variant that will run) and the launch alike.  The kernels use it
// for fp32 only.
inline bool allow_tf32() { return at::globalContext().allowTF32CuBLAS(); }

// The fit rule (rnn_ext/fit.h) for one layer direction on this device,
// with the compiled resources of the persistent kernel of `kind` (see
// cuda/persistent.h) for ATen's dtype T, in the variant allow_tf32 selects.
// directions = 2: both directions of a bidirectional layer in one launch.
template <typename T>
fit::Decision persistent_fit(int kind, int64_t B, int64_t H, int64_t G, int64_t Hin,
                             const Tensor& like, int64_t directions = 1) {
  using K_ = typename CudaType<T>::type;
  int registers = 0, shared = 0;
  check_launch(cuda::persistent_resources<K_, at::opmath_type<T>>(kind, allow_tf32(), &registers,
                                                                  &shared));
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(like.get_device());
  const fit::DeviceLimits device{prop->multiProcessorCount, prop->regsPerMultiprocessor,
                                 static_cast<int64_t>(prop->sharedMemPerMultiprocessor),
                                 prop->maxBlocksPerMultiProcessor,
                                 prop->maxThreadsPerMultiProcessor,
                                 static_cast<int64_t>(prop->sharedMemPerBlockOptin)};
  const fit::KernelResources kernel{registers, cuda::kPersistentThreads, shared};
  fit::Layer layer{H, Hin, G, B, static_cast<int64_t>(sizeof(K_))};
  layer.backward = kind % 2 == 1;
  layer.directions = directions;
  return fit::decide(layer, device, kernel);
}

// The forward kernel of a cell (the larger of the two): 0 LSTM, 2 GRU, 4 RNN.
inline int forward_kind(int64_t G) { return G == 4 ? 0 : (G == 3 ? 2 : 4); }

// The CUDA pieces of the partitioned loop (ops/partitioned.h): one
// cooperative launch per layer direction (cuda/persistent.h).  NOT YET RUN
// ON A GPU: used only when RNN_EXT_CUDA_PERSISTENT is set.
struct CudaRunner {
  template <typename T>
  using kernel_type = typename CudaType<T>::type;

  // The fit rule's workers for the layer direction's forward or backward
  // kernel (each sizes its own shared memory, so the two may differ);
  // where the rule admits none (the kernels forced by
  // RNN_EXT_CUDA_PERSISTENT=force), one per 8 units up to as many as can be
  // resident at once without the weights in shared memory (the cooperative
  // launch's limit; the launch then leaves them in global memory).
  static int64_t workers(int64_t B, int64_t H, int64_t G, int64_t Hin, const Tensor& like,
                         bool backward) {
    return workers_per_direction(B, H, G, Hin, like, backward, 1);
  }
  // Both directions in one launch: the fit rule's count for 2K blocks, per
  // direction, doubled (NOT YET RUN ON A GPU).
  static int64_t pair_workers(int64_t B, int64_t H, int64_t G, int64_t Hin, const Tensor& like,
                              bool backward) {
    return 2 * workers_per_direction(B, H, G, Hin, like, backward, 2);
  }
  static int64_t workers_per_direction(int64_t B, int64_t H, int64_t G, int64_t Hin,
                                       const Tensor& like, bool backward, int64_t directions) {
    const int kind = forward_kind(G) + (backward ? 1 : 0);
    int64_t workers = 0;
    int limit = 0;
    RNN_EXT_DISPATCH(like.scalar_type(), "rnn_ext::persistent_workers", [&] {
      using K_ = kernel_type<scalar_t>;
      using A_ = at::opmath_type<scalar_t>;
      workers = persistent_fit<scalar_t>(kind, B, H, G, Hin, like, directions).workers;
      check_launch(cuda::persistent_max_workers<K_, A_>(like.get_device(), kind, allow_tf32(), &limit));
    });
    TORCH_CHECK(limit >= directions, "rnn_ext: the persistent CUDA kernels cannot be resident on ",
                like.device());
    if (workers > 0) return workers;
    return std::max<int64_t>(1, std::min<int64_t>(limit / directions, (H + 7) / 8));
  }
  static int64_t align(int64_t H, int64_t workers) { return fit::unit_align(H, workers); }
  // Testing h0 on the host would synchronise with the device.
  static bool h0_zero(const Tensor&, int64_t) { return false; }
  static Tensor active(const Lengths& L, const Tensor& like) {
    if (!L.prefix) return Tensor();
    return at::tensor(L.active, at::kLong).to(like.device());
  }
  template <class Seq>
  static void lstm_forward(const Seq& s, int64_t) { check_launch(cuda::lstm_forward_persistent(s, stream(), allow_tf32())); }
  template <class Seq>
  static void lstm_backward(const Seq& s, int64_t) { check_launch(cuda::lstm_backward_persistent(s, stream(), allow_tf32())); }
  template <class Seq>
  static void gru_forward(const Seq& s, int64_t) { check_launch(cuda::gru_forward_persistent(s, stream(), allow_tf32())); }
  template <class Seq>
  static void gru_backward(const Seq& s, int64_t) { check_launch(cuda::gru_backward_persistent(s, stream(), allow_tf32())); }
  template <class Seq>
  static void rnn_forward(const Seq& s, int64_t) { check_launch(cuda::rnn_forward_persistent(s, stream(), allow_tf32())); }
  template <class Seq>
  static void rnn_backward(const Seq& s, int64_t) { check_launch(cuda::rnn_backward_persistent(s, stream(), allow_tf32())); }
  // Both directions in one cooperative launch of a.workers + b.workers
  // blocks.  NOT YET RUN ON A GPU.
  template <class Seq>
  static void lstm_forward_pair(const Seq& a, const Seq& b, int64_t) { check_launch(cuda::lstm_forward_persistent_pair(a, b, stream(), allow_tf32())); }
  template <class Seq>
  static void lstm_backward_pair(const Seq& a, const Seq& b, int64_t) { check_launch(cuda::lstm_backward_persistent_pair(a, b, stream(), allow_tf32())); }
  template <class Seq>
  static void gru_forward_pair(const Seq& a, const Seq& b, int64_t) { check_launch(cuda::gru_forward_persistent_pair(a, b, stream(), allow_tf32())); }
  template <class Seq>
  static void gru_backward_pair(const Seq& a, const Seq& b, int64_t) { check_launch(cuda::gru_backward_persistent_pair(a, b, stream(), allow_tf32())); }
  template <class Seq>
  static void rnn_forward_pair(const Seq& a, const Seq& b, int64_t) { check_launch(cuda::rnn_forward_persistent_pair(a, b, stream(), allow_tf32())); }
  template <class Seq>
  static void rnn_backward_pair(const Seq& a, const Seq& b, int64_t) { check_launch(cuda::rnn_backward_persistent_pair(a, b, stream(), allow_tf32())); }

 private:
  static cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }
};

using PersistentCudaLoops = PartitionedLoops<CudaRunner>;

// The persistent kernels have not run on a GPU yet: they are used only when
// asked for.  RNN_EXT_CUDA_PERSISTENT unset, empty or 0: never; "force":
// always (tests of the kernels); anything else (1): where the fit rule says
// they fit, the stepwise loop elsewhere.
enum class Persistent { off, fit, force };

Persistent persistent_mode() {
  const char* v = std::getenv("RNN_EXT_CUDA_PERSISTENT");
  if (v == nullptr || std::strcmp(v, "") == 0 || std::strcmp(v, "0") == 0) return Persistent::off;
  return std::strcmp(v, "force") == 0 ? Persistent::force : Persistent::fit;
}

// kind: the kernel (cuda/persistent.h); B rows; w_hh [G * H, Hin].
template <typename T>
bool use_persistent(int kind, int64_t G, int64_t B, const Tensor& w_hh) {
  switch (persistent_mode()) {
    case Persistent::off: return false;
    case Persistent::force: return true;
    default:
      return persistent_fit<T>(kind, B, w_hh.size(0) / G, G, w_hh.size(1), w_hh).persistent;
  }
}

// Both directions in one launch (w_hh [2, G * H, Hin]): as use_persistent,
// with the fit rule for 2K blocks.
template <typename T>
bool use_persistent_pair(int kind, int64_t G, int64_t B, const Tensor& w_hh) {
  switch (persistent_mode()) {
    case Persistent::off: return false;
    case Persistent::force: return true;
    default:
      return persistent_fit<T>(kind, B, w_hh.size(1) / G, G, w_hh.size(2), w_hh, 2).persistent;
  }
}

// Each op runs the stepwise loops, or the persistent ones when asked for
// (and, unless forced, where they fit).  B is the batch of the op's first
// argument (input gates, or the output's gradient).
struct CudaLoops {
#define RNN_EXT_CUDA_ROUTE(name, kind, G, w_hh_index)                                  \
  template <typename T, typename... Args>                                              \
  static auto name(const Args&... args) {                                              \
    const auto a = std::forward_as_tuple(args...);                                     \
    return use_persistent<T>(kind, G, std::get<0>(a).size(1), std::get<w_hh_index>(a)) \
               ? PersistentCudaLoops::name<T>(args...)                                 \
               : StepwiseCudaLoops::name<T>(args...);                                  \
  }
  RNN_EXT_CUDA_ROUTE(lstm_forward, 0, 4, 1)
  RNN_EXT_CUDA_ROUTE(lstm_backward, 1, 4, 3)
  RNN_EXT_CUDA_ROUTE(gru_forward, 2, 3, 1)
  RNN_EXT_CUDA_ROUTE(gru_backward, 3, 3, 2)
  RNN_EXT_CUDA_ROUTE(rnn_forward, 4, 1, 1)
  RNN_EXT_CUDA_ROUTE(rnn_backward, 5, 1, 2)
#undef RNN_EXT_CUDA_ROUTE

  // The pair ops (both directions stacked on a leading dimension of 2):
  // with the persistent kernels asked for and the pair fitting (the fit
  // rule for 2K blocks), one cooperative launch of both directions
  // (*_persistent_pair; NOT YET RUN ON A GPU); otherwise each half through
  // the single-direction routes above, one after the other, which by
  // default is the stepwise loop, as for two single-direction calls.  B is
  // dimension 2 of the first argument ([2, T, B, ...]).
#define RNN_EXT_CUDA_PAIR_ROUTE(name, kind, G, w_hh_index)                                 \
  template <typename T, typename... Args>                                                  \
  static auto name(const Args&... args) {                                                  \
    const auto a = std::forward_as_tuple(args...);                                         \
    return use_persistent_pair<T>(kind, G, std::get<0>(a).size(2), std::get<w_hh_index>(a)) \
               ? PersistentCudaLoops::name<T>(args..., /*together=*/true)                   \
               : PairOfSingles<CudaLoops>::name<T>(args...);                                \
  }
  RNN_EXT_CUDA_PAIR_ROUTE(lstm_forward_pair, 0, 4, 1)
  RNN_EXT_CUDA_PAIR_ROUTE(lstm_backward_pair, 1, 4, 3)
  RNN_EXT_CUDA_PAIR_ROUTE(gru_forward_pair, 2, 3, 1)
  RNN_EXT_CUDA_PAIR_ROUTE(gru_backward_pair, 3, 3, 2)
  RNN_EXT_CUDA_PAIR_ROUTE(rnn_forward_pair, 4, 1, 1)
  RNN_EXT_CUDA_PAIR_ROUTE(rnn_backward_pair, 5, 1, 2)
#undef RNN_EXT_CUDA_PAIR_ROUTE
};

// The dispatcher does not set the device for custom ops: each entry point
// guards it.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cuda(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  c10::cuda::CUDAGuard guard(gx.device());
  return lstm_forward<CudaLoops>(gx, w_hh, b_hh, w_hr, h0, c0, lengths);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& h0,
    const Tensor& c0, const Tensor& y, const Tensor& ws, const Tensor& proj_in,
    const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
  c10::cuda::CUDAGuard guard(y.device());
  return lstm_backward<CudaLoops>(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0,
                                  c0, y, ws, proj_in, lengths, grad_ws, grad_h0);
}

std::tuple<Tensor, Tensor, Tensor> gru_forward_cuda(const Tensor& gx,
                                                    const Tensor& w_hh,
                                                    const OptTensor& b_hh,
                                                    const Tensor& h0,
                                                    const OptTensor& lengths) {
  c10::cuda::CUDAGuard guard(gx.device());
  return gru_forward<CudaLoops>(gx, w_hh, b_hh, h0, lengths);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws, bool grad_h0) {
  c10::cuda::CUDAGuard guard(y.device());
  return gru_backward<CudaLoops>(grad_y, grad_h_n, w_hh, h0, y, ws, lengths,
                                 grad_ws, grad_h0);
}

std::tuple<Tensor, Tensor, Tensor> lstm_infer_cuda(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& h0, const Tensor& c0,
    const OptTensor& lengths) {
  c10::cuda::CUDAGuard guard(gx.device());
  return lstm_infer<CudaLoops>(gx, w_hh, b_hh, w_hr, h0, c0, lengths);
}

std::tuple<Tensor, Tensor> gru_infer_cuda(const Tensor& gx, const Tensor& w_hh,
                                          const OptTensor& b_hh, const Tensor& h0,
                                          const OptTensor& lengths) {
  c10::cuda::CUDAGuard guard(gx.device());
  return gru_infer<CudaLoops>(gx, w_hh, b_hh, h0, lengths);
}

std::tuple<Tensor, Tensor, Tensor> rnn_forward_cuda(
    const Tensor& gx, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& lengths, c10::string_view nonlinearity) {
  c10::cuda::CUDAGuard guard(gx.device());
  return rnn_forward<CudaLoops>(gx, w_hh, b_hh, h0, lengths, nonlinearity);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& ws,
    const OptTensor& lengths, const OptTensor& grad_ws,
    c10::string_view nonlinearity, bool grad_h0) {
  c10::cuda::CUDAGuard guard(y.device());
  return rnn_backward<CudaLoops>(grad_y, grad_h_n, w_hh, h0, y, ws, lengths,
                                 grad_ws, nonlinearity, grad_h0);
}

std::tuple<Tensor, Tensor> rnn_infer_cuda(const Tensor& gx, const Tensor& w_hh,
                                          const OptTensor& b_hh, const Tensor& h0,
                                          const OptTensor& lengths,
                                          c10::string_view nonlinearity) {
  c10::cuda::CUDAGuard guard(gx.device());
  return rnn_infer<CudaLoops>(gx, w_hh, b_hh, h0, lengths, nonlinearity);
}

// An entry point on the device of its first tensor argument.
template <auto Fn, class Sig>
struct DeviceGuarded;
template <auto Fn, class R, class... Args>
struct DeviceGuarded<Fn, R (*)(Args...)> {
  static R call(Args... args) {
    c10::cuda::CUDAGuard guard(std::get<0>(std::forward_as_tuple(args...)).device());
    return Fn(args...);
  }
};
#define RNN_EXT_GUARDED(f) &DeviceGuarded<&f, decltype(&f)>::call

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, CUDA, m) {
  m.impl("lstm_pair_forward", RNN_EXT_GUARDED(lstm_pair_forward<CudaLoops>));
  m.impl("lstm_pair_infer", RNN_EXT_GUARDED(lstm_pair_infer<CudaLoops>));
  m.impl("lstm_pair_backward", RNN_EXT_GUARDED(lstm_pair_backward<CudaLoops>));
  m.impl("gru_pair_forward", RNN_EXT_GUARDED(gru_pair_forward<CudaLoops>));
  m.impl("gru_pair_infer", RNN_EXT_GUARDED(gru_pair_infer<CudaLoops>));
  m.impl("gru_pair_backward", RNN_EXT_GUARDED(gru_pair_backward<CudaLoops>));
  m.impl("rnn_pair_forward", RNN_EXT_GUARDED(rnn_pair_forward<CudaLoops>));
  m.impl("rnn_pair_infer", RNN_EXT_GUARDED(rnn_pair_infer<CudaLoops>));
  m.impl("rnn_pair_backward", RNN_EXT_GUARDED(rnn_pair_backward<CudaLoops>));
  m.impl("lstm_forward", &lstm_forward_cuda);
  m.impl("lstm_infer", &lstm_infer_cuda);
  m.impl("gru_infer", &gru_infer_cuda);
  m.impl("lstm_backward", &lstm_backward_cuda);
  m.impl("gru_forward", &gru_forward_cuda);
  m.impl("gru_backward", &gru_backward_cuda);
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("rnn_backward", &rnn_backward_cuda);
  m.impl("rnn_infer", &rnn_infer_cuda);
}

}  // namespace rnn_ext
