// The CUDA executor of the partitioned loop: see persistent.h.  Each block
// runs partition.h's worker program with its blockIdx.x as k; its threads
// share the block's GEMM outputs and elements, with __syncthreads() between
// the phases that hand data from thread to thread, and grid.sync() as the
// workers' barrier (cooperative launch: every block is resident, or the
// launch fails instead of deadlocking).
#include <cooperative_groups.h>

#include "cuda/half_convert.cuh"
#include "cuda/mma_tile.cuh"
#include "cuda/persistent.h"

namespace cg = cooperative_groups;

namespace rnn_ext {
namespace cuda {
namespace {

template <typename T, typename Acc>
struct BlockExecutor {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static constexpr bool kTensorCores = mma_tile::Supported<T, Acc>::value;
#else
  static constexpr bool kTensorCores = false;
#endif
  __device__ partition::GateRows<T> resident_rows(const T* w, int64_t H, int64_t /*G*/,
                                                  int64_t Hin, partition::Slice u) {
    return {w + u.begin * Hin, H * Hin, Hin};
  }
  // fp16 and bf16 on sm_80 and newer: tensor cores (cuda/mma_tile.cuh), the
  // block's warps sharing the tiles of the G gates' rows (the rows of all
  // gates numbered as c's columns are, so a tile may span two gates).
  // Otherwise FFMA, one output per thread.
  __device__ void gemm_resident(int64_t m, int64_t k, const T* a, int64_t lda,
                                const partition::GateRows<T>& rows, int G, int64_t n, Acc* c,
                                int64_t ldc) {
    if constexpr (kTensorCores) {
      const mma::TileGemm g{m, k, G * n, lda, n, rows.gate_stride, rows.ld, ldc};
      mma_tile::block_tile_gemm(g, a, rows.w, c);
      __syncthreads();
    } else {
      for (int g = 0; g < G; ++g)
        gemm_nt(m, n, k, a, lda, rows.gate(g), rows.ld, c + g * n, ldc, false);
    }
  }
  // c[m, n] (+)= a[m, k] w[n, k]^T: one output per thread at a time, FFMA in Acc.
  __device__ void gemm_nt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                          const T* w, int64_t ldw, Acc* c, int64_t ldc, bool accumulate) {
    for (int64_t e = threadIdx.x; e < m * n; e += blockDim.x) {
      const int64_t i = e / n, j = e % n;
      Acc sum = accumulate ? c[i * ldc + j] : Acc(0);
      for (int64_t q = 0; q < k; ++q)
        sum += to_acc<Acc>(a[i * lda + q]) * to_acc<Acc>(w[j * ldw + q]);
      c[i * ldc + j] = sum;
    }
    __syncthreads();
  }
  // c[m, n] (+)= a[m, k] w[k, n].
  __device__ void gemm_nn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                          const T* w, int64_t ldw, Acc* c, int64_t ldc, bool accumulate) {
    for (int64_t e = threadIdx.x; e < m * n; e += blockDim.x) {
      const int64_t i = e / n, j = e % n;
      Acc sum = accumulate ? c[i * ldc + j] : Acc(0);
      for (int64_t q = 0; q < k; ++q)
        sum += to_acc<Acc>(a[i * lda + q]) * to_acc<Acc>(w[q * ldw + j]);
      c[i * ldc + j] = sum;
    }
    __syncthreads();
  }
  template <class F>
  __device__ void for_each(int64_t b0, int64_t b1, int64_t j0, int64_t j1, F f) {
    const int64_t width = j1 - j0;
    for (int64_t e = threadIdx.x; e < (b1 - b0) * width; e += blockDim.x)
      f(b0 + e / width, j0 + e % width);
    __syncthreads();
  }
  __device__ void elements(const LSTMForwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    for_each(0, p.B, j0, j1, [&](int64_t b, int64_t j) { lstm_forward_element(p, b, j); });
  }
  __device__ void elements(const LSTMBackwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    for_each(0, p.B, j0, j1, [&](int64_t b, int64_t j) { lstm_backward_element(p, b, j); });
  }
  __device__ void elements(const ProjGradStep<T, Acc>& p, int64_t j0, int64_t j1) {
    for_each(0, p.B, j0, j1, [&](int64_t b, int64_t j) { proj_grad_element(p, b, j); });
  }
  __device__ void elements(const GRUForwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    for_each(0, p.B, j0, j1, [&](int64_t b, int64_t j) { gru_forward_element(p, b, j); });
  }
  __device__ void elements(const GRUBackwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    for_each(0, p.B, j0, j1, [&](int64_t b, int64_t j) { gru_backward_element(p, b, j); });
  }
  __device__ void elements(const RNNForwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    for_each(0, p.B, j0, j1, [&](int64_t b, int64_t j) { rnn_forward_element(p, b, j); });
  }
  __device__ void elements(const RNNBackwardStep<T, Acc>& p, int64_t j0, int64_t j1) {
    for_each(0, p.B, j0, j1, [&](int64_t b, int64_t j) { rnn_backward_element(p, b, j); });
  }
  // grid.sync() also orders every block's global writes before the others'
  // reads after it.
  __device__ void barrier() { cg::this_grid().sync(); }
};

template <typename T, typename Acc>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    lstm_forward_kernel(const partition::LSTMForwardSeq<T, Acc> s) {
  BlockExecutor<T, Acc> ex;
  partition::lstm_forward_worker(s, blockIdx.x, ex);
}
template <typename T, typename Acc>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    lstm_backward_kernel(const partition::LSTMBackwardSeq<T, Acc> s) {
  BlockExecutor<T, Acc> ex;
  partition::lstm_backward_worker(s, blockIdx.x, ex);
}
template <typename T, typename Acc>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    gru_forward_kernel(const partition::GRUForwardSeq<T, Acc> s) {
  BlockExecutor<T, Acc> ex;
  partition::gru_forward_worker(s, blockIdx.x, ex);
}
template <typename T, typename Acc>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    gru_backward_kernel(const partition::GRUBackwardSeq<T, Acc> s) {
  BlockExecutor<T, Acc> ex;
  partition::gru_backward_worker(s, blockIdx.x, ex);
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    rnn_forward_kernel(const partition::RNNForwardSeq<T, Acc> s) {
  BlockExecutor<T, Acc> ex;
  partition::rnn_forward_worker(s, blockIdx.x, ex);
}
template <typename T, typename Acc>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    rnn_backward_kernel(const partition::RNNBackwardSeq<T, Acc> s) {
  BlockExecutor<T, Acc> ex;
  partition::rnn_backward_worker(s, blockIdx.x, ex);
}

template <class Seq>
cudaError_t launch(void (*kernel)(const Seq), const Seq& s, cudaStream_t stream) {
  if (s.workers <= 0) return cudaErrorInvalidValue;
  void* args[] = {const_cast<Seq*>(&s)};
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel),
                                     dim3(static_cast<unsigned>(s.workers)),
                                     dim3(kPersistentThreads), args, 0, stream);
}

template <class Kernel>
cudaError_t max_resident(Kernel kernel, int device, int* workers) {
  int per_sm = 0, sms = 0;
  cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, reinterpret_cast<const void*>(kernel), kPersistentThreads, 0);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  *workers = per_sm * sms;
  return cudaSuccess;
}

template <class Kernel>
cudaError_t resources(Kernel kernel, int* registers, int* shared_bytes) {
  cudaFuncAttributes a;
  const cudaError_t err = cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(kernel));
  if (err != cudaSuccess) return err;
  *registers = a.numRegs;
  *shared_bytes = static_cast<int>(a.sharedSizeBytes);
  return cudaSuccess;
}

}  // namespace

template <typename T, typename Acc>
cudaError_t persistent_resources(int kind, int* registers, int* shared_bytes) {
  switch (kind) {
    case 0: return resources(lstm_forward_kernel<T, Acc>, registers, shared_bytes);
    case 1: return resources(lstm_backward_kernel<T, Acc>, registers, shared_bytes);
    case 2: return resources(gru_forward_kernel<T, Acc>, registers, shared_bytes);
    case 3: return resources(gru_backward_kernel<T, Acc>, registers, shared_bytes);
    case 4: return resources(rnn_forward_kernel<T, Acc>, registers, shared_bytes);
    default: return resources(rnn_backward_kernel<T, Acc>, registers, shared_bytes);
  }
}

template <typename T, typename Acc>
cudaError_t persistent_max_workers(int device, int kind, int* workers) {
  switch (kind) {
    case 0: return max_resident(lstm_forward_kernel<T, Acc>, device, workers);
    case 1: return max_resident(lstm_backward_kernel<T, Acc>, device, workers);
    case 2: return max_resident(gru_forward_kernel<T, Acc>, device, workers);
    case 3: return max_resident(gru_backward_kernel<T, Acc>, device, workers);
    case 4: return max_resident(rnn_forward_kernel<T, Acc>, device, workers);
    default: return max_resident(rnn_backward_kernel<T, Acc>, device, workers);
  }
}

template <typename T, typename Acc>
cudaError_t lstm_forward_persistent(const partition::LSTMForwardSeq<T, Acc>& s, cudaStream_t stream) {
  return launch(lstm_forward_kernel<T, Acc>, s, stream);
}
template <typename T, typename Acc>
cudaError_t lstm_backward_persistent(const partition::LSTMBackwardSeq<T, Acc>& s, cudaStream_t stream) {
  return launch(lstm_backward_kernel<T, Acc>, s, stream);
}
template <typename T, typename Acc>
cudaError_t gru_forward_persistent(const partition::GRUForwardSeq<T, Acc>& s, cudaStream_t stream) {
  return launch(gru_forward_kernel<T, Acc>, s, stream);
}
template <typename T, typename Acc>
cudaError_t gru_backward_persistent(const partition::GRUBackwardSeq<T, Acc>& s, cudaStream_t stream) {
  return launch(gru_backward_kernel<T, Acc>, s, stream);
}

template <typename T, typename Acc>
cudaError_t rnn_forward_persistent(const partition::RNNForwardSeq<T, Acc>& s, cudaStream_t stream) {
  return launch(rnn_forward_kernel<T, Acc>, s, stream);
}
template <typename T, typename Acc>
cudaError_t rnn_backward_persistent(const partition::RNNBackwardSeq<T, Acc>& s, cudaStream_t stream) {
  return launch(rnn_backward_kernel<T, Acc>, s, stream);
}

#define RNN_EXT_INSTANTIATE(T, Acc)                                                          \
  template cudaError_t persistent_max_workers<T, Acc>(int, int, int*);                       \
  template cudaError_t persistent_resources<T, Acc>(int, int*, int*);                        \
  template cudaError_t lstm_forward_persistent<T, Acc>(                                      \
      const partition::LSTMForwardSeq<T, Acc>&, cudaStream_t);                               \
  template cudaError_t lstm_backward_persistent<T, Acc>(                                     \
      const partition::LSTMBackwardSeq<T, Acc>&, cudaStream_t);                              \
  template cudaError_t gru_forward_persistent<T, Acc>(const partition::GRUForwardSeq<T, Acc>&, \
                                                      cudaStream_t);                         \
  template cudaError_t gru_backward_persistent<T, Acc>(                                      \
      const partition::GRUBackwardSeq<T, Acc>&, cudaStream_t);                               \
  template cudaError_t rnn_forward_persistent<T, Acc>(const partition::RNNForwardSeq<T, Acc>&, \
                                                      cudaStream_t);                         \
  template cudaError_t rnn_backward_persistent<T, Acc>(                                      \
      const partition::RNNBackwardSeq<T, Acc>&, cudaStream_t);
RNN_EXT_INSTANTIATE(float, float)
RNN_EXT_INSTANTIATE(double, double)
RNN_EXT_INSTANTIATE(__half, float)
RNN_EXT_INSTANTIATE(__nv_bfloat16, float)
#undef RNN_EXT_INSTANTIATE

}  // namespace cuda
}  // namespace rnn_ext
