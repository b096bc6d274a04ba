#include "symprune/stats.h"

#include "core/checks.h"

#include <c10/util/Exception.h>

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <vector>

namespace symprune {

ActivationStats::ActivationStats(int64_t features) : features_(features) {
  SYMPRUNE_CHECK(features > 0, "ActivationStats: features must be positive, got ", features);
  auto options = at::TensorOptions().dtype(at::kDouble);
  sum_sq_ = at::zeros({features}, options);
  sum_ = at::zeros({features}, options);
  weighted_var_ = at::zeros({features}, options);
}

namespace {

// Adds one update's per-feature sum, sum of squares and tokens x population variance to
// the fp64 accumulators. Two passes over the update (sums, then squared deviations from
// its own mean) keep the variance exact where the mean is large against the spread.
template <typename scalar_t>
void accumulate(const scalar_t* x, int64_t tokens, int64_t features, double* sum, double* sum_sq,
                double* weighted_var) {
  std::vector<double> local_sum(features, 0.0), deviation(features, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    const scalar_t* row = x + t * features;
    for (int64_t f = 0; f < features; ++f) {
      const double v = static_cast<double>(static_cast<float>(row[f]));
      local_sum[f] += v;
      sum_sq[f] += v * v;
    }
  }
  const double n = static_cast<double>(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    const scalar_t* row = x + t * features;
    for (int64_t f = 0; f < features; ++f) {
      const double centred = static_cast<double>(static_cast<float>(row[f])) - local_sum[f] / n;
      deviation[f] += centred * centred;
    }
  }
  for (int64_t f = 0; f < features; ++f) {
    sum[f] += local_sum[f];
    weighted_var[f] += deviation[f];  // tokens * (deviation / tokens)
  }
}

}  // namespace

void ActivationStats::update(const at::Tensor& x) {
  SYMPRUNE_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == features_,
                    "ActivationStats.update: expected shape (..., ", features_, "), got ",
                    x.defined() ? x.sizes() : at::IntArrayRef{});
  SYMPRUNE_CHECK(at::isFloatingType(x.scalar_type()),
                    "ActivationStats.update: expected floating-point activations, got ",
                    x.scalar_type());
  const int64_t tokens = x.numel() / features_;
  if (tokens == 0) return;
  const int64_t sequences = x.dim() >= 3 ? tokens / x.size(-2) : 1;
  // Activations may live anywhere (e.g. CUDA); the accumulators are fp64 on the CPU.
  const at::Tensor flat = x.reshape({tokens, features_}).to(at::kCPU).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat.scalar_type(), "ActivationStats.update", [&] {
    accumulate(flat.const_data_ptr<scalar_t>(), tokens, features_, sum_.mutable_data_ptr<double>(),
               sum_sq_.mutable_data_ptr<double>(), weighted_var_.mutable_data_ptr<double>());
  });
  tokens_ += tokens;
  sequences_ += sequences;
}

void ActivationStats::require_data(const char* what) const {
  SYMPRUNE_CHECK(tokens_ > 0, "ActivationStats: ", what,
                    " is undefined before any update() with at least one token");
}

at::Tensor ActivationStats::in_sq() const {
  require_data("sum_sq");
  return sum_sq_.to(at::kFloat);
}

at::Tensor ActivationStats::in_norm() const {
  require_data("norm");
  return at::sqrt(sum_sq_ / static_cast<double>(sequences_)).to(at::kFloat);
}

at::Tensor ActivationStats::in_mean() const {
  require_data("mean");
  return (sum_ / static_cast<double>(sequences_)).to(at::kFloat);
}

at::Tensor ActivationStats::in_var() const {
  require_data("var");
  return (weighted_var_ / static_cast<double>(tokens_)).to(at::kFloat);
}

at::Tensor ActivationStats::state() const {
  const auto counts = at::tensor({static_cast<double>(tokens_), static_cast<double>(sequences_)},
                                 at::TensorOptions().dtype(at::kDouble));
  return at::cat({sum_sq_, sum_, weighted_var_, counts});
}

void ActivationStats::load_state(const at::Tensor& state) {
  SYMPRUNE_CHECK(state.defined() && state.dim() == 1 && state.numel() == 3 * features_ + 2,
                 "ActivationStats.load_state: expected ", 3 * features_ + 2, " entries");
  const auto wide = state.to(at::kCPU, at::kDouble).contiguous();
  sum_sq_ = wide.narrow(0, 0, features_).clone();
  sum_ = wide.narrow(0, features_, features_).clone();
  weighted_var_ = wide.narrow(0, 2 * features_, features_).clone();
  tokens_ = static_cast<int64_t>(wide[3 * features_].item<double>());
  sequences_ = static_cast<int64_t>(wide[3 * features_ + 1].item<double>());
}

}  // namespace symprune
