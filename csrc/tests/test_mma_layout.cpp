// C++ tests of the tensor-core tile product's index logic
// (rnn_ext/mma_layout.h), which cuda/mma_tile.cuh runs on the GPU:
//  1. the m16n8k16 fragment layouts: each lane's elements against the PTX
//     ISA's figures at chosen lanes, against a second derivation (the
//     layouts as strides over (lane, element) bit fields), every element of
//     A, B and C/D held by exactly one lane, and the pairs packed into one
//     register adjacent along K;
//  2. the tiled product, emulated: 32 lanes per warp, 1 to 8 warps, gather
//     the bf16 fragments with the same offset and packing functions the
//     device code calls, multiply them with the instruction's documented
//     semantics (the registers unpacked back to A and B through the layout
//     functions), scatter D with them, and compare with a plain GEMM for
//     sizes that are not multiples of the tile: partial row, batch and K
//     tiles, tiles spanning two gates, B > 8, depth 0.  Inputs outside the
//     product are NaN and outputs outside it are NaN-poisoned, so a read out
//     of range or a stray or missing store fails;
//  3. the register-resident schedule with K split across the warps of a row
//     tile (mma::KSplit, mma::split_k_tiles): the split itself (each chunk
//     of each row tile held by one warp, ragged ranges, idle warps), then
//     the warps run as threads with real barriers, A gathered once with a
//     batch of 1 and the partials reduced through an emulated shared-memory
//     scratch, against an fp64 product over steps of 1 to 33 batch rows.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "cuda/resident.h"
#include "rnn_ext/mma_layout.h"
#include "tests/expect.h"

using namespace rnn_ext::mma;

// The layout functions are constant expressions (usable in device code
// without a call): lane 5 is groupID 1, threadID_in_group 1.
static_assert(a_row(5, 0) == 1 && a_col(5, 0) == 2 && a_row(5, 7) == 9 && a_col(5, 7) == 11, "A");
static_assert(b_row(5, 3) == 11 && b_col(5, 3) == 1, "B");
static_assert(c_row(5, 2) == 9 && c_col(5, 2) == 2, "C");
static_assert(pack_pair(0x1234, 0xabcd) == 0xabcd1234u, "pack");
static_assert(tf32_a_row(5, 1) == 9 && tf32_a_col(5, 1) == 1 && tf32_a_col(5, 2) == 5, "tf32 A");
static_assert(tf32_b_row(5, 1) == 5 && tf32_b_col(5, 1) == 1, "tf32 B");


// ------------------------------------------------------------- layouts ---
static void test_documented_lanes() {
  // Lane 0 (groupID 0, threadID_in_group 0) and lane 31 (7, 3), read off
  // the PTX ISA's fragment figures for m16n8k16 (.f16/.bf16 A and B, .f32 C/D).
  const int a0[8][2] = {{0, 0}, {0, 1}, {8, 0}, {8, 1}, {0, 8}, {0, 9}, {8, 8}, {8, 9}};
  const int a31[8][2] = {{7, 6}, {7, 7}, {15, 6}, {15, 7}, {7, 14}, {7, 15}, {15, 14}, {15, 15}};
  for (int i = 0; i < kAElems; ++i) {
    EXPECT(a_row(0, i) == a0[i][0] && a_col(0, i) == a0[i][1], "A lane 0 a%d", i);
    EXPECT(a_row(31, i) == a31[i][0] && a_col(31, i) == a31[i][1], "A lane 31 a%d", i);
  }
  const int b0[4][2] = {{0, 0}, {1, 0}, {8, 0}, {9, 0}};
  const int b31[4][2] = {{6, 7}, {7, 7}, {14, 7}, {15, 7}};
  const int c0[4][2] = {{0, 0}, {0, 1}, {8, 0}, {8, 1}};
  const int c31[4][2] = {{7, 6}, {7, 7}, {15, 6}, {15, 7}};
  for (int i = 0; i < 4; ++i) {
    EXPECT(b_row(0, i) == b0[i][0] && b_col(0, i) == b0[i][1], "B lane 0 b%d", i);
    EXPECT(b_row(31, i) == b31[i][0] && b_col(31, i) == b31[i][1], "B lane 31 b%d", i);
    EXPECT(c_row(0, i) == c0[i][0] && c_col(0, i) == c0[i][1], "C lane 0 c%d", i);
    EXPECT(c_row(31, i) == c31[i][0] && c_col(31, i) == c31[i][1], "C lane 31 c%d", i);
  }
}

static void test_stride_derivation() {
  // The same layouts written as strides over bit fields: lane = t0 + 4 t1
  // (t0 < 4, t1 < 8), element i = v0 + 2 v1 + 4 v2.
  for (int lane = 0; lane < kWarp; ++lane) {
    const int t0 = lane % 4, t1 = lane / 4;
    for (int i = 0; i < kAElems; ++i) {
      const int v0 = i & 1, v1 = (i >> 1) & 1, v2 = i >> 2;
      EXPECT(a_row(lane, i) == t1 + 8 * v1 && a_col(lane, i) == 2 * t0 + v0 + 8 * v2,
             "A lane %d a%d", lane, i);
    }
    for (int i = 0; i < kBElems; ++i) {
      const int v0 = i & 1, v1 = i >> 1;
      EXPECT(b_row(lane, i) == 2 * t0 + v0 + 8 * v1 && b_col(lane, i) == t1, "B lane %d b%d", lane, i);
      EXPECT(c_row(lane, i) == t1 + 8 * v1 && c_col(lane, i) == 2 * t0 + v0, "C lane %d c%d", lane, i);
    }
  }
}

static void test_each_element_once() {
  int a[kM][kK] = {}, b[kK][kN] = {}, c[kM][kN] = {};
  for (int lane = 0; lane < kWarp; ++lane) {
    for (int i = 0; i < kAElems; ++i) ++a[a_row(lane, i)][a_col(lane, i)];
    for (int i = 0; i < kBElems; ++i) ++b[b_row(lane, i)][b_col(lane, i)];
    for (int i = 0; i < kCElems; ++i) ++c[c_row(lane, i)][c_col(lane, i)];
    // A register holds two neighbours along K: the same row (A) or column
    // (B), consecutive K indices, the lower one in the low half.
    for (int j = 0; j < kAElems / 2; ++j)
      EXPECT(a_row(lane, 2 * j) == a_row(lane, 2 * j + 1) &&
                 a_col(lane, 2 * j) + 1 == a_col(lane, 2 * j + 1), "A pair lane %d reg %d", lane, j);
    for (int j = 0; j < kBElems / 2; ++j)
      EXPECT(b_col(lane, 2 * j) == b_col(lane, 2 * j + 1) &&
                 b_row(lane, 2 * j) + 1 == b_row(lane, 2 * j + 1), "B pair lane %d reg %d", lane, j);
  }
  for (int r = 0; r < kM; ++r)
    for (int q = 0; q < kK; ++q) EXPECT(a[r][q] == 1, "A(%d, %d) held %d times", r, q, a[r][q]);
  for (int q = 0; q < kK; ++q)
    for (int n = 0; n < kN; ++n) EXPECT(b[q][n] == 1, "B(%d, %d) held %d times", q, n, b[q][n]);
  for (int r = 0; r < kM; ++r)
    for (int n = 0; n < kN; ++n) EXPECT(c[r][n] == 1, "C(%d, %d) held %d times", r, n, c[r][n]);
}

// ---------------------------------------------------------- emulation ---
// bf16 as its bit pattern: the upper half of an fp32, rounded to nearest even.
static uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (std::isnan(x)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
static float from_bf16(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// The instruction as the PTX ISA defines it, on one warp's registers:
// D = A B + C, fp32 accumulation.  The registers are unpacked into the
// 16x16 A and 16x8 B through the layout functions (each element written
// once: test_each_element_once), D scattered back the same way.
static void emulate_mma(float (&d)[kWarp][kCElems], const uint32_t (&a)[kWarp][4],
                        const uint32_t (&b)[kWarp][2]) {
  float A[kM][kK], B[kK][kN];
  for (int lane = 0; lane < kWarp; ++lane) {
    for (int i = 0; i < kAElems; ++i) {
      const uint32_t reg = a[lane][i / 2];
      A[a_row(lane, i)][a_col(lane, i)] = from_bf16(static_cast<uint16_t>(i % 2 ? reg >> 16 : reg & 0xffff));
    }
    for (int i = 0; i < kBElems; ++i) {
      const uint32_t reg = b[lane][i / 2];
      B[b_row(lane, i)][b_col(lane, i)] = from_bf16(static_cast<uint16_t>(i % 2 ? reg >> 16 : reg & 0xffff));
    }
  }
  for (int lane = 0; lane < kWarp; ++lane)
    for (int i = 0; i < kCElems; ++i) {
      float sum = d[lane][i];
      for (int q = 0; q < kK; ++q) sum += A[c_row(lane, i)][q] * B[q][c_col(lane, i)];
      d[lane][i] = sum;
    }
}

// One warp of the emulation: mma::warp_tiles's ops for 32 lanes at once,
// each doing what mma_tile::LaneOps does on the GPU.
struct EmulatedWarp {
  const TileGemm& g;
  const uint16_t* a;  // bf16 bits
  const uint16_t* w;
  float* c;
  std::vector<int>* stores;  // stores per element of c
  float d[kWarp][kCElems];

  static uint16_t load(const uint16_t* p, int64_t offset) { return offset >= 0 ? p[offset] : 0; }
  void begin(int64_t tile) {
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < kCElems; ++i) {
        const int64_t offset = g.accumulate ? g.c_offset(tile, lane, i) : -1;
        d[lane][i] = offset >= 0 ? c[offset] : 0.f;
      }
  }
  void chunk(int64_t tile, int64_t k) {
    uint32_t af[kWarp][4], bf[kWarp][2];
    for (int lane = 0; lane < kWarp; ++lane) {
      for (int j = 0; j < 4; ++j)
        af[lane][j] = pack_pair(load(w, g.a_offset(tile, k, lane, 2 * j)),
                                load(w, g.a_offset(tile, k, lane, 2 * j + 1)));
      for (int j = 0; j < 2; ++j)
        bf[lane][j] = pack_pair(load(a, g.b_offset(tile, k, lane, 2 * j)),
                                load(a, g.b_offset(tile, k, lane, 2 * j + 1)));
    }
    emulate_mma(d, af, bf);
  }
  void end(int64_t tile) {
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < kCElems; ++i) {
        const int64_t offset = g.c_offset(tile, lane, i);
        if (offset < 0) continue;
        c[offset] = d[lane][i];
        ++(*stores)[offset];
      }
  }
};

struct Case {
  int64_t m, depth, n, G;  // batch rows, K, units per gate, gates
  int64_t H;               // units of the layer (the worker's slice is [u0, u0 + n))
  int64_t u0;
  int64_t lda_pad, ldw_pad, ldc_extra;  // padding columns (NaN) of a, w and c
  int warps;
  // The worker's rows as the CUDA executor keeps them in shared memory:
  // transposed by resident::pack_rows_transposed, [depth, G*n] (GateRows::wt).
  bool shared_copy = false;
};

// The worker's product as the persistent loop asks for it: c[b, g*n + j] =
// sum_q a[b, q] W[g*H + u0 + j, q] (W: [G*H, ldw], the layer's W_hh).
static void run_case(const Case& cs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const float nan = std::nanf("");
  const int64_t B = cs.m + 2;  // rows b >= m are inactive: NaN, never read
  const int64_t lda = cs.depth + cs.lda_pad, ldw = cs.depth + cs.ldw_pad;
  const int64_t rows = cs.G * cs.n, ldc = rows + cs.ldc_extra;
  std::vector<uint16_t> a(B * lda), W(cs.G * cs.H * ldw);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < lda; ++q)
      a[b * lda + q] = to_bf16(b < cs.m && q < cs.depth ? dist(rng) : nan);
  for (int64_t r = 0; r < cs.G * cs.H; ++r)
    for (int64_t q = 0; q < ldw; ++q) W[r * ldw + q] = to_bf16(q < cs.depth ? dist(rng) : nan);
  std::vector<float> c(B * ldc, nan);
  std::vector<int> stores(c.size(), 0);

  // As BlockExecutor::gemm_resident builds it from GateRows (resident_rows:
  // the slice's first row, gate stride H rows, rows of ldw).
  const TileGemm in_place{cs.m, cs.depth, rows, lda, cs.n, cs.H * ldw, ldw, ldc};
  // As it builds it from GateRows::wt: product row r in column r, K rows G*n apart.
  const TileGemm transposed{cs.m, cs.depth, rows, lda, rows, 0, 1, ldc, rows};
  const TileGemm& g = cs.shared_copy ? transposed : in_place;
  std::vector<uint16_t> wt(cs.depth * rows);
  if (cs.shared_copy) {
    const rnn_ext::partition::GateRows<uint16_t> gate_rows{W.data() + cs.u0 * ldw, cs.H * ldw,
                                                           ldw};
    rnn_ext::resident::pack_rows_transposed(gate_rows, cs.G, cs.n, cs.depth, wt.data(), 0, 1);
  }
  const uint16_t* w = cs.shared_copy ? wt.data() : W.data() + cs.u0 * ldw;
  for (int warp = 0; warp < cs.warps; ++warp) {
    EmulatedWarp ops{g, a.data(), w, c.data(), &stores, {}};
    warp_tiles(g, warp, cs.warps, ops);
  }

  int bad = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t col = 0; col < ldc; ++col) {
      const int64_t e = b * ldc + col;
      if (b >= cs.m || col >= rows) {
        if (!std::isnan(c[e]) || stores[e] != 0) ++bad;  // outside: untouched
        continue;
      }
      const int64_t gate = col / cs.n, j = col % cs.n;
      double want = 0, scale = 0;
      for (int64_t q = 0; q < cs.depth; ++q) {
        const double p = double(from_bf16(a[b * lda + q])) *
                         from_bf16(W[(gate * cs.H + cs.u0 + j) * ldw + q]);
        want += p;
        scale += std::fabs(p);
      }
      // fp32 accumulation of exact bf16 products: within (terms) * 2^-24
      // of the sum of their magnitudes, twice over.
      const double tol = 2.0 * (cs.depth + kK) * std::ldexp(1.0, -24) * scale;
      const bool ok = stores[e] == 1 && std::fabs(c[e] - want) <= tol;
      if (!ok && bad < 5)
        std::printf("  b=%ld col=%ld got %g want %g stores %d\n", (long)b, (long)col, c[e], want,
                    stores[e]);
      bad += !ok;
    }
  EXPECT(bad == 0, "m=%ld depth=%ld n=%ld G=%ld warps=%d: %d elements wrong", (long)cs.m,
         (long)cs.depth, (long)cs.n, (long)cs.G, cs.warps, bad);
}

static void test_emulated_tile_gemm() {
  const Case cases[] = {
      // m, depth, n, G, H, u0, lda_pad, ldw_pad, ldc_extra, warps
      {8, 16, 16, 1, 16, 0, 0, 0, 0, 1},     // one whole tile
      {1, 37, 37, 4, 37, 0, 0, 0, 0, 8},     // B = 1; partial K; tiles span gates
      {3, 37, 9, 4, 37, 24, 0, 0, 0, 8},     // a worker's slice of 9 units
      {8, 64, 24, 4, 100, 40, 0, 0, 0, 8},   // B = 8 exactly: one batch tile
      {9, 45, 5, 3, 11, 6, 0, 0, 0, 8},      // GRU gates; B = 9: two batch tiles
      {17, 3, 29, 1, 29, 0, 0, 0, 0, 3},     // RNN; K < 16; B = 17; 3 warps
      {5, 100, 33, 4, 70, 37, 3, 5, 0, 8},   // strided a and w
      {6, 40, 11, 1, 40, 13, 0, 0, 29, 8},   // the projection: ldc > columns
      {4, 0, 7, 4, 7, 0, 0, 0, 0, 8},        // depth 0: zeros
      {2, 300, 40, 4, 300, 160, 0, 0, 0, 8}, // the h300 test shape's worker
      {16, 31, 48, 4, 48, 0, 1, 0, 0, 8},    // more tiles than warps
      // The shared-memory copy of the worker's rows (transposed):
      {3, 37, 9, 4, 37, 24, 0, 0, 0, 8, true},
      {9, 45, 5, 3, 11, 6, 0, 2, 0, 8, true},
      {17, 3, 29, 1, 29, 0, 0, 0, 0, 3, true},
      {2, 300, 40, 4, 300, 160, 0, 0, 0, 8, true},
      {6, 40, 11, 1, 40, 13, 0, 0, 29, 8, true},
  };
  uint32_t seed = 1;
  for (const Case& cs : cases) run_case(cs, seed++);
}

// The backward's product as BlockExecutor::gemm_nn builds it: c[b, j] (+)=
// sum_q a[b, q] w[q * ldw + j], j < n (w: the worker's columns of W_hh, in
// place with ldw = the layer's width, or the shared-memory copy with ldw = n),
// w^T the A operand.  With accumulate, c starts from its own values.
static void run_nn_case(int64_t m, int64_t k, int64_t n, int64_t ldw, int64_t col0,
                        bool accumulate, int warps, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const float nan = std::nanf("");
  const int64_t B = m + 1, lda = k + 2, ldc = n + 3;
  std::vector<uint16_t> a(B * lda), W(k * ldw);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < lda; ++q) a[b * lda + q] = to_bf16(b < m && q < k ? dist(rng) : nan);
  for (int64_t q = 0; q < k; ++q)
    for (int64_t j = 0; j < ldw; ++j)
      W[q * ldw + j] = to_bf16(j >= col0 && j < col0 + n ? dist(rng) : nan);
  std::vector<float> c(B * ldc, nan), c0;
  for (int64_t b = 0; b < m; ++b)
    for (int64_t j = 0; j < n; ++j) c[b * ldc + j] = accumulate ? dist(rng) : nan;
  c0 = c;
  std::vector<int> stores(c.size(), 0);
  const TileGemm g{m, k, n, lda, n, 0, 1, ldc, ldw, accumulate};
  const uint16_t* w = W.data() + col0;
  for (int warp = 0; warp < warps; ++warp) {
    EmulatedWarp ops{g, a.data(), w, c.data(), &stores, {}};
    warp_tiles(g, warp, warps, ops);
  }
  int bad = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < ldc; ++j) {
      const int64_t e = b * ldc + j;
      if (b >= m || j >= n) {
        if (!std::isnan(c[e]) || stores[e] != 0) ++bad;
        continue;
      }
      double want = accumulate ? c0[e] : 0.0, scale = std::fabs(want);
      for (int64_t q = 0; q < k; ++q) {
        const double p = double(from_bf16(a[b * lda + q])) * from_bf16(w[q * ldw + j]);
        want += p;
        scale += std::fabs(p);
      }
      const double tol = 2.0 * (k + kK + 1) * std::ldexp(1.0, -24) * scale;
      bad += !(stores[e] == 1 && std::fabs(c[e] - want) <= tol);
    }
  EXPECT(bad == 0, "nn m=%ld k=%ld n=%ld ldw=%ld acc=%d: %d elements wrong", (long)m, (long)k,
         (long)n, (long)ldw, (int)accumulate, bad);
}

static void test_emulated_backward_product() {
  // m, k (= 4H or P), n (the worker's columns), ldw, first column, accumulate, warps
  run_nn_case(1, 148, 9, 37, 24, true, 8, 101);    // in place, B = 1, LSTM 4H = 148
  run_nn_case(9, 148, 9, 9, 0, true, 8, 102);      // the shared-memory copy: ldw = n
  run_nn_case(17, 33, 40, 100, 60, false, 3, 103); // projection-like, three batch tiles
  run_nn_case(8, 0, 5, 5, 0, true, 8, 104);        // k = 0 with accumulate: c unchanged
  run_nn_case(8, 0, 5, 5, 0, false, 8, 105);       // k = 0: zeros
  run_nn_case(5, 300, 48, 300, 160, true, 8, 106); // more row tiles than one warp's
}


// ------------------------------------------------------------- tf32 -----
static void test_tf32_documented_lanes() {
  // Lane 0 (groupID 0, threadID_in_group 0) and lane 31 (7, 3), read off
  // the PTX ISA's fragment figures for m16n8k8 with .tf32 A and B.
  const int a0[4][2] = {{0, 0}, {8, 0}, {0, 4}, {8, 4}};
  const int a31[4][2] = {{7, 3}, {15, 3}, {7, 7}, {15, 7}};
  for (int i = 0; i < kAElemsTf32; ++i) {
    EXPECT(tf32_a_row(0, i) == a0[i][0] && tf32_a_col(0, i) == a0[i][1], "tf32 A lane 0 a%d", i);
    EXPECT(tf32_a_row(31, i) == a31[i][0] && tf32_a_col(31, i) == a31[i][1], "tf32 A lane 31 a%d", i);
  }
  const int b0[2][2] = {{0, 0}, {4, 0}};
  const int b31[2][2] = {{3, 7}, {7, 7}};
  for (int i = 0; i < kBElemsTf32; ++i) {
    EXPECT(tf32_b_row(0, i) == b0[i][0] && tf32_b_col(0, i) == b0[i][1], "tf32 B lane 0 b%d", i);
    EXPECT(tf32_b_row(31, i) == b31[i][0] && tf32_b_col(31, i) == b31[i][1], "tf32 B lane 31 b%d", i);
  }
}

static void test_tf32_layout_derivation_and_coverage() {
  const TileGemmTf32 tf32_depth17{1, 17, 1, 17, 1, 0, 1, 1};
  const TileGemm bf16_depth17{1, 17, 1, 17, 1, 0, 1, 1};
  EXPECT(tf32_depth17.k_chunks() == 3 && bf16_depth17.k_chunks() == 2, "K per chunk: 8 for tf32, 16 else");
  // Strides over bit fields: lane = t0 + 4 t1, A element i = v0 + 2 v1
  // (v0 steps M by 8, v1 steps K by 4), B element i steps K by 4.
  int a[kM][kKTf32] = {}, b[kKTf32][kN] = {};
  for (int lane = 0; lane < kWarp; ++lane) {
    const int t0 = lane % 4, t1 = lane / 4;
    for (int i = 0; i < kAElemsTf32; ++i) {
      const int v0 = i & 1, v1 = i >> 1;
      EXPECT(tf32_a_row(lane, i) == t1 + 8 * v0 && tf32_a_col(lane, i) == t0 + 4 * v1,
             "tf32 A lane %d a%d", lane, i);
      ++a[tf32_a_row(lane, i)][tf32_a_col(lane, i)];
    }
    for (int i = 0; i < kBElemsTf32; ++i) {
      EXPECT(tf32_b_row(lane, i) == t0 + 4 * i && tf32_b_col(lane, i) == t1, "tf32 B lane %d b%d",
             lane, i);
      ++b[tf32_b_row(lane, i)][tf32_b_col(lane, i)];
    }
  }
  for (int r = 0; r < kM; ++r)
    for (int q = 0; q < kKTf32; ++q) EXPECT(a[r][q] == 1, "tf32 A(%d, %d) held %d times", r, q, a[r][q]);
  for (int q = 0; q < kKTf32; ++q)
    for (int n = 0; n < kN; ++n) EXPECT(b[q][n] == 1, "tf32 B(%d, %d) held %d times", q, n, b[q][n]);
}

static uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
static float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
// What the emulated lane holds after cvt.rna.tf32.f32: the rounded value.
static float to_tf32(float x) { return float_of(round_tf32_bits(bits_of(x))); }

static void test_tf32_rounding() {
  const float ulp = std::ldexp(1.f, -10);  // of tf32 at 1.0: 10 explicit mantissa bits
  EXPECT(to_tf32(1.f) == 1.f && to_tf32(0.f) == 0.f && to_tf32(-0.f) == 0.f &&
             std::signbit(to_tf32(-0.f)), "exact values");
  EXPECT(to_tf32(1.f + ulp) == 1.f + ulp, "a tf32 value is kept");
  EXPECT(to_tf32(1.f + ulp / 4) == 1.f, "below half an ulp: down");
  EXPECT(to_tf32(1.f + 3 * ulp / 4) == 1.f + ulp, "above half an ulp: up");
  EXPECT(to_tf32(1.f + ulp / 2) == 1.f + ulp, "tie: away from zero (not to even)");
  EXPECT(to_tf32(1.f + 3 * ulp / 2) == 1.f + 2 * ulp, "tie from an odd value: away from zero");
  EXPECT(to_tf32(-(1.f + ulp / 2)) == -(1.f + ulp), "negative tie: away from zero");
  EXPECT(to_tf32(2.f - ulp / 4) == 2.f, "carry into the exponent");
  EXPECT((bits_of(to_tf32(0.1f)) & 0x1fffu) == 0, "the low 13 bits are zero");
  EXPECT(std::isinf(to_tf32(INFINITY)) && to_tf32(-INFINITY) < 0, "infinities kept");
  EXPECT(std::isnan(to_tf32(std::nanf(""))), "NaN stays NaN");
  EXPECT(std::isnan(to_tf32(float_of(0x7f800001u))), "a NaN with only low payload bits stays NaN");
  EXPECT(std::isinf(to_tf32(3.4028235e38f)), "the largest fp32 rounds up to infinity");
  // The relative bound the tests below rely on: half a tf32 ulp, 2^-11.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-4.f, 4.f);
  int bad = 0;
  for (int k = 0; k < 10000; ++k) {
    const float x = dist(rng), r = to_tf32(x);
    bad += !(std::fabs(double(r) - x) <= std::ldexp(1.0, -11) * std::fabs(x) &&
             (bits_of(r) & 0x1fffu) == 0);
  }
  EXPECT(bad == 0, "tf32 rounding: %d values beyond 2^-11 relative", bad);
}

// The tf32 instruction as the PTX ISA defines it, on one warp's registers:
// D = A B + C with tf32 A and B (each register one rounded fp32), fp32
// accumulation.  Unpacked through the tf32 layout functions.
static void emulate_mma_tf32(float (&d)[kWarp][kCElems], const uint32_t (&a)[kWarp][kAElemsTf32],
                             const uint32_t (&b)[kWarp][kBElemsTf32]) {
  float A[kM][kKTf32], B[kKTf32][kN];
  for (int lane = 0; lane < kWarp; ++lane) {
    for (int i = 0; i < kAElemsTf32; ++i) A[tf32_a_row(lane, i)][tf32_a_col(lane, i)] = float_of(a[lane][i]);
    for (int i = 0; i < kBElemsTf32; ++i) B[tf32_b_row(lane, i)][tf32_b_col(lane, i)] = float_of(b[lane][i]);
  }
  for (int lane = 0; lane < kWarp; ++lane)
    for (int i = 0; i < kCElems; ++i) {
      float sum = d[lane][i];
      for (int q = 0; q < kKTf32; ++q) sum += A[c_row(lane, i)][q] * B[q][c_col(lane, i)];
      d[lane][i] = sum;
    }
}

// One warp of the tf32 emulation: what mma_tile::Tf32LaneOps does per lane
// (load fp32 or zero at the layout's offset, round to tf32, one element
// per register), for 32 lanes.
struct EmulatedTf32Warp {
  const TileGemmTf32& g;
  const float* a;
  const float* w;
  float* c;
  std::vector<int>* stores;
  float d[kWarp][kCElems];

  static uint32_t load(const float* p, int64_t offset) {
    return round_tf32_bits(bits_of(offset >= 0 ? p[offset] : 0.f));
  }
  void begin(int64_t tile) {
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < kCElems; ++i) {
        const int64_t offset = g.accumulate ? g.c_offset(tile, lane, i) : -1;
        d[lane][i] = offset >= 0 ? c[offset] : 0.f;
      }
  }
  void chunk(int64_t tile, int64_t k) {
    uint32_t af[kWarp][kAElemsTf32], bf[kWarp][kBElemsTf32];
    for (int lane = 0; lane < kWarp; ++lane) {
      for (int i = 0; i < kAElemsTf32; ++i) af[lane][i] = load(w, g.a_offset(tile, k, lane, i));
      for (int i = 0; i < kBElemsTf32; ++i) bf[lane][i] = load(a, g.b_offset(tile, k, lane, i));
    }
    emulate_mma_tf32(d, af, bf);
  }
  void end(int64_t tile) {
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < kCElems; ++i) {
        const int64_t offset = g.c_offset(tile, lane, i);
        if (offset < 0) continue;
        c[offset] = d[lane][i];
        ++(*stores)[offset];
      }
  }
};

// One output of the tf32 product against its two references: the plain
// GEMM (in double) of the tf32-rounded operands, within fp32 accumulation
// ((terms) * 2^-24 of the sum of magnitudes, twice over), and that of the
// unrounded fp32 operands, within what rounding both operands to tf32 adds
// (2^-11 relative each: 2^-10 + 2^-22 of the sum of magnitudes) on top.
// `base`: c's starting value (accumulate), exact in both.
struct Tf32Check {
  double rounded = 0, exact = 0, scale = 0;
  int64_t terms = 0;
  void add(float x, float y) {
    rounded += double(to_tf32(x)) * to_tf32(y);
    const double p = double(x) * y;
    exact += p;
    scale += std::fabs(p);
    ++terms;
  }
  bool ok(float got, double base, int64_t* beyond_fp32) const {
    const double s = scale + std::fabs(base);
    const double acc_tol = 2.0 * (terms + kKTf32 + 1) * std::ldexp(1.0, -24) * s * (1 + std::ldexp(1.0, -10));
    const double tf32_tol = (std::ldexp(1.0, -10) + std::ldexp(1.0, -22)) * scale + acc_tol;
    // How far tf32 moved the result: where beyond fp32's own error, the
    // rounded reference tells the emulated rounding from none.
    if (std::fabs(rounded - exact) > acc_tol) ++*beyond_fp32;
    return std::fabs(got - (base + rounded)) <= acc_tol && std::fabs(got - (base + exact)) <= tf32_tol;
  }
};

// The forward product on the tf32 tile, as gemm_resident builds it (in
// place, or from the shared-memory copy): run_case's shapes with fp32 data.
static void run_tf32_case(const Case& cs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const float nan = std::nanf("");
  const int64_t B = cs.m + 2;
  const int64_t lda = cs.depth + cs.lda_pad, ldw = cs.depth + cs.ldw_pad;
  const int64_t rows = cs.G * cs.n, ldc = rows + cs.ldc_extra;
  std::vector<float> a(B * lda), W(cs.G * cs.H * ldw);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < lda; ++q) a[b * lda + q] = b < cs.m && q < cs.depth ? dist(rng) : nan;
  for (int64_t r = 0; r < cs.G * cs.H; ++r)
    for (int64_t q = 0; q < ldw; ++q) W[r * ldw + q] = q < cs.depth ? dist(rng) : nan;
  std::vector<float> c(B * ldc, nan);
  std::vector<int> stores(c.size(), 0);

  const TileGemmTf32 in_place{cs.m, cs.depth, rows, lda, cs.n, cs.H * ldw, ldw, ldc};
  const TileGemmTf32 transposed{cs.m, cs.depth, rows, lda, rows, 0, 1, ldc, rows};
  const TileGemmTf32& g = cs.shared_copy ? transposed : in_place;
  std::vector<float> wt(cs.depth * rows);
  if (cs.shared_copy) {
    const rnn_ext::partition::GateRows<float> gate_rows{W.data() + cs.u0 * ldw, cs.H * ldw, ldw};
    rnn_ext::resident::pack_rows_transposed(gate_rows, cs.G, cs.n, cs.depth, wt.data(), 0, 1);
  }
  const float* w = cs.shared_copy ? wt.data() : W.data() + cs.u0 * ldw;
  for (int warp = 0; warp < cs.warps; ++warp) {
    EmulatedTf32Warp ops{g, a.data(), w, c.data(), &stores, {}};
    warp_tiles(g, warp, cs.warps, ops);
  }

  int bad = 0;
  int64_t beyond_fp32 = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t col = 0; col < ldc; ++col) {
      const int64_t e = b * ldc + col;
      if (b >= cs.m || col >= rows) {
        if (!std::isnan(c[e]) || stores[e] != 0) ++bad;
        continue;
      }
      const int64_t gate = col / cs.n, j = col % cs.n;
      Tf32Check check;
      for (int64_t q = 0; q < cs.depth; ++q)
        check.add(a[b * lda + q], W[(gate * cs.H + cs.u0 + j) * ldw + q]);
      const bool ok = stores[e] == 1 && check.ok(c[e], 0.0, &beyond_fp32);
      if (!ok && bad < 5)
        std::printf("  tf32 b=%ld col=%ld got %.9g want %.9g (fp32 operands %.9g) stores %d\n",
                    (long)b, (long)col, c[e], check.rounded, check.exact, stores[e]);
      bad += !ok;
    }
  EXPECT(bad == 0, "tf32 m=%ld depth=%ld n=%ld G=%ld warps=%d shared=%d: %d elements wrong",
         (long)cs.m, (long)cs.depth, (long)cs.n, (long)cs.G, cs.warps, (int)cs.shared_copy, bad);
  // Random fp32 data is not tf32: with depth >= 16 the rounding moves some
  // results beyond fp32's error, so the rounded reference is a real check.
  if (cs.depth >= 16 && cs.m * rows >= 16)
    EXPECT(beyond_fp32 > 0, "tf32 m=%ld depth=%ld: rounding never mattered", (long)cs.m,
           (long)cs.depth);
}

static void test_emulated_tf32_tile_gemm() {
  const Case cases[] = {
      // m, depth, n, G, H, u0, lda_pad, ldw_pad, ldc_extra, warps
      {8, 8, 16, 1, 16, 0, 0, 0, 0, 1},      // one whole tile, one K chunk
      {1, 37, 37, 4, 37, 0, 0, 0, 0, 8},     // B = 1; partial K chunk; tiles span gates
      {3, 37, 9, 4, 37, 24, 0, 0, 0, 8},     // a worker's slice of 9 units
      {9, 45, 5, 3, 11, 6, 0, 0, 0, 8},      // GRU gates; B = 9: two batch tiles
      {17, 3, 29, 1, 29, 0, 0, 0, 0, 3},     // RNN; K < 8; B = 17; 3 warps
      {5, 100, 33, 4, 70, 37, 3, 5, 0, 8},   // strided a and w
      {6, 40, 11, 1, 40, 13, 0, 0, 29, 8},   // the projection: ldc > columns
      {4, 0, 7, 4, 7, 0, 0, 0, 0, 8},        // depth 0: zeros
      // The shared-memory copy of the worker's rows (transposed):
      {3, 37, 9, 4, 37, 24, 0, 0, 0, 8, true},
      {9, 45, 5, 3, 11, 6, 0, 2, 0, 8, true},
      {17, 3, 29, 1, 29, 0, 0, 0, 0, 3, true},
      {2, 300, 40, 4, 300, 160, 0, 0, 0, 8, true},
  };
  uint32_t seed = 201;
  for (const Case& cs : cases) run_tf32_case(cs, seed++);
}

// The backward's product on the tf32 tile, as gemm_nn builds it (run_nn_case
// with fp32 data): w^T the A operand, c accumulated from its own values.
static void run_tf32_nn_case(int64_t m, int64_t k, int64_t n, int64_t ldw, int64_t col0,
                             bool accumulate, int warps, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const float nan = std::nanf("");
  const int64_t B = m + 1, lda = k + 2, ldc = n + 3;
  std::vector<float> a(B * lda), W(k * ldw);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < lda; ++q) a[b * lda + q] = b < m && q < k ? dist(rng) : nan;
  for (int64_t q = 0; q < k; ++q)
    for (int64_t j = 0; j < ldw; ++j) W[q * ldw + j] = j >= col0 && j < col0 + n ? dist(rng) : nan;
  std::vector<float> c(B * ldc, nan), c0;
  for (int64_t b = 0; b < m; ++b)
    for (int64_t j = 0; j < n; ++j) c[b * ldc + j] = accumulate ? dist(rng) : nan;
  c0 = c;
  std::vector<int> stores(c.size(), 0);
  const TileGemmTf32 g{m, k, n, lda, n, 0, 1, ldc, ldw, accumulate};
  const float* w = W.data() + col0;
  for (int warp = 0; warp < warps; ++warp) {
    EmulatedTf32Warp ops{g, a.data(), w, c.data(), &stores, {}};
    warp_tiles(g, warp, warps, ops);
  }
  int bad = 0;
  int64_t beyond_fp32 = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < ldc; ++j) {
      const int64_t e = b * ldc + j;
      if (b >= m || j >= n) {
        if (!std::isnan(c[e]) || stores[e] != 0) ++bad;
        continue;
      }
      Tf32Check check;
      for (int64_t q = 0; q < k; ++q) check.add(a[b * lda + q], w[q * ldw + j]);
      // The accumulators start from c as it is, unrounded (fp32 C operand).
      bad += !(stores[e] == 1 && check.ok(c[e], accumulate ? c0[e] : 0.0, &beyond_fp32));
    }
  EXPECT(bad == 0, "tf32 nn m=%ld k=%ld n=%ld ldw=%ld acc=%d: %d elements wrong", (long)m,
         (long)k, (long)n, (long)ldw, (int)accumulate, bad);
  if (k >= 16) EXPECT(beyond_fp32 > 0, "tf32 nn m=%ld k=%ld: rounding never mattered", (long)m, (long)k);
}

static void test_emulated_tf32_backward_product() {
  // m, k, n, ldw, first column, accumulate, warps
  run_tf32_nn_case(1, 148, 9, 37, 24, true, 8, 301);    // in place, B = 1, LSTM 4H = 148
  run_tf32_nn_case(9, 148, 9, 9, 0, true, 8, 302);      // the shared-memory copy: ldw = n
  run_tf32_nn_case(17, 33, 40, 100, 60, false, 3, 303); // three batch tiles, partial K chunk
  run_tf32_nn_case(8, 0, 5, 5, 0, true, 8, 304);        // k = 0 with accumulate: c unchanged
  run_tf32_nn_case(5, 300, 48, 300, 160, true, 8, 305); // more row tiles than one warp's
}

// -------------------------------------------------- register-resident ---
// The two tile forms for the resident schedule's emulation: storage, the
// value the instruction sees, and one lane's A and B registers of a chunk
// (as LaneOps::gather_a / gather_b and Tf32LaneOps's build them).
struct Bf16Form {
  using Gemm = TileGemm;
  using Elem = uint16_t;
  static constexpr int kK = 16;
  static Elem make(float x) { return to_bf16(x); }
  static double value(Elem e) { return from_bf16(e); }
  static Elem at(const Elem* p, int64_t offset) { return offset >= 0 ? p[offset] : 0; }
  static void gather_a(const Gemm& g, const Elem* w, int64_t tile, int64_t k, int lane, uint32_t (&af)[4]) {
    for (int j = 0; j < 4; ++j)
      af[j] = pack_pair(at(w, g.a_offset(tile, k, lane, 2 * j)), at(w, g.a_offset(tile, k, lane, 2 * j + 1)));
  }
  static void gather_b(const Gemm& g, const Elem* a, int64_t tile, int64_t k, int lane, uint32_t (&bf)[2]) {
    for (int j = 0; j < 2; ++j)
      bf[j] = pack_pair(at(a, g.b_offset(tile, k, lane, 2 * j)), at(a, g.b_offset(tile, k, lane, 2 * j + 1)));
  }
  static void mma(float (&d)[kWarp][kCElems], const uint32_t (&a)[kWarp][4], const uint32_t (&b)[kWarp][2]) {
    emulate_mma(d, a, b);
  }
};
struct Tf32Form {
  using Gemm = TileGemmTf32;
  using Elem = float;
  static constexpr int kK = kKTf32;
  static Elem make(float x) { return x; }
  static double value(Elem e) { return to_tf32(e); }  // what the instruction multiplies
  static uint32_t at(const Elem* p, int64_t offset) {
    return round_tf32_bits(bits_of(offset >= 0 ? p[offset] : 0.f));
  }
  static void gather_a(const Gemm& g, const Elem* w, int64_t tile, int64_t k, int lane, uint32_t (&af)[4]) {
    for (int i = 0; i < kAElemsTf32; ++i) af[i] = at(w, g.a_offset(tile, k, lane, i));
  }
  static void gather_b(const Gemm& g, const Elem* a, int64_t tile, int64_t k, int lane, uint32_t (&bf)[2]) {
    for (int i = 0; i < kBElemsTf32; ++i) bf[i] = at(a, g.b_offset(tile, k, lane, i));
  }
  static void mma(float (&d)[kWarp][kCElems], const uint32_t (&a)[kWarp][4], const uint32_t (&b)[kWarp][2]) {
    emulate_mma_tf32(d, a, b);
  }
};

// The kernels' budget (persistent.cu's k*RegisterChunks: at most this).
constexpr int kResidentChunks = 16;

// The block's barrier for the emulated warps, which run as threads (so the
// schedule's barriers are real ones: a warp that skipped one, or a count
// that differed between warps, would leave the others waiting).  A wait
// that times out counts as a failure instead of hanging the test.
class EmulatedBarrier {
 public:
  explicit EmulatedBarrier(int parties) : parties_(parties) {}
  bool wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t generation = generation_;
    if (++arrived_ == parties_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return true;
    }
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return generation_ != generation; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int parties_, arrived_ = 0;
  int64_t generation_ = 0;
};

// One warp of the split schedule (mma::split_k_tiles), 32 lanes at once:
// A from `held` (gathered once), B gathered per chunk, partials through
// `scratch` (the block's shared memory), as mma_tile::SplitOps does on the
// GPU.
template <class Form>
struct EmulatedSplitWarp {
  const typename Form::Gemm& g;
  const typename Form::Elem* a;
  float* c;
  std::vector<int>* stores;  // stores per element of c (warps store disjoint elements)
  const uint32_t (*held)[kResidentChunks][4];  // [lane][chunk][register]
  float* scratch;
  EmulatedBarrier* barrier;
  int syncs = 0;
  bool timed_out = false;
  float d[kWarp][kCElems];

  void begin(int64_t tile, bool from_c) {
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < kCElems; ++i) {
        const int64_t offset = from_c && g.accumulate ? g.c_offset(tile, lane, i) : -1;
        d[lane][i] = offset >= 0 ? c[offset] : 0.f;
      }
  }
  void chunk(int64_t tile, int held_chunk, int64_t k) {
    uint32_t af[kWarp][4], bf[kWarp][2];
    for (int lane = 0; lane < kWarp; ++lane) {
      for (int j = 0; j < 4; ++j) af[lane][j] = held[lane][held_chunk][j];
      Form::gather_b(g, a, tile, k, lane, bf[lane]);
    }
    Form::mma(d, af, bf);
  }
  void publish(int64_t slot) {
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < kCElems; ++i) scratch[split_scratch_index(slot, lane, i)] = d[lane][i];
  }
  void add_partial(int64_t slot, bool first) {
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < kCElems; ++i) {
        const float partial = scratch[split_scratch_index(slot, lane, i)];
        d[lane][i] = first ? partial : d[lane][i] + partial;
      }
  }
  void sync() {
    ++syncs;
    timed_out |= !barrier->wait();
  }
  void end(int64_t tile) {
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < kCElems; ++i) {
        const int64_t offset = g.c_offset(tile, lane, i);
        if (offset < 0) continue;
        c[offset] = d[lane][i];
        ++(*stores)[offset];
      }
  }
};

struct SplitCase {
  int64_t G, n, H, u0, depth;  // the worker's rows: G gates of units [u0, u0 + n) of H
  int warps;
  bool shared_copy;
  bool accumulate;
  int64_t parts;  // the split k_split should give (checked)
};

// A worker's forward product over several steps with the batches ms: its
// rows of W [G*H, depth] (in place, or the shared-memory copy) gathered
// into per-warp registers once, with a batch of 1 (as the kernel gathers
// them before the time loop), then each step's h multiplied by them with
// the warps running as threads through mma::split_k_tiles, against an
// fp64 product of the same (rounded) operands.  Inputs outside the product
// are NaN, c outside it NaN and never stored; with accumulate, c starts
// from known values.
template <class Form>
static void run_split_case(const SplitCase& cs, const std::vector<int64_t>& ms, uint32_t seed) {
  using Elem = typename Form::Elem;
  using Gemm = typename Form::Gemm;
  const int warps = cs.warps;
  const int64_t G = cs.G, n = cs.n, H = cs.H, u0 = cs.u0, depth = cs.depth;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const float nan = std::nanf("");
  const int64_t rows = G * n, ldw = depth + 1;
  std::vector<Elem> W(G * H * ldw);
  for (int64_t r = 0; r < G * H; ++r)
    for (int64_t q = 0; q < ldw; ++q) W[r * ldw + q] = Form::make(q < depth ? dist(rng) : nan);
  std::vector<Elem> wt(depth * rows);
  const rnn_ext::partition::GateRows<Elem> gate_rows{W.data() + u0 * ldw, H * ldw, ldw};
  if (cs.shared_copy) rnn_ext::resident::pack_rows_transposed(gate_rows, G, n, depth, wt.data(), 0, 1);
  const Elem* w = cs.shared_copy ? wt.data() : gate_rows.w;
  auto make_gemm = [&](int64_t m, int64_t lda, int64_t ldc) {
    Gemm g = cs.shared_copy ? Gemm{m, depth, rows, lda, rows, 0, 1, ldc, rows}
                            : Gemm{m, depth, rows, lda, n, H * ldw, ldw, ldc};
    g.accumulate = cs.accumulate;
    return g;
  };
  // Before the time loop: the fit and the split, then each warp's fragments
  // of its chunk range of its row tile.
  const Gemm g0 = make_gemm(1, depth, rows);
  const KSplit s0 = k_split(g0, warps);
  EXPECT(fits_registers(g0, warps, kResidentChunks), "rows=%ld depth=%ld warps=%d should fit", (long)rows,
         (long)depth, warps);
  EXPECT(s0.parts == cs.parts, "rows=%ld depth=%ld warps=%d: %ld parts, want %ld", (long)rows, (long)depth,
         warps, (long)s0.parts, (long)cs.parts);
  // Each chunk of each row tile is held by exactly one warp, in a range.
  std::vector<int> held_by(size_t(s0.row_tiles * s0.chunks), 0);
  for (int warp = 0; warp < warps; ++warp) {
    if (!s0.holds(warp)) continue;
    EXPECT(s0.chunk_count(warp) >= 1 || s0.chunks == 0, "warp %d holds an empty range", warp);
    for (int64_t c = 0; c < s0.chunk_count(warp); ++c)
      ++held_by[size_t(s0.row_tile(warp) * s0.chunks + s0.first_chunk(warp) + c)];
  }
  for (int count : held_by) EXPECT(count == 1, "a chunk held %d times (rows=%ld depth=%ld)", count, (long)rows, (long)depth);

  std::vector<uint32_t> held(size_t(warps) * kWarp * kResidentChunks * 4, 0xdeadbeefu);
  auto held_of = [&](int warp) {
    return reinterpret_cast<uint32_t(*)[kResidentChunks][4]>(&held[size_t(warp) * kWarp * kResidentChunks * 4]);
  };
  for (int warp = 0; warp < warps; ++warp) {
    if (!s0.holds(warp)) continue;
    for (int lane = 0; lane < kWarp; ++lane)
      for (int64_t c = 0; c < s0.chunk_count(warp); ++c)
        Form::gather_a(g0, w, s0.row_tile(warp) * g0.batch_tiles(), s0.first_chunk(warp) + c, lane,
                       held_of(warp)[lane][c]);
  }

  int bad = 0;
  for (size_t step = 0; step < ms.size(); ++step) {
    const int64_t m = ms[step], B = m + 1, lda = depth + 2, ldc = rows + 3;
    std::vector<Elem> a(B * lda);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t q = 0; q < lda; ++q) a[b * lda + q] = Form::make(b < m && q < depth ? dist(rng) : nan);
    std::vector<float> c(B * ldc, nan), c0(B * ldc, nan);
    for (int64_t b = 0; b < m && cs.accumulate; ++b)
      for (int64_t col = 0; col < rows; ++col) c[b * ldc + col] = c0[b * ldc + col] = dist(rng);
    std::vector<int> stores(c.size(), 0);
    const Gemm g = make_gemm(m, lda, ldc);
    const KSplit s = k_split(g, warps);
    // The split and A's offsets depend on the rows and depth alone: the
    // fragments gathered with a batch of 1 are this step's.
    bad += s.parts != s0.parts || s.part_chunks != s0.part_chunks || s.row_tiles != s0.row_tiles;
    for (int warp = 0; warp < warps; ++warp) {
      if (!s.holds(warp)) continue;
      for (int64_t bt = 0; bt < g.batch_tiles(); ++bt)
        for (int lane = 0; lane < kWarp; lane += 5)
          for (int64_t k = 0; k < s.chunk_count(warp); ++k)
            for (int i = 0; i < 4; ++i)
              bad += g.a_offset(s.row_tile(warp) * g.batch_tiles() + bt, s.first_chunk(warp) + k, lane, i) !=
                     g0.a_offset(s0.row_tile(warp) * g0.batch_tiles(), s0.first_chunk(warp) + k, lane, i);
    }
    std::vector<float> scratch(size_t(split_scratch_floats(warps)), nan);
    EmulatedBarrier barrier(warps);
    std::vector<EmulatedSplitWarp<Form>> ops;
    for (int warp = 0; warp < warps; ++warp)
      ops.push_back({g, a.data(), c.data(), &stores, held_of(warp), scratch.data(), &barrier, 0, false, {}});
    std::vector<std::thread> threads;
    for (int warp = 0; warp < warps; ++warp)
      threads.emplace_back([&, warp] { split_k_tiles<kResidentChunks>(g, s, warp, ops[size_t(warp)]); });
    for (auto& t : threads) t.join();
    for (const auto& o : ops) {
      EXPECT(!o.timed_out, "a barrier timed out (a warp missed it)");
      EXPECT(o.syncs == ops[0].syncs, "warps passed %d and %d barriers", o.syncs, ops[0].syncs);
    }
    // Barriers: none with one part, else two per pass of kSplitPassTiles batch tiles less one.
    const int64_t passes = (g.batch_tiles() + kSplitPassTiles - 1) / kSplitPassTiles;
    EXPECT(ops[0].syncs == (s.parts > 1 ? 2 * passes - 1 : 0), "%d barriers for %ld passes", ops[0].syncs,
           (long)passes);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t col = 0; col < ldc; ++col) {
        const int64_t e = b * ldc + col;
        if (b >= m || col >= rows) {
          bad += !std::isnan(c[e]) || stores[e] != 0;
          continue;
        }
        const int64_t gate = col / n, j = col % n;
        double want = cs.accumulate ? c0[e] : 0.0, scale = std::fabs(want);
        for (int64_t q = 0; q < depth; ++q) {
          const double p = Form::value(a[b * lda + q]) * Form::value(W[(gate * H + u0 + j) * ldw + q]);
          want += p;
          scale += std::fabs(p);
        }
        // fp32 accumulation of exact products (bf16, or tf32-rounded
        // operands), in parts then summed: within (terms) * 2^-24 of the
        // sum of the magnitudes, twice over.
        const double tol = 2.0 * (depth + Form::kK + 1) * std::ldexp(1.0, -24) * scale;
        const bool ok = stores[e] == 1 && std::fabs(c[e] - want) <= tol;
        if (!ok && bad < 5)
          std::printf("  step %zu b=%ld col=%ld got %g want %g stores %d\n", step, (long)b, (long)col, c[e], want,
                      stores[e]);
        bad += !ok;
      }
  }
  EXPECT(bad == 0, "split K=%d G=%ld n=%ld depth=%ld warps=%d shared=%d acc=%d: %d wrong", Form::kK, (long)G,
         (long)n, (long)depth, warps, (int)cs.shared_copy, (int)cs.accumulate, bad);
}

// The split product's B gather in two steps (a tile's base, then each
// chunk from it: mma_tile::SplitOps) addresses what b_offset does.
template <class Frag>
static void check_b_base(const TileGemmOf<Frag>& g) {
  int bad = 0;
  for (int64_t tile = 0; tile < g.tiles(); ++tile)
    for (int lane = 0; lane < kWarp; ++lane)
      for (int i = 0; i < Frag::kBElems; ++i)
        for (int64_t chunk = 0; chunk < g.k_chunks() + 1; ++chunk)
          bad += g.b_offset_from(g.b_base(tile, lane, i), chunk, lane, i) != g.b_offset(tile, chunk, lane, i);
  EXPECT(bad == 0, "b_base/b_offset_from: %d offsets differ (batch %ld depth %ld)", bad, (long)g.batch,
         (long)g.depth);
}

static void test_k_split_schedule() {
  check_b_base(TileGemm{17, 37, 27, 40, 9, 0, 1, 30, 27});
  check_b_base(TileGemm{8, 256, 32, 256, 32, 0, 1, 32, 32});
  check_b_base(TileGemmTf32{9, 19, 13, 21, 13, 0, 1, 13, 13});

  // The split: floor(warps / row tiles) warps a row tile, ceil(chunks /
  // that) chunks each, fewer parts where a range would be empty.
  const TileGemm lstm_h1024{1, 1024, 32, 1024, 32, 0, 1, 32, 32};  // 2 row tiles, 64 chunks
  const KSplit a = k_split(lstm_h1024, 8);
  EXPECT(a.row_tiles == 2 && a.parts == 4 && a.part_chunks == 16 && a.chunks == 64, "LSTM H=1024 split");
  EXPECT(a.row_tile(5) == 1 && a.part(5) == 1 && a.first_chunk(5) == 16 && a.chunk_count(5) == 16, "warp 5");
  const TileGemm ragged{1, 100, 27, 100, 27, 0, 1, 27, 27};  // 2 row tiles, 7 chunks: ranges 2, 2, 2, 1
  const KSplit r = k_split(ragged, 8);
  EXPECT(r.parts == 4 && r.part_chunks == 2 && r.chunk_count(3) == 1 && r.chunk_count(7) == 1, "ragged split");
  const TileGemm shallow{1, 20, 5, 20, 5, 0, 1, 5, 5};  // 1 row tile, 2 chunks: 2 parts of 8 warps
  const KSplit sh = k_split(shallow, 8);
  EXPECT(sh.parts == 2 && sh.part_chunks == 1 && sh.warps_used() == 2 && !sh.holds(2), "more warps than chunks");
  const TileGemm three_tiles{1, 64, 40, 64, 40, 0, 1, 40, 40};  // 3 row tiles: 2 warps each, 2 idle
  const KSplit t = k_split(three_tiles, 8);
  EXPECT(t.parts == 2 && t.warps_used() == 6 && !t.holds(6) && !t.holds(7), "3 row tiles of 8 warps");
  const TileGemm empty_k{1, 0, 16, 0, 16, 0, 1, 16, 16};
  EXPECT(k_split(empty_k, 8).parts == 1 && k_split(empty_k, 8).chunk_count(0) == 0, "depth 0: one part, no chunk");
  // The fit: row tiles <= warps, a part's chunks <= the budget.
  const TileGemm too_many_rows{1, 128, 129, 128, 33, 0, 1, 129, 129};  // 9 row tiles
  const TileGemm too_deep{1, 1040, 32, 1040, 32, 0, 1, 32, 32};        // 65 chunks over 4 warps: 17
  const TileGemmTf32 tf32_fits{1, 512, 32, 512, 32, 0, 1, 32, 32};     // 64 chunks of 8 over 4: 16
  const TileGemmTf32 tf32_too_deep{1, 520, 32, 520, 32, 0, 1, 32, 32};
  EXPECT(fits_registers(lstm_h1024, 8, kResidentChunks) && !fits_registers(lstm_h1024, 8, 15) &&
             !fits_registers(too_many_rows, 8, kResidentChunks) && !fits_registers(too_deep, 8, kResidentChunks),
         "fits_registers, 16-bit");
  EXPECT(fits_registers(tf32_fits, 8, kResidentChunks) && !fits_registers(tf32_too_deep, 8, kResidentChunks),
         "fits_registers, tf32 (K 8 a chunk)");

  // The emulated schedule.  Batches: one tile, partial tiles, several
  // reduction passes (B = 33: 5 batch tiles, 3 passes).
  const std::vector<int64_t> ms = {1, 9, 3, 17, 8, 33};
  // G, n, H, u0, depth, warps, shared copy, accumulate, parts
  run_split_case<Bf16Form>({4, 8, 64, 16, 256, 8, true, false, 4}, ms, 401);     // LSTM-like: 2 row tiles, 16 chunks
  run_split_case<Bf16Form>({4, 8, 64, 16, 256, 8, false, true, 4}, ms, 402);     // in place, accumulate
  run_split_case<Bf16Form>({3, 9, 37, 24, 100, 8, true, false, 4}, ms, 403);     // 27 rows, ranges 2, 2, 2, 1
  run_split_case<Bf16Form>({1, 8, 64, 8, 1024, 8, true, false, 8}, ms, 404);     // RNN-like: 8 parts of 8 chunks
  run_split_case<Bf16Form>({1, 5, 11, 6, 20, 8, true, false, 2}, ms, 405);       // 2 chunks: 6 warps idle
  run_split_case<Bf16Form>({4, 10, 37, 20, 37, 8, false, false, 2}, ms, 406);    // 3 row tiles, 2 warps idle
  run_split_case<Bf16Form>({4, 32, 64, 32, 128, 8, true, false, 1}, ms, 407);    // 8 row tiles: one part each
  run_split_case<Bf16Form>({4, 8, 64, 16, 200, 5, true, false, 2}, ms, 408);     // 5 warps: 2 a row tile, 1 idle
  run_split_case<Bf16Form>({4, 9, 37, 24, 5, 8, true, false, 1}, ms, 409);       // K < one chunk
  run_split_case<Tf32Form>({4, 8, 64, 16, 128, 8, true, false, 4}, ms, 410);     // 16 chunks of 8
  run_split_case<Tf32Form>({3, 9, 37, 24, 37, 8, false, true, 3}, ms, 411);     // 5 chunks: ranges 2, 2, 1
  run_split_case<Tf32Form>({1, 13, 40, 27, 19, 8, true, false, 3}, ms, 412);     // one gate, partial K
}

int main() {
  test_documented_lanes();
  test_stride_derivation();
  test_each_element_once();
  test_emulated_tile_gemm();
  test_emulated_backward_product();
  test_tf32_documented_lanes();
  test_tf32_layout_derivation_and_coverage();
  test_tf32_rounding();
  test_emulated_tf32_tile_gemm();
  test_emulated_tf32_backward_product();
  test_k_split_schedule();
  if (failures) std::printf("%d failure(s)\n", failures);
  else std::printf("mma layout: all passed\n");
  return failures ? 1 : 0;
}
