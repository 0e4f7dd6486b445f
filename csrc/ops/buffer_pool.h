// Large CPU buffers of the sequence ops (the training workspace, the gate
// gradients) from a small cache of blocks that stay mapped between calls.
//
// Why: glibc gives such buffers back to the kernel when a call frees them
// (the heap is trimmed once its free top exceeds a threshold of a few MiB),
// and the next call faults every page in again, zero-filled: an LSTM
// training step at B=16, H=256 took about 1,900 page faults (7.5 MiB) where
// torch.nn's took 80 (oneDNN keeps its own scratchpad), a fifth of the step.
// The CUDA ops have PyTorch's caching allocator and take at::empty.
#pragma once

#include <ATen/ATen.h>

#include "ops/cpu_workers.h"  // reusable_cached_bytes

namespace rnn_ext {

// at::empty(sizes, opts), except that a CPU buffer of at least 256 KiB comes
// from the cache (and returns to it when its last tensor dies).  The cache
// keeps at most 256 MiB of free blocks; RNN_EXT_CPU_BUFFER_CACHE=0 turns it
// off (every buffer from at::empty).
at::Tensor reusable_empty(at::IntArrayRef sizes, const at::TensorOptions& opts);

}  // namespace rnn_ext
