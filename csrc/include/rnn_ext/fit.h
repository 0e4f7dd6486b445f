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
//     (plus the 1 KiB the runtime reserves per block).  None resident:
//     stepwise.
//  2. Weights on chip.  Each worker re-reads its rows of W_hh (G gates of
//     its units, Hin columns each) every step; they must fit the on-chip
//     memory a worker has: its share of the SM's shared memory that the
//     kernel does not claim (the unified L1 / shared memory that holds them
//     across steps), plus the registers the kernel devotes to weights.
//     Workers: one per kMinUnitsPerWorker units (enough threads of work per
//     block), more where the slices would not fit, at most the resident
//     blocks and at most one per unit.  If even that many workers cannot
//     hold W_hh: stepwise.
//  3. Batch.  Above kMaxBatch rows the per-step product is a large GEMM
//     whose tensor-core throughput in cuBLAS outweighs the launch it saves
//     (cuDNN's persistent algorithm stops at 128 rows too); stepwise.
// The constants are first estimates; a measured crossover on a GPU replaces
// them (the persistent kernels are used only when asked for until then).
#pragma once

#include <stdint.h>

#include <algorithm>

namespace rnn_ext {
namespace fit {

struct DeviceLimits {
  int64_t sms;                 // cudaDeviceProp::multiProcessorCount
  int64_t registers_per_sm;    // regsPerMultiprocessor (32-bit registers)
  int64_t shared_per_sm;       // sharedMemPerMultiprocessor (bytes)
  int64_t max_blocks_per_sm;   // maxBlocksPerMultiProcessor
  int64_t max_threads_per_sm;  // maxThreadsPerMultiProcessor
};

struct KernelResources {
  int64_t registers_per_thread;  // cudaFuncAttributes::numRegs
  int64_t threads;               // per block
  int64_t shared_per_block;      // static + dynamic shared memory (bytes)
  // Registers per thread that hold W_hh for the whole sequence (0 for a
  // kernel that reads its rows through L1 / shared memory each step).
  int64_t weight_registers_per_thread = 0;
};

struct Layer {
  int64_t H;            // hidden units
  int64_t Hin;          // columns of W_hh (H, or proj_size)
  int64_t G;            // gates: 4 LSTM, 3 GRU, 1 RNN
  int64_t B;            // batch rows
  int64_t dtype_bytes;  // of W_hh's storage type
};

enum class Reason { fits = 0, not_resident = 1, batch_too_large = 2, weights_exceed_chip = 3 };

struct Decision {
  bool persistent = false;
  int64_t workers = 0;            // blocks of the cooperative launch (persistent only)
  int64_t blocks_per_sm = 0;      // co-resident blocks per SM
  int64_t chip_bytes_per_worker = 0;
  int64_t weight_bytes_per_worker = 0;  // at `workers` (or at the most workers, if refused)
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

// Bytes of W_hh one of `workers` workers reads per step: the G gate rows of
// its ceil(H / workers) units.
inline int64_t weight_bytes_per_worker(const Layer& l, int64_t workers) {
  return l.G * ceil_div(l.H, workers) * l.Hin * l.dtype_bytes;
}

inline Decision decide(const Layer& l, const DeviceLimits& d, const KernelResources& k) {
  Decision out;
  out.blocks_per_sm = resident_blocks_per_sm(d, k);
  const int64_t max_workers = std::min(out.blocks_per_sm * d.sms, l.H);
  if (max_workers <= 0 || l.H <= 0) return out;  // not_resident
  out.chip_bytes_per_worker =
      d.shared_per_sm / out.blocks_per_sm - k.shared_per_block - kReservedSharedPerBlock +
      k.weight_registers_per_thread * k.threads * 4;
  // The fewest workers whose slices fit, found by bisection (the bytes per
  // worker only fall as workers grow).
  int64_t lo = 1, hi = max_workers;
  if (weight_bytes_per_worker(l, hi) > out.chip_bytes_per_worker) {
    out.weight_bytes_per_worker = weight_bytes_per_worker(l, hi);
    out.reason = Reason::weights_exceed_chip;
    return out;
  }
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (weight_bytes_per_worker(l, mid) <= out.chip_bytes_per_worker) hi = mid;
    else lo = mid + 1;
  }
  const int64_t workers = std::min(max_workers, std::max(lo, ceil_div(l.H, kMinUnitsPerWorker)));
  out.workers = workers;
  out.weight_bytes_per_worker = weight_bytes_per_worker(l, workers);
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
