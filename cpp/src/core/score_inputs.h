#pragma once
// A score's inputs: validation of its statistics, shared by score() and the fused row-local
// pruning, and the options a recipe scores (and refines) a weight with.

#include "symprune/dsnot.h"
#include "symprune/prune.h"
#include "symprune/score.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace symprune::detail {

// The statistic `name` that `method` needs: present, 1-D of `size` finite non-negative
// entries; returned as fp32 on the weight's device. Throws ValueError otherwise.
at::Tensor require_stat(const std::optional<at::Tensor>& stat, int64_t size, ScoreMethod method, const char* name,
                        const at::Tensor& weight);

// The recipe's score options with the weight's statistics (and column norms, where given).
ScoreOptions score_options(const Recipe& recipe, const LayerStats& stats);

// The refinement's inputs: `weight` (or a block of its rows), its mask and statistics, with the
// whole weight's column norms where given.
DsnotInputs dsnot_inputs(const at::Tensor& weight, const at::Tensor& keep, const LayerStats& stats,
                         std::optional<at::Tensor> initial_score = std::nullopt);

}  // namespace symprune::detail
