// The CUDA executor of the partitioned loop (rnn_ext/partition.h): one
// cooperative launch per layer direction runs the whole sequence; each
// thread block is a worker that owns a slice of hidden units, and the
// workers meet at a grid-wide barrier once per step (twice with a
// projection).  Raw pointers, sizes and a stream in, a cudaError_t out: no
// PyTorch here.
//
// NOT YET RUN ON A GPU.  Each block copies its worker's W_hh rows (forward)
// or columns (backward), and W_hr's with a projection, into its dynamic
// shared memory once before the time loop (layout and sizes: resident.h;
// the launch requests exactly the bytes the fit rule admitted, or none
// where they would not fit, and the workers then read in place); every
// step multiplies from there: fp16/bf16 products (forward and backward) on tensor cores
// (mma_tile.cuh, sm_80+, m16n8k16); fp32 ones on tensor cores too (the tf32
// m16n8k8 tile, operands rounded to tf32) where `tf32` is true, which the
// ops pass as torch.backends.cuda.matmul.allow_tf32 (at::globalContext().
// allowTF32CuBLAS(), read per call), else FFMA in fp32; fp64 always FFMA
// (`tf32` ignored for every dtype but fp32).  The two fp32 paths are two
// instantiations of each kernel, with their own registers: the fit rule
// asks for the resources of the one the call runs.
// The CUDA ops use it only when RNN_EXT_CUDA_PERSISTENT=1; "auto" never does.
#pragma once

#include <cuda_runtime.h>

#include "rnn_ext/partition.h"

namespace rnn_ext {
namespace cuda {

constexpr int kPersistentThreads = 256;

// The most workers (blocks) of each kernel that can be resident at once on
// `device` without dynamic shared memory, which a cooperative launch
// requires: the limit where the fit rule admits no worker count.
template <typename T, typename Acc>
cudaError_t persistent_max_workers(int device, int kind, bool tf32, int* workers);
// kind: 0 LSTM forward, 1 LSTM backward, 2 GRU forward, 3 GRU backward,
// 4 RNN forward, 5 RNN backward.

// The compiled resources of a kernel (cudaFuncGetAttributes), for the fit
// rule (rnn_ext/fit.h): registers per thread and static shared memory (the
// weights' dynamic shared memory comes on top).
// tf32: of the variant a call with that flag runs (fp32 has two, the tf32
// tile's and FFMA's; every other dtype one, whatever the flag).
template <typename T, typename Acc>
cudaError_t persistent_resources(int kind, bool tf32, int* registers, int* shared_bytes);

template <typename T, typename Acc>
cudaError_t lstm_forward_persistent(const partition::LSTMForwardSeq<T, Acc>& s, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t lstm_backward_persistent(const partition::LSTMBackwardSeq<T, Acc>& s, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t gru_forward_persistent(const partition::GRUForwardSeq<T, Acc>& s, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t gru_backward_persistent(const partition::GRUBackwardSeq<T, Acc>& s, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t rnn_forward_persistent(const partition::RNNForwardSeq<T, Acc>& s, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t rnn_backward_persistent(const partition::RNNBackwardSeq<T, Acc>& s, cudaStream_t stream,
                                   bool tf32);

// Both directions of a bidirectional layer in one cooperative launch of
// a.workers + b.workers blocks, one grid barrier per phase for both
// (partition::pair_worker); the two must pass the same barriers
// (partition::same_barriers: same steps, a projection in both or neither),
// else cudaErrorInvalidValue.  NOT YET RUN ON A GPU.  The pair ops
// (rnn_ext::*_pair_forward, _infer, _backward) call them when
// RNN_EXT_CUDA_PERSISTENT is set and the pair fits (ops/rnn_ops_cuda.cpp).
template <typename T, typename Acc>
cudaError_t lstm_forward_persistent_pair(const partition::LSTMForwardSeq<T, Acc>& a,
                                   const partition::LSTMForwardSeq<T, Acc>& b, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t lstm_backward_persistent_pair(const partition::LSTMBackwardSeq<T, Acc>& a,
                                   const partition::LSTMBackwardSeq<T, Acc>& b, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t gru_forward_persistent_pair(const partition::GRUForwardSeq<T, Acc>& a,
                                   const partition::GRUForwardSeq<T, Acc>& b, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t gru_backward_persistent_pair(const partition::GRUBackwardSeq<T, Acc>& a,
                                   const partition::GRUBackwardSeq<T, Acc>& b, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t rnn_forward_persistent_pair(const partition::RNNForwardSeq<T, Acc>& a,
                                   const partition::RNNForwardSeq<T, Acc>& b, cudaStream_t stream,
                                   bool tf32);
template <typename T, typename Acc>
cudaError_t rnn_backward_persistent_pair(const partition::RNNBackwardSeq<T, Acc>& a,
                                   const partition::RNNBackwardSeq<T, Acc>& b, cudaStream_t stream,
                                   bool tf32);

}  // namespace cuda
}  // namespace rnn_ext
