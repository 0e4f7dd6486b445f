// Single-threaded GEMMs for the workers of the CPU executor, in the two
// shapes the partitioned loop needs:
//   gemm_nt: c[m, n] (+)= a[m, k] w[n, k]^T   (forward: h times W_hh rows)
//   gemm_nn: c[m, n] (+)= a[m, k] w[k, n]     (backward: gate grads times W_hh columns)
// All row-major with leading dimensions; outputs in the accumulation type
// (fp32 for fp16/bf16 inputs).
//
// Where the process has MKL (x86-64 builds of PyTorch link it into
// libtorch_cpu and export its BLAS symbols), its kernels run: they are
// declared weak here, so a build without them (CMake's kernel tests, other
// platforms) links and falls back to the plain loops below.  Each worker
// asks MKL for one thread (mkl_set_num_threads_local), since the workers
// already are the parallelism.  No PyTorch here.
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
// CBLAS enums passed as ints: layout 101 = row-major, 111 = no transpose,
// 112 = transpose; the 16-bit types are their raw bits.
void cblas_gemm_bf16bf16f32(int, int, int, int, int, int, float, const uint16_t*, int,
                            const uint16_t*, int, float, float*, int) __attribute__((weak));
void cblas_gemm_f16f16f32(int, int, int, int, int, int, float, const uint16_t*, int,
                          const uint16_t*, int, float, float*, int) __attribute__((weak));
// MKL's C interface (mkl_service.h maps mkl_set_num_threads_local to it;
// the lower-case symbol is the Fortran one, which takes a pointer).
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

// oneDNN's batch-reduce GEMM micro-kernel as libtorch_cpu exports it
// (ATen/native/CPUBlas.h): C[M, N] (+)= A[M, K] B[K, N], row-major, one
// JIT kernel per shape, cached per thread.  Declared weak like MKL's
// symbols, so builds without PyTorch link and use the other paths.  On this
// project's AMD EPYC (no AMX) its fp32 kernel runs 1.2x-2.7x MKL's sgemm at
// the small M of a step (benchmarks/NOTES.md).
namespace at {
namespace native {
namespace cpublas {
void brgemm(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, const float*,
            const float*, float*, bool) __attribute__((weak));
void brgemm_release(bool) __attribute__((weak));
}  // namespace cpublas
}  // namespace native
}  // namespace at

namespace rnn_ext {
namespace cpu {
namespace blas {

// Which 16-bit format a storage type is; the PyTorch glue specialises this
// for c10::BFloat16 and c10::Half (the kernels know no framework types).
template <typename T>
struct Float16Format;  // { static constexpr bool bf16 = ...; }

// Plain loops, in Acc: the fallback where no BLAS is linked (CMake's kernel
// tests run the partition through them), and the product with a 16-bit
// output C (the stepwise loop's projection, ops/sequence.h).
template <typename T, typename C, typename Acc = C>
void gemm_loops(bool w_transposed, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                const T* w, int64_t ldw, C* c, int64_t ldc, bool accumulate) {
  std::vector<Acc> row(static_cast<size_t>(n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j)
      row[j] = accumulate ? static_cast<Acc>(c[i * ldc + j]) : Acc(0);
    if (w_transposed) {  // w[n, k]: dot products
      for (int64_t j = 0; j < n; ++j) {
        Acc s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t q = 0; q < k; ++q)
          s += static_cast<Acc>(a[i * lda + q]) * static_cast<Acc>(w[j * ldw + q]);
        row[j] += s;
      }
    } else {  // w[k, n]: rows of w scaled and added
      for (int64_t q = 0; q < k; ++q) {
        const Acc x = static_cast<Acc>(a[i * lda + q]);
        const T* wr = w + q * ldw;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) row[j] += x * static_cast<Acc>(wr[j]);
      }
    }
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = static_cast<C>(row[j]);
  }
}

// Column-major BLAS view of the row-major products: c^T = op(w) a^T.
inline void gemm(bool w_transposed, int64_t m, int64_t n, int64_t k, const float* a,
                 int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc,
                 bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (!sgemm_ || k == 0)
    return gemm_loops(w_transposed, m, n, k, a, lda, w, ldw, c, ldc, accumulate);
  const int M = int(n), N = int(m), K = int(k), LDW = int(ldw), LDA = int(lda), LDC = int(ldc);
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  sgemm_(w_transposed ? "T" : "N", "N", &M, &N, &K, &one, w, &LDW, a, &LDA, &beta, c, &LDC);
}

inline void gemm(bool w_transposed, int64_t m, int64_t n, int64_t k, const double* a,
                 int64_t lda, const double* w, int64_t ldw, double* c, int64_t ldc,
                 bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (!dgemm_ || k == 0)
    return gemm_loops(w_transposed, m, n, k, a, lda, w, ldw, c, ldc, accumulate);
  const int M = int(n), N = int(m), K = int(k), LDW = int(ldw), LDA = int(lda), LDC = int(ldc);
  const double one = 1.0, beta = accumulate ? 1.0 : 0.0;
  dgemm_(w_transposed ? "T" : "N", "N", &M, &N, &K, &one, w, &LDW, a, &LDA, &beta, c, &LDC);
}

// fp16 / bf16 storage, fp32 products.
template <typename T16>
void gemm(bool w_transposed, int64_t m, int64_t n, int64_t k, const T16* a, int64_t lda,
          const T16* w, int64_t ldw, float* c, int64_t ldc, bool accumulate) {
  static_assert(sizeof(T16) == 2, "16-bit storage types only");
  if (m <= 0 || n <= 0) return;
  auto* f = Float16Format<T16>::bf16 ? cblas_gemm_bf16bf16f32 : cblas_gemm_f16f16f32;
  if (!f || k == 0)
    return gemm_loops(w_transposed, m, n, k, a, lda, w, ldw, c, ldc, accumulate);
  f(101, 111, w_transposed ? 112 : 111, int(m), int(n), int(k), 1.0f,
    reinterpret_cast<const uint16_t*>(a), int(lda), reinterpret_cast<const uint16_t*>(w),
    int(ldw), accumulate ? 1.0f : 0.0f, c, int(ldc));
}

// fp32 through oneDNN's brgemm: whether it is linked and not switched off
// (RNN_EXT_CPU_BRGEMM=0 runs MKL instead, for comparisons).
inline bool brgemm_enabled() {
  if (!at::native::cpublas::brgemm) return false;
  const char* env = getenv("RNN_EXT_CPU_BRGEMM");
  return !(env && strcmp(env, "0") == 0);
}

// c[m, n] (+)= a[m, k] b[k, n] through brgemm (k = 0: c = 0, or unchanged).
inline void brgemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) memset(c + i * ldc, 0, sizeof(float) * n);
    return;
  }
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, false);
}

// Ends a sequence of brgemm calls on this thread (releases the kernel's
// hardware context, where it has one).
inline void brgemm_release() {
  if (at::native::cpublas::brgemm_release) at::native::cpublas::brgemm_release(false);
}

// The [K, N] operand of brgemm_panels: N columns cut into panels of
// panel_width() (the last one narrower), each panel a contiguous
// [K, width] row-major block, so that a call's operand is one dense stretch
// of memory.  One brgemm over the whole [K, N] matrix, with rows N*4 bytes
// apart, runs 1.5x-3x slower at the step's sizes (TLB and prefetch misses;
// benchmarks/NOTES.md), and transposing into it is slower still.
inline int64_t panel_width();

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic push
// GCC 12's own intrinsics (_mm512_undefined_* inside them) trip this.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// dst[q][i] = src[i][q0 + q] for a 16 x 16 block (rows of dst ldd apart),
// in AVX-512 registers: the packing below reads W_hh once per call, mostly
// from beyond the core's caches, and element by element it took 13% of a
// CPU LSTM forward at B=16, H=512 (4x slower than this, cold).
__attribute__((target("avx512f"))) inline void transpose16x16(const float* const* src, int64_t q0,
                                                              float* dst, int64_t ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src[i] + q0);
  for (int i = 0; i < 16; i += 2) {  // interleave pairs of rows
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // then pairs of pairs
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; ++i) {  // then 128-bit lanes, twice
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ldd, r[i]);
}

// The same for an 8 x 8 block in AVX2 registers, for CPUs without AVX-512
// (element by element, the packing took as long as a third of an LSTM
// forward's recurrence at T = 24 on such a CPU).
__attribute__((target("avx2"))) inline void transpose8x8(const float* const* src, int64_t q0,
                                                         float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src[i] + q0);
  for (int i = 0; i < 8; i += 2) {  // interleave pairs of rows
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // then pairs of pairs, within 128-bit lanes
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {  // then the lanes: rows 0-3's with rows 4-7's
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * ldd, t[i]);
}
#pragma GCC diagnostic pop

inline bool has_avx512f() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}
inline bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

// 64 columns where the CPU has AVX-512 (16 floats a register); 24 with AVX2
// alone (8 a register), where oneDNN's brgemm kernels ran 1.4x-1.7x faster
// on 24-column panels than on 64 at the steps' shapes (M = 4..64 rows,
// K = 256..768; benchmarks/NOTES.md).  RNN_EXT_CPU_PANEL (a multiple of 8,
// 8..256) overrides it, for measurements on other CPUs; read once.
inline int64_t panel_width() {
  static const int64_t width = [] {
    if (const char* env = getenv("RNN_EXT_CPU_PANEL")) {
      const long w = strtol(env, nullptr, 10);
      if (w >= 8 && w <= 256 && w % 8 == 0) return static_cast<int64_t>(w);
    }
#if defined(__x86_64__) && defined(__GNUC__)
    return static_cast<int64_t>(has_avx512f() ? 64 : 24);
#else
    return static_cast<int64_t>(64);
#endif
  }();
  return width;
}

// At B = 1, the largest W_hh (bytes) whose rows the CPU executor packs into
// panels; larger ones MKL multiplies in place.  8 MiB by default (measured
// on a Zen 4: panels 1.1x-1.2x faster up to an LSTM's H = 768, slower at
// 1024); rnn_ext/_projection.py's rule sets it per CPU when it is imported.
inline std::atomic<int64_t>& single_row_panel_bytes() {
  static std::atomic<int64_t> bytes{int64_t(8) << 20};
  return bytes;
}

// Fills panels[K, n] from n rows of k elements: row(j) is column j.  Blocks
// of 16 rows by 16 elements go through transpose16x16 where the CPU has
// AVX-512 (fp32), blocks of 8 by 8 through transpose8x8 where it has AVX2;
// the rest element by element (ctest cpu_kernels checks every path against
// the plain layout, odd sizes included).  `vector` false: element by
// element only (the tests' reference).
template <typename T, class Row>
void pack_panels(int64_t n, int64_t k, Row row, T* panels, bool vector = true) {
  constexpr int64_t tile = 16;
#if defined(__x86_64__) && defined(__GNUC__)
  const bool is_float = std::is_same<T, float>::value;
  const int64_t block = !vector || !is_float ? 0 : has_avx512f() ? 16 : has_avx2() ? 8 : 0;
#else
  constexpr int64_t block = 0;
  (void)vector;
#endif
  const int64_t panel = panel_width();
  for (int64_t p0 = 0; p0 < n; p0 += panel) {
    const int64_t width = n - p0 < panel ? n - p0 : panel;
    T* panel = panels + p0 * k;
    for (int64_t j0 = 0; j0 < width; j0 += tile) {
      const int64_t jn = width - j0 < tile ? width - j0 : tile;
      const T* src[tile];
      for (int64_t jj = 0; jj < jn; ++jj) src[jj] = row(p0 + j0 + jj);
      // Rows [0, jv) and elements [0, qv) in vector blocks, the rest below.
      int64_t jv = 0, qv = 0;
#if defined(__x86_64__) && defined(__GNUC__)
      if constexpr (std::is_same<T, float>::value) {
        if (block > 0) {
          jv = jn / block * block;
          qv = k / block * block;
          for (int64_t jb = 0; jb < jv; jb += block)
            for (int64_t q0 = 0; q0 < qv; q0 += block) {
              if (block == 16)
                transpose16x16(src + jb, q0, panel + q0 * width + j0 + jb, width);
              else
                transpose8x8(src + jb, q0, panel + q0 * width + j0 + jb, width);
            }
        }
      }
#endif
      // Elements past the vector blocks, for the blocked rows; then every
      // element of the rows past them.
      for (int64_t q0 = qv; q0 < k; q0 += tile) {
        const int64_t q1 = q0 + tile < k ? q0 + tile : k;
        for (int64_t jj = 0; jj < jv; ++jj)
          for (int64_t q = q0; q < q1; ++q) panel[q * width + j0 + jj] = src[jj][q];
      }
      for (int64_t q0 = 0; q0 < k; q0 += tile) {
        const int64_t q1 = q0 + tile < k ? q0 + tile : k;
        for (int64_t jj = jv; jj < jn; ++jj)
          for (int64_t q = q0; q < q1; ++q) panel[q * width + j0 + jj] = src[jj][q];
      }
    }
  }
}

// Fills panels[K, n] from the [k, n] block of a row-major matrix whose rows
// are ld apart (columns of W_hh for the backward): a copy, row by row.
template <typename T>
void pack_panels_of_rows(int64_t n, int64_t k, const T* src, int64_t ld, T* panels) {
  const int64_t panel = panel_width();
  for (int64_t p0 = 0; p0 < n; p0 += panel) {
    const int64_t width = n - p0 < panel ? n - p0 : panel;
    T* panel = panels + p0 * k;
    for (int64_t q = 0; q < k; ++q) memcpy(panel + q * width, src + q * ld + p0, sizeof(T) * width);
  }
}

// c[m, n] (+)= a[m, k] times the packed panels[k, n] (k = 0: c = 0, or unchanged).
//
// A depth over panel_depth() is cut into equal blocks, each multiplied
// into every panel before the next (c accumulates).  Whole, the backward's
// product (k = 4H) ran 1.2x-1.3x slower than the forward's (k = H) of the
// same work at B = 4-16, H = 768-1024 (benchmarks/NOTES.md).
// RNN_EXT_CPU_PANEL_DEPTH (at least 8; 0: the whole depth) overrides the
// 1024, for measurements; read once.
inline int64_t panel_depth() {
  static const int64_t depth = [] {
    if (const char* env = getenv("RNN_EXT_CPU_PANEL_DEPTH")) {
      const long d = strtol(env, nullptr, 10);
      if (d == 0) return int64_t(INT64_MAX);
      if (d >= 8) return static_cast<int64_t>(d);
    }
    return int64_t(1024);
  }();
  return depth;
}
inline void brgemm_panels(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                          const float* panels, float* c, int64_t ldc, bool accumulate = false) {
  const int64_t panel = panel_width(), depth = panel_depth();
  const int64_t blocks = k > depth ? (k + depth - 1) / depth : 1;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t k0 = k * blk / blocks, k1 = k * (blk + 1) / blocks;
    for (int64_t p0 = 0; p0 < n; p0 += panel) {
      const int64_t width = n - p0 < panel ? n - p0 : panel;
      // Panel p0's rows [k0, k1): contiguous, `width` apart.
      brgemm_nn(m, width, k1 - k0, a + k0, lda, panels + p0 * k + k0 * width, width, c + p0,
                ldc, accumulate || blk > 0);
    }
  }
}

// While alive, MKL calls from this thread run on this thread alone.
class SingleThreaded {
 public:
  SingleThreaded() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreaded() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int previous_;
};

}  // namespace blas
}  // namespace cpu
}  // namespace rnn_ext
