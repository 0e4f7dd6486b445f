// C++ tests of the fit rule (rnn_ext/fit.h) with an H100's limits: the
// co-resident blocks follow the register granule and shared memory, small
// layers go persistent with one worker per 8 units, larger W_hh needs more
// workers, and what cannot fit on chip (or is too wide a batch) is refused.
#include <cstdio>

#include "rnn_ext/fit.h"
#include "tests/expect.h"

using namespace rnn_ext::fit;

// An H100 SXM: 132 SMs, 64K registers, 228 KiB shared memory, 32 blocks and
// 2048 threads per SM.
static const DeviceLimits kH100{132, 65536, 233472, 32, 2048};

static void test_resident_blocks() {
  // 256 threads: 8 warps.  64 registers: 2048 per warp, 16K per block: 4 blocks.
  EXPECT(resident_blocks_per_sm(kH100, {64, 256, 0}) == 4, "64 regs");
  // 65 registers round up to 72 per thread (2304 per warp): 3 blocks.
  EXPECT(resident_blocks_per_sm(kH100, {65, 256, 0}) == 3, "65 regs");
  // 255 registers: one block of 256 threads needs 65280: 1 block.
  EXPECT(resident_blocks_per_sm(kH100, {255, 256, 0}) == 1, "255 regs");
  // Shared memory bounds it: 100 KiB per block (+1 KiB reserved): 2 blocks.
  EXPECT(resident_blocks_per_sm(kH100, {32, 256, 100 * 1024}) == 2, "shared");
  // The thread limit: 1024-thread blocks, few registers: 2 blocks.
  EXPECT(resident_blocks_per_sm(kH100, {16, 1024, 0}) == 2, "threads");
  // More shared memory than an SM has: none.
  EXPECT(resident_blocks_per_sm(kH100, {32, 256, 240 * 1024}) == 0, "too much shared");
}

static void test_decisions() {
  const KernelResources k{64, 256, 0};  // 4 blocks per SM: 528 workers at most
  // LSTM, H=256, bf16: each of the 4 blocks of an SM has 57 KiB of its
  // shared memory, 56 KiB after the reserve; one worker per 8 units: 32
  // workers of 8 units (16 KiB each).
  Decision d = decide({256, 256, 4, 16, 2}, kH100, k);
  EXPECT(d.persistent && d.workers == 32, "H=256: %d workers %ld", d.persistent, (long)d.workers);
  EXPECT(d.weight_bytes_per_worker == 4 * 8 * 256 * 2, "H=256 bytes %ld", (long)d.weight_bytes_per_worker);
  EXPECT(d.weight_bytes_per_worker <= d.chip_bytes_per_worker, "H=256 fits");
  // H=1024 fp32: 16 MiB of W_hh; each worker holds 56 KiB at most, so about
  // 290 workers (more than H/8 = 128).
  d = decide({1024, 1024, 4, 16, 4}, kH100, k);
  EXPECT(d.persistent && d.workers > 128 && d.workers <= 528, "H=1024 fp32: %ld", (long)d.workers);
  EXPECT(d.weight_bytes_per_worker <= d.chip_bytes_per_worker, "H=1024 fits");
  EXPECT(weight_bytes_per_worker({1024, 1024, 4, 16, 4}, d.workers - 1) > d.chip_bytes_per_worker,
         "H=1024: not the fewest workers");
  // H=2048 fp32 LSTM (64 MiB) cannot be held by 528 workers.
  d = decide({2048, 2048, 4, 16, 4}, kH100, k);
  EXPECT(!d.persistent && d.reason == Reason::weights_exceed_chip, "H=2048 fp32");
  // A wide batch goes stepwise even where the weights fit.
  d = decide({256, 256, 4, 256, 2}, kH100, k);
  EXPECT(!d.persistent && d.reason == Reason::batch_too_large && d.workers == 32, "B=256");
  // A kernel that cannot be resident.
  d = decide({256, 256, 4, 16, 2}, kH100, {32, 256, 240 * 1024});
  EXPECT(!d.persistent && d.reason == Reason::not_resident, "not resident");
  // Fewer units than 8: one worker; never more workers than units.
  d = decide({3, 3, 3, 1, 4}, kH100, k);
  EXPECT(d.persistent && d.workers == 1, "H=3: %ld", (long)d.workers);
  // Registers holding weights add to a worker's budget.
  KernelResources with_regs = k;
  with_regs.weight_registers_per_thread = 32;
  const Decision plain = decide({1024, 1024, 4, 16, 4}, kH100, k);
  const Decision regs = decide({1024, 1024, 4, 16, 4}, kH100, with_regs);
  EXPECT(regs.chip_bytes_per_worker == plain.chip_bytes_per_worker + 32 * 256 * 4 &&
             regs.workers < plain.workers,
         "weight registers: %ld vs %ld workers", (long)regs.workers, (long)plain.workers);
}

int main() {
  test_resident_blocks();
  test_decisions();
  if (failures == 0) std::printf("fit: all passed\n");
  return failures == 0 ? 0 : 1;
}
