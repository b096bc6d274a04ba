#pragma once
// A tensor over the bytes of a memory-mapped file, without a copy, for the streaming engine:
// read-only (an in-place op would fault) and valid only while the reader lives, which is why
// it is not public (load_tensor in tensors.h is the owning alternative).

#include "symprune/safetensors.h"

#include <ATen/core/Tensor.h>

namespace symprune::detail {

at::Tensor tensor_view(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor);

}  // namespace symprune::detail
