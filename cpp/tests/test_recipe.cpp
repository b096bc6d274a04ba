#include <gtest/gtest.h>

#include "symprune/recipe.h"

using namespace symprune;

namespace {

RecipeArgs wanda(double sparsity) {
  RecipeArgs args;
  args.method = "wanda";
  args.sparsity = sparsity;
  return args;
}

void expect_refused(const RecipeArgs& args, const std::string& fragment) {
  try {
    make_recipe(args);
    ADD_FAILURE() << "accepted; expected an error containing: " << fragment;
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Recipe, DefaultsAndMetadata) {
  const auto r = make_recipe(wanda(0.5));
  EXPECT_EQ(r.method, ScoreMethod::Wanda);
  EXPECT_TRUE(r.needs_input_stats());
  EXPECT_FALSE(r.needs_output_stats());
  EXPECT_FALSE(r.needs_refine_stats());
  EXPECT_TRUE(r.rows_independent());
  EXPECT_EQ(r.describe(), "wanda 0.5 per row");
  EXPECT_TRUE(method_info(ScoreMethod::Magnitude).data_free);
  EXPECT_TRUE(method_info(ScoreMethod::Symmetric).data_free);
  EXPECT_FALSE(method_info(ScoreMethod::Symmetric).row_local);
  EXPECT_TRUE(method_info(ScoreMethod::OWanda).needs_output_stats);
}

TEST(Recipe, R2DsnotIsDsnotWithDefaultsUnderTheGivenOptions) {
  auto args = wanda(0.5);
  args.refine = "r2dsnot";
  const auto r = make_recipe(args);
  EXPECT_EQ(r.refine, Refinement::R2Dsnot);
  EXPECT_EQ(r.refine_options.gamma1, 0.1);
  EXPECT_EQ(r.refine_options.gamma2, 0.0);
  args.refine_options = {{"gamma1", std::monostate{}}, {"max_cycles", int64_t{5}}};
  const auto overridden = make_recipe(args);
  EXPECT_FALSE(overridden.refine_options.gamma1.has_value());
  EXPECT_EQ(overridden.refine_options.max_cycles, 5);
  const auto shown = overridden.refine_option_values();
  EXPECT_EQ(std::get<int64_t>(shown.at("max_cycles")), 5);
  EXPECT_EQ(std::get<double>(shown.at("gamma2")), 0.0);
  EXPECT_FALSE(shown.count("gamma1"));
}

TEST(Recipe, RefusesBadRecipes) {
  auto both = wanda(0.5);
  both.nm = NM{2, 4};
  expect_refused(both, "exactly one of sparsity");
  expect_refused(wanda(1.0), "sparsity must be in [0, 1)");
  expect_refused(wanda(std::nan("")), "sparsity must be in [0, 1)");
  RecipeArgs bad_nm;
  bad_nm.method = "wanda";
  bad_nm.nm = NM{4, 4};
  expect_refused(bad_nm, "1 <= n < m");
  auto unknown = wanda(0.5);
  unknown.method = "sparsegpt2";
  expect_refused(unknown, "unknown score method");
  auto permute = wanda(0.5);
  permute.permute = true;
  expect_refused(permute, "permute applies to N:M");
  auto layer_nm = bad_nm;
  layer_nm.nm = NM{2, 4};
  layer_nm.group = "layer";
  expect_refused(layer_nm, "N:M groups are fixed");
  auto refine_permute = layer_nm;
  refine_permute.group = "row";
  refine_permute.permute = true;
  refine_permute.refine = "dsnot";
  expect_refused(refine_permute, "cannot be combined with permute");
  auto options_only = wanda(0.5);
  options_only.refine_options = {{"max_cycles", int64_t{3}}};
  expect_refused(options_only, "without refine");
  auto group = wanda(0.5);
  group.group = "column";
  expect_refused(group, "group must be");
}

TEST(Recipe, OptionsAreTypedAndBelongToTheirMethod) {
  auto args = wanda(0.5);
  args.refine = "dsnot";
  args.refine_options = {{"max_cycles", 1.5}};
  expect_refused(args, "'max_cycles' must be an integer");
  args.refine_options = {{"threshold", std::string("abc")}};
  expect_refused(args, "'threshold' must be a number");
  args.refine_options = {{"cycles", int64_t{1}}};
  expect_refused(args, "unknown refine option 'cycles'");
  args.refine_options = {{"relative", std::string("sideways")}};
  expect_refused(args, "relative must be");
  args.refine_options = {{"max_cycles", int64_t{-1}}};
  expect_refused(args, "max_cycles must be >= 0");
  auto score = wanda(0.5);
  score.score_options = {{"a", 0.3}};
  expect_refused(score, "unknown score option 'a' for method 'wanda'");
  score.method = "ria";
  EXPECT_EQ(make_recipe(score).score.a, 0.3);
  score.score_options = {{"p", 0.0}};
  expect_refused(score, "p must be positive");
  score.method = "stochria";
  score.score_options = {{"beta", 2.0}};
  expect_refused(score, "beta must be in (0, 1]");
}

TEST(Recipe, JsonIsCanonical) {
  auto a = wanda(0.5);
  a.refine = "r2dsnot";
  auto b = a;
  b.refine = "dsnot";
  b.refine_options = {{"gamma1", 0.1}, {"gamma2", 0.0}};
  EXPECT_NE(make_recipe(a).to_json(), make_recipe(b).to_json());  // the kind differs
  auto c = a;
  c.refine_options = {{"gamma1", 0.1}};
  EXPECT_EQ(make_recipe(a).to_json(), make_recipe(c).to_json());
}

TEST(Recipe, ParseNM) {
  EXPECT_EQ(parse_nm("2:4").n, 2);
  EXPECT_EQ(parse_nm("16:32").m, 32);
  EXPECT_THROW(parse_nm("2-4"), ValueError);
  EXPECT_THROW(parse_nm("4:2"), ValueError);
  EXPECT_THROW(parse_nm(":4"), ValueError);
}
