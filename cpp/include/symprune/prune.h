#pragma once
// Pruning one weight by a Recipe: score -> mask -> refinement, the single implementation that
// the Python pipeline, the streaming engine and C++ programs all run.

#include <ATen/core/Tensor.h>

#include "symprune/errors.h"
#include "symprune/export.h"
#include "symprune/mask.h"
#include "symprune/recipe.h"
#include "symprune/reconstruct.h"
#include "symprune/score.h"

#include <cstdint>
#include <optional>
#include <string_view>

namespace symprune {

// The calibration statistics of one weight (stats.h); undefined tensors where absent. A
// recipe says which it needs (Recipe::needs_input_stats and friends).
struct SYMPRUNE_API LayerStats {
  at::Tensor in_norm;   // (in_features)
  at::Tensor in_mean;   // (in_features), refinement only
  at::Tensor in_var;    // (in_features), refinement only
  at::Tensor out_norm;  // (out_features)
  at::Tensor gram;      // (in_features, in_features): X^T X of the inputs, sparsegpt and refit only
  // Target::Residual only (reconstruct.h residual_target): X~^T X of the inputs against the dense
  // model's, (in_features, in_features), and X~^T R against the residual stream's error where the
  // weight's output joins that stream, (in_features, out_features), undefined elsewhere.
  at::Tensor cross;
  at::Tensor residual_cross;
  // Not a statistic: the whole weight's column norms (column_norms()) where a block of its rows
  // is pruned by a score that reads them (ria, symmetric); taken from the weight when absent.
  at::Tensor column_norms;  // (in_features) fp64
};

struct SYMPRUNE_API Pruned {
  at::Tensor weight;  // the pruned copy: the input's shape, dtype and device; pruned entries +0
  at::Tensor keep;    // bool, true = kept
  // With recipe.permute: keep.index_select(1, *permutation) is N:M.
  std::optional<at::Tensor> permutation;
  int64_t refined = 0;  // mask entries the refinement changed
  int64_t iterations = 0;  // ADMM's iterations (admm()); 0 for other methods
};

// Prunes `weight` (out_features, in_features) by `recipe`, which must be valid: the score's
// mask (or SparseGPT's mask and weights), the refinement, then the update. `name` is the
// weight's name, matched against the recipe's refine_skip. The N:M refinement prunes by the
// score that built the mask. With sparsegpt, `keep` is where the result is non-zero. With the
// residual target all of it runs on residual_target()'s T instead of `weight` (the result in the
// weight's dtype). Throws ValueError for bad input (shapes, NaN/Inf, missing
// statistics); torch's own errors (e.g. out of GPU memory) pass through.
SYMPRUNE_API Pruned prune(const at::Tensor& weight, const LayerStats& stats, const Recipe& recipe,
                          std::string_view name = {});

// The pruned weight alone, into `out` (contiguous, the weight's shape, dtype and device, not
// overlapping it), with bounded temporaries: when rows are independent
// (Recipe::rows_independent) a CPU weight is pruned a row at a time with no score matrix or
// mask, and otherwise rows go in blocks of a few million elements. Equal to prune().weight.
SYMPRUNE_API at::Tensor& prune_into(const at::Tensor& weight, const LayerStats& stats, const Recipe& recipe,
                                    at::Tensor& out, std::string_view name = {});
// The same into a new tensor on the weight's device (prune()'s own result when the weight goes
// in one block, with no extra copy).
SYMPRUNE_API at::Tensor prune_weight(const at::Tensor& weight, const LayerStats& stats, const Recipe& recipe,
                                     std::string_view name = {});

// Score, mask and zeroing in one pass over each row, with no score matrix in between, for the
// scores whose row i depends only on row i of the weight and on statistics (MethodInfo::
// row_local: magnitude, wanda, symwanda, owanda). A large weight is pruned with a row of fp32
// scratch per thread instead of a score tensor and a mask the size of the weight.

// apply_mask(weight, unstructured_mask(score(weight, method, options), sparsity, Row)) into
// `out` (contiguous, the weight's shape and dtype, not overlapping it), with the same errors.
// CPU weights only.
SYMPRUNE_API at::Tensor& prune_row_local_out(const at::Tensor& weight, ScoreMethod method, const ScoreOptions& options,
                                double sparsity, at::Tensor& out);
// The same with nm_mask(score(...), nm).
SYMPRUNE_API at::Tensor& prune_row_local_nm_out(const at::Tensor& weight, ScoreMethod method, const ScoreOptions& options,
                                   NM nm, at::Tensor& out);

}  // namespace symprune
