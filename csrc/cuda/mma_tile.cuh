// The per-step product of the persistent kernels on tensor cores, with fp32
// accumulation: c[b, r] = sum_q a[b, q] w_r[q] as D = W . a^T (weight rows
// on M, the batch on the narrow N = 8, so a batch of 1..8 is one tile
// column): fp16 and bf16 storage with mma.sync m16n8k16, and fp32 storage,
// where torch.backends.cuda.matmul.allow_tf32 is on, with mma.sync m16n8k8
// .tf32 on the operands rounded to tf32 (cvt.rna.tf32.f32) as they are
// loaded (the weights stay fp32 in shared memory).  The tiling, the
// fragment layouts, the zero padding and the store guards are index
// functions in rnn_ext/mma_layout.h, which the C++ test
// (csrc/tests/test_mma_layout.cpp) runs for 32 emulated lanes; this file
// adds only the loads, the packing into registers, the instruction and the
// stores.
//
// NOT YET RUN ON A GPU (neither form; the tf32 one is the newest).  The
// fragments are loaded from w (global memory, or wherever GateRows points)
// element by element: every step (block_tile_gemm), or, for the forward
// kernels' W_hh where a warp's share fits its register budget, once
// before the time loop into registers that every step reuses, K split
// across the warps of a row tile and the partials reduced through shared
// memory (gather_resident, block_tile_gemm_resident: mma_layout.h's
// split_k_tiles; also not run on a GPU).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "rnn_ext/mma_layout.h"

namespace rnn_ext {
namespace cuda {
namespace mma_tile {

// Whether the tile product serves storage T with accumulation Acc (the
// instruction's f16 and bf16 forms, both with fp32 accumulators).
template <typename T, typename Acc>
struct Supported {
  static constexpr bool value = false;
};
template <>
struct Supported<__half, float> {
  static constexpr bool value = true;
};
template <>
struct Supported<__nv_bfloat16, float> {
  static constexpr bool value = true;
};

// Whether the tf32 tile serves storage T with accumulation Acc: fp32 only,
// and only where the caller asks for it (allow_tf32); fp64 never.
template <typename T, typename Acc>
struct SupportsTf32 {
  static constexpr bool value = false;
};
template <>
struct SupportsTf32<float, float> {
  static constexpr bool value = true;
};

__device__ __forceinline__ uint16_t bits(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ uint16_t bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }

// D += A B on one warp's fragments (mma_layout.h's layouts).
__device__ __forceinline__ void mma_16x8x16(float (&d)[mma::kCElems], const uint32_t (&a)[4],
                                            const uint32_t (&b)[2], __half) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // callers select the tile product for sm_80 and newer only
#endif
}
__device__ __forceinline__ void mma_16x8x16(float (&d)[mma::kCElems], const uint32_t (&a)[4],
                                            const uint32_t (&b)[2], __nv_bfloat16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// One lane's part of mma::warp_tiles: its accumulators, and its loads and
// stores at the offsets the layout functions give (-1: a zero, or no store).
// What both instructions share: the accumulators' start (zeros, or c with
// g.accumulate) and store, and a chunk as gather A, gather B, multiply;
// Ops (LaneOps, Tf32LaneOps) supplies those three.
template <class Ops, class Gemm, typename T>
struct LaneAccumulators {
  const Gemm& g;
  const T* a;  // [batch, depth] in rows of g.lda: the B operand, transposed
  const T* w;  // the weight rows: the A operand
  float* c;
  int lane;
  float d[mma::kCElems];

  __device__ __forceinline__ void begin(int64_t tile) {
#pragma unroll
    for (int i = 0; i < mma::kCElems; ++i) {
      const int64_t offset = g.accumulate ? g.c_offset(tile, lane, i) : -1;
      d[i] = offset >= 0 ? c[offset] : 0.f;
    }
  }
  // B of chunk k of `tile`, through Ops's gather_b_from (one layout formula:
  // TileGemm::b_base, b_offset_from).
  __device__ __forceinline__ void gather_b(int64_t tile, int64_t k, uint32_t (&bf)[2]) const {
    int64_t base[Ops::kBElems];
#pragma unroll
    for (int i = 0; i < Ops::kBElems; ++i) base[i] = g.b_base(tile, lane, i);
    static_cast<const Ops&>(*this).gather_b_from(base, k, bf);
  }
  __device__ __forceinline__ void chunk(int64_t tile, int64_t k) {
    Ops& ops = static_cast<Ops&>(*this);
    uint32_t af[4], bf[2];  // both instructions: 4 A and 2 B registers a lane
    ops.gather_a(tile, k, af);
    ops.gather_b(tile, k, bf);
    ops.multiply(af, bf);
  }
  __device__ __forceinline__ void end(int64_t tile) {
#pragma unroll
    for (int i = 0; i < mma::kCElems; ++i) {
      const int64_t offset = g.c_offset(tile, lane, i);
      if (offset >= 0) c[offset] = d[i];
    }
  }
};

// fp16 / bf16 on m16n8k16: two 16-bit elements a register.
template <typename T>
struct LaneOps : LaneAccumulators<LaneOps<T>, mma::TileGemm, T> {
  __device__ __forceinline__ static uint16_t load(const T* p, int64_t offset) {
    return offset >= 0 ? bits(p[offset]) : uint16_t(0);  // +0.0 in fp16 and bf16
  }
  __device__ __forceinline__ void gather_a(int64_t tile, int64_t k, uint32_t (&af)[4]) const {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      af[j] = mma::pack_pair(load(this->w, this->g.a_offset(tile, k, this->lane, 2 * j)),
                             load(this->w, this->g.a_offset(tile, k, this->lane, 2 * j + 1)));
  }
  // gather_b from the tile's bases (TileGemm::b_base): one address per
  // element for all of a tile's chunks.
  static constexpr int kBElems = mma::kBElems;
  __device__ __forceinline__ void gather_b_from(const int64_t (&base)[kBElems], int64_t k,
                                                uint32_t (&bf)[2]) const {
#pragma unroll
    for (int j = 0; j < 2; ++j)
      bf[j] = mma::pack_pair(load(this->a, this->g.b_offset_from(base[2 * j], k, this->lane, 2 * j)),
                             load(this->a, this->g.b_offset_from(base[2 * j + 1], k, this->lane, 2 * j + 1)));
  }
  __device__ __forceinline__ void multiply(const uint32_t (&af)[4], const uint32_t (&bf)[2]) {
    mma_16x8x16(this->d, af, bf, T());
  }
};

// fp32 to tf32, rounded to nearest with ties away from zero (the CPU
// emulation's mma::round_tf32_bits), in a 32-bit register for the mma.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  __trap();  // callers select the tf32 tile for sm_80 and newer only
  return 0;
#endif
}

// D += A B, m16n8k8 with tf32 A and B (mma_layout.h's FragTf32 layouts).
__device__ __forceinline__ void mma_16x8x8_tf32(float (&d)[mma::kCElems], const uint32_t (&a)[4],
                                                const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// fp32 storage on the tf32 instruction: each A and B element loaded as fp32
// (zero outside the product), rounded to tf32, one per register.
struct Tf32LaneOps : LaneAccumulators<Tf32LaneOps, mma::TileGemmTf32, float> {
  static_assert(mma::kAElemsTf32 == 4 && mma::kBElemsTf32 == 2, "the shared chunk's registers");
  __device__ __forceinline__ static uint32_t load(const float* p, int64_t offset) {
    return to_tf32(offset >= 0 ? p[offset] : 0.f);
  }
  __device__ __forceinline__ void gather_a(int64_t tile, int64_t k, uint32_t (&af)[4]) const {
#pragma unroll
    for (int i = 0; i < mma::kAElemsTf32; ++i) af[i] = load(w, g.a_offset(tile, k, lane, i));
  }
  static constexpr int kBElems = mma::kBElemsTf32;
  __device__ __forceinline__ void gather_b_from(const int64_t (&base)[kBElems], int64_t k,
                                                uint32_t (&bf)[2]) const {
#pragma unroll
    for (int i = 0; i < kBElems; ++i) bf[i] = load(a, g.b_offset_from(base[i], k, lane, i));
  }
  __device__ __forceinline__ void multiply(const uint32_t (&af)[4], const uint32_t (&bf)[2]) {
    mma_16x8x8_tf32(d, af, bf);
  }
};

// The block's warps share the tiles of g: c = the product (k = 0: zeros),
// or c += it with g.accumulate.
// Every thread of the block must call it (blockDim.x a multiple of 32); no
// barrier inside.
template <typename T>
__device__ __forceinline__ void block_tile_gemm(const mma::TileGemm& g, const T* a, const T* w,
                                                float* c) {
  LaneOps<T> ops{{g, a, w, c, static_cast<int>(threadIdx.x % mma::kWarp), {}}};
  mma::warp_tiles(g, static_cast<int>(threadIdx.x / mma::kWarp),
                  static_cast<int>(blockDim.x / mma::kWarp), ops);
}
// fp32 on the tf32 instruction, the same contract.
__device__ __forceinline__ void block_tile_gemm(const mma::TileGemmTf32& g, const float* a,
                                                const float* w, float* c) {
  Tf32LaneOps ops{{g, a, w, c, static_cast<int>(threadIdx.x % mma::kWarp), {}}};
  mma::warp_tiles(g, static_cast<int>(threadIdx.x / mma::kWarp),
                  static_cast<int>(blockDim.x / mma::kWarp), ops);
}

// ------------------------------------------------ register-resident A ---
// A lane's A fragments of its warp's chunk range of its row tile (4
// registers a chunk in either form), held across the time loop
// (mma_layout.h's KSplit / split_k_tiles).  Indexed with constants only
// (the chunk loops are unrolled to kMaxChunks), so the array stays in
// registers.
template <int kMaxChunks>
struct ResidentA {
  uint32_t frag[kMaxChunks][4];
};

// Ops (LaneOps or Tf32LaneOps) with A from the resident registers, as
// mma::split_k_tiles asks: each chunk gathers B only, from the tile's B
// bases (TileGemm::b_base, taken at begin: one address per element for all
// of the tile's chunks, which kept the tf32 LSTM kernel out of spills at 16
// chunks); partials meet in `scratch` (block shared memory,
// mma::split_scratch_floats(warps)).
template <class Ops, int kMaxChunks>
struct SplitOps : Ops {
  const ResidentA<kMaxChunks>& resident;
  float* scratch;
  int64_t b_base[Ops::kBElems];  // the tile's B bases (begin)
  __device__ __forceinline__ void begin(int64_t tile, bool from_c) {
#pragma unroll
    for (int i = 0; i < Ops::kBElems; ++i) b_base[i] = this->g.b_base(tile, this->lane, i);
    if (from_c) return Ops::begin(tile);
#pragma unroll
    for (int i = 0; i < mma::kCElems; ++i) this->d[i] = 0.f;
  }
  __device__ __forceinline__ void chunk(int64_t, int c, int64_t k) {
    uint32_t bf[2];
    this->gather_b_from(b_base, k, bf);
    this->multiply(resident.frag[c], bf);
  }
  __device__ __forceinline__ void publish(int64_t slot) {
#pragma unroll
    for (int i = 0; i < mma::kCElems; ++i)
      scratch[mma::split_scratch_index(slot, this->lane, i)] = this->d[i];
  }
  __device__ __forceinline__ void add_partial(int64_t slot, bool first) {
#pragma unroll
    for (int i = 0; i < mma::kCElems; ++i) {
      const float partial = scratch[mma::split_scratch_index(slot, this->lane, i)];
      this->d[i] = first ? partial : this->d[i] + partial;
    }
  }
  __device__ __forceinline__ static void sync() { __syncthreads(); }
};

// Gathers the warp's A fragments of g (its chunk range of its row tile,
// mma::k_split) into r; every thread of the block calls it, warps that hold
// nothing return at once.  w: the A operand as g reads it.  The caller
// checked mma::fits_registers(g, warps, kMaxChunks).
template <int kMaxChunks, class Ops>
__device__ __forceinline__ void gather_resident(const Ops& ops, ResidentA<kMaxChunks>& r) {
  const int warp = static_cast<int>(threadIdx.x / mma::kWarp);
  const mma::KSplit s = mma::k_split(ops.g, static_cast<int>(blockDim.x / mma::kWarp));
  if (!s.holds(warp)) return;
  const int64_t tile = s.row_tile(warp) * ops.g.batch_tiles(), first = s.first_chunk(warp),
                count = s.chunk_count(warp);
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c)
    if (c < count) ops.gather_a(tile, first + c, r.frag[c]);
}
template <int kMaxChunks, typename T>
__device__ __forceinline__ void gather_resident(const mma::TileGemm& g, const T* w,
                                                ResidentA<kMaxChunks>& r) {
  gather_resident(LaneOps<T>{{g, nullptr, w, nullptr, static_cast<int>(threadIdx.x % mma::kWarp), {}}}, r);
}
template <int kMaxChunks>
__device__ __forceinline__ void gather_resident(const mma::TileGemmTf32& g, const float* w,
                                                ResidentA<kMaxChunks>& r) {
  gather_resident(Tf32LaneOps{{g, nullptr, w, nullptr, static_cast<int>(threadIdx.x % mma::kWarp), {}}}, r);
}

// The block's warps, read so that the compiler recomputes the split at
// each call instead of keeping it (and what derives from it) live across
// the time loop for every call site, which pushed the LSTM forward kernel
// (two call sites: W_hh and W_hr) into spills on sm_90.
__device__ __forceinline__ int block_warps_uncached() {
  unsigned threads;
  asm volatile("mov.u32 %0, %%ntid.x;" : "=r"(threads));
  return static_cast<int>(threads / mma::kWarp);
}

// block_tile_gemm with A from r (gathered by gather_resident for the same
// weights, depth and rows; any batch): mma::split_k_tiles.  Every thread of
// the block calls it (it may hold barriers); scratch: the block's
// mma::split_scratch_floats(warps) floats of shared memory, free for the
// call.  No barrier after the last store (the caller's).
template <int kMaxChunks, typename T>
__device__ __forceinline__ void block_tile_gemm_resident(const mma::TileGemm& g, const T* a,
                                                         float* c, const ResidentA<kMaxChunks>& r,
                                                         float* scratch) {
  SplitOps<LaneOps<T>, kMaxChunks> ops{{{g, a, nullptr, c, static_cast<int>(threadIdx.x % mma::kWarp), {}}}, r, scratch, {}};
  mma::split_k_tiles<kMaxChunks>(g, mma::k_split(g, block_warps_uncached()),
                                 static_cast<int>(threadIdx.x / mma::kWarp), ops);
}
template <int kMaxChunks>
__device__ __forceinline__ void block_tile_gemm_resident(const mma::TileGemmTf32& g, const float* a,
                                                         float* c, const ResidentA<kMaxChunks>& r,
                                                         float* scratch) {
  SplitOps<Tf32LaneOps, kMaxChunks> ops{{{g, a, nullptr, c, static_cast<int>(threadIdx.x % mma::kWarp), {}}}, r, scratch, {}};
  mma::split_k_tiles<kMaxChunks>(g, mma::k_split(g, block_warps_uncached()),
                                 static_cast<int>(threadIdx.x / mma::kWarp), ops);
}

}  // namespace mma_tile
}  // namespace cuda
}  // namespace rnn_ext
