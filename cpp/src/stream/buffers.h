#pragma once
// Reusable host buffers between the streaming engine's stages. Each is the size of the largest
// pruned weight; reusing a few, rather than allocating every weight, saves the page faults of
// fresh memory and bounds the weights in flight. When a device prunes, the buffers are pinned
// and each carries the event of the device copy that still reads or fills it.

#include "stream/bounded_queue.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>

#include <ATen/ops/empty.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace symprune::detail {

struct HostBuffer {
  at::Tensor bytes;                   // 1-D uint8
  std::optional<c10::Event> in_use;   // the device copy from or into `bytes`, if any

  // Blocks until the device copy (if any) is done.
  void wait() const {
    if (in_use) in_use->synchronize();
  }

  // The first bytes as a tensor shaped like `like`.
  at::Tensor shaped_like(const at::Tensor& like) const {
    return bytes.narrow(0, 0, static_cast<int64_t>(like.nbytes())).view(like.scalar_type()).view(like.sizes());
  }
};

class HostBufferPool {
 public:
  HostBufferPool(std::size_t count, uint64_t bytes, bool pinned) : free_(count) {
    const auto options = at::TensorOptions().dtype(at::kByte).pinned_memory(pinned);
    for (std::size_t i = 0; i < count; ++i) free_.push({at::empty({static_cast<int64_t>(bytes)}, options), {}});
  }
  // Waits for a free buffer; nullopt once closed by a failure.
  std::optional<HostBuffer> acquire() { return free_.pop(); }
  void give_back(HostBuffer buffer) { free_.push(std::move(buffer)); }
  void close() { free_.close(); }

 private:
  BoundedQueue<HostBuffer> free_;
};

}  // namespace symprune::detail
