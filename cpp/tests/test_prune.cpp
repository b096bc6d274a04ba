#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "symprune/prune.h"

using namespace symprune;

namespace {

Recipe wanda_2_4(bool refine) {
  RecipeArgs args;
  args.method = "wanda";
  args.nm = NM{2, 4};
  if (refine) args.refine = "dsnot";
  return make_recipe(args);
}

LayerStats random_stats(int64_t in) {
  return {at::rand({in}) + 0.1, at::randn({in}), at::rand({in}) + 0.1, at::Tensor()};
}

}  // namespace

// The composed entry point equals its parts: score -> mask -> DSnoT with the N:M rule
// (initial_score = the score that built the mask) -> apply_mask.
TEST(Prune, EqualsItsParts) {
  at::manual_seed(3);
  const auto weight = at::randn({16, 32});
  const auto stats = random_stats(32);
  const auto recipe = wanda_2_4(true);
  const auto result = prune(weight, stats, recipe);
  ScoreOptions so;
  so.in_norm = stats.in_norm;
  const auto scores = score(weight, ScoreMethod::Wanda, so);
  const auto keep0 = nm_mask(scores, {2, 4});
  DsnotOptions options;
  options.nm = NM{2, 4};
  const auto keep = dsnot({weight, keep0, stats.in_norm, stats.in_mean, stats.in_var, scores}, options);
  EXPECT_TRUE(at::equal(result.keep, keep));
  EXPECT_TRUE(at::equal(result.weight, apply_mask(weight, keep)));
  EXPECT_EQ(result.refined, at::ne(keep, keep0).sum().item<int64_t>());
  EXPECT_FALSE(result.permutation.has_value());
}

// A weight over the block size is pruned a block of rows at a time (the streaming engine's and
// the GPU's path, run here on CPU tensors); the result must equal pruning the whole weight.
TEST(Prune, BlocksOfRowsEqualTheWholeWeight) {
  at::manual_seed(7);
  const auto weight = (at::randn({1100, 4096}) * 0.02).to(at::kBFloat16);  // 4.5 M elements: 2 blocks
  const auto stats = random_stats(4096);
  for (bool refine : {false, true}) {
    const auto recipe = wanda_2_4(refine);
    const auto whole = prune(weight, stats, recipe).weight;
    EXPECT_TRUE(at::equal(prune_weight(weight, stats, recipe), whole)) << "refine " << refine;
    auto out = at::empty_like(weight);
    prune_into(weight, stats, recipe, out);
    EXPECT_TRUE(at::equal(out, whole)) << "refine " << refine;
  }
  // Column-norm scores are pruned whole.
  RecipeArgs ria;
  ria.method = "ria";
  ria.sparsity = 0.5;
  const auto small = weight.narrow(0, 0, 8).contiguous();
  const auto recipe = make_recipe(ria);
  EXPECT_TRUE(at::equal(prune_weight(small, stats, recipe), prune(small, stats, recipe).weight));
}

TEST(Prune, SkippedNamesAreNotRefined) {
  at::manual_seed(5);
  const auto weight = at::randn({8, 16});
  const auto stats = random_stats(16);
  RecipeArgs args;
  args.method = "wanda";
  args.sparsity = 0.5;
  args.refine = "dsnot";
  args.refine_options = {{"skip", std::string("mlp")}, {"threshold", 0.0}};
  const auto recipe = make_recipe(args);
  const auto skipped = prune(weight, stats, recipe, "model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(skipped.refined, 0);
  ScoreOptions so;
  so.in_norm = stats.in_norm;
  EXPECT_TRUE(at::equal(skipped.keep, unstructured_mask(score(weight, ScoreMethod::Wanda, so), 0.5, MaskGroup::Row)));
  EXPECT_TRUE(recipe.refines("model.layers.0.self_attn.q_proj.weight"));
}

TEST(Prune, MissingStatisticsAreValueErrors) {
  const auto weight = at::randn({4, 8});
  EXPECT_THROW(prune(weight, {}, wanda_2_4(false)), ValueError);
  LayerStats norm_only{at::rand({8}), {}, {}, {}};
  EXPECT_THROW(prune(weight, norm_only, wanda_2_4(true)), ValueError);  // DSnoT needs in_mean, in_var
  auto out = at::empty_like(weight);
  EXPECT_THROW(prune_into(weight, {}, wanda_2_4(false), out), ValueError);
}

TEST(Prune, PermutedMaskIsNMInPermutedOrder) {
  at::manual_seed(11);
  const auto weight = at::randn({6, 16});
  RecipeArgs args;
  args.method = "magnitude";
  args.nm = NM{2, 4};
  args.permute = true;
  const auto result = prune(weight, {}, make_recipe(args));
  ASSERT_TRUE(result.permutation.has_value());
  const auto grouped = result.keep.index_select(1, *result.permutation).reshape({6, 4, 4});
  EXPECT_TRUE(at::equal(grouped.sum(-1), at::full({6, 4}, 2, at::kLong)));
}

// The residual target through the C++ API: the recipe runs on residual_target()'s T, the result
// comes back in the weight's dtype, and the cross-products are required and checked.
TEST(Prune, ResidualTargetRunsTheRecipeOnTheTargetWeights) {
  at::manual_seed(5);
  const auto pruned_inputs = at::randn({200, 32}, at::kDouble);
  const auto dense_inputs = pruned_inputs + 0.2 * at::randn({200, 32}, at::kDouble);
  const auto weight = at::randn({8, 32}).to(at::kBFloat16);
  LayerStats stats;
  stats.gram = pruned_inputs.t().matmul(pruned_inputs);
  stats.cross = pruned_inputs.t().matmul(dense_inputs);
  stats.residual_cross = pruned_inputs.t().matmul(at::randn({200, 8}, at::kDouble));
  RecipeArgs args;
  args.method = "sparsegpt";
  args.nm = NM{2, 4};
  const auto layer = make_recipe(args);
  args.target = "residual";
  const auto residual = make_recipe(args);
  EXPECT_TRUE(residual.needs_cross());
  EXPECT_NE(residual.to_json(), layer.to_json());

  const auto result = prune(weight, stats, residual);
  const auto target = residual_target(weight, stats.gram, stats.cross, stats.residual_cross, residual.percdamp);
  EXPECT_EQ(target.scalar_type(), at::kFloat);
  EXPECT_EQ(result.weight.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(result.weight, prune(target, stats, layer).weight.to(at::kBFloat16)));

  LayerStats no_cross = stats;
  no_cross.cross = at::Tensor();
  EXPECT_THROW(prune(weight, no_cross, residual), ValueError);
  LayerStats wrong = stats;
  wrong.residual_cross = at::zeros({32, 7});
  EXPECT_THROW(prune(weight, wrong, residual), ValueError);
  args.method = "wanda";  // a mask alone solves no weights
  EXPECT_THROW(make_recipe(args), ValueError);
}
