// The fit rule: whether a layer direction runs on the persistent CUDA
// kernels (cuda/persistent.cu, one cooperative launch for the sequence) or
// on the stepwise loop (ops/sequence.h, a cuBLASLt GEMM and a pointwise
// kernel per step), and with how many workers.  Computed from the layer's
// sizes, the device's limits and the kernel's compiled resource use
// (cudaFuncGetAttributes at run time; the sm_90 figures of ptxas in
// tests/test_cuda_sm90.py).  Host code with no dependencies: the C++ tests
// and the pytest suite check it without a GPU.
//
// The rule, in order:
//  1. Co-residency.  A cooperative launch needs every block resident at
//     once: blocks per SM is the least of the device's block limit, its
//     thread limit, its register file over the block's registers (allocated
//     per warp in granules of 256) and its shared memory over the block's
//     (static plus dynamic, plus the 1 KiB the runtime reserves per block).
//     None resident even without dynamic shared memory: stepwise.
//  2. Weights in shared memory.  Each worker copies its W_hh rows (forward)
//     or columns (backward), and W_hr's with a projection, into its block's
//     dynamic shared memory before the time loop and reads them there every
//     step (the layout and its size: cuda/resident.h).  A worker count K is
//     admitted when the largest worker's copy plus the kernel's static
//     shared memory fits one block (the device's opt-in limit: 227 KiB on
//     sm_90) and K blocks of that size (2K for both directions of a
//     bidirectional layer in one launch) are co-resident (1).  K: the fewest
//     from one per kMinUnitsPerWorker units (enough threads of work per
//     block) up to the resident blocks and at most one per unit.  No K
//     admitted: stepwise.
//  3. Batch.  Above kMaxBatch rows the per-step product is a large GEMM
//     whose tensor-core throughput in cuBLAS outweighs the launch it saves
//     (cuDNN's persistent algorithm stops at 128 rows too); stepwise.
// The constants are first estimates; a measured crossover on a GPU replaces
// them (the persistent kernels are used only when asked for until then).
#pragma once

#include <stdint.h>

#include <algorithm>

#include "cuda/resident.h"

namespace rnn_ext {
namespace fit {

struct DeviceLimits {
  int64_t sms;                 // cudaDeviceProp::multiProcessorCount
  int64_t registers_per_sm;    // regsPerMultiprocessor (32-bit registers)
  int64_t shared_per_sm;       // sharedMemPerMultiprocessor (bytes)
  int64_t max_blocks_per_sm;   // maxBlocksPerMultiProcessor
  int64_t max_threads_per_sm;  // maxThreadsPerMultiProcessor
  int64_t shared_per_block;    // sharedMemPerBlockOptin: the most one block may have (bytes)
};

struct KernelResources {
  int64_t registers_per_thread;  // cudaFuncAttributes::numRegs
  int64_t threads;               // per block
  int64_t shared_per_block;      // static shared memory (bytes; the weights' is added)
};

struct Layer {
  int64_t H;            // hidden units
  int64_t Hin;          // columns of W_hh (H, or proj_size)
  int64_t G;            // gates: 4 LSTM, 3 GRU, 1 RNN
  int64_t B;            // batch rows
  int64_t dtype_bytes;  // of W_hh's storage type
  bool backward = false;  // the backward kernel (it holds columns, not rows)
  // Layer directions in the launch: 2 runs both directions of a
  // bidirectional layer at once, `workers` blocks each.
  int64_t directions = 1;
  // A projection (LSTM proj_size P) shows as Hin = P != H.
  int64_t P() const { return Hin != H ? Hin : 0; }
};

enum class Reason { fits = 0, not_resident = 1, batch_too_large = 2, weights_exceed_chip = 3 };

struct Decision {
  bool persistent = false;
  int64_t workers = 0;            // blocks of the cooperative launch (0: none admitted)
  int64_t blocks_per_sm = 0;      // co-resident blocks per SM (with the weights' shared memory)
  // The shared memory a block may have at that occupancy, less the static:
  // what a worker's weights may take (if refused: what one block could take).
  int64_t chip_bytes_per_worker = 0;
  // The largest worker's copy of its weights at `workers` (or at the most
  // workers, if refused): the launch's dynamic shared memory per block.
  int64_t weight_bytes_per_worker = 0;
  Reason reason = Reason::not_resident;
};

constexpr int64_t kWarp = 32;
constexpr int64_t kRegisterGranule = 256;          // registers per warp are allocated in these
constexpr int64_t kReservedSharedPerBlock = 1024;  // the runtime's per-block reservation (sm_80+)
constexpr int64_t kMinUnitsPerWorker = 8;
constexpr int64_t kMaxBatch = 128;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t resident_blocks_per_sm(const DeviceLimits& d, const KernelResources& k) {
  if (k.threads <= 0 || d.sms <= 0) return 0;
  const int64_t warps = ceil_div(k.threads, kWarp);
  const int64_t regs_per_warp =
      ceil_div(k.registers_per_thread * kWarp, kRegisterGranule) * kRegisterGranule;
  int64_t blocks = d.max_blocks_per_sm;
  blocks = std::min(blocks, d.max_threads_per_sm / (warps * kWarp));
  if (regs_per_warp > 0) blocks = std::min(blocks, d.registers_per_sm / (regs_per_warp * warps));
  blocks = std::min(blocks, d.shared_per_sm / (k.shared_per_block + kReservedSharedPerBlock));
  return std::max<int64_t>(blocks, 0);
}

// The granularity of the unit slices of the CUDA executor: whole 8-unit
// chunks where every worker gets at least four of them, single units
// otherwise (so that small layers still spread over workers).
inline int64_t unit_align(int64_t H, int64_t workers) { return H >= 32 * workers ? 8 : 1; }

// Bytes of shared memory the largest of `workers` workers holds its
// weights in (cuda/resident.h).
inline int64_t weight_bytes_per_worker(const Layer& l, int64_t workers) {
  return resident::worker_bytes(l.H, l.P(), l.G, workers, unit_align(l.H, workers),
                                l.dtype_bytes, l.backward);
}

inline Decision decide(const Layer& l, const DeviceLimits& d, const KernelResources& k) {
  Decision out;
  const int64_t most_per_sm = resident_blocks_per_sm(d, k);  // without the weights
  const int64_t directions = std::max<int64_t>(l.directions, 1);
  const int64_t max_workers = std::min(most_per_sm * d.sms / directions, l.H);
  if (max_workers <= 0 || l.H <= 0) return out;  // not_resident
  out.chip_bytes_per_worker = d.shared_per_block - k.shared_per_block;
  out.weight_bytes_per_worker = weight_bytes_per_worker(l, max_workers);
  out.reason = Reason::weights_exceed_chip;
  // The fewest workers admitted, from one per kMinUnitsPerWorker units up.
  // The bytes per worker fall as workers grow but so does the room each
  // resident block leaves, so every count is tried (a few thousand at most).
  for (int64_t K = std::min(max_workers, ceil_div(l.H, kMinUnitsPerWorker)); K <= max_workers; ++K) {
    const int64_t bytes = weight_bytes_per_worker(l, K);
    if (k.shared_per_block + bytes > d.shared_per_block) continue;
    KernelResources with_weights = k;
    with_weights.shared_per_block = k.shared_per_block + bytes;
    const int64_t per_sm = resident_blocks_per_sm(d, with_weights);
    if (per_sm * d.sms < K * directions) continue;
    out.workers = K;
    out.blocks_per_sm = per_sm;
    out.weight_bytes_per_worker = bytes;
    out.chip_bytes_per_worker =
        std::min(d.shared_per_block, d.shared_per_sm / per_sm - kReservedSharedPerBlock) -
        k.shared_per_block;
    break;
  }
  if (out.workers == 0) {
    out.blocks_per_sm = most_per_sm;
    return out;  // weights_exceed_chip
  }
  if (l.B > kMaxBatch) {
    out.reason = Reason::batch_too_large;
    return out;
  }
  out.persistent = true;
  out.reason = Reason::fits;
  return out;
}

}  // namespace fit
}  // namespace rnn_ext
