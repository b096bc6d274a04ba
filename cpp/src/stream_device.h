#pragma once
// The streaming engine's accelerator stage. A weight goes up from a pinned host buffer on an
// upload stream, is pruned on a compute stream and comes back into a pinned host buffer on a
// download stream, so that the copies of one weight overlap the pruning of its neighbours;
// events order the three, and the host waits only where the pruning reads a result back.

#include "stream_buffers.h"
#include "stream_plan.h"

#include "symprune/stream.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>

namespace symprune::detail {

// The device a run may prune on (index resolved), or FormatError saying why not.
c10::Device resolve_stream_device(c10::Device device);

class DevicePruner {
 public:
  explicit DevicePruner(c10::Device device);
  // Waits for the device: no copy may still use a host buffer once this returns.
  ~DevicePruner();
  DevicePruner(const DevicePruner&) = delete;
  DevicePruner& operator=(const DevicePruner&) = delete;

  // Queues the pruning of the weight held in `input` (shaped like `like`) into `output`, and
  // sets input.in_use (until the upload is done) and output.in_use (until the result is in).
  void prune(HostBuffer& input, HostBuffer& output, const at::Tensor& like, const StreamOptions& o,
             const WeightStats& stats);

 private:
  WeightStats to_device(const WeightStats& stats) const;

  c10::Device device_;
  c10::Stream upload_, compute_, download_;
};

}  // namespace symprune::detail
