#pragma once
// The streaming engine's accelerator stage. The loader thread uploads each weight, or each block
// of its rows when its rows are independent, from a pinned host buffer on an upload stream; the
// compute thread prunes it on a compute stream and downloads the result into a pinned host buffer
// on a download stream. Events order the three, so the upload of the next weight and the
// download of the previous one overlap the pruning of the current one; the host waits only
// where the pruning reads a value back.

#include "stream/buffers.h"
#include "stream/plan.h"

#include "symprune/prune.h"
#include "symprune/stream.h"

#include <string_view>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

namespace symprune::detail {

// The device a run may prune on (index resolved), or ValueError saying why not.
c10::Device resolve_stream_device(c10::Device device);

// A weight (or a block of its rows) and its statistics on their way to the device.
struct DeviceWeight {
  at::Tensor weight;
  LayerStats stats;
  c10::Event uploaded;  // recorded on the upload stream after the last copy
};

class DevicePruner {
 public:
  explicit DevicePruner(c10::Device device);
  // Waits for the device, so that no copy uses a host buffer once this returns.
  ~DevicePruner();
  DevicePruner(const DevicePruner&) = delete;
  DevicePruner& operator=(const DevicePruner&) = delete;

  // Loader thread: queues the upload of the weight held in `input` (shaped like `like`) and of
  // its statistics; sets input.in_use until the weight's copy is done.
  DeviceWeight upload(HostBuffer& input, const at::Tensor& like, const LayerStats& stats);

  // Compute thread: queues the pruning of `uploaded` (the weight `name`) and the download of
  // the result into `output`; sets output.in_use until the result is there.
  void prune(DeviceWeight uploaded, HostBuffer& output, const Recipe& recipe, std::string_view name);

 private:
  c10::Device device_;
  c10::Stream upload_, compute_, download_;
};

}  // namespace symprune::detail
