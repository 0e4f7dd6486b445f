// How many workers the CPU executor uses: 0 (the default) lets each call
// choose from its sizes and torch.get_num_threads(); a positive count forces
// it (tests, benchmarks).  Returns the previous setting.
#pragma once

#include <stdint.h>

namespace rnn_ext {
int64_t set_cpu_workers(int64_t workers);
}  // namespace rnn_ext
