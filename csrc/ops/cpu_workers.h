// How many workers the CPU executor uses: 0 (the default) lets each call
// choose from its sizes and torch.get_num_threads(); a positive count forces
// it (tests, benchmarks).  Returns the previous setting.
#pragma once

#include <stdint.h>

namespace rnn_ext {
int64_t set_cpu_workers(int64_t workers);
// Whether the CPU ops run the stepwise loop of ops/sequence.h (the CUDA
// backend's default loop, here with the CPU's GEMM and step loops) instead
// of the partitioned one: tests run the CUDA loop's logic this way.
// Returns the previous setting.
bool set_cpu_stepwise(bool stepwise);
// Bytes of free blocks the CPU buffer cache holds now (ops/buffer_pool.h; tests).
int64_t reusable_cached_bytes();
// From how many summed rows (T x B) the CPU ops' fp32 weight gradients go
// through oneDNN (ops/onednn_products.h); negative: never (the default).
// rnn_ext/_projection.py sets it from its rule.  Returns the previous.
int64_t set_onednn_weight_grad_rows(int64_t rows);
// At B = 1, the largest W_hh (bytes) the CPU executor packs into panels
// (cpu/blas.h, single_row_panel_bytes); rnn_ext/_projection.py sets it from
// its rule.  Returns the previous.
int64_t set_single_row_panel_bytes(int64_t bytes);
}  // namespace rnn_ext
