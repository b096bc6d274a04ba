#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "symprune/mask.h"
#include "symprune/prune.h"
#include "symprune/score.h"

#include "core/mask_by_sort.h"
#include "core/select.h"

#include <cmath>
#include <limits>
#include <vector>

using namespace symprune;

namespace {

// Plain oracle: a stable ascending sort, the first k indices pruned.
at::Tensor sorted_mask(const at::Tensor& score, int64_t k) {
  auto order = std::get<1>(at::sort(score.to(at::kFloat), /*stable=*/true, /*dim=*/-1, false));
  auto keep = at::ones(score.sizes(), at::kBool);
  keep.scatter_(-1, order.narrow(-1, 0, k), false);
  return keep;
}

at::Tensor ties(int64_t out, int64_t in, at::ScalarType dtype) {
  at::manual_seed(3);
  return (at::randint(0, 4, {out, in}).to(at::kFloat) / 4).to(dtype);
}

}  // namespace

TEST(Mask, PerRowAndPerLayerMatchStableSort) {
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    for (double s : {0.0, 0.5, 0.9}) {
      auto score = ties(7, 13, dtype);
      auto row = unstructured_mask(score, s, MaskGroup::Row);
      EXPECT_TRUE(at::equal(row, sorted_mask(score, int64_t(13 * s))));
      auto layer = unstructured_mask(score, s, MaskGroup::Layer);
      EXPECT_TRUE(at::equal(layer.flatten(), sorted_mask(score.flatten(), int64_t(91 * s))));
    }
  }
}

TEST(Mask, LayerSelectionAcrossManyChunks) {
  at::manual_seed(5);
  auto score = at::randint(-50, 50, {300, 700}).to(at::kFloat);
  auto layer = unstructured_mask(score, 0.37, MaskGroup::Layer);
  EXPECT_TRUE(at::equal(layer.flatten(), sorted_mask(score.flatten(), int64_t(210000 * 0.37))));
}

TEST(Mask, NMKeepsNOfEveryM) {
  for (auto [n, m] : {std::pair{1, 4}, {2, 4}, {4, 8}, {3, 8}, {5, 40}}) {
    auto score = ties(5, 40, at::kFloat);
    auto mask = nm_mask(score, {n, m});
    auto grouped = score.reshape({5 * 40 / m, m});
    EXPECT_TRUE(at::equal(mask.reshape({-1, m}), sorted_mask(grouped, m - n)));
  }
}

// The accelerator path (a stable sort where the scores are) runs on CPU tensors too: it must
// equal the CPU selection element for element, ties, signed zeros and odd shapes included.
TEST(Mask, SortPathForAcceleratorsEqualsTheCpuSelection) {
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 8}, {7, 40}, {13, 24}, {3, 120}}) {
      auto score = ties(rows, cols, dtype) - 0.5;  // values in {-0.5, -0.25, 0, 0.25}
      score.select(0, 0).fill_(-0.0);              // a row of -0 ties with +0 elsewhere
      for (double s : {0.0, 0.3, 0.5, 0.9}) {
        const auto k = static_cast<int64_t>(static_cast<double>(cols) * s);
        EXPECT_TRUE(at::equal(symprune::detail::row_mask_by_sort(score, k), unstructured_mask(score, s, MaskGroup::Row)));
        const auto layer_k = static_cast<int64_t>(static_cast<double>(rows * cols) * s);
        EXPECT_TRUE(
            at::equal(symprune::detail::layer_mask_by_sort(score, layer_k), unstructured_mask(score, s, MaskGroup::Layer)));
      }
      for (auto [n, m] : {std::pair<int64_t, int64_t>{1, 4}, {2, 4}, {3, 4}, {4, 8}, {2, 8}}) {
        EXPECT_TRUE(at::equal(symprune::detail::nm_mask_by_sort(score, {n, m}), nm_mask(score, {n, m})));
        const auto strided = score.t().contiguous().t();  // column-major layout, same values
        EXPECT_TRUE(at::equal(symprune::detail::nm_mask_by_sort(strided, {n, m}), nm_mask(score, {n, m})));
      }
    }
  }
}

TEST(Mask, PermutationMapsBackToNM) {
  auto score = ties(6, 16, at::kFloat);
  auto [mask, perm] = permuted_nm_mask(score, {2, 4});
  EXPECT_TRUE(at::equal(std::get<0>(at::sort(perm)), at::arange(16)));
  EXPECT_TRUE(at::equal(mask.index_select(1, perm).reshape({-1, 4}).sum(1), at::full({24}, 2, at::kLong)));
}

TEST(Mask, PrunedCountRoundsAsPythonInt) {
  // int(100 * 0.29) == 28 in Python: the double product is 28.999..., floored, not rounded.
  EXPECT_EQ(pruned_count(100, 0.29), 28);
  EXPECT_EQ(pruned_count(10, 0.3), 3);  // 3.0000000000000004
  EXPECT_EQ(pruned_count(7, 0.5), 3);
  EXPECT_EQ(pruned_count(0, 0.5), 0);
  // Every unstructured mask prunes exactly that many per row.
  auto score = ties(3, 100, at::kFloat);
  EXPECT_TRUE(at::equal((~unstructured_mask(score, 0.29, MaskGroup::Row)).sum(1), at::full({3}, 28, at::kLong)));
}

TEST(Mask, ClearErrors) {
  auto score = ties(4, 8, at::kFloat);
  EXPECT_THROW(unstructured_mask(score, 1.0, MaskGroup::Row), symprune::ValueError);
  EXPECT_THROW(unstructured_mask(score, -0.1, MaskGroup::Row), symprune::ValueError);
  EXPECT_THROW(nm_mask(score, {4, 4}), symprune::ValueError);
  EXPECT_THROW(nm_mask(score, {2, 3}), symprune::ValueError);
  EXPECT_THROW(nm_mask(score.flatten(), {2, 4}), symprune::ValueError);
}

TEST(Mask, MagnitudePruneOutFillsTheGivenBuffer) {
  for (auto dtype : {at::kHalf, at::kBFloat16, at::kFloat}) {
    auto weight = ties(9, 24, dtype) - 0.5;
    auto expected = magnitude_prune(weight, 0.5, MaskGroup::Row);
    auto out = at::full(weight.sizes(), 7, weight.options());
    EXPECT_EQ(&magnitude_prune_out(weight, 0.5, MaskGroup::Row, out), &out);
    EXPECT_TRUE(at::equal(out, expected));
    EXPECT_TRUE(at::equal(out, weight.masked_fill(sorted_mask(weight.abs(), 12).logical_not(), 0)));
  }
  auto weight = ties(4, 8, at::kBFloat16);
  auto wrong_shape = at::empty({8, 4}, weight.options());
  auto wrong_dtype = at::empty({4, 8}, at::kHalf);
  EXPECT_THROW(magnitude_prune_out(weight, 0.5, MaskGroup::Row, wrong_shape), symprune::ValueError);
  EXPECT_THROW(magnitude_prune_out(weight, 0.5, MaskGroup::Row, wrong_dtype), symprune::ValueError);
  EXPECT_THROW(magnitude_prune_out(weight, 0.5, MaskGroup::Row, weight), symprune::ValueError);  // in place
}

TEST(Mask, RowLocalPruneOutMatchesScoreMaskApplyAndChecksOut) {
  const auto weight = ties(6, 16, at::kBFloat16) - 0.5;
  ScoreOptions options;
  options.in_norm = at::linspace(0.5, 2.0, 16);
  auto out = at::empty(weight.sizes(), weight.options());
  prune_row_local_nm_out(weight, ScoreMethod::Wanda, options, {2, 4}, out);
  EXPECT_TRUE(at::equal(out, apply_mask(weight, nm_mask(score(weight, ScoreMethod::Wanda, options), {2, 4}))));
  prune_row_local_out(weight, ScoreMethod::Wanda, options, 0.5, out);
  EXPECT_TRUE(at::equal(
      out, apply_mask(weight, unstructured_mask(score(weight, ScoreMethod::Wanda, options), 0.5, MaskGroup::Row))));
  auto wrong_shape = at::empty({16, 6}, weight.options());
  auto strided = at::empty({16, 6}, weight.options()).t();
  EXPECT_THROW(prune_row_local_out(weight, ScoreMethod::Wanda, options, 0.5, wrong_shape), symprune::ValueError);
  EXPECT_THROW(prune_row_local_out(weight, ScoreMethod::Wanda, options, 0.5, strided), symprune::ValueError);
  auto in_place = weight.clone();
  EXPECT_THROW(prune_row_local_out(in_place, ScoreMethod::Wanda, options, 0.5, in_place), symprune::ValueError);
  EXPECT_THROW(prune_row_local_out(weight, ScoreMethod::Ria, options, 0.5, out), symprune::ValueError);
}

// ADMM's selection from the previous support: equal to a stable sort whatever the hint (exact,
// near, unrelated, or pruning the wrong count), with ties, signed zeros, NaN and infinities.
TEST(Mask, SelectionFromAPreviousSupportMatchesStableSort) {
  at::manual_seed(5);
  const int64_t n = 257;
  symprune::detail::SelectScratch<uint32_t> scratch;
  for (int64_t k : {1, 64, 128, 256}) {
    for (int variant = 0; variant < 4; ++variant) {
      auto values = at::randint(0, 16, {n}).to(at::kFloat) / 8;  // many ties
      if (variant == 3) values = at::randn({n});
      values[3] = -0.0;
      values[7] = std::numeric_limits<float>::quiet_NaN();
      values[11] = std::numeric_limits<float>::infinity();
      const auto expect = sorted_mask(values, k);
      for (int hint = 0; hint < 4; ++hint) {
        at::Tensor previous;
        if (hint == 0) previous = expect.clone();                                          // still right
        if (hint == 1) previous = sorted_mask(values + 0.2 * at::randn({n}), k);           // nearby
        if (hint == 2) previous = sorted_mask(at::randn({n}), k);                          // unrelated
        if (hint == 3) previous = sorted_mask(values, std::max<int64_t>(k - 1, 0));        // wrong count
        previous = previous.contiguous();
        std::vector<char> got(n);
        symprune::detail::keep_all_but_lowest_near(values.const_data_ptr<float>(), n, k, previous.const_data_ptr<bool>(),
                                         reinterpret_cast<bool*>(got.data()), scratch);
        const auto got_tensor = at::from_blob(got.data(), {n}, at::kBool).clone();
        EXPECT_TRUE(at::equal(got_tensor, expect)) << "k=" << k << " variant=" << variant << " hint=" << hint;
      }
    }
  }
}
