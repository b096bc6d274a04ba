#pragma once
// Score, mask and zeroing in one pass over each row, with no score matrix in between, for the
// scores whose row i depends only on row i of the weight and on statistics (is_row_local:
// magnitude, wanda, symwanda, owanda). A large weight is pruned with a row of fp32 scratch
// per thread instead of a score tensor and a mask the size of the weight.

#include <ATen/core/Tensor.h>

#include "symprune/mask.h"
#include "symprune/score.h"

namespace symprune {

bool is_row_local(ScoreMethod method);

// apply_mask(weight, unstructured_mask(score(weight, method, options), sparsity, Row)) into
// `out` (contiguous, the weight's shape and dtype, not overlapping it), with the same errors.
// CPU weights only.
at::Tensor& prune_row_local_out(const at::Tensor& weight, ScoreMethod method, const ScoreOptions& options,
                                double sparsity, at::Tensor& out);
// The same with nm_mask(score(...), nm).
at::Tensor& prune_row_local_nm_out(const at::Tensor& weight, ScoreMethod method, const ScoreOptions& options,
                                   NM nm, at::Tensor& out);

}  // namespace symprune
