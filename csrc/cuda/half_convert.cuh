// Explicit conversions for CUDA's half types.  PyTorch builds CUDA code with
// __CUDA_NO_HALF_CONVERSIONS__ (and the bf16 equivalent), so the element
// functions' generic static_cast would not compile for them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "rnn_ext/step_kernels.h"

namespace rnn_ext {

template <>
struct Convert<float, __half> {
  RNN_HD static float run(__half x) { return __half2float(x); }
};
template <>
struct Convert<__half, float> {
  RNN_HD static __half run(float x) { return __float2half(x); }
};
template <>
struct Convert<float, __nv_bfloat16> {
  RNN_HD static float run(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <>
struct Convert<__nv_bfloat16, float> {
  RNN_HD static __nv_bfloat16 run(float x) { return __float2bfloat16(x); }
};

}  // namespace rnn_ext
