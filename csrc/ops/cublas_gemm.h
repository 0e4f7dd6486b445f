// The recurrent GEMMs of the stepwise CUDA loop (ops/sequence.h), called
// on raw pointers through cuBLASLt with ATen's handle, ATen's cuBLASLt
// workspace and the current stream: no ATen dispatch, no slicing and no
// allocation inside the time loop.  NOT YET RUN ON A GPU.
//
// The products have the row-major shapes of cpu/blas.h:
//   w_transposed: c[m, n] (+)= a[m, k] w[n, k]^T   (forward: h times W_hh^T)
//   otherwise:    c[m, n] (+)= a[m, k] w[k, n]     (backward: gate grads times W_hh)
// cuBLAS is column-major, so each is computed as c^T = op(w) a^T.
//
// Each product is one kernel: the algorithm is asked of cuBLASLt's
// heuristic with split-K reductions excluded (a split-K algorithm adds a
// reduction kernel), so a step is the GEMM plus the pointwise kernel.  Only
// if the heuristic offers no such algorithm is split-K allowed.  The
// heuristic runs once per distinct shape and output type of a call (the
// rows m change per step only with sorted lengths, in powers of two:
// Lengths::gemm_rows), at the first step that needs it; later steps reuse
// the plan when their pointers are at least as aligned as the plan's.
//
// Types: 16-bit inputs with fp32 output or 16-bit output (the projection),
// fp32 accumulation and scaling; fp32 with TF32 tensor cores only where
// torch.backends.cuda.matmul.allow_tf32 is on; fp64 in fp64.
#pragma once

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <vector>

namespace rnn_ext {
namespace cuda_blas {

template <typename T>
constexpr cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, __half>) return CUDA_R_16F;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return CUDA_R_16BF;
  else if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else {
    static_assert(std::is_same_v<T, double>, "no cuBLAS type for this storage type");
    return CUDA_R_64F;
  }
}

inline void check(cublasStatus_t status, const char* what) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "rnn_ext: ", what, " failed: ",
              cublasLtGetStatusString(status));
}

// The largest power of two (at most 256, cuBLASLt's default requirement)
// dividing an address: the heuristic must only offer algorithms that work
// at the alignment the loop's per-step pointers actually have.
inline uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al >>= 1;
  return al;
}

// T: the kernels' storage type (__half, __nv_bfloat16, float, double).
template <typename T>
class LtGemm {
  using Scale = std::conditional_t<std::is_same_v<T, double>, double, float>;

 public:
  // Reads the handle, workspace, stream and TF32 switch once, before the loop.
  explicit LtGemm(const at::Tensor& /*like: on the current device*/)
      : handle_(at::cuda::getCurrentCUDABlasLtHandle()),
        stream_(at::cuda::getCurrentCUDAStream()),
        workspace_(at::cuda::getCUDABlasLtWorkspace()),
        workspace_bytes_(at::cuda::getCUDABlasLtWorkspaceSize()),
        compute_(compute_type()) {
    plans_.reserve(8);
  }
  ~LtGemm() {
    for (Plan& p : plans_) {
      cublasLtMatrixLayoutDestroy(p.c);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatmulDescDestroy(p.desc);
    }
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // C: the output type, Acc (fp32 for 16-bit T) or T.
  template <typename C>
  void operator()(bool w_transposed, int64_t m, int64_t n, int64_t k, const T* a,
                  int64_t lda, const T* w, int64_t ldw, C* c, int64_t ldc,
                  bool accumulate) {
    if (m <= 0 || n <= 0) return;
    TORCH_CHECK(k > 0, "rnn_ext: empty recurrent product");
    const Key key{w_transposed, accumulate, data_type<C>(), m, n, k, lda, ldw, ldc,
                  alignment(w), alignment(a), alignment(c)};
    const Plan& plan = find_or_make(key);
    const Scale alpha = 1, beta = accumulate ? 1 : 0;
    check(cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.a, a, plan.b, &beta, c,
                         plan.c, c, plan.c, &plan.algo, workspace_, workspace_bytes_,
                         stream_),
          "cublasLtMatmul");
  }

 private:
  struct Key {
    bool w_transposed, accumulate;
    cudaDataType_t c_type;
    int64_t m, n, k, lda, ldw, ldc;
    uint32_t align_w, align_a, align_c;
    bool same_shape(const Key& o) const {
      return w_transposed == o.w_transposed && accumulate == o.accumulate &&
             c_type == o.c_type && m == o.m && n == o.n && k == o.k && lda == o.lda &&
             ldw == o.ldw && ldc == o.ldc;
    }
  };
  struct Plan {
    Key key;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo;
  };

  static cublasComputeType_t compute_type() {
    if constexpr (std::is_same_v<T, double>) return CUBLAS_COMPUTE_64F;
    else if constexpr (std::is_same_v<T, float>)
      return at::globalContext().allowTF32CuBLAS() ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                   : CUBLAS_COMPUTE_32F;
    else return CUBLAS_COMPUTE_32F;
  }

  // A plan made for weaker alignment also serves stronger alignment.
  const Plan& find_or_make(const Key& key) {
    for (const Plan& p : plans_)
      if (p.key.same_shape(key) && p.key.align_w <= key.align_w &&
          p.key.align_a <= key.align_a && p.key.align_c <= key.align_c)
        return p;
    plans_.push_back(make(key));
    return plans_.back();
  }

  Plan make(const Key& key) const {
    Plan p;
    p.key = key;
    constexpr cudaDataType_t scale_type = std::is_same_v<T, double> ? CUDA_R_64F : CUDA_R_32F;
    check(cublasLtMatmulDescCreate(&p.desc, compute_, scale_type), "cublasLtMatmulDescCreate");
    // cuBLAS's A is w (transposed in the forward product), its B is a.
    const cublasOperation_t op_w = key.w_transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_w, sizeof(op_w)),
          "cublasLtMatmulDescSetAttribute");
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)),
          "cublasLtMatmulDescSetAttribute");
    // Column-major views of the row-major operands, as stored (before op).
    const uint64_t w_rows = key.w_transposed ? key.k : key.n;
    const uint64_t w_cols = key.w_transposed ? key.n : key.k;
    check(cublasLtMatrixLayoutCreate(&p.a, data_type<T>(), w_rows, w_cols, key.ldw),
          "cublasLtMatrixLayoutCreate");
    check(cublasLtMatrixLayoutCreate(&p.b, data_type<T>(), key.k, key.m, key.lda),
          "cublasLtMatrixLayoutCreate");
    check(cublasLtMatrixLayoutCreate(&p.c, key.c_type, key.n, key.m, key.ldc),
          "cublasLtMatrixLayoutCreate");
    if (!heuristic(p, key, /*single_kernel=*/true) && !heuristic(p, key, false))
      TORCH_CHECK(false, "rnn_ext: cuBLASLt offers no algorithm for the recurrent product [",
                  key.m, ", ", key.k, "] x [", key.k, ", ", key.n, "]");
    return p;
  }

  bool heuristic(Plan& p, const Key& key, bool single_kernel) const {
    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const uint64_t ws = workspace_bytes_;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    if (single_kernel) {
      const uint32_t none = CUBLASLT_REDUCTION_SCHEME_NONE;
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &none,
                                           sizeof(none));
    }
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                         &key.align_w, sizeof(key.align_w));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                         &key.align_a, sizeof(key.align_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                         &key.align_c, sizeof(key.align_c));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                         &key.align_c, sizeof(key.align_c));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (status != CUBLAS_STATUS_SUCCESS || found == 0) return false;
    p.algo = result.algo;
    return true;
  }

  cublasLtHandle_t handle_;
  cudaStream_t stream_;
  void* workspace_;
  size_t workspace_bytes_;
  cublasComputeType_t compute_;
  std::vector<Plan> plans_;
};

}  // namespace cuda_blas
}  // namespace rnn_ext
