#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace symprune::detail {

// Zeros (+0 or -0) of a contiguous floating-point CPU tensor, for the run's report.
int64_t count_zeros(const at::Tensor& t);

}  // namespace symprune::detail
