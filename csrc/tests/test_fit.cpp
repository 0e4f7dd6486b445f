// C++ tests of the fit rule (rnn_ext/fit.h) with an H100's (and an A100's)
// limits: the co-resident blocks follow the register granule and shared
// memory; a worker's weights must fit its block's shared memory (the
// device's per-block opt-in limit, less the kernel's static shared memory)
// with every block of the launch co-resident at that size; small layers go
// persistent with one worker per 8 units, larger W_hh needs more workers,
// and what cannot fit on chip (or is too wide a batch) is refused.  And the
// shared-memory layout's sizes (cuda/resident.h) against a brute force.
#include <algorithm>
#include <cstdio>

#include "rnn_ext/fit.h"
#include "tests/expect.h"

using namespace rnn_ext;
using namespace rnn_ext::fit;

// An H100 SXM: 132 SMs, 64K registers, 228 KiB shared memory, 32 blocks and
// 2048 threads per SM, 227 KiB for one block.
static const DeviceLimits kH100{132, 65536, 233472, 32, 2048, 232448};
// An A100: 108 SMs, 164 KiB shared memory per SM, 163 KiB for one block.
static const DeviceLimits kA100{108, 65536, 167936, 32, 2048, 166912};

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

// The largest slice and a worker's bytes, by brute force over every worker.
static void test_layout_sizes() {
  for (int64_t n : {0, 1, 5, 13, 37, 100, 1024, 1031}) {
    for (int64_t K : {1, 2, 3, 7, 16, 33, 128, 200}) {
      for (int64_t align : {1, 4, 8}) {
        int64_t largest = 0;
        for (int64_t k = 0; k < K; ++k)
          largest = std::max(largest, partition::split(n, K, k, align).size());
        EXPECT(resident::largest_slice(n, K, align) == largest, "largest_slice(%ld,%ld,%ld) = %ld, not %ld",
               (long)n, (long)K, (long)align, (long)resident::largest_slice(n, K, align), (long)largest);
      }
    }
  }
  // Regions start on 16-byte boundaries: 3 bf16 elements take 16 bytes.
  EXPECT(resident::region_bytes(3, 2) == 16 && resident::region_bytes(8, 2) == 16 &&
             resident::region_bytes(9, 2) == 32 && resident::region_bytes(0, 4) == 0,
         "region_bytes");
  // LSTM H=300, P=40, fp32, 7 workers of 43 units (align 1) and 6 projection
  // columns: forward [40, 4*43] and [300, 6]; backward [4*300, 6] and [40, 43].
  const int64_t u = resident::largest_slice(300, 7, 1), pc = resident::largest_slice(40, 7, 1);
  EXPECT(u == 43 && pc == 6, "slices %ld %ld", (long)u, (long)pc);
  EXPECT(resident::worker_bytes(300, 40, 4, 7, 1, 4, false) ==
             resident::region_bytes(40 * 4 * 43, 4) + resident::region_bytes(300 * 6, 4),
         "forward bytes with projection");
  EXPECT(resident::worker_bytes(300, 40, 4, 7, 1, 4, true) ==
             resident::region_bytes(4 * 300 * 6, 4) + resident::region_bytes(40 * 43, 4),
         "backward bytes with projection");
  // Without a projection the two directions hold as much: [H, G*|u|] and [G*H, |u|].
  EXPECT(resident::worker_bytes(256, 0, 3, 32, 1, 2, false) == 256 * 3 * 8 * 2 &&
             resident::worker_bytes(256, 0, 3, 32, 1, 2, true) == 256 * 3 * 8 * 2,
         "GRU bytes");
}

// Whether K workers of `l` may run together: each one's weights plus the
// static shared memory within one block's limit, and K blocks of that size
// co-resident.
static bool admitted(const Layer& l, const DeviceLimits& d, const KernelResources& k, int64_t K) {
  const int64_t bytes = weight_bytes_per_worker(l, K);
  if (k.shared_per_block + bytes > d.shared_per_block) return false;
  return resident_blocks_per_sm(d, {k.registers_per_thread, k.threads, k.shared_per_block + bytes}) *
             d.sms >= K;
}

// The decision is the fewest admitted workers from one per 8 units, with
// the weights' bytes of that count.
static void expect_fewest(const Layer& l, const DeviceLimits& d, const KernelResources& k,
                          const Decision& got, const char* what) {
  EXPECT(got.workers > 0 && admitted(l, d, k, got.workers), "%s: %ld workers not admitted", what,
         (long)got.workers);
  for (int64_t K = (l.H + 7) / 8; K < got.workers; ++K)
    EXPECT(!admitted(l, d, k, K), "%s: %ld workers admitted, fewer than %ld", what, (long)K,
           (long)got.workers);
  EXPECT(got.weight_bytes_per_worker == weight_bytes_per_worker(l, got.workers) &&
             got.weight_bytes_per_worker <= got.chip_bytes_per_worker,
         "%s: %ld bytes per worker, room for %ld", what, (long)got.weight_bytes_per_worker,
         (long)got.chip_bytes_per_worker);
}

static void test_decisions() {
  const KernelResources k{64, 256, 0};  // 4 blocks per SM: 528 workers at most
  // LSTM, H=256, bf16: one worker per 8 units, 32 workers of 8 units: each
  // holds [256, 4*8] bf16 = 16 KiB; 4 blocks per SM leave 56 KiB each.
  Layer l{256, 256, 4, 16, 2};
  Decision d = decide(l, kH100, k);
  EXPECT(d.persistent && d.workers == 32, "H=256: %d workers %ld", d.persistent, (long)d.workers);
  EXPECT(d.weight_bytes_per_worker == 4 * 8 * 256 * 2, "H=256 bytes %ld", (long)d.weight_bytes_per_worker);
  EXPECT(d.blocks_per_sm == 4 && d.chip_bytes_per_worker == 56 * 1024, "H=256 room %ld",
         (long)d.chip_bytes_per_worker);
  expect_fewest(l, kH100, k, d, "H=256");
  l.backward = true;
  expect_fewest(l, kH100, k, decide(l, kH100, k), "H=256 backward");
  // H=1024 fp32 LSTM (16 MiB): 128 workers of 8 units hold 128 KiB each,
  // one block per SM, 132 resident.
  l = {1024, 1024, 4, 16, 4};
  d = decide(l, kH100, k);
  EXPECT(d.persistent && d.workers == 128 && d.blocks_per_sm == 1, "H=1024 fp32: %ld",
         (long)d.workers);
  expect_fewest(l, kH100, k, d, "H=1024 fp32");
  // H=1280 fp32 LSTM (25 MiB): 160 workers of 8 units would need 160 KiB
  // each, one per SM, 132 resident: more workers, until two blocks fit an SM.
  l = {1280, 1280, 4, 16, 4};
  d = decide(l, kH100, k);
  EXPECT(d.persistent && d.workers > 160 && d.workers <= 264 && d.blocks_per_sm == 2,
         "H=1280 fp32: %ld workers, %ld per SM", (long)d.workers, (long)d.blocks_per_sm);
  expect_fewest(l, kH100, k, d, "H=1280 fp32");
  // The same on an A100 (163 KiB a block, 108 SMs).
  l = {1024, 1024, 4, 16, 4};
  d = decide(l, kA100, k);
  EXPECT(d.persistent && d.workers > 128, "A100 H=1024 fp32: %ld", (long)d.workers);
  expect_fewest(l, kA100, k, d, "A100 H=1024 fp32");
  // H=1024 fp64 LSTM (32 MiB) is more than the 29 MiB of shared memory of
  // 132 SMs: refused, and so is H=2048 fp32 (64 MiB).
  d = decide({1024, 1024, 4, 16, 8}, kH100, k);
  EXPECT(!d.persistent && d.workers == 0 && d.reason == Reason::weights_exceed_chip, "H=1024 fp64");
  d = decide({2048, 2048, 4, 16, 4}, kH100, k);
  EXPECT(!d.persistent && d.reason == Reason::weights_exceed_chip, "H=2048 fp32");
  // Static shared memory leaves less room: with 220 KiB of it, 8 units (16
  // KiB) no longer fit the 227 KiB of a block, nor do 4 (8 KiB); 3 units (6
  // KiB) do: 86 workers.
  const KernelResources heavy{64, 256, 220 * 1024};
  l = {256, 256, 4, 16, 2};
  d = decide(l, kH100, heavy);
  EXPECT(d.persistent && d.workers == 86 && d.weight_bytes_per_worker == 6 * 1024,
         "static shared: %ld", (long)d.workers);
  expect_fewest(l, kH100, heavy, d, "static shared");
  // A projection: the forward and the backward hold different blocks.
  l = {300, 40, 4, 5, 4};
  const Decision fwd = decide(l, kH100, k);
  l.backward = true;
  const Decision bwd = decide(l, kH100, k);
  EXPECT(fwd.persistent && bwd.persistent && fwd.workers == 38 && bwd.workers == 38,
         "projection: %ld %ld", (long)fwd.workers, (long)bwd.workers);
  EXPECT(fwd.weight_bytes_per_worker == resident::worker_bytes(300, 40, 4, 38, 1, 4, false) &&
             bwd.weight_bytes_per_worker == resident::worker_bytes(300, 40, 4, 38, 1, 4, true),
         "projection bytes");
  // A wide batch goes stepwise even where the weights fit.
  d = decide({256, 256, 4, 256, 2}, kH100, k);
  EXPECT(!d.persistent && d.reason == Reason::batch_too_large && d.workers == 32, "B=256");
  // A kernel that cannot be resident.
  d = decide({256, 256, 4, 16, 2}, kH100, {32, 256, 240 * 1024});
  EXPECT(!d.persistent && d.reason == Reason::not_resident, "not resident");
  // Fewer units than 8: one worker; never more workers than units.
  d = decide({3, 3, 3, 1, 4}, kH100, k);
  EXPECT(d.persistent && d.workers == 1, "H=3: %ld", (long)d.workers);
  // Both directions in one launch: twice the blocks must be co-resident.
  // bf16 LSTM at H=1024: 128 workers a direction, 256 blocks of 64 KiB, 3
  // per SM (shared memory; 64 registers would allow 4); fp32 at H=1024
  // (2 x 16 MiB) is more than the chip holds, though one direction fits.
  l = {1024, 1024, 4, 16, 2};
  l.directions = 2;
  d = decide(l, kH100, k);
  EXPECT(d.persistent && d.workers == 128 && d.blocks_per_sm == 3, "pair bf16: %ld",
         (long)d.workers);
  l = {1024, 1024, 4, 16, 4};
  l.directions = 2;
  d = decide(l, kH100, k);
  EXPECT(!d.persistent && d.reason == Reason::weights_exceed_chip, "pair fp32: %ld", (long)d.workers);
  // Where 2K blocks of one direction's size would not be co-resident, the
  // pair takes smaller slices: bf16 LSTM at H=1280 (12.5 MiB a direction),
  // 160 workers of 80 KiB alone (2 per SM), 183 of 70 KiB (3 per SM) as a pair.
  l = {1280, 1280, 4, 16, 2};
  const Decision one = decide(l, kH100, k);
  l.directions = 2;
  d = decide(l, kH100, k);
  EXPECT(one.persistent && one.workers == 160 && d.persistent && d.workers == 183 &&
             d.blocks_per_sm == 3,
         "pair H=1280: %ld vs %ld", (long)d.workers, (long)one.workers);
  // Slices of whole 8-unit chunks where every worker gets four or more.
  EXPECT(unit_align(256, 8) == 8 && unit_align(256, 9) == 1 && unit_align(256, 32) == 1,
         "unit_align");
}

int main() {
  test_resident_blocks();
  test_layout_sizes();
  test_decisions();
  if (failures == 0) std::printf("fit: all passed\n");
  return failures == 0 ? 0 : 1;
}
