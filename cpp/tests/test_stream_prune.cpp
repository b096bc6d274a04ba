#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "stream_prune.h"

using namespace symprune;
namespace sd = symprune::detail;

namespace {

StreamOptions recipe(ScoreMethod method, bool refine) {
  StreamOptions o;
  o.method = method;
  o.nm = NM{2, 4};
  if (refine) o.refine = DsnotOptions{};
  return o;
}

}  // namespace

// The streaming engine's per-weight pruning (the GPU path's entry point, run here on CPU
// tensors): a weight over the block size is pruned a block of rows at a time, and the result
// must equal pruning the whole weight at once, for row-local scores with and without DSnoT.
TEST(StreamPrune, BlocksOfRowsEqualTheWholeWeight) {
  at::manual_seed(7);
  const auto weight = (at::randn({1100, 4096}) * 0.02).to(at::kBFloat16);  // 4.5 M elements: 2 blocks
  sd::WeightStats stats;
  stats.in_norm = at::rand({4096}) + 0.1;
  stats.in_mean = at::randn({4096});
  stats.in_var = at::rand({4096}) + 0.1;
  for (bool refine : {false, true}) {
    const auto o = recipe(ScoreMethod::Wanda, refine);
    const auto whole = sd::prune_whole(weight, o, stats);
    EXPECT_TRUE(at::equal(sd::prune_weight(weight, o, stats), whole)) << "refine " << refine;
    auto out = at::empty_like(weight);
    sd::prune_weight_into(weight, o, stats, out);
    EXPECT_TRUE(at::equal(out, whole)) << "refine " << refine;
  }
  // Small weights and column-norm scores are pruned whole: prune_weight returns that result.
  const auto small = weight.narrow(0, 0, 8).contiguous();
  const auto o = recipe(ScoreMethod::Ria, false);
  EXPECT_TRUE(at::equal(sd::prune_weight(small, o, stats), sd::prune_whole(small, o, stats)));
}
