#include "symprune/stats.h"

#include "core/checks.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>

namespace symprune {

CrossStats::CrossStats(int64_t left_features, int64_t right_features) : left_(left_features), right_(right_features) {
  SYMPRUNE_CHECK(left_features > 0 && right_features > 0, "CrossStats: features must be positive, got ",
                 left_features, " and ", right_features);
}

void CrossStats::update(const at::Tensor& a, const at::Tensor& b) {
  SYMPRUNE_CHECK(a.defined() && a.dim() >= 1 && a.size(-1) == left_, "CrossStats.update: expected a of shape (..., ",
                 left_, "), got ", a.defined() ? a.sizes() : at::IntArrayRef{});
  SYMPRUNE_CHECK(b.defined() && b.dim() >= 1 && b.size(-1) == right_, "CrossStats.update: expected b of shape (..., ",
                 right_, "), got ", b.defined() ? b.sizes() : at::IntArrayRef{});
  SYMPRUNE_CHECK(at::isFloatingType(a.scalar_type()) && at::isFloatingType(b.scalar_type()),
                 "CrossStats.update: expected floating-point activations, got ", a.scalar_type(), " and ",
                 b.scalar_type());
  const int64_t tokens = a.numel() / left_;
  SYMPRUNE_CHECK(b.numel() / right_ == tokens, "CrossStats.update: a has ", tokens, " tokens but b has ",
                 b.numel() / right_);
  if (tokens == 0) return;
  if (!sum_.defined()) sum_ = at::zeros({left_, right_}, a.options().dtype(at::kDouble));
  const auto flat_a = a.reshape({tokens, left_}).to(sum_.device(), at::kFloat);
  const auto flat_b = b.reshape({tokens, right_}).to(sum_.device(), at::kFloat);
  sum_.add_(at::matmul(flat_a.t(), flat_b));
  tokens_ += tokens;
}

at::Tensor CrossStats::sum() const {
  SYMPRUNE_CHECK(tokens_ > 0, "CrossStats: the sum is undefined before any update() with at least one token");
  return sum_;
}

at::Tensor CrossStats::state() const {
  const auto sum = sum_.defined() ? sum_ : at::zeros({left_, right_}, at::TensorOptions().dtype(at::kDouble));
  return at::cat({sum.reshape(-1), at::full({1}, static_cast<double>(tokens_), sum.options())});
}

void CrossStats::load_state(const at::Tensor& state) {
  SYMPRUNE_CHECK(state.defined() && state.dim() == 1 && state.numel() == left_ * right_ + 1,
                 "CrossStats.load_state: expected ", left_ * right_ + 1, " entries");
  const auto wide = state.to(at::kDouble);
  sum_ = wide.narrow(0, 0, left_ * right_).reshape({left_, right_}).clone();
  tokens_ = static_cast<int64_t>(wide[-1].item<double>());
}

namespace {
int64_t gram_features(int64_t features) {
  SYMPRUNE_CHECK(features > 0, "GramStats: features must be positive, got ", features);
  return features;
}
}  // namespace

GramStats::GramStats(int64_t features) : products_(gram_features(features), features) {}

void GramStats::update(const at::Tensor& x) {
  SYMPRUNE_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == features(), "GramStats.update: expected shape (..., ",
                 features(), "), got ", x.defined() ? x.sizes() : at::IntArrayRef{});
  SYMPRUNE_CHECK(at::isFloatingType(x.scalar_type()), "GramStats.update: expected floating-point activations, got ",
                 x.scalar_type());
  products_.update(x, x);
}

at::Tensor GramStats::gram() const {
  SYMPRUNE_CHECK(tokens() > 0, "GramStats: the Gram is undefined before any update() with at least one token");
  return products_.sum();
}

void GramStats::load_state(const at::Tensor& state) {
  SYMPRUNE_CHECK(state.defined() && state.dim() == 1 && state.numel() == features() * features() + 1,
                 "GramStats.load_state: expected ", features() * features() + 1, " entries");
  products_.load_state(state);
}

}  // namespace symprune
