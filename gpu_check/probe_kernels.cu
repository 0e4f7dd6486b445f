// Microbenchmarks of what the persistent kernels rest on (gpu_check/probe.py
// builds this with nvcc into a shared library and calls it through ctypes):
//   launch latency of an empty kernel (round trip and back-to-back),
//   a cooperative grid-wide barrier (cooperative_groups grid.sync()),
//   a thread-block-cluster barrier (cluster.sync(), sm_90),
//   a flag/counter barrier through L2 (atomics and a generation flag).
// Each returns the median over `reps` repetitions, in microseconds, and a
// cudaError_t (0 = success).  CUDA headers only: no PyTorch here.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace cg = cooperative_groups;

namespace {

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

__global__ void empty_kernel() {}

__global__ void grid_barrier_kernel(int iters, unsigned* sink) {
  cg::grid_group grid = cg::this_grid();
  for (int i = 0; i < iters; ++i) grid.sync();
  if (blockIdx.x == 0 && threadIdx.x == 0) sink[0] = iters;
}

__global__ void cluster_barrier_kernel(int iters, unsigned* sink) {
  cg::cluster_group cluster = cg::this_cluster();
  for (int i = 0; i < iters; ++i) cluster.sync();
  if (blockIdx.x == 0 && threadIdx.x == 0) sink[0] = iters;
}

// Sense-reversing barrier over all blocks: one thread per block adds to a
// counter in global memory (resolved in L2); the last to arrive resets it and
// bumps the generation flag that the others spin on.  The blocks must be
// co-resident: the host launches this cooperatively.
__global__ void flag_barrier_kernel(int iters, unsigned* counter, unsigned* generation) {
  const unsigned blocks = gridDim.x;
  unsigned gen = 0;
  for (int i = 0; i < iters; ++i) {
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      if (atomicAdd(counter, 1u) == blocks - 1) {
        atomicExch(counter, 0u);
        __threadfence();
        atomicExch(generation, gen + 1);
      } else {
        while (atomicAdd(generation, 0u) == gen) {
        }
      }
      __threadfence();
    }
    ++gen;
    __syncthreads();
  }
}

template <typename Launch>
cudaError_t time_launches(Launch launch, int reps, float per, float* out_us) {
  cudaEvent_t start, stop;
  cudaError_t err = cudaEventCreate(&start);
  if (err) return err;
  if ((err = cudaEventCreate(&stop))) return err;
  std::vector<float> samples;
  if ((err = launch())) return err;  // warm-up
  if ((err = cudaDeviceSynchronize())) return err;
  for (int r = 0; r < reps; ++r) {
    cudaEventRecord(start);
    if ((err = launch())) return err;
    cudaEventRecord(stop);
    if ((err = cudaEventSynchronize(stop))) return err;
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    samples.push_back(ms * 1000.0f / per);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  *out_us = median(samples);
  return cudaGetLastError();
}

}  // namespace

extern "C" {

const char* probe_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

// out_us[0]: launch + stream synchronize, host clock; out_us[1]: one of
// `batch` back-to-back launches, CUDA events.
int probe_launch_latency(int reps, int batch, float* out_us) {
  std::vector<float> round_trip;
  cudaError_t err;
  empty_kernel<<<1, 32>>>();
  if ((err = cudaDeviceSynchronize())) return err;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    empty_kernel<<<1, 32>>>();
    if ((err = cudaStreamSynchronize(0))) return err;
    auto t1 = std::chrono::steady_clock::now();
    round_trip.push_back(std::chrono::duration<float, std::micro>(t1 - t0).count());
  }
  out_us[0] = median(round_trip);
  return time_launches(
      [&]() {
        for (int i = 0; i < batch; ++i) empty_kernel<<<1, 32>>>();
        return cudaGetLastError();
      },
      reps, static_cast<float>(batch), out_us + 1);
}

// One grid.sync() of `blocks` blocks of `threads` threads (median of reps
// launches of `iters` barriers each, divided by iters).
int probe_grid_barrier(int blocks, int threads, int iters, int reps, float* out_us) {
  unsigned* sink;
  cudaError_t err = cudaMalloc(&sink, sizeof(unsigned));
  if (err) return err;
  void* args[] = {&iters, &sink};
  err = time_launches(
      [&]() {
        return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(grid_barrier_kernel), dim3(blocks),
                                           dim3(threads), args, 0, nullptr);
      },
      reps, static_cast<float>(iters), out_us);
  cudaFree(sink);
  return err;
}

// One cluster.sync() in clusters of `cluster` blocks (blocks a multiple of it).
int probe_cluster_barrier(int cluster, int blocks, int threads, int iters, int reps, float* out_us) {
  unsigned* sink;
  cudaError_t err = cudaMalloc(&sink, sizeof(unsigned));
  if (err) return err;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(threads);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  err = time_launches([&]() { return cudaLaunchKernelEx(&config, cluster_barrier_kernel, iters, sink); }, reps,
                      static_cast<float>(iters), out_us);
  cudaFree(sink);
  return err;
}

// One round of the flag/counter barrier over `blocks` co-resident blocks.
int probe_flag_barrier(int blocks, int threads, int iters, int reps, float* out_us) {
  unsigned* state;
  cudaError_t err = cudaMalloc(&state, 2 * sizeof(unsigned));
  if (err) return err;
  unsigned* counter = state;
  unsigned* generation = state + 1;
  void* args[] = {&iters, &counter, &generation};
  err = time_launches(
      [&]() {
        cudaError_t e = cudaMemset(state, 0, 2 * sizeof(unsigned));
        if (e) return e;
        return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(flag_barrier_kernel), dim3(blocks),
                                           dim3(threads), args, 0, nullptr);
      },
      reps, static_cast<float>(iters), out_us);
  cudaFree(state);
  return err;
}

}  // extern "C"
