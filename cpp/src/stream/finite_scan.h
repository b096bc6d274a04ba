#pragma once
// The NaN/Inf scan of weights before a streaming run writes anything: one vectorised pass on the
// mapped bytes, rather than at::isfinite, which builds a bool tensor and then reduces it.

#include "symprune/safetensors.h"

#include <cstddef>
#include <span>

namespace symprune::detail {

// False if any element of the floating-point `dtype` in `bytes` is NaN or ±Inf (its exponent
// bits all ones); true for other dtypes.
bool all_finite(std::span<const std::byte> bytes, safetensors::Dtype dtype);

}  // namespace symprune::detail
