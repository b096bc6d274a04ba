#include "symprune/stats.h"

#include "checks.h"

#include <c10/util/Exception.h>

#include <ATen/TensorOperators.h>

#include <ATen/ops/sqrt.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/var.h>
#include <ATen/ops/zeros.h>

namespace symprune {

ActivationStats::ActivationStats(int64_t features) : features_(features) {
  TORCH_CHECK_VALUE(features > 0, "ActivationStats: features must be positive, got ", features);
  auto options = at::TensorOptions().dtype(at::kDouble);
  sum_sq_ = at::zeros({features}, options);
  sum_ = at::zeros({features}, options);
  weighted_var_ = at::zeros({features}, options);
}

void ActivationStats::update(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.defined() && x.dim() >= 1 && x.size(-1) == features_,
                    "ActivationStats.update: expected shape (..., ", features_, "), got ",
                    x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()),
                    "ActivationStats.update: expected floating-point activations, got ",
                    x.scalar_type());
  const int64_t tokens = x.numel() / features_;
  if (tokens == 0) return;
  const int64_t sequences = x.dim() >= 3 ? tokens / x.size(-2) : 1;
  // fp64 on the statistics' device; activations may live anywhere (e.g. CUDA).
  const at::Tensor flat = x.reshape({tokens, features_}).to(sum_.device(), at::kDouble);
  sum_sq_.add_(flat.square().sum(0));
  sum_.add_(flat.sum(0));
  weighted_var_.add_(at::var(flat, at::IntArrayRef{0}, /*unbiased=*/false), static_cast<double>(tokens));
  tokens_ += tokens;
  sequences_ += sequences;
}

void ActivationStats::require_data(const char* what) const {
  TORCH_CHECK_VALUE(tokens_ > 0, "ActivationStats: ", what,
                    " is undefined before any update() with at least one token");
}

at::Tensor ActivationStats::sum_sq() const {
  require_data("sum_sq");
  return sum_sq_.to(at::kFloat);
}

at::Tensor ActivationStats::norm() const {
  require_data("norm");
  return at::sqrt(sum_sq_ / static_cast<double>(sequences_)).to(at::kFloat);
}

at::Tensor ActivationStats::mean() const {
  require_data("mean");
  return (sum_ / static_cast<double>(sequences_)).to(at::kFloat);
}

at::Tensor ActivationStats::var() const {
  require_data("var");
  return (weighted_var_ / static_cast<double>(tokens_)).to(at::kFloat);
}

}  // namespace symprune
