#include "ops/onednn_products.h"

#include <ATen/Config.h>

#include <atomic>
#include <initializer_list>

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

// Whether oneDNN's matmul can take these operands: non-empty fp32 CPU
// tensors, with oneDNN built in and not switched off.
bool onednn_fp32(std::initializer_list<const at::Tensor*> ts) {
#if AT_MKLDNN_ENABLED()
  if (!at::globalContext().userEnabledMkldnn()) return false;
  for (const at::Tensor* t : ts)
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || t->numel() == 0) return false;
  return true;
#else
  (void)ts;
  return false;
#endif
}

bool through_onednn(const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = weight_grad_rows.load(std::memory_order_relaxed);
  return rows >= 0 && a.size(0) >= rows && a.is_contiguous() && b.is_contiguous() &&
         onednn_fp32({&a, &b});
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
  if (!onednn_fp32({&x, &w}) || (b && !onednn_fp32({&*b}))) return at::linear(x, w, b);
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
