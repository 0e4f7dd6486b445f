#include "ops/buffer_pool.h"

#include <c10/core/impl/alloc_cpu.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>

namespace rnn_ext {
namespace {

constexpr size_t kMinBytes = size_t(256) << 10;
constexpr size_t kGranule = size_t(64) << 10;  // sizes rounded up to this
constexpr size_t kMaxCachedBytes = size_t(256) << 20;

class BlockCache {
 public:
  // A free block of at least `bytes` and at most twice that (so a varying
  // sequence length reuses blocks without holding much slack), else a new one.
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        void* p = it->second;
        cached_ -= it->first;
        sizes_[p] = it->first;
        free_.erase(it);
        return p;
      }
    }
    void* p = c10::alloc_cpu(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = bytes;
    return p;
  }
  void give(void* p) {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    const size_t bytes = it->second;
    sizes_.erase(it);
    if (cached_ + bytes <= kMaxCachedBytes) {
      free_.emplace(bytes, p);
      cached_ += bytes;
      return;
    }
    lock.unlock();
    c10::free_cpu(p);
  }
  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(cached_);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // by size
  std::map<void*, size_t> sizes_;      // blocks in use: their size
  size_t cached_ = 0;
};

// Never destroyed: tensors may outlive static destruction at exit.
BlockCache& cache() {
  static BlockCache* c = new BlockCache();
  return *c;
}

bool enabled() {
  static const bool on = [] {
    const char* env = std::getenv("RNN_EXT_CPU_BUFFER_CACHE");
    return !(env && std::strcmp(env, "0") == 0);
  }();
  return on;
}

}  // namespace

at::Tensor reusable_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  if (!opts.device().is_cpu() || !enabled()) return at::empty(sizes, opts);
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  if (bytes < kMinBytes) return at::empty(sizes, opts);
  const size_t rounded = (bytes + kGranule - 1) / kGranule * kGranule;
  void* p = cache().take(rounded);
  at::Tensor t = at::from_blob(p, sizes, [](void* q) { cache().give(q); }, opts);
  // Poisoning as at::empty does it (torch.utils.deterministic's
  // fill_uninitialized_memory): a reused block holds the last call's values,
  // which would hide an element a kernel forgets to write.
  auto& ctx = at::globalContext();
  if (ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory()) {
    if (at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type()))
      t.fill_(std::numeric_limits<double>::quiet_NaN());
    else
      t.fill_(0x7f);
  }
  return t;
}

int64_t reusable_cached_bytes() { return cache().cached(); }

}  // namespace rnn_ext
