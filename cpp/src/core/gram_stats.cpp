#include "symprune/stats.h"

#include "core/checks.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>

namespace symprune {

GramStats::GramStats(int64_t features) : features_(features) {
  SYMPRUNE_CHECK(features > 0, "GramStats: features must be positive, got ", features);
}

void GramStats::update(const at::Tensor& x) {
  SYMPRUNE_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == features_, "GramStats.update: expected shape (..., ",
                 features_, "), got ", x.defined() ? x.sizes() : at::IntArrayRef{});
  SYMPRUNE_CHECK(at::isFloatingType(x.scalar_type()), "GramStats.update: expected floating-point activations, got ",
                 x.scalar_type());
  const int64_t tokens = x.numel() / features_;
  if (tokens == 0) return;
  // The sum stays on the activations' device (a GPU computes its own products).
  if (!sum_.defined()) sum_ = at::zeros({features_, features_}, x.options().dtype(at::kDouble));
  const auto flat = x.reshape({tokens, features_}).to(sum_.device(), at::kFloat);
  sum_.add_(at::matmul(flat.t(), flat));
  tokens_ += tokens;
}

at::Tensor GramStats::gram() const {
  SYMPRUNE_CHECK(tokens_ > 0, "GramStats: the Gram is undefined before any update() with at least one token");
  return sum_;
}

at::Tensor GramStats::state() const {
  const auto sum = sum_.defined() ? sum_ : at::zeros({features_, features_}, at::TensorOptions().dtype(at::kDouble));
  return at::cat({sum.reshape(-1), at::full({1}, static_cast<double>(tokens_), sum.options())});
}

void GramStats::load_state(const at::Tensor& state) {
  SYMPRUNE_CHECK(state.defined() && state.dim() == 1 && state.numel() == features_ * features_ + 1,
                 "GramStats.load_state: expected ", features_ * features_ + 1, " entries");
  const auto wide = state.to(at::kDouble);
  sum_ = wide.narrow(0, 0, features_ * features_).reshape({features_, features_}).clone();
  tokens_ = static_cast<int64_t>(wide[-1].item<double>());
}

}  // namespace symprune
