// The register layouts of the tensor-core instructions
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
//   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
// (D[16x8] = A[16xK] B[Kx8] + C[16x8], fp32 accumulators), and the
// persistent loop's per-step product cut into tiles of either instruction.
// Index arithmetic only: no CUDA types, so the same functions compile with
// g++ and the C++ test (csrc/tests/test_mma_layout.cpp) runs every index the
// device code (cuda/mma_tile.cuh) uses, for 32 emulated lanes.
//
// The fragment layouts are those of the PTX ISA ("Matrix Fragments for
// mma.m16n8k16 with floating point type", and "for mma.m16n8k8", .tf32),
// with groupID = lane / 4 and threadID_in_group = lane % 4:
// m16n8k16, f16/bf16 (Frag16):
//   A (16x16, row-major, 8 elements in 4 registers of 2):
//     row = groupID (+8 for a2, a3, a6, a7),
//     col = 2*threadID_in_group + (i & 1) (+8 for a4..a7)
//   B (16x8, column-major, 4 elements in 2 registers of 2):
//     row = 2*threadID_in_group + (i & 1) (+8 for b2, b3), col = groupID
//   Element 2j of A or B sits in the low half of register j, 2j+1 in the high.
// m16n8k8, tf32 (FragTf32): one element per 32-bit register
//   A (16x8, row-major, 4 registers):
//     row = groupID (+8 for a1, a3), col = threadID_in_group (+4 for a2, a3)
//   B (8x8, column-major, 2 registers):
//     row = threadID_in_group (+4 for b1), col = groupID
// Both: C, D (16x8, 4 fp32 registers):
//     row = groupID (+8 for c2, c3), col = 2*threadID_in_group + (i & 1)
//
// How the per-step product uses it (the batch on the narrow dimension):
// c[b, r] = sum_q h[b, q] W[r, q] is computed as D = W . h^T, 16 weight rows
// (M) by 8 batch rows (N) per tile, K in chunks of the instruction's K (16,
// or 8 for tf32); so B = 1..8 is one tile column with no wasted multiply for
// B = 8, and a larger batch loops over tiles of 8.  Rows beyond the last
// weight row, batch rows beyond the last, and K beyond the depth read as
// zeros (offset -1) and are not stored.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RNN_MMA_HD __host__ __device__ __forceinline__
#else
#define RNN_MMA_HD inline
#endif

namespace rnn_ext {
namespace mma {

constexpr int kM = 16, kN = 8, kK = 16;  // the instruction's shape
constexpr int kWarp = 32;
constexpr int kAElems = 8, kBElems = 4, kCElems = 4;  // per lane

RNN_MMA_HD constexpr int group_id(int lane) { return lane >> 2; }
RNN_MMA_HD constexpr int thread_in_group(int lane) { return lane & 3; }

// Lane `lane`'s element i of A (i < 8): its row and column in the 16x16 tile.
RNN_MMA_HD constexpr int a_row(int lane, int i) { return group_id(lane) + ((i >> 1) & 1) * 8; }
RNN_MMA_HD constexpr int a_col(int lane, int i) {
  return 2 * thread_in_group(lane) + (i & 1) + (i >> 2) * 8;
}
// Element i of B (i < 4): row (the K index) and column (the N index).
RNN_MMA_HD constexpr int b_row(int lane, int i) {
  return 2 * thread_in_group(lane) + (i & 1) + (i >> 1) * 8;
}
RNN_MMA_HD constexpr int b_col(int lane, int /*i*/) { return group_id(lane); }
// Element i of C and D (i < 4).
RNN_MMA_HD constexpr int c_row(int lane, int i) { return group_id(lane) + (i >> 1) * 8; }
RNN_MMA_HD constexpr int c_col(int lane, int i) { return 2 * thread_in_group(lane) + (i & 1); }

// Two 16-bit elements (their bit patterns) in one register: the lower
// element index in the low half, as the instruction reads them.
RNN_MMA_HD constexpr uint32_t pack_pair(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// m16n8k8 with .tf32 A and B: lane's element i of A (i < 4), of B (i < 2).
constexpr int kKTf32 = 8, kAElemsTf32 = 4, kBElemsTf32 = 2;
RNN_MMA_HD constexpr int tf32_a_row(int lane, int i) { return group_id(lane) + (i & 1) * 8; }
RNN_MMA_HD constexpr int tf32_a_col(int lane, int i) { return thread_in_group(lane) + (i >> 1) * 4; }
RNN_MMA_HD constexpr int tf32_b_row(int lane, int i) { return thread_in_group(lane) + i * 4; }
RNN_MMA_HD constexpr int tf32_b_col(int lane, int /*i*/) { return group_id(lane); }

// The two instructions' A and B layouts as TileGemmOf's parameter (C and D
// are the same for both).
struct Frag16 {  // m16n8k16, f16 / bf16: two elements per register
  static constexpr int kK = mma::kK, kAElems = mma::kAElems, kBElems = mma::kBElems;
  static RNN_MMA_HD constexpr int a_row(int lane, int i) { return mma::a_row(lane, i); }
  static RNN_MMA_HD constexpr int a_col(int lane, int i) { return mma::a_col(lane, i); }
  static RNN_MMA_HD constexpr int b_row(int lane, int i) { return mma::b_row(lane, i); }
  static RNN_MMA_HD constexpr int b_col(int lane, int i) { return mma::b_col(lane, i); }
};
struct FragTf32 {  // m16n8k8, tf32: one element per register
  static constexpr int kK = kKTf32, kAElems = kAElemsTf32, kBElems = kBElemsTf32;
  static RNN_MMA_HD constexpr int a_row(int lane, int i) { return tf32_a_row(lane, i); }
  static RNN_MMA_HD constexpr int a_col(int lane, int i) { return tf32_a_col(lane, i); }
  static RNN_MMA_HD constexpr int b_row(int lane, int i) { return tf32_b_row(lane, i); }
  static RNN_MMA_HD constexpr int b_col(int lane, int i) { return tf32_b_col(lane, i); }
};

// fp32 to tf32 as cvt.rna.tf32.f32 rounds (to nearest, ties away from zero,
// 10 explicit mantissa bits; the low 13 bits of the result zero), on bit
// patterns: what the CPU emulation multiplies, and the test's reference
// rounding.  The device code uses the instruction itself (mma_tile.cuh).
// NaN stays NaN; a carry out of the largest finite binade gives infinity.
RNN_MMA_HD constexpr uint32_t round_tf32_bits(uint32_t u) {
  return (u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0
             ? (u | 0x00400000u) & 0xffffe000u  // NaN: quiet, payload truncated
             : (u + 0x00001000u) & 0xffffe000u;  // magnitude + half an ulp, truncated
}

// c[b, r] = sum_{q < depth} a[b, q] w_r[q] for b < batch, r < rows, where
// weight row r is gate r / rows_per_gate's row r % rows_per_gate: the G
// gates' rows of a worker's units (partition::GateRows), numbered as the
// columns of c are (gate g in columns [g*n, (g+1)*n)).  A tile is 16 rows
// by 8 batch rows; tiles are numbered row tile major, batch tile minor.
// Frag: the instruction (Frag16 or FragTf32), which sets K per chunk and
// which lane holds which element of A and B.
template <class Frag>
struct TileGemmOf {
  int64_t batch, depth, rows;
  int64_t lda;                              // a: [batch, depth] in rows of lda
  int64_t rows_per_gate, gate_stride, ldw;  // w: see above
  int64_t ldc;                              // c: c[b, r] at b*ldc + r
  int64_t ldk = 1;                          // w: K stride (1: rows; a transposed copy: its width)
  bool accumulate = false;                  // c += the product (the tile starts from c)

  RNN_MMA_HD int64_t row_tiles() const { return (rows + kM - 1) / kM; }
  RNN_MMA_HD int64_t batch_tiles() const { return (batch + kN - 1) / kN; }
  RNN_MMA_HD int64_t tiles() const { return row_tiles() * batch_tiles(); }
  RNN_MMA_HD int64_t k_chunks() const { return (depth + Frag::kK - 1) / Frag::kK; }
  RNN_MMA_HD int64_t row0(int64_t tile) const { return tile / batch_tiles() * kM; }
  RNN_MMA_HD int64_t batch0(int64_t tile) const { return tile % batch_tiles() * kN; }

  // Offset in w of weight row r, column q.
  RNN_MMA_HD int64_t w_offset(int64_t r, int64_t q) const {
    return r / rows_per_gate * gate_stride + r % rows_per_gate * ldw + q * ldk;
  }
  // Where lane's A element i of `tile`, K chunk `chunk`, is in w; -1: zero.
  RNN_MMA_HD int64_t a_offset(int64_t tile, int64_t chunk, int lane, int i) const {
    const int64_t r = row0(tile) + Frag::a_row(lane, i), q = chunk * Frag::kK + Frag::a_col(lane, i);
    return r < rows && q < depth ? w_offset(r, q) : -1;
  }
  // Where lane's B element i is in a (B = a^T: row q, column b); -1: zero.
  RNN_MMA_HD int64_t b_offset(int64_t tile, int64_t chunk, int lane, int i) const {
    return b_offset_from(b_base(tile, lane, i), chunk, lane, i);
  }
  // b_offset in two steps, for a loop over a tile's chunks: lane's element
  // i at chunk 0 of `tile` (-1: its batch row is outside the product), then
  // at chunk `chunk` from that base (the K index is a's column: the base
  // plus chunk * K, where it is within the depth).
  RNN_MMA_HD int64_t b_base(int64_t tile, int lane, int i) const {
    const int64_t b = batch0(tile) + Frag::b_col(lane, i);
    return b < batch ? b * lda + Frag::b_row(lane, i) : -1;
  }
  RNN_MMA_HD int64_t b_offset_from(int64_t base, int64_t chunk, int lane, int i) const {
    return base >= 0 && chunk * Frag::kK + Frag::b_row(lane, i) < depth ? base + chunk * Frag::kK : -1;
  }
  // Where lane's D element i goes in c (D = c^T: row r, column b); -1: not stored.
  RNN_MMA_HD int64_t c_offset(int64_t tile, int lane, int i) const {
    const int64_t r = row0(tile) + c_row(lane, i), b = batch0(tile) + c_col(lane, i);
    return r < rows && b < batch ? b * ldc + r : -1;
  }
};
using TileGemm = TileGemmOf<Frag16>;       // fp16, bf16
using TileGemmTf32 = TileGemmOf<FragTf32>;  // fp32 operands rounded to tf32

// One warp's share of the tiles (tile warp, warp + warps, ...): for each,
// `ops.begin(tile)` (zero the accumulators), `ops.chunk(tile, chunk)` per K
// chunk (load the A and B fragments, issue the MMA), `ops.end(tile)` (store
// D).  The loop bounds depend on the warp only, never on the lane, so every
// lane of a warp issues the same MMAs (mma.sync's .aligned requires it).
// The device code (cuda/mma_tile.cuh) and the CPU emulation run this same
// loop with their own `ops`.
template <class Frag, class Ops>
RNN_MMA_HD void warp_tiles(const TileGemmOf<Frag>& g, int warp, int warps, Ops& ops) {
  const int64_t tiles = g.tiles(), chunks = g.k_chunks();
  for (int64_t tile = warp; tile < tiles; tile += warps) {
    ops.begin(tile);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) ops.chunk(tile, chunk);
    ops.end(tile);
  }
}

// ------------------------------------------------ register-resident A ---
// The register-resident form of a product whose A operand (the weights) is
// the same at every step, as the persistent forward kernels' W_hh is: each
// warp gathers its share of the A fragments into registers once, before
// the time loop, and each step gathers only B (h_{t-1}) and stores D.
//
// The schedule (KSplit): with W warps and R row tiles (R <= W), each row
// tile gets S = floor(W / R) warps, its "parts" (floor: every row tile the
// same count, so the reduction below is the same for all of them; the
// W - R*S warps left over idle).  K's C chunks are cut into contiguous
// ranges of ceil(C / S) chunks, the last one shorter; where that leaves a
// range empty (C < S, or C not dividing well) fewer parts are used, so no
// warp holds an empty range.  Warp w holds row tile w / S, part w % S:
// chunks [part * part_chunks, min(C, (part + 1) * part_chunks)) of that row
// tile, kAElems (16-bit) or kAElemsTf32 (tf32) elements of each chunk in 4
// registers a lane.  The split depends on the product's rows and depth
// (and W) only, never on the batch, and A's offsets on the row tile and the
// chunk only, so fragments gathered with a batch of 1 before the time loop
// serve every step's batch (ctest mma_layout checks both).
//
// A step (split_k_tiles): each warp computes, for every batch tile of its
// row tile, the partial D of its chunk range.  With one part (S = 1, or a
// single chunk range) that is D: the warp stores it, no barrier.  With
// several, the partials meet in scratch (shared memory on the GPU: one
// slot of kWarp x kCElems floats per warp and batch tile of a pass), the
// batch tiles kSplitPassTiles at a time: every warp publishes its partials
// of the pass, a barrier, then part p of each row tile reduces the pass's
// batch tiles j with j % S == p, adding the parts' partials in part order
// 0, 1, ..., S-1 (a fixed order: the same sums in the same order at every
// step and run; no atomics), and stores D through c_offset (the layout the
// other products write).  A second barrier before the next pass reuses the
// slots.  Only part 0 starts from c where g.accumulate.
struct KSplit {  // 32-bit: chunk and tile counts (fewer registers on the GPU)
  int row_tiles = 0;    // R
  int parts = 0;        // warps per row tile; 0: more row tiles than warps (no split)
  int part_chunks = 0;  // chunks per part (the last part may hold fewer)
  int chunks = 0;       // C: all of K

  RNN_MMA_HD int warps_used() const { return row_tiles * parts; }
  RNN_MMA_HD bool holds(int warp) const { return warp < warps_used(); }
  RNN_MMA_HD int row_tile(int warp) const { return warp / parts; }
  RNN_MMA_HD int part(int warp) const { return warp % parts; }
  RNN_MMA_HD int first_chunk(int warp) const { return part(warp) * part_chunks; }
  RNN_MMA_HD int chunk_count(int warp) const {
    const int left = chunks - first_chunk(warp);
    return left < part_chunks ? left : part_chunks;
  }
};

// The split of g's row tiles and K chunks over `warps` warps (above).
// Where there are more row tiles than warps (or more than 32-bit counts),
// parts = 0.
template <class Frag>
RNN_MMA_HD KSplit k_split(const TileGemmOf<Frag>& g, int warps) {
  KSplit s;
  const int64_t row_tiles = g.row_tiles(), chunks = g.k_chunks();
  if (row_tiles <= 0 || row_tiles > warps || chunks > (int64_t(1) << 30)) return s;
  s.row_tiles = static_cast<int>(row_tiles);
  s.chunks = static_cast<int>(chunks);
  const int per_row_tile = warps / s.row_tiles;
  s.part_chunks = (s.chunks + per_row_tile - 1) / per_row_tile;
  s.parts = s.part_chunks > 0 ? (s.chunks + s.part_chunks - 1) / s.part_chunks : 1;
  return s;
}

// Whether g's A fragments fit the registers: every row tile has a warp and
// a warp's chunk range fits max_chunks chunks (the kernel's budget).
template <class Frag>
RNN_MMA_HD bool fits_registers(const TileGemmOf<Frag>& g, int warps, int max_chunks) {
  const KSplit s = k_split(g, warps);
  return s.parts > 0 && s.part_chunks <= max_chunks;
}

// Batch tiles per reduction pass: the scratch holds warps x kSplitPassTiles
// slots (sm_90, 8 warps: 8 KiB of static shared memory), enough for B <= 16
// in one pass (one barrier); a larger batch takes more passes.
constexpr int kSplitPassTiles = 2;
// The scratch slot of warp `warp`'s partial of a pass's batch tile j, and
// where lane `lane`'s accumulator i of it sits in the scratch (floats):
// consecutive lanes at consecutive addresses (no bank conflicts).
RNN_MMA_HD constexpr int64_t split_slot(int64_t warp, int j) { return warp * kSplitPassTiles + j; }
RNN_MMA_HD constexpr int64_t split_scratch_index(int64_t slot, int lane, int i) {
  return (slot * kCElems + i) * kWarp + lane;
}
RNN_MMA_HD constexpr int64_t split_scratch_floats(int warps) {
  return int64_t(warps) * kSplitPassTiles * kCElems * kWarp;
}

// One warp's part of a step in the split form (above), with:
//   ops.begin(tile, from_c)  zero the accumulators (from_c: start from c
//                            where g.accumulate, as the other forms do)
//   ops.chunk(tile, c, k)    multiply by held chunk c (a constant after
//                            unrolling: the register array's index), K chunk k
//   ops.publish(slot)        the accumulators into scratch slot `slot`
//   ops.sync()               a barrier of the whole block
//   ops.add_partial(slot, first)  accumulators (first: =) += the slot
//   ops.end(tile)            store D (c_offset's guards)
// kMaxChunks: the budget (fits_registers held).  Every warp of the block
// calls it, including those that hold nothing: the barriers' count depends
// on g and s only (uniform across the block), the loop bounds of a warp's
// MMAs on the warp only (uniform across its lanes, as .aligned requires).
template <int kMaxChunks, class Frag, class Ops>
RNN_MMA_HD void split_k_tiles(const TileGemmOf<Frag>& g, const KSplit& s, int warp, Ops& ops) {
  const int64_t batch_tiles = g.batch_tiles();
  const bool holds = s.holds(warp);
  const int row_tile = holds ? s.row_tile(warp) : 0, part = holds ? s.part(warp) : 0;
  const int first = holds ? s.first_chunk(warp) : 0, count = holds ? s.chunk_count(warp) : 0;
  if (s.parts <= 1) {  // one part: D directly, no scratch, no barrier
    if (!holds) return;
    for (int64_t bt = 0; bt < batch_tiles; ++bt) {
      const int64_t tile = row_tile * batch_tiles + bt;
      ops.begin(tile, true);
#if defined(__CUDACC__)
#pragma unroll
#endif
      for (int c = 0; c < kMaxChunks; ++c)
        if (c < count) ops.chunk(tile, c, first + c);
      ops.end(tile);
    }
    return;
  }
  for (int64_t bt0 = 0; bt0 < batch_tiles; bt0 += kSplitPassTiles) {
    if (bt0 > 0) ops.sync();  // the previous pass's slots are read
    if (holds) {
      for (int j = 0; j < kSplitPassTiles && bt0 + j < batch_tiles; ++j) {
        const int64_t tile = row_tile * batch_tiles + bt0 + j;
        ops.begin(tile, part == 0);
#if defined(__CUDACC__)
#pragma unroll
#endif
        for (int c = 0; c < kMaxChunks; ++c)
          if (c < count) ops.chunk(tile, c, first + c);
        ops.publish(split_slot(warp, j));
      }
    }
    ops.sync();  // every part's partials are in the scratch
    if (holds) {
      for (int j = part; j < kSplitPassTiles && bt0 + j < batch_tiles; j += s.parts) {
        const int64_t tile = row_tile * batch_tiles + bt0 + j;
        for (int p = 0; p < s.parts; ++p) ops.add_partial(split_slot(row_tile * s.parts + p, j), p == 0);
        ops.end(tile);
      }
    }
  }
}

}  // namespace mma
}  // namespace rnn_ext
