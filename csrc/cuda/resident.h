// Where a CUDA worker keeps its weights for the sequence: its block's
// dynamic shared memory, filled once before the time loop (the executor's
// resident_rows and resident_columns hooks of rnn_ext/partition.h).  Host
// and device code with no CUDA dependency, so that one layout serves the
// kernel (cuda/persistent.cu), the size its launch requests and the fit rule
// admits (rnn_ext/fit.h), and the CPU emulation of the packing in
// csrc/tests/test_partition.cpp.
//
// A worker's shared memory holds, in this order, one region each (every
// region starts on a kRegionAlign boundary):
//   forward   W_hh's rows of its units u, transposed: [Hin, G*|u|], gate g
//             in columns [g*|u|, (g+1)*|u|) (GateRows::wt); then, with a
//             projection, W_hr's rows of its projection columns pc,
//             transposed: [H, |pc|].
//   backward  W_hh's columns of its dh columns d (u, or pc with a
//             projection): the [G*H, |d|] block; then, with a projection,
//             W_hr's columns of its units: the [P, |u|] block.
// Every product then reads a weight row q as |n| consecutive elements, which
// the threads of a warp (consecutive output columns) read from consecutive
// banks: no padding is needed against bank conflicts.
#pragma once

#include <stdint.h>

#include "rnn_ext/partition.h"

namespace rnn_ext {
namespace resident {

constexpr int64_t kRegionAlign = 16;  // bytes: vector loads, and any dtype's alignment

RNN_HD int64_t region_bytes(int64_t elems, int64_t dtype_bytes) {
  return (elems * dtype_bytes + kRegionAlign - 1) / kRegionAlign * kRegionAlign;
}

// The largest slice partition::split(n, K, ., align) hands out.  Workers with
// the same number of chunks have the same size except the last one (which
// may hold the partial chunk), so the first worker, the first one with an
// extra chunk and the last one cover every size.
RNN_HD int64_t largest_slice(int64_t n, int64_t K, int64_t align) {
  if (n <= 0 || K <= 0) return 0;
  const int64_t chunks = (n + align - 1) / align;
  const int64_t plain = K - chunks % K;
  const int64_t candidates[3] = {0, plain < K ? plain : K - 1, K - 1};
  int64_t largest = 0;
  for (int64_t k : candidates) {
    const int64_t size = partition::split(n, K, k, align).size();
    largest = size > largest ? size : largest;
  }
  return largest;
}

// Bytes of shared memory the largest worker of K needs (the layout above):
// what the launch requests per block and what the fit rule checks.
// P = 0: no projection.  G: gates (4 LSTM, 3 GRU, 1 RNN).
RNN_HD int64_t worker_bytes(int64_t H, int64_t P, int64_t G, int64_t K, int64_t align,
                                   int64_t dtype_bytes, bool backward) {
  const int64_t Hin = P > 0 ? P : H;
  const int64_t units = largest_slice(H, K, align);
  const int64_t proj_cols = largest_slice(P, K, align);
  if (!backward)
    return region_bytes(Hin * G * units, dtype_bytes) +
           (P > 0 ? region_bytes(H * proj_cols, dtype_bytes) : 0);
  const int64_t dcols = P > 0 ? proj_cols : units;
  return region_bytes(G * H * dcols, dtype_bytes) +
         (P > 0 ? region_bytes(P * units, dtype_bytes) : 0);
}

// A worker's shared memory, handed out region by region in the order of the
// layout above.  take() returns null where the region does not fit (the
// executor then reads the weights where they are).
struct Shelf {
  unsigned char* next;
  int64_t left;  // bytes
  template <typename T>
  RNN_HD T* take(int64_t elems) {
    const int64_t bytes = region_bytes(elems, sizeof(T));
    if (bytes > left) return nullptr;
    T* out = reinterpret_cast<T*>(next);
    next += bytes;
    left -= bytes;
    return out;
  }
};

// The copies, as thread `tid` of `threads` does its share of them (every
// thread of the block calls them; the caller synchronises after).  Reads
// run along W's rows (coalesced); the one-time writes may conflict on banks.
//
// rows.gate(g) + j * rows.ld: row j of gate g, Hin elements; out [Hin, G*nu].
template <typename T>
RNN_HD void pack_rows_transposed(const partition::GateRows<T>& rows, int64_t G, int64_t nu,
                                 int64_t Hin, T* out, int64_t tid, int64_t threads) {
  const int64_t width = G * nu;
  for (int64_t e = tid; e < width * Hin; e += threads) {
    const int64_t r = e / Hin, q = e % Hin;
    out[q * width + r] = rows.gate(r / nu)[(r % nu) * rows.ld + q];
  }
}

// w [k, ldw]'s first n columns into out [k, n].
template <typename T>
RNN_HD void pack_columns(const T* w, int64_t ldw, int64_t k, int64_t n, T* out, int64_t tid,
                         int64_t threads) {
  for (int64_t e = tid; e < k * n; e += threads) out[e] = w[(e / n) * ldw + e % n];
}

}  // namespace resident
}  // namespace rnn_ext
