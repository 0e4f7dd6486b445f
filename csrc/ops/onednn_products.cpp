#include "ops/onednn_products.h"

#include <ATen/Config.h>

#include <atomic>

#include "ops/cpu_workers.h"

// PyTorch's own oneDNN matmul (aten/src/ATen/native/mkldnn/Matmul.cpp):
// result = beta * result + alpha * mat1 @ mat2, reading a transposed operand
// through its strides.  Exported from libtorch_cpu but in no installed
// header; torch is pinned (requirements.txt), and tests/test_projection.py
// checks its results against fp64.
namespace at {
namespace native {
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result,
                             float beta, float alpha);
}  // namespace native
}  // namespace at

namespace rnn_ext {
namespace {

std::atomic<int64_t> weight_grad_rows{-1};

bool through_onednn(const at::Tensor& a, const at::Tensor& b) {
#if AT_MKLDNN_ENABLED()
  const int64_t rows = weight_grad_rows.load(std::memory_order_relaxed);
  return rows >= 0 && a.size(0) >= rows && a.device().is_cpu() && b.device().is_cpu() &&
         a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.numel() > 0 &&
         b.numel() > 0 && a.is_contiguous() && b.is_contiguous() &&
         at::globalContext().userEnabledMkldnn();
#else
  return false;
#endif
}

}  // namespace

int64_t set_onednn_weight_grad_rows(int64_t rows) {
  return weight_grad_rows.exchange(rows < 0 ? -1 : rows);
}

at::Tensor transposed_product(const at::Tensor& a, const at::Tensor& b) {
  if (!through_onednn(a, b)) return at::mm(a.t(), b);
  // a.t() is a transposed view, a layout oneDNN's matmul reads as it is:
  // no transposed copy (mkldnn._linear_pointwise made one, 1 MB of copy per
  // 0.2 ms of product at T = 24, B = 16, H = 256).
  at::Tensor out = at::empty({a.size(1), b.size(1)}, a.options());
  at::native::mkldnn_matmul(a.t(), b, out, 0.f, 1.f);
  return out;
}

at::Tensor short_linear(const at::Tensor& x, const at::Tensor& w,
                        const std::optional<at::Tensor>& b) {
#if AT_MKLDNN_ENABLED()
  const bool onednn = x.device().is_cpu() && w.device().is_cpu() && x.scalar_type() == at::kFloat &&
                      w.scalar_type() == at::kFloat && (!b || b->scalar_type() == at::kFloat) &&
                      x.numel() > 0 && w.numel() > 0 && at::globalContext().userEnabledMkldnn();
#else
  const bool onednn = false;
#endif
  if (!onednn) return at::linear(x, w, b);
  const at::Tensor x_ = x.contiguous(), w_ = w.contiguous();
  at::Tensor out_t = at::empty({w.size(0), x.size(0)}, x.options());
  // beta = 0: with beta = 1 onto a bias-filled out^T, a single row (N = 1)
  // came back as the bias alone.
  at::native::mkldnn_matmul(w_, x_.t(), out_t, 0.f, 1.f);
  at::Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  if (b) return at::add_out(out, out_t.t(), *b);
  return out.copy_(out_t.t());
}

}  // namespace rnn_ext
