// RIA's heuristic channel reallocation for N:M masks (docs/semantics.md#masks).
#include "symprune/mask.h"

#include "core/checks.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/sum.h>

namespace symprune {

at::Tensor channel_permutation(const at::Tensor& score, int64_t m) {
  detail::check_matrix(score, "score");
  SYMPRUNE_CHECK(m >= 1, "group size m must be positive, got ", m);
  const int64_t in = score.size(1);
  SYMPRUNE_CHECK(in % m == 0, "channel permutation needs in_features divisible by ", m, ", got ", in);
  const auto importance = at::sum(score, {0}, false, at::kDouble).cpu();
  const auto order = std::get<1>(at::sort(importance, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  const int64_t* ord = order.const_data_ptr<int64_t>();
  auto perm = at::empty({in}, at::TensorOptions().dtype(at::kLong));
  int64_t* out = perm.mutable_data_ptr<int64_t>();
  // Ascending importance is cut into m runs of `per` channels; run t fills position t of
  // every group, every other run reversed (snake order) so that groups get balanced totals.
  const int64_t per = in / m;
  for (int64_t g = 0; g < per; ++g)
    for (int64_t t = 0; t < m; ++t)
      out[g * m + t] = (t % 2 == 0) ? ord[t * per + g] : ord[(t + 1) * per - 1 - g];
  return perm.to(score.device());
}

std::pair<at::Tensor, at::Tensor> permuted_nm_mask(const at::Tensor& score, NM nm) {
  detail::check_matrix(score, "score");
  check_nm(nm, score.size(1));
  auto perm = channel_permutation(score, nm.m);
  auto permuted_mask = nm_mask(score.index_select(1, perm), nm);
  auto mask = at::empty_like(permuted_mask);
  mask.index_copy_(1, perm, permuted_mask);
  return {mask, perm};
}

}  // namespace symprune
