#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "symprune/score.h"

#include <utility>
#include <vector>

using namespace symprune;

namespace {
at::Tensor quantised(int64_t out, int64_t in) {
  at::manual_seed(1);
  return at::randint(-3, 4, {out, in}).to(at::kFloat) / 4;
}
}  // namespace

TEST(Score, WandaAndSymmetricFamilies) {
  auto w = quantised(7, 13);
  auto in_norm = at::rand({13}), out_norm = at::rand({7});
  ScoreOptions opt;
  opt.in_norm = in_norm;
  opt.out_norm = out_norm;
  EXPECT_TRUE(at::equal(score(w, ScoreMethod::Magnitude), w.abs()));
  EXPECT_TRUE(at::equal(score(w, ScoreMethod::Wanda, opt), w.abs() * in_norm));
  EXPECT_TRUE(at::equal(score(w, ScoreMethod::OWanda, opt), w.abs() * out_norm.unsqueeze(1)));
  EXPECT_TRUE(at::equal(score(w, ScoreMethod::SymWanda, opt), w.abs() * (in_norm + out_norm.unsqueeze(1))));
  auto col = w.to(at::kDouble).norm(2, {0}).to(at::kFloat), row = w.to(at::kDouble).norm(2, {1}).to(at::kFloat);
  EXPECT_TRUE(at::allclose(score(w, ScoreMethod::Symmetric), w.abs() * (col + row.unsqueeze(1))));
}

TEST(Score, RiaWithZeroRowsAndColumns) {
  auto w = quantised(6, 10);
  w[2].zero_();
  w.select(1, 4).zero_();
  ScoreOptions opt;
  opt.in_norm = at::rand({10});
  auto s = score(w, ScoreMethod::Ria, opt);
  EXPECT_TRUE(at::isfinite(s).all().item<bool>());
  auto a = w.abs().to(at::kDouble);
  auto col = a.sum(0).clamp_min(1e-300), row = a.sum(1).clamp_min(1e-300);
  auto expected = (a / col + a / row.unsqueeze(1)) * opt.in_norm->to(at::kDouble).sqrt();
  EXPECT_TRUE(at::allclose(s.to(at::kDouble), expected, 1e-5, 1e-7));
}

TEST(Score, ColumnNormsOfRowBlocksScoreAsTheWholeWeight) {
  at::manual_seed(2);
  auto w = at::randn({1500, 1024}).to(at::kBFloat16);  // over 1 M elements: two blocks of rows
  std::vector<std::pair<int64_t, int64_t>> blocks;
  const auto norms = column_norms(w, 3.0, [&](int64_t begin, int64_t end) { blocks.emplace_back(begin, end); });
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(blocks.front().first, 0);
  EXPECT_EQ(blocks.front().second, blocks.back().first);
  EXPECT_EQ(blocks.back().second, 1500);
  EXPECT_TRUE(at::allclose(norms, w.to(at::kDouble).abs().pow(3).sum(0).pow(1.0 / 3), 1e-12, 0));
  ScoreOptions opt;
  opt.in_norm = at::rand({1024});
  opt.p = 3.0;
  const auto whole = score(w, ScoreMethod::Ria, opt);
  opt.column_norms = norms;  // as the streaming engine passes them for a block of rows
  EXPECT_TRUE(at::equal(score(w.slice(0, 700, 701), ScoreMethod::Ria, opt), whole.slice(0, 700, 701)));
  opt.column_norms = at::ones({1023}, at::kDouble);
  EXPECT_THROW(score(w, ScoreMethod::Ria, opt), symprune::ValueError);
}

TEST(Score, StochRiaIsSeededAndFullSampleEqualsRia) {
  auto w = quantised(9, 12);
  ScoreOptions opt;
  opt.in_norm = at::rand({12});
  opt.beta = 0.3;
  opt.seed = 7;
  EXPECT_TRUE(at::equal(score(w, ScoreMethod::StochRia, opt), score(w, ScoreMethod::StochRia, opt)));
  opt.beta = 1.0;
  EXPECT_TRUE(at::allclose(score(w, ScoreMethod::StochRia, opt), score(w, ScoreMethod::Ria, opt)));
}

TEST(Score, ClearErrors) {
  auto w = quantised(4, 8);
  EXPECT_THROW(score(w, ScoreMethod::Wanda), symprune::ValueError);
  ScoreOptions opt;
  opt.in_norm = at::rand({7});
  EXPECT_THROW(score(w, ScoreMethod::Wanda, opt), symprune::ValueError);
  auto bad = w.clone();
  bad[0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(score(bad, ScoreMethod::Magnitude), symprune::ValueError);
  EXPECT_THROW(score(w.flatten(), ScoreMethod::Magnitude), symprune::ValueError);
  EXPECT_THROW(parse_score_method("sparsegpt"), symprune::ValueError);
  EXPECT_EQ(parse_score_method("symwanda"), ScoreMethod::SymWanda);
}
