#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "symprune/dsnot.h"
#include "symprune/score.h"

using namespace symprune;

namespace {

struct Layer {
  at::Tensor w, norm, mean, var, keep;
};

Layer make_layer(int64_t out, int64_t in, std::optional<NM> nm) {
  at::manual_seed(11);
  auto x = at::randn({64, in}) + at::randn({in});
  Layer l{at::randn({out, in}), x.square().sum(0).sqrt(), x.sum(0), x.var(at::IntArrayRef{0}, false), {}};
  ScoreOptions opt;
  opt.in_norm = l.norm;
  auto s = score(l.w, ScoreMethod::Wanda, opt);
  l.keep = nm ? nm_mask(s, *nm) : unstructured_mask(s, 0.5, MaskGroup::Row);
  return l;
}

DsnotInputs inputs(const Layer& l) { return {l.w, l.keep, l.norm, l.mean, l.var, std::nullopt}; }

}  // namespace

TEST(Dsnot, SwapsKeepCountsPerRow) {
  auto l = make_layer(9, 32, std::nullopt);
  DsnotOptions opt;
  opt.threshold = 0.0;
  auto refined = dsnot(inputs(l), opt);
  EXPECT_FALSE(at::equal(refined, l.keep));
  EXPECT_TRUE(at::equal(refined.sum(1), l.keep.sum(1)));
}

TEST(Dsnot, NMPatternIsPreserved) {
  auto l = make_layer(9, 32, NM{2, 4});
  DsnotOptions opt;
  opt.nm = NM{2, 4};
  opt.threshold = 0.0;
  auto refined = dsnot(inputs(l), opt);
  EXPECT_FALSE(at::equal(refined, l.keep));
  EXPECT_TRUE(at::equal(refined.reshape({-1, 4}).sum(1), at::full({9 * 8}, 2, at::kLong)));
}

TEST(Dsnot, HugeThresholdOrZeroCyclesChangeNothing) {
  auto l = make_layer(5, 16, std::nullopt);
  DsnotOptions opt;
  opt.threshold = 1e30;
  EXPECT_TRUE(at::equal(dsnot(inputs(l), opt), l.keep));
  opt.threshold = 0.0;
  opt.max_cycles = 0;
  EXPECT_TRUE(at::equal(dsnot(inputs(l), opt), l.keep));
}

TEST(Dsnot, BoundaryOnlyAcceptsSwapsThatShrinkTheError) {
  auto l = make_layer(7, 24, std::nullopt);
  DsnotOptions opt;
  opt.threshold = 0.0;
  opt.gamma1 = 0.0;
  auto refined = dsnot(inputs(l), opt);
  auto d = l.w * l.mean;
  auto before = (d * (~l.keep)).sum(1, false, at::kDouble).abs();
  auto after = (d * (~refined)).sum(1, false, at::kDouble).abs();
  EXPECT_TRUE((after <= before + 1e-9).all().item<bool>());
}

TEST(Dsnot, ClearErrors) {
  auto l = make_layer(4, 8, std::nullopt);
  auto in = inputs(l);
  in.keep_mask = l.keep.to(at::kFloat);
  EXPECT_THROW(dsnot(in), symprune::ValueError);
  in = inputs(l);
  in.in_var = at::rand({7});
  EXPECT_THROW(dsnot(in), symprune::ValueError);
  in = inputs(l);
  in.initial_score = l.w.abs();
  EXPECT_THROW(dsnot(in), symprune::ValueError);  // initial_score without nm
}
