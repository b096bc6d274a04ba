#pragma once
// The pruning of one weight in the streaming engine, from the run's options and the weight's
// statistics.

#include "stream_plan.h"

#include "symprune/stream.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace symprune::detail {

// Score, mask and DSnoT over the whole of `weight`, on its device; returns the pruned copy.
at::Tensor prune_whole(const at::Tensor& weight, const StreamOptions& o, const WeightStats& stats);

// Prunes `weight` into `out` (contiguous, same shape, dtype and device) with bounded
// temporaries where rows are independent, however large the weight.
void prune_weight_into(const at::Tensor& weight, const StreamOptions& o, const WeightStats& stats, at::Tensor& out);

// The same into a new tensor on the weight's device: prune_whole's result itself when the
// weight is pruned in one block.
at::Tensor prune_weight(const at::Tensor& weight, const StreamOptions& o, const WeightStats& stats);

// Zeros (+0 or -0) of a contiguous floating-point CPU tensor.
int64_t count_zeros(const at::Tensor& t);

}  // namespace symprune::detail
