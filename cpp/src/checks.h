#pragma once
// Input validation shared by the core's entry points. Every failure throws c10::ValueError
// (Python: ValueError) with a message that names the argument and what was expected.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace symprune::detail {

// A 2-D floating-point matrix with finite entries (check_values=false: callers that find
// NaN/Inf in a pass of their own).
void check_matrix(const at::Tensor& t, const char* name, bool check_values = true);
// A 1-D floating-point vector of `size` finite entries.
void check_vector(const at::Tensor& t, int64_t size, const char* name);
// Same shape and device as `like`, dtype bool.
void check_mask(const at::Tensor& mask, const at::Tensor& like, const char* name);
void check_finite(const at::Tensor& t, const char* name);
// `out` of an *_out function: contiguous, the shape, dtype and device of `like`, not
// overlapping it.
void check_out(const at::Tensor& out, const at::Tensor& like);

}  // namespace symprune::detail
