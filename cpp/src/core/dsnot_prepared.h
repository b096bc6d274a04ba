#pragma once
// The validated, fp32 inputs of a DSnoT refinement and the two ways of running it:
// row by row on the CPU (dsnot_rows.cpp) or all rows at once with tensor ops on any device
// (dsnot_batched.cpp), which is the path CUDA tensors take.

#include <ATen/core/Tensor.h>

#include "symprune/dsnot.h"

namespace symprune::detail {

struct DsnotPrepared {
  at::Tensor w, mean, var_denominator, norm;  // fp32, contiguous, on the compute device
  at::Tensor grow_key, prune_key, phi;        // undefined = default metric / boundary off
};

// Both take the initial keep mask on the compute device and return the refined one.
at::Tensor refine_rows(const DsnotPrepared& prepared, const at::Tensor& keep, const DsnotOptions& options);
at::Tensor refine_batched(const DsnotPrepared& prepared, const at::Tensor& keep, const DsnotOptions& options);

}  // namespace symprune::detail
