// OWL: per-block outlier ratios of |W| * ||X_j|| and the block sparsities they give.
#include "symprune/owl.h"

#include "core/checks.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/count_nonzero.h>
#include <ATen/ops/sum.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

namespace symprune {
namespace {

// Rows per fp64 slab: bounds the temporary to ~64 MB for the widest layers.
int64_t rows_per_slab(int64_t cols) { return std::max<int64_t>(1, (int64_t{8} << 20) / std::max<int64_t>(cols, 1)); }

// Calls fn(slab of |W| * in_norm in fp64) for consecutive row slabs of `weight`.
template <typename Fn>
void for_each_slab(const at::Tensor& weight, const at::Tensor& norm, Fn&& fn) {
  const int64_t step = rows_per_slab(weight.size(1));
  for (int64_t r = 0; r < weight.size(0); r += step) {
    const auto rows = weight.narrow(0, r, std::min(step, weight.size(0) - r));
    fn(rows.to(at::kDouble).abs_() * norm);
  }
}

}  // namespace

void check_owl_options(const OwlOptions& options) {
  SYMPRUNE_CHECK(std::isfinite(options.outlier_multiple) && options.outlier_multiple > 0,
                 "OWL's outlier multiple M must be > 0, got ", options.outlier_multiple);
  SYMPRUNE_CHECK(std::isfinite(options.lambda) && options.lambda >= 0, "OWL's lambda must be >= 0, got ",
                 options.lambda);
}

OutlierCount count_outliers(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& in_norms,
                            double outlier_multiple) {
  SYMPRUNE_CHECK(weights.size() == in_norms.size(), "count_outliers: ", weights.size(), " weights but ",
                 in_norms.size(), " input norms");
  SYMPRUNE_CHECK(!weights.empty(), "count_outliers needs at least one weight");
  check_owl_options(OwlOptions{outlier_multiple, 0.0});
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  OutlierCount count;
  for (size_t i = 0; i < weights.size(); ++i) {
    detail::check_matrix(weights[i], "weight");
    detail::check_vector(in_norms[i], weights[i].size(1), "in_norm");
    SYMPRUNE_CHECK(!(in_norms[i] < 0).any().item<bool>(), "in_norm must be >= 0 (a norm)");
    norms.push_back(in_norms[i].to(weights[i].device(), at::kDouble));
    count.entries += weights[i].numel();
  }
  // First pass: the mean of |W| * norm over every entry of the block.
  double total = 0;
  for (size_t i = 0; i < weights.size(); ++i)
    for_each_slab(weights[i], norms[i], [&](const at::Tensor& a) { total += a.sum().item<double>(); });
  const double threshold = outlier_multiple * (total / static_cast<double>(count.entries));
  // Second pass: how many lie above M times that mean.
  for (size_t i = 0; i < weights.size(); ++i)
    for_each_slab(weights[i], norms[i],
                  [&](const at::Tensor& a) { count.outliers += at::count_nonzero(a > threshold).item<int64_t>(); });
  return count;
}

std::vector<double> owl_sparsities(const std::vector<double>& ratios, double sparsity, const OwlOptions& options) {
  check_sparsity(sparsity);
  check_owl_options(options);
  SYMPRUNE_CHECK(!ratios.empty(), "OWL needs the outlier ratio of at least one block");
  for (double d : ratios) SYMPRUNE_CHECK(std::isfinite(d) && d >= 0 && d <= 1, "outlier ratios lie in [0, 1], got ", d);
  const auto [lo, hi] = std::minmax_element(ratios.begin(), ratios.end());
  std::vector<double> scaled(ratios.size(), 0.0);
  if (*hi > *lo)
    for (size_t b = 0; b < ratios.size(); ++b) scaled[b] = (ratios[b] - *lo) / (*hi - *lo) * 2 * options.lambda;
  const double mean = std::accumulate(scaled.begin(), scaled.end(), 0.0) / static_cast<double>(scaled.size());
  std::vector<double> out(ratios.size());
  for (size_t b = 0; b < ratios.size(); ++b) {
    out[b] = sparsity - (scaled[b] - mean);
    SYMPRUNE_CHECK(out[b] >= 0 && out[b] < 1, "OWL gives block ", b, " sparsity ", out[b],
                   ", outside [0, 1): use a smaller lambda (", options.lambda, ") for sparsity ", sparsity);
  }
  return out;
}

}  // namespace symprune
