// Products of the CPU ops and the input projection through oneDNN's matmul
// where that is the faster library on this machine, else ATen's (MKL): the
// weight gradients (dW_hh, dW_hr: one product over all steps after the
// loop; dW_ih) and the projection of short sequences.
//
// Which library is faster depends on the CPU, not the op: on AMD Zen 5
// MKL takes its AVX2 code path while oneDNN's AVX-512 kernels run at twice
// its rate; elsewhere the two were measured about equal.  The rule lives in
// one place, rnn_ext/_projection.py (RULES), which also routes the input
// projection's products; it sets the row threshold here when it is imported
// (set_onednn_weight_grad_rows, ops/cpu_workers.h).
#pragma once

#include <ATen/ATen.h>

#include <stdint.h>

#include <optional>

namespace rnn_ext {

// a^T b for a [N, M] and b [N, K] (a sum over N rows): [M, K].
at::Tensor transposed_product(const at::Tensor& a, const at::Tensor& b);

// x w^T + b for x [N, K], w [M, K], b [M] or none: [N, M], computed as
// (w x^T)^T through oneDNN's matmul for fp32 on the CPU (else at::linear).
// With w as oneDNN's right operand (mkldnn._linear_pointwise) each call
// reorders all of w, which costs more than the product when N is small (24
// rows at M x K = 4096 x 1024: 5.5 ms against 2.2 ms this way); as its left
// operand w is read in place, and the transposition is of the small output.
at::Tensor short_linear(const at::Tensor& x, const at::Tensor& w,
                        const std::optional<at::Tensor>& b);

}  // namespace rnn_ext
