#include "core/mask_by_sort.h"

#include <ATen/ops/ones.h>
#include <ATen/ops/sort.h>

#include <tuple>

namespace symprune::detail {
namespace {

// Keeps all but the first k of every slice along the last dimension in stable ascending
// order. torch's sort treats -0 and +0 as equal, as the CPU keys do.
at::Tensor keep_all_but_lowest_by_sort(const at::Tensor& score, int64_t k) {
  auto keep = at::ones(score.sizes(), score.options().dtype(at::kBool));
  if (k <= 0 || score.numel() == 0) return keep;
  const auto order = std::get<1>(at::sort(score, /*stable=*/true, /*dim=*/-1, /*descending=*/false));
  keep.scatter_(-1, order.narrow(-1, 0, k), false);
  return keep;
}

}  // namespace

at::Tensor row_mask_by_sort(const at::Tensor& score, int64_t k) { return keep_all_but_lowest_by_sort(score, k); }

at::Tensor layer_mask_by_sort(const at::Tensor& score, int64_t k) {
  return keep_all_but_lowest_by_sort(score.reshape({-1}), k).view(score.sizes());
}

at::Tensor nm_mask_by_sort(const at::Tensor& score, NM nm) {
  return keep_all_but_lowest_by_sort(score.reshape({-1, nm.m}), nm.m - nm.n).view(score.sizes());
}

}  // namespace symprune::detail
