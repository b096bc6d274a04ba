#pragma once
// Validation of a score's statistics, shared by score() and the fused row-local pruning.

#include "symprune/score.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace symprune::detail {

// The statistic `name` that `method` needs: present, 1-D of `size` finite non-negative
// entries; returned as fp32 on the weight's device. Throws ValueError otherwise.
at::Tensor require_stat(const std::optional<at::Tensor>& stat, int64_t size, ScoreMethod method, const char* name,
                        const at::Tensor& weight);

}  // namespace symprune::detail
