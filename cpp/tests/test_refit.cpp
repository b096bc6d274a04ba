#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "core/refit_from.h"

namespace {

struct Problem {
  at::Tensor w, k, h, h_inv;
};

// A random layer, a 50 % support, and a damped Gram that the conjugate gradient finds hard: fewer
// tokens than inputs, inputs of very uneven scales, light damping (tens of iterations).
Problem problem() {
  at::manual_seed(11);
  const int64_t rows = 8, cols = 400;
  const auto x = at::randn({200, cols}, at::kDouble) * at::rand({cols}, at::kDouble).mul(5).exp();
  auto h = x.t().matmul(x);
  h.diagonal().add_(1e-3 * h.diagonal().mean());
  return {at::randn({rows, cols}, at::kDouble), (at::rand({rows, cols}) < 0.5).to(at::kDouble), h, at::inverse(h)};
}

at::Tensor row_objective(const Problem& p, const at::Tensor& v) {
  const auto d = p.w - v;
  return (d.matmul(p.h) * d).sum(1, /*keepdim=*/true);
}

}  // namespace

// The race against a rival's objective: rows whose optimum is worse than the rival are reported
// beaten, and a row is never reported beaten while its optimum is better (the lower bound f - r^T z
// holds), so those rows come back fully refitted.
TEST(Refit, RaceReportsOnlyRowsProvenWorse) {
  const auto p = problem();
  const auto exact = symprune::detail::refit_from(p.w, p.k, p.h, p.h_inv, p.w * p.k);
  const auto optimum = row_objective(p, exact);

  at::Tensor beaten;
  const auto slightly_worse_rival = optimum * 1.01;  // the refit wins every row, narrowly
  const auto won = symprune::detail::refit_from(p.w, p.k, p.h, p.h_inv, p.w * p.k, slightly_worse_rival, &beaten);
  EXPECT_FALSE(beaten.any().item<bool>());
  EXPECT_TRUE(at::allclose(won, exact, 1e-9, 1e-9));

  const auto far_better_rival = optimum * 0.5;  // every row loses
  symprune::detail::refit_from(p.w, p.k, p.h, p.h_inv, p.w * p.k, far_better_rival, &beaten);
  EXPECT_TRUE(beaten.all().item<bool>());

  auto mixed = optimum * 1.01;  // even rows lose, odd rows win
  mixed.slice(0, 0, mixed.size(0), 2).mul_(0.5 / 1.01);
  const auto mixed_result = symprune::detail::refit_from(p.w, p.k, p.h, p.h_inv, p.w * p.k, mixed, &beaten);
  const auto odd = at::arange(mixed.size(0)).remainder(2).eq(1).unsqueeze(1);
  EXPECT_TRUE(at::equal(beaten, odd.logical_not()));
  const auto odd_rows = at::arange(1, mixed.size(0), 2);
  EXPECT_TRUE(at::allclose(mixed_result.index_select(0, odd_rows), exact.index_select(0, odd_rows), 1e-9, 1e-9));
}
