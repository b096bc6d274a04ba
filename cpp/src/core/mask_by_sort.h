#pragma once
// Masks computed where the scores are, for scores on an accelerator: a stable ascending sort
// prunes the first k of each row, group or layer. This is the definition of the masks
// (docs/semantics.md#masks), so the result equals the CPU selection of mask.cpp element for element;
// on the CPU that selection is faster and needs no index tensor.

#include "symprune/mask.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace symprune::detail {

// Each row loses its k lowest scores.
at::Tensor row_mask_by_sort(const at::Tensor& score, int64_t k);
// The whole matrix loses its k lowest scores, ties in row-major order.
at::Tensor layer_mask_by_sort(const at::Tensor& score, int64_t k);
// Each run of m consecutive columns keeps its n highest scores.
at::Tensor nm_mask_by_sort(const at::Tensor& score, NM nm);

}  // namespace symprune::detail
