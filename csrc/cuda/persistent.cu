// The CUDA executor of the partitioned loop: see persistent.h.  Each block
// runs partition.h's worker program with its blockIdx.x as k; its threads
// share the block's GEMM outputs and elements, with __syncthreads() between
// the phases that hand data from thread to thread, and grid.sync() as the
// workers' barrier (cooperative launch: every block is resident, or the
// launch fails instead of deadlocking).  A worker's weights are copied once
// into its block's dynamic shared memory (layout: resident.h) and every
// step's product reads them there.  A launch runs one layer direction, or
// both directions of a bidirectional layer (partition::pair_worker).
// The per-step products: fp16/bf16 on the m16n8k16 tensor-core tile; fp32
// on the tf32 m16n8k8 tile where the call's `tf32` flag is set (the ops set
// it from torch.backends.cuda.matmul.allow_tf32, per call), else FFMA in
// fp32; fp64 always FFMA.  fp32's two paths are two instantiations of each
// kernel (kTf32), not a runtime branch: the tf32 tile (and the forward
// kernels' register-resident fragments) needs registers the FFMA kernel,
// the default (allow_tf32 is off by default), should not pay for (sm_90:
// the fp32 LSTM kernels would go from two blocks per SM to one).  So the
// compiled resources, which the fit rule reads (persistent_resources,
// persistent_max_workers), are asked for the variant that runs; both read
// the same fp32 weights in shared memory (resident.h).
#include <cooperative_groups.h>

#include "cuda/half_convert.cuh"
#include "cuda/mma_tile.cuh"
#include "cuda/persistent.h"
#include "cuda/resident.h"

namespace cg = cooperative_groups;

namespace rnn_ext {
namespace cuda {
namespace {

// The launch's dynamic shared memory: the worker's weights (resident.h).
extern __shared__ __align__(16) unsigned char resident_shared[];

__device__ __forceinline__ int64_t dynamic_shared_bytes() {
  unsigned bytes;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
  return bytes;
}

// kRegisterChunks > 0: the forward's W_hh fragments held in registers
// across steps where a warp's share fits that many chunks of K (below).
// kTf32: fp32's products on the tf32 tile (the allow_tf32 instantiation;
// false for every other dtype).
template <typename T, typename Acc, bool kTf32, int kRegisterChunks = 0>
struct BlockExecutor {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static constexpr bool kTensorCores = mma_tile::Supported<T, Acc>::value;
  static constexpr bool kTf32Tile = kTf32 && mma_tile::SupportsTf32<T, Acc>::value;
#else
  static constexpr bool kTensorCores = false;
  static constexpr bool kTf32Tile = false;
#endif
  static_assert(!(kTensorCores && kTf32Tile), "one tile form per dtype");
  // What is left of the block's dynamic shared memory.  Every thread holds
  // the same copy and takes the same regions, so no thread waits for another
  // to learn where a region is.
  resident::Shelf shelf;
  // The tensor-core tile's A fragments of the first weights resident_rows
  // places that fit (W_hh; with a projection, W_hr only where W_hh does
  // not fit; the other is read from shared memory), held in registers for
  // the whole time loop where every row tile has a warp and a warp's chunk
  // range fits kRegisterChunks chunks of K (4 registers each): K split
  // across the warps of a row tile (mma_layout.h's KSplit: floor(warps /
  // row tiles) warps a row tile, contiguous chunk ranges, the partials
  // reduced in part order through split_scratch()).  resident_key is then
  // those weights' GateRows::w, else null and every product gathers A from
  // shared memory (the fallback).  Never both tile forms: the fragments are
  // gathered for the one this launch runs.
  static constexpr int kHeldChunks = kRegisterChunks > 0 ? kRegisterChunks : 1;
  mma_tile::ResidentA<kHeldChunks> resident_a;
  const T* resident_key;

  // Before the time loop: the worker's rows of w (G gates of units u, Hin
  // each) transposed into shared memory, [Hin, G*|u|] (GateRows::wt), so
  // that a step's product is one [m, Hin] x [Hin, G*|u|] product whose
  // threads read consecutive elements of a weight row.  Where the launch
  // gave too little shared memory (it could not be co-resident with it),
  // the rows stay in place in global memory.
  __device__ partition::GateRows<T> resident_rows(const T* w, int64_t H, int64_t G, int64_t Hin,
                                                  partition::Slice u) {
    partition::GateRows<T> rows{w + u.begin * Hin, H * Hin, Hin};
    const int64_t nu = u.size();
    T* copy = nu > 0 ? shelf.take<T>(Hin * G * nu) : nullptr;
    if (copy != nullptr) {
      resident::pack_rows_transposed(rows, G, nu, Hin, copy, threadIdx.x, blockDim.x);
      rows.wt = copy;
    }
    __syncthreads();
    if constexpr (kRegisterChunks > 0 && (kTensorCores || kTf32Tile))
      hold_in_registers(rows, static_cast<int>(G), nu, Hin);
    return rows;
  }
  // Gathers the first weights' A fragments into registers where they fit
  // (see resident_a), from the copy just made (or in place).
  __device__ void hold_in_registers(const partition::GateRows<T>& rows, int G, int64_t nu,
                                    int64_t Hin) {
    if (resident_key != nullptr || nu <= 0) return;
    const int warps = static_cast<int>(blockDim.x / mma::kWarp);
    const T* w = rows.wt != nullptr ? rows.wt : rows.w;
    if constexpr (kTensorCores) {
      const auto g = resident_tile<mma::TileGemm>(1, Hin, Hin, rows, G, nu, G * nu);
      if (!mma::fits_registers(g, warps, kRegisterChunks)) return;
      mma_tile::gather_resident<kRegisterChunks>(g, w, resident_a);
      resident_key = rows.w;
    } else {  // kTf32Tile (the caller's condition)
      const auto g = resident_tile<mma::TileGemmTf32>(1, Hin, Hin, rows, G, nu, G * nu);
      if (!mma::fits_registers(g, warps, kRegisterChunks)) return;
      mma_tile::gather_resident<kRegisterChunks>(g, w, resident_a);
      resident_key = rows.w;
    }
  }
  // Whether gemm_resident's rows are the ones held in registers.
  __device__ bool held(const partition::GateRows<T>& rows) const {
    return kRegisterChunks > 0 && resident_key != nullptr && rows.w == resident_key;
  }
  // Before the time loop: the [k, |cols|] block of w [k, ldw] into shared
  // memory, rows |cols| apart (the backward's operand); in place where it
  // does not fit, as above.
  __device__ partition::ResidentColumns<T> resident_columns(const T* w, int64_t ldw, int64_t k,
                                                            partition::Slice cols) {
    const int64_t n = cols.size();
    T* copy = n > 0 ? shelf.take<T>(k * n) : nullptr;
    if (copy != nullptr)
      resident::pack_columns(w + cols.begin, ldw, k, n, copy, threadIdx.x, blockDim.x);
    __syncthreads();
    if (copy == nullptr) return {w + cols.begin, ldw};
    return {copy, n};
  }
  // fp16 and bf16 on sm_80 and newer: tensor cores (cuda/mma_tile.cuh), the
  // block's warps sharing the tiles of the G gates' rows (the rows of all
  // gates numbered as c's columns are, so a tile may span two gates); fp32
  // the same on the tf32 tile where asked for.  Otherwise FFMA, one output
  // per thread.
  __device__ void gemm_resident(int64_t m, int64_t k, const T* a, int64_t lda,
                                const partition::GateRows<T>& rows, int G, int64_t n, Acc* c,
                                int64_t ldc) {
    const T* w = rows.wt != nullptr ? rows.wt : rows.w;
    if constexpr (kTensorCores) {
      tile_product(resident_tile<mma::TileGemm>(m, k, lda, rows, G, n, ldc), a, w, c, held(rows));
    } else {
      if constexpr (kTf32Tile) {
        tile_product(resident_tile<mma::TileGemmTf32>(m, k, lda, rows, G, n, ldc), a, w, c,
                     held(rows));
        return;
      }
      // The G gates side by side in the copy: columns g*n + j of c.
      if (rows.wt != nullptr) return gemm_nn_ffma(m, G * n, k, a, lda, rows.wt, G * n, c, ldc, false);
      for (int g = 0; g < G; ++g)
        gemm_nt(m, n, k, a, lda, rows.gate(g), rows.ld, c + g * n, ldc, false);
    }
  }
  // The register-resident product's scratch for its partial sums: static
  // shared memory (kernels that hold fragments only: the fit rule reads it
  // with the kernel's other static shared memory), for the launch's
  // kPersistentThreads / 32 warps.
  __device__ static float* split_scratch() {
    __shared__ float scratch[mma::split_scratch_floats(kPersistentThreads / mma::kWarp)];
    return scratch;
  }
  // gemm_resident's tile product, A from the registers where held.
  template <class Tile>
  __device__ void tile_product(const Tile& g, const T* a, const T* w, Acc* c, bool in_registers) {
    if constexpr (kRegisterChunks > 0) {
      if (in_registers) {
        mma_tile::block_tile_gemm_resident<kRegisterChunks>(g, a, c, resident_a, split_scratch());
        __syncthreads();
        return;
      }
    }
    mma_tile::block_tile_gemm(g, a, w, c);
    __syncthreads();
  }
  // The tile product of gemm_resident: the shared-memory copy (rows.wt,
  // [k, G*n]: product row r in column r, K rows G*n apart), else W_hh's
  // rows in place, gate by gate.
  template <class Tile>
  __device__ static Tile resident_tile(int64_t m, int64_t k, int64_t lda,
                                       const partition::GateRows<T>& rows, int G, int64_t n,
                                       int64_t ldc) {
    return rows.wt != nullptr ? Tile{m, k, G * n, lda, G * n, 0, 1, ldc, G * n}
                              : Tile{m, k, G * n, lda, n, rows.gate_stride, rows.ld, ldc};
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
  // c[m, n] (+)= a[m, k] w[k, n].  fp16/bf16 on sm_80+, and fp32 on the
  // tf32 tile where asked for: the tensor-core tile with w^T as the A
  // operand (product row r = column r of w, K rows ldw apart: the
  // backward's shared-memory columns or W_hh in place), the batch on N as
  // in the forward.  Otherwise FFMA.
  __device__ void gemm_nn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                          const T* w, int64_t ldw, Acc* c, int64_t ldc, bool accumulate) {
    if constexpr (kTensorCores) {
      mma_tile::block_tile_gemm(mma::TileGemm{m, k, n, lda, n, 0, 1, ldc, ldw, accumulate}, a, w, c);
      __syncthreads();
    } else {
      if constexpr (kTf32Tile) {
        mma_tile::block_tile_gemm(mma::TileGemmTf32{m, k, n, lda, n, 0, 1, ldc, ldw, accumulate},
                                  a, w, c);
        __syncthreads();
        return;
      }
      gemm_nn_ffma(m, n, k, a, lda, w, ldw, c, ldc, accumulate);
    }
  }
  // gemm_nn with FFMA in Acc: consecutive threads take consecutive columns
  // j, so a row of w (in shared memory) is read from consecutive banks, and
  // a row of a (h_{t-1} or the gate gradients, in global memory) is one
  // address per warp and row i.
  __device__ void gemm_nn_ffma(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
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
  // The input phase (partition.h) is the CPU's: off here, its branches
  // compile away; these only complete the executor's interface.
  static constexpr bool kInputPhase = false;
  __device__ void barrier_arrive() {}
  __device__ void barrier_wait() { barrier(); }
};

// A block's executor: the launch's dynamic shared memory.
template <typename T, typename Acc, bool kTf32, int kRegisterChunks = 0>
__device__ BlockExecutor<T, Acc, kTf32, kRegisterChunks> block_executor() {
  return {{resident_shared, dynamic_shared_bytes()}, {}, nullptr};
}

// The forward kernels hold a warp's share of W_hh's fragments in registers
// where every row tile of the worker's gate rows has a warp and a warp's
// chunk range of K (mma::k_split: floor(8 / row tiles) warps a row tile)
// fits this many chunks (4 registers a chunk).  The budgets are what
// sm_90 ptxas compiles without spills and, for GRU and RNN, without losing
// the second block per SM (see benchmarks/NOTES.md, "The persistent CUDA
// kernels' product on tensor cores", for the registers each budget cost):
//   LSTM 12 (fp16/bf16), 16 (tf32): its tensor-core variants already ran
//     one block per SM (138 registers without fragments); these take them
//     to the 255 cap without spilling (fp16/bf16 at 16 spilled 120 bytes).
//     With 8 units a worker (2 row tiles, 4 warps each): K up to 768 in
//     fp16/bf16, 512 in tf32.
//   GRU 4, RNN 4: at most 128 registers (bf16: GRU 126, RNN 114; tf32
//     RNN 110), so two blocks per SM stay, which the fit rule counts on
//     for both directions of a layer at H above about 528 (2K blocks on
//     132 SMs).  GRU (2 row tiles): K up to 256 (fp16/bf16; its tf32
//     variant holds none, see gru_forward_kernel); RNN (1 row tile, 8
//     warps): K up to 512 (256 in tf32).  A budget of 16 (GRU, 173
//     registers with the first form of the split) or 8 (RNN, 134) would
//     hold every target shape of one direction but drop to one block per
//     SM, halving the workers of the two-direction launch above H of
//     about 528.
// The FFMA variants (fp32 without allow_tf32, fp64) never hold fragments;
// the backward kernels do not either (their A, W_hh's columns, is K = G*H
// deep: see NOTES).  None of this has run on a GPU.
constexpr int kLstmRegisterChunks = 12;
constexpr int kLstmTf32RegisterChunks = 16;
constexpr int kGruRegisterChunks = 4;
constexpr int kRnnRegisterChunks = 4;

// Each kernel runs one layer direction (b.workers = 0) or both directions
// of a bidirectional layer (partition::pair_worker: blocks [0, a.workers)
// run a, the next b.workers run b, all at one grid barrier per phase).
template <typename T, typename Acc, bool kTf32>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    lstm_forward_kernel(const partition::LSTMForwardSeq<T, Acc> a, const partition::LSTMForwardSeq<T, Acc> b) {
  auto ex = block_executor<T, Acc, kTf32, kTf32 ? kLstmTf32RegisterChunks : kLstmRegisterChunks>();
  partition::pair_worker(a, b, blockIdx.x, ex, [](const auto& s, int64_t k, auto& e) {
    partition::lstm_forward_worker(s, k, e);
  });
}
template <typename T, typename Acc, bool kTf32>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    lstm_backward_kernel(const partition::LSTMBackwardSeq<T, Acc> a, const partition::LSTMBackwardSeq<T, Acc> b) {
  auto ex = block_executor<T, Acc, kTf32>();
  partition::pair_worker(a, b, blockIdx.x, ex, [](const auto& s, int64_t k, auto& e) {
    partition::lstm_backward_worker(s, k, e);
  });
}
template <typename T, typename Acc, bool kTf32>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    gru_forward_kernel(const partition::GRUForwardSeq<T, Acc> a, const partition::GRUForwardSeq<T, Acc> b) {
  // The tf32 variant holds none: 4 chunks took it to 140 registers, one
  // block per SM (with the first form of the split; the 16-bit variants
  // then took 128, now 126).
  auto ex = block_executor<T, Acc, kTf32, kTf32 ? 0 : kGruRegisterChunks>();
  partition::pair_worker(a, b, blockIdx.x, ex, [](const auto& s, int64_t k, auto& e) {
    partition::gru_forward_worker(s, k, e);
  });
}
template <typename T, typename Acc, bool kTf32>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    gru_backward_kernel(const partition::GRUBackwardSeq<T, Acc> a, const partition::GRUBackwardSeq<T, Acc> b) {
  auto ex = block_executor<T, Acc, kTf32>();
  partition::pair_worker(a, b, blockIdx.x, ex, [](const auto& s, int64_t k, auto& e) {
    partition::gru_backward_worker(s, k, e);
  });
}

template <typename T, typename Acc, bool kTf32>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    rnn_forward_kernel(const partition::RNNForwardSeq<T, Acc> a, const partition::RNNForwardSeq<T, Acc> b) {
  auto ex = block_executor<T, Acc, kTf32, kRnnRegisterChunks>();
  partition::pair_worker(a, b, blockIdx.x, ex, [](const auto& s, int64_t k, auto& e) {
    partition::rnn_forward_worker(s, k, e);
  });
}
template <typename T, typename Acc, bool kTf32>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    rnn_backward_kernel(const partition::RNNBackwardSeq<T, Acc> a, const partition::RNNBackwardSeq<T, Acc> b) {
  auto ex = block_executor<T, Acc, kTf32>();
  partition::pair_worker(a, b, blockIdx.x, ex, [](const auto& s, int64_t k, auto& e) {
    partition::rnn_backward_worker(s, k, e);
  });
}

// A sequence's projection columns (LSTM proj_size; 0: none).
template <typename T, typename Acc>
int64_t projection(const partition::LSTMForwardSeq<T, Acc>& s) { return s.P; }
template <typename T, typename Acc>
int64_t projection(const partition::LSTMBackwardSeq<T, Acc>& s) { return s.P; }
template <class Seq>
int64_t projection(const Seq&) { return 0; }

// The bytes of shared memory the largest worker of s holds its weights in
// (resident.h; what the fit rule admitted).  G: gates.
template <typename T, class Seq>
int64_t weight_bytes(const Seq& s, int64_t G, bool backward) {
  if (s.workers <= 0) return 0;
  return resident::worker_bytes(s.H, projection(s), G, s.workers, s.align, sizeof(T), backward);
}

// The dynamic shared memory a launch of `blocks` blocks of `kernel` gets:
// `bytes`, or none where that would not fit one block or would leave fewer
// than `blocks` co-resident (then the workers read their weights in place:
// correct, only slower; RNN_EXT_CUDA_PERSISTENT=force reaches this).
template <class Kernel>
cudaError_t usable_shared_bytes(Kernel kernel, int64_t bytes, int64_t blocks, size_t* shared) {
  *shared = 0;
  if (bytes <= 0) return cudaSuccess;
  int device = 0, optin = 0, sms = 0, per_sm = 0;
  cudaFuncAttributes a;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(kernel));
  if (err != cudaSuccess) return err;
  if (static_cast<int64_t>(a.sharedSizeBytes) + bytes > optin) return cudaSuccess;
  // The attribute first: without it the occupancy query (and the launch)
  // refuse more than 48 KiB.  Shared memory over L1 in the unified array.
  err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess)
    err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                               cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, reinterpret_cast<const void*>(kernel), kPersistentThreads, static_cast<size_t>(bytes));
  if (err != cudaSuccess) return err;
  if (static_cast<int64_t>(per_sm) * sms >= blocks) *shared = static_cast<size_t>(bytes);
  return cudaSuccess;
}

// One cooperative launch of a.workers + b.workers blocks (b.workers = 0:
// one direction); G gates.  Every block gets the largest worker's
// shared-memory size.
template <typename T, class Seq>
cudaError_t launch(void (*kernel)(const Seq, const Seq), const Seq& a, const Seq& b, int64_t G,
                   bool backward, cudaStream_t stream) {
  if (a.workers <= 0 || b.workers < 0) return cudaErrorInvalidValue;
  if (b.workers > 0 && !partition::same_barriers(a, b)) return cudaErrorInvalidValue;
  const int64_t workers = a.workers + b.workers;
  const int64_t bytes_a = weight_bytes<T>(a, G, backward), bytes_b = weight_bytes<T>(b, G, backward);
  size_t shared = 0;
  const cudaError_t err =
      usable_shared_bytes(kernel, bytes_a > bytes_b ? bytes_a : bytes_b, workers, &shared);
  if (err != cudaSuccess) return err;
  void* args[] = {const_cast<Seq*>(&a), const_cast<Seq*>(&b)};
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel),
                                     dim3(static_cast<unsigned>(workers)),
                                     dim3(kPersistentThreads), args, shared, stream);
}

// One layer direction.
template <typename T, class Seq>
cudaError_t launch(void (*kernel)(const Seq, const Seq), const Seq& s, int64_t G, bool backward,
                   cudaStream_t stream) {
  Seq none = s;
  none.workers = 0;
  return launch<T>(kernel, s, none, G, backward, stream);
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

// The kernel variant a call runs: the tf32 instantiation for fp32 with
// `tf32`, else the plain one (the only one for other dtypes).
#define RNN_EXT_VARIANT(kernel, tf32)                                                    \
  ((tf32) && mma_tile::SupportsTf32<T, Acc>::value                                    \
       ? kernel<T, Acc, mma_tile::SupportsTf32<T, Acc>::value>                         \
       : kernel<T, Acc, false>)

template <typename T, typename Acc>
cudaError_t persistent_resources(int kind, bool tf32, int* registers, int* shared_bytes) {
  switch (kind) {
    case 0: return resources(RNN_EXT_VARIANT(lstm_forward_kernel, tf32), registers, shared_bytes);
    case 1: return resources(RNN_EXT_VARIANT(lstm_backward_kernel, tf32), registers, shared_bytes);
    case 2: return resources(RNN_EXT_VARIANT(gru_forward_kernel, tf32), registers, shared_bytes);
    case 3: return resources(RNN_EXT_VARIANT(gru_backward_kernel, tf32), registers, shared_bytes);
    case 4: return resources(RNN_EXT_VARIANT(rnn_forward_kernel, tf32), registers, shared_bytes);
    default: return resources(RNN_EXT_VARIANT(rnn_backward_kernel, tf32), registers, shared_bytes);
  }
}

template <typename T, typename Acc>
cudaError_t persistent_max_workers(int device, int kind, bool tf32, int* workers) {
  switch (kind) {
    case 0: return max_resident(RNN_EXT_VARIANT(lstm_forward_kernel, tf32), device, workers);
    case 1: return max_resident(RNN_EXT_VARIANT(lstm_backward_kernel, tf32), device, workers);
    case 2: return max_resident(RNN_EXT_VARIANT(gru_forward_kernel, tf32), device, workers);
    case 3: return max_resident(RNN_EXT_VARIANT(gru_backward_kernel, tf32), device, workers);
    case 4: return max_resident(RNN_EXT_VARIANT(rnn_forward_kernel, tf32), device, workers);
    default: return max_resident(RNN_EXT_VARIANT(rnn_backward_kernel, tf32), device, workers);
  }
}

template <typename T, typename Acc>
cudaError_t lstm_forward_persistent(const partition::LSTMForwardSeq<T, Acc>& s, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(lstm_forward_kernel, tf32), s, 4, false, stream);
}
template <typename T, typename Acc>
cudaError_t lstm_forward_persistent_pair(const partition::LSTMForwardSeq<T, Acc>& a,
                                   const partition::LSTMForwardSeq<T, Acc>& b, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(lstm_forward_kernel, tf32), a, b, 4, false, stream);
}
template <typename T, typename Acc>
cudaError_t lstm_backward_persistent(const partition::LSTMBackwardSeq<T, Acc>& s, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(lstm_backward_kernel, tf32), s, 4, true, stream);
}
template <typename T, typename Acc>
cudaError_t lstm_backward_persistent_pair(const partition::LSTMBackwardSeq<T, Acc>& a,
                                   const partition::LSTMBackwardSeq<T, Acc>& b, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(lstm_backward_kernel, tf32), a, b, 4, true, stream);
}
template <typename T, typename Acc>
cudaError_t gru_forward_persistent(const partition::GRUForwardSeq<T, Acc>& s, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(gru_forward_kernel, tf32), s, 3, false, stream);
}
template <typename T, typename Acc>
cudaError_t gru_forward_persistent_pair(const partition::GRUForwardSeq<T, Acc>& a,
                                   const partition::GRUForwardSeq<T, Acc>& b, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(gru_forward_kernel, tf32), a, b, 3, false, stream);
}
template <typename T, typename Acc>
cudaError_t gru_backward_persistent(const partition::GRUBackwardSeq<T, Acc>& s, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(gru_backward_kernel, tf32), s, 3, true, stream);
}
template <typename T, typename Acc>
cudaError_t gru_backward_persistent_pair(const partition::GRUBackwardSeq<T, Acc>& a,
                                   const partition::GRUBackwardSeq<T, Acc>& b, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(gru_backward_kernel, tf32), a, b, 3, true, stream);
}

template <typename T, typename Acc>
cudaError_t rnn_forward_persistent(const partition::RNNForwardSeq<T, Acc>& s, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(rnn_forward_kernel, tf32), s, 1, false, stream);
}
template <typename T, typename Acc>
cudaError_t rnn_forward_persistent_pair(const partition::RNNForwardSeq<T, Acc>& a,
                                   const partition::RNNForwardSeq<T, Acc>& b, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(rnn_forward_kernel, tf32), a, b, 1, false, stream);
}
template <typename T, typename Acc>
cudaError_t rnn_backward_persistent(const partition::RNNBackwardSeq<T, Acc>& s, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(rnn_backward_kernel, tf32), s, 1, true, stream);
}
template <typename T, typename Acc>
cudaError_t rnn_backward_persistent_pair(const partition::RNNBackwardSeq<T, Acc>& a,
                                   const partition::RNNBackwardSeq<T, Acc>& b, cudaStream_t stream,
                   bool tf32) {
  return launch<T>(RNN_EXT_VARIANT(rnn_backward_kernel, tf32), a, b, 1, true, stream);
}

#define RNN_EXT_INSTANTIATE(T, Acc)                                                                                                                               \
  template cudaError_t persistent_max_workers<T, Acc>(int, int, bool, int*);                                                                                      \
  template cudaError_t persistent_resources<T, Acc>(int, bool, int*, int*);                                                                                       \
  template cudaError_t lstm_forward_persistent<T, Acc>(const partition::LSTMForwardSeq<T, Acc>&, cudaStream_t, bool);                                                   \
  template cudaError_t lstm_forward_persistent_pair<T, Acc>(const partition::LSTMForwardSeq<T, Acc>&, const partition::LSTMForwardSeq<T, Acc>&, cudaStream_t, bool);    \
  template cudaError_t lstm_backward_persistent<T, Acc>(const partition::LSTMBackwardSeq<T, Acc>&, cudaStream_t, bool);                                                 \
  template cudaError_t lstm_backward_persistent_pair<T, Acc>(const partition::LSTMBackwardSeq<T, Acc>&, const partition::LSTMBackwardSeq<T, Acc>&, cudaStream_t, bool); \
  template cudaError_t gru_forward_persistent<T, Acc>(const partition::GRUForwardSeq<T, Acc>&, cudaStream_t, bool);                                                     \
  template cudaError_t gru_forward_persistent_pair<T, Acc>(const partition::GRUForwardSeq<T, Acc>&, const partition::GRUForwardSeq<T, Acc>&, cudaStream_t, bool);       \
  template cudaError_t gru_backward_persistent<T, Acc>(const partition::GRUBackwardSeq<T, Acc>&, cudaStream_t, bool);                                                   \
  template cudaError_t gru_backward_persistent_pair<T, Acc>(const partition::GRUBackwardSeq<T, Acc>&, const partition::GRUBackwardSeq<T, Acc>&, cudaStream_t, bool);    \
  template cudaError_t rnn_forward_persistent<T, Acc>(const partition::RNNForwardSeq<T, Acc>&, cudaStream_t, bool);                                                     \
  template cudaError_t rnn_forward_persistent_pair<T, Acc>(const partition::RNNForwardSeq<T, Acc>&, const partition::RNNForwardSeq<T, Acc>&, cudaStream_t, bool);       \
  template cudaError_t rnn_backward_persistent<T, Acc>(const partition::RNNBackwardSeq<T, Acc>&, cudaStream_t, bool);                                                   \
  template cudaError_t rnn_backward_persistent_pair<T, Acc>(const partition::RNNBackwardSeq<T, Acc>&, const partition::RNNBackwardSeq<T, Acc>&, cudaStream_t, bool);
RNN_EXT_INSTANTIATE(float, float)
RNN_EXT_INSTANTIATE(double, double)
RNN_EXT_INSTANTIATE(__half, float)
RNN_EXT_INSTANTIATE(__nv_bfloat16, float)
#undef RNN_EXT_INSTANTIATE
#undef RNN_EXT_VARIANT

}  // namespace cuda
}  // namespace rnn_ext
