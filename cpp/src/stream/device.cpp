#include "stream/device.h"

#include "symprune/safetensors.h"

#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <ATen/ops/empty.h>

#include <string>

namespace symprune::detail {
namespace {

// Written against c10's device-generic streams and events, so that this file builds with a
// CPU-only torch too; only CUDA is accepted because only CUDA is tested.
c10::Stream pool_stream(c10::Device device) {
  return c10::impl::VirtualGuardImpl(device.type()).getStreamFromGlobalPool(device);
}

c10::Event record(const c10::Stream& stream) {
  c10::Event event(stream.device_type());
  event.record(stream);
  return event;
}

}  // namespace

c10::Device resolve_stream_device(c10::Device device) {
  if (device.is_cpu()) return device;
  const std::string name = device.str();
  if (!device.is_cuda()) throw ValueError("device must be cpu or cuda, got " + name);
  if (!c10::impl::hasDeviceGuardImpl(device.type()))
    throw ValueError("device " + name + ": this torch is built without CUDA; use device cpu");
  const auto count = c10::impl::VirtualGuardImpl(device.type()).deviceCount();
  if (count == 0) throw ValueError("device " + name + ": torch sees no CUDA GPU; use device cpu");
  const auto index = device.has_index() ? device.index() : c10::DeviceIndex{0};
  if (index >= count)
    throw ValueError("device " + name + ": there are only " + std::to_string(count) + " CUDA GPUs");
  return {device.type(), index};
}

DevicePruner::DevicePruner(c10::Device device)
    : device_(device), upload_(pool_stream(device)), compute_(pool_stream(device)), download_(pool_stream(device)) {}

DevicePruner::~DevicePruner() {
  try {
    for (const auto& stream : {upload_, compute_, download_}) stream.synchronize();
  } catch (...) {  // a failed device has no copy left to wait for; the run reports the first error
  }
}

DeviceWeight DevicePruner::upload(HostBuffer& input, const at::Tensor& like, const LayerStats& stats) {
  const c10::StreamGuard on(upload_);
  // Device tensors made here are used on the compute stream: record_stream keeps the caching
  // allocator from reusing them before the pruning is done. The statistics are small and stay
  // in the run's plan, so a non-blocking copy from pageable memory is safe; copied first, in
  // case staging them waits for the stream.
  const auto copy = [&](const at::Tensor& t) {
    if (!t.defined()) return t;
    auto on_device = t.to(t.options().device(device_), /*non_blocking=*/true, /*copy=*/true);
    on_device.record_stream(compute_);
    return on_device;
  };
  LayerStats on_device;  // what a mask recipe reads (the engine streams no Gram methods)
  on_device.in_norm = copy(stats.in_norm);
  on_device.in_mean = copy(stats.in_mean);
  on_device.in_var = copy(stats.in_var);
  on_device.out_norm = copy(stats.out_norm);
  on_device.column_norms = copy(stats.column_norms);
  auto weight = at::empty(like.sizes(), like.options().device(device_));
  weight.copy_(input.shaped_like(like), /*non_blocking=*/true);
  weight.record_stream(compute_);
  input.in_use = record(upload_);
  return {std::move(weight), std::move(on_device), record(upload_)};
}

void DevicePruner::prune(DeviceWeight uploaded, HostBuffer& output, const Recipe& recipe, std::string_view name) {
  uploaded.uploaded.block(compute_);
  at::Tensor pruned;
  {
    const c10::StreamGuard on(compute_);
    pruned = prune_weight(uploaded.weight, uploaded.stats, recipe, name);
  }
  record(compute_).block(download_);
  const c10::StreamGuard on(download_);
  output.shaped_like(pruned).copy_(pruned, /*non_blocking=*/true);
  pruned.record_stream(download_);
  output.in_use = record(download_);
}

}  // namespace symprune::detail
