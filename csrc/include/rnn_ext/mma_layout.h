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
    const int64_t q = chunk * Frag::kK + Frag::b_row(lane, i), b = batch0(tile) + Frag::b_col(lane, i);
    return q < depth && b < batch ? b * lda + q : -1;
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

// The register-resident form of a product whose A operand (the weights) is
// the same at every step, as the persistent forward kernel's W_hh is: warp
// w owns row tile w and every batch tile of it, so the A fragments it
// multiplies by (16 weight rows by all of K) never change; it gathers them
// into registers once, before the time loop, and each step gathers only B
// (h_{t-1}) and stores D.  A's offsets depend on the row tile alone
// (row0(tile) = warp * kM for every tile warp_row_tile hands out, whatever
// the batch), so fragments gathered with any batch serve every step; ctest
// mma_layout checks that and runs this schedule.  It applies where each row
// tile has a warp and a warp's fragments fit its register budget (chunks of
// K per row tile, each kAElems elements of 16 bits or kAElemsTf32 of 32 in
// 4 registers).
template <class Frag>
RNN_MMA_HD bool fits_registers(const TileGemmOf<Frag>& g, int warps, int max_chunks) {
  return g.row_tiles() <= warps && g.k_chunks() <= max_chunks;
}
// One warp's tiles in that form: for each batch tile bt, tile
// warp * batch_tiles() + bt, with ops.begin, then ops.chunk(tile, c) for
// each chunk c < k_chunks() (c a constant after unrolling: the device code
// indexes its register array with it), then ops.end.  kMaxChunks: the
// budget (fits_registers held).  Uniform across the lanes of a warp.
template <int kMaxChunks, class Frag, class Ops>
RNN_MMA_HD void warp_row_tile(const TileGemmOf<Frag>& g, int warp, Ops& ops) {
  if (warp >= g.row_tiles()) return;
  const int64_t batch_tiles = g.batch_tiles(), chunks = g.k_chunks();
  for (int64_t bt = 0; bt < batch_tiles; ++bt) {
    const int64_t tile = warp * batch_tiles + bt;
    ops.begin(tile);
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int c = 0; c < kMaxChunks; ++c)
      if (c < chunks) ops.chunk(tile, c);
    ops.end(tile);
  }
}

}  // namespace mma
}  // namespace rnn_ext
