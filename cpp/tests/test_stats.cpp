#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "symprune/stats.h"

using symprune::ActivationStats;

TEST(ActivationStats, MatchesDefinitionsPerSequence) {
  at::manual_seed(0);
  auto x = at::randn({3, 5, 4}, at::kDouble) + 2.0;
  ActivationStats stats(4);
  for (int64_t s = 0; s < 3; ++s) stats.update(x[s].to(at::kHalf).to(at::kFloat));
  auto xf = x.to(at::kHalf).to(at::kDouble);
  EXPECT_EQ(stats.sequences(), 3);
  EXPECT_EQ(stats.tokens(), 15);
  EXPECT_TRUE(at::allclose(stats.in_sq(), xf.square().sum({0, 1}).to(at::kFloat)));
  EXPECT_TRUE(at::allclose(stats.in_norm(), (xf.square().sum({0, 1}) / 3).sqrt().to(at::kFloat)));
  EXPECT_TRUE(at::allclose(stats.in_mean(), (xf.sum({0, 1}) / 3).to(at::kFloat)));
  auto per_sequence_var = at::var(xf, at::IntArrayRef{1}, /*unbiased=*/false).mean(0);
  EXPECT_TRUE(at::allclose(stats.in_var(), per_sequence_var.to(at::kFloat)));
}

TEST(ActivationStats, BatchCountsSequencesAndPoolsVariance) {
  auto x = at::arange(24, at::kFloat).reshape({2, 3, 4});
  ActivationStats stats(4);
  stats.update(x);
  EXPECT_EQ(stats.sequences(), 2);
  EXPECT_TRUE(at::allclose(stats.in_var(), at::var(x.reshape({6, 4}), at::IntArrayRef{0}, false)));
}

TEST(ActivationStats, RejectsBadInput) {
  EXPECT_THROW(ActivationStats(0), symprune::ValueError);
  ActivationStats stats(4);
  EXPECT_THROW(stats.in_norm(), symprune::ValueError);
  EXPECT_THROW(stats.update(at::zeros({2, 3})), symprune::ValueError);
  EXPECT_THROW(stats.update(at::zeros({2, 4}, at::kLong)), symprune::ValueError);
}
