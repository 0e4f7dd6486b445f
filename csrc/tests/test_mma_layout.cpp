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
//     of range or a stray or missing store fails.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
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

int main() {
  test_documented_lanes();
  test_stride_derivation();
  test_each_element_once();
  test_emulated_tile_gemm();
  test_emulated_backward_product();
  if (failures) std::printf("%d failure(s)\n", failures);
  else std::printf("mma layout: all passed\n");
  return failures ? 1 : 0;
}
