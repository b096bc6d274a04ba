#pragma once
// OWL, outlier-weighed layerwise sparsity (Yin et al., 2024): blocks with more outlier
// activations-times-weights keep more of their weights, and the model-wide sparsity stays the
// target. The pipeline measures each block's outlier ratio on the dense model, then prunes block b
// with the recipe at owl_sparsities(...)[b].

#include "symprune/export.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace symprune {

struct SYMPRUNE_API OwlOptions {
  double outlier_multiple = 5.0;  // M: an entry is an outlier above M times the block's mean
  double lambda = 0.08;           // the spread: block sparsities lie within target -/+ 2*lambda
};

// What outlier_ratio counts over one block's Linears: the outliers and all entries.
struct SYMPRUNE_API OutlierCount {
  int64_t outliers = 0;
  int64_t entries = 0;
  double ratio() const { return entries > 0 ? static_cast<double>(outliers) / static_cast<double>(entries) : 0.0; }
};

// The entries of A = |W| * in_norm (in_norm[j] = ||X_j||, per input column) over all given weights
// together that exceed outlier_multiple times the mean of A over those weights. Computed in fp64,
// a block of rows at a time. ValueError for mismatched shapes, NaN/Inf or negative norms.
SYMPRUNE_API OutlierCount count_outliers(const std::vector<at::Tensor>& weights,
                                         const std::vector<at::Tensor>& in_norms, double outlier_multiple);

// Block sparsities from the blocks' outlier ratios D: S - (D~ - mean D~), where D~ is D min-max
// scaled to [0, 2*lambda] (all equal ratios: every block gets S). Their mean is S. ValueError if one
// leaves [0, 1), naming the block and suggesting a smaller lambda.
SYMPRUNE_API std::vector<double> owl_sparsities(const std::vector<double>& ratios, double sparsity,
                                                const OwlOptions& options);

// ValueError unless outlier_multiple > 0 and lambda >= 0 (both finite).
SYMPRUNE_API void check_owl_options(const OwlOptions& options);

}  // namespace symprune
