// The weight gradients' large products on the CPU (dW_hh, dW_hr: one
// product over all steps after the loop), through oneDNN's matmul where
// that is the faster library on this machine, else ATen's mm (MKL).
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

namespace rnn_ext {

// a^T b for a [N, M] and b [N, K] (a sum over N rows): [M, K].
at::Tensor transposed_product(const at::Tensor& a, const at::Tensor& b);

}  // namespace rnn_ext
