#pragma once
// Pruning masks from scores (docs/semantics.md#masks). Masks are bool tensors, true = kept, on the
// device of the scores (computed there).
// Every selection is exact and deterministic: the lowest scores are pruned, ties broken by
// the lower index first (what a stable ascending sort gives).

#include "symprune/errors.h"
#include "symprune/export.h"
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

namespace symprune {

enum class MaskGroup { Row, Layer };

struct SYMPRUNE_API NM {
  int64_t n;  // kept per group
  int64_t m;  // group size (consecutive input columns)
};

// How many of `count` entries a sparsity prunes: floor(count * sparsity), computed as Python's
// int(count * sparsity) is (the product rounded to double first). Every method counts this way.
SYMPRUNE_API int64_t pruned_count(int64_t count, double sparsity);

// Unstructured: each row (Row) or the whole matrix (Layer) loses exactly
// pruned_count(count, sparsity) entries.
SYMPRUNE_API at::Tensor unstructured_mask(const at::Tensor& score, double sparsity, MaskGroup group);

// N:M: in each run of m consecutive columns of a row, the n highest scores are kept.
SYMPRUNE_API at::Tensor nm_mask(const at::Tensor& score, NM nm);

// RIA's channel permutation for N:M. Returns (mask, permutation): the mask is in the
// original column order and mask.index_select(1, permutation) is N:M. Whoever runs the
// pruned layer must feed it inputs permuted the same way.
SYMPRUNE_API std::pair<at::Tensor, at::Tensor> permuted_nm_mask(const at::Tensor& score, NM nm);

// The permutation alone: column importance (column sums of score) ascending, dealt into the
// m positions of each group in snake order.
SYMPRUNE_API at::Tensor channel_permutation(const at::Tensor& score, int64_t m);

// Magnitude pruning straight from the weight: the same masks as unstructured_mask/nm_mask of
// score(weight, Magnitude), but fp16/bf16 weights on the CPU are ranked by their bit patterns
// (|x| orders as its 15 low bits) with no fp32 score in between. Row groups and N:M only take
// the fast path; other cases go through score().
SYMPRUNE_API at::Tensor magnitude_unstructured_mask(const at::Tensor& weight, double sparsity, MaskGroup group);
SYMPRUNE_API at::Tensor magnitude_nm_mask(const at::Tensor& weight, NM nm);
// apply_mask(weight, magnitude_unstructured_mask(...)) in one pass over 16-bit weights.
SYMPRUNE_API at::Tensor magnitude_prune(const at::Tensor& weight, double sparsity, MaskGroup group);
// The same into `out` (contiguous, the weight's shape, dtype and device, not overlapping it),
// so that a caller pruning many weights can reuse one buffer.
SYMPRUNE_API at::Tensor& magnitude_prune_out(const at::Tensor& weight, double sparsity, MaskGroup group, at::Tensor& out);

// A copy of `weight` with every entry not kept set to +0, what masked_fill(~keep, 0) gives.
SYMPRUNE_API at::Tensor apply_mask(const at::Tensor& weight, const at::Tensor& keep);

// Validation shared with the bindings and the pipeline; they throw ValueError.
SYMPRUNE_API void check_sparsity(double sparsity);
SYMPRUNE_API void check_nm(NM nm, int64_t in_features);

}  // namespace symprune
