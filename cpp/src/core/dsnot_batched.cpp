// DSnoT with all rows advanced together by tensor ops: the same walk as dsnot_rows.cpp, one
// cycle at a time, for tensors on devices where a per-row CPU loop does not apply (CUDA).
#include "core/dsnot_prepared.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmin.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>

namespace symprune::detail {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The first `k` columns of each row in ascending `key` among `valid` entries, ties to the
// lower column, or to the higher column with `later_wins` (a stable sort of the flipped row).
at::Tensor first_candidates(const at::Tensor& key, const at::Tensor& valid, int64_t k, bool later_wins) {
  const auto masked = at::where(valid, key, kInf);
  const int64_t cols = key.size(1);
  // contiguous: a view would keep the whole (rows, cols) index tensor alive
  if (!later_wins) return std::get<1>(at::sort(masked, /*stable=*/true, 1, false)).narrow(1, 0, k).contiguous();
  const auto order = std::get<1>(at::sort(masked.flip({1}), /*stable=*/true, 1, false)).narrow(1, 0, k);
  return (cols - 1) - order;
}

// Element `index` of each row of a (rows, cols) tensor.
at::Tensor pick(const at::Tensor& matrix, const at::Tensor& row_base, const at::Tensor& index) {
  return matrix.reshape({-1}).index_select(0, row_base + index);
}

at::Tensor sign_of(const at::Tensor& x) { return at::sign(x); }

}  // namespace

at::Tensor refine_batched(const DsnotPrepared& p, const at::Tensor& keep_in, const DsnotOptions& opt) {
  auto keep = keep_in.clone();
  const int64_t rows = keep.size(0), cols = keep.size(1);
  const int64_t k = std::min(opt.max_cycles, cols);
  if (rows == 0 || k == 0) return keep;
  const auto long_options = at::TensorOptions().dtype(at::kLong).device(keep.device());

  const auto d = p.w * p.mean.unsqueeze(0);
  const auto grow_key = p.grow_key.defined() ? p.grow_key : d / p.var_denominator.unsqueeze(0);
  const auto prune_key = p.prune_key.defined() ? p.prune_key : at::abs(p.w) * p.norm.unsqueeze(0);
  const auto pruned = ~keep_in, nonzero = d != 0;
  auto e = at::where(pruned, d, 0.0f).sum({1}, false, at::kDouble);

  // Candidate lists (rows, 4, k) and how many valid entries each has; the order of
  // dsnot_rows.cpp's CandidateList: grow +, grow -, prune (D > 0), prune (D < 0).
  const auto grow_pos = pruned & nonzero & (grow_key > 0), grow_neg = pruned & nonzero & (grow_key < 0);
  const auto prune_pos = keep_in & (d > 0), prune_neg = keep_in & (d < 0);
  const auto lists = at::stack({first_candidates(-grow_key, grow_pos, k, true),
                                first_candidates(grow_key, grow_neg, k, false),
                                first_candidates(prune_key, prune_pos, k, false),
                                first_candidates(prune_key, prune_neg, k, false)}, 1);
  const auto counts = at::stack({grow_pos.sum(1), grow_neg.sum(1), prune_pos.sum(1), prune_neg.sum(1)}, 1)
                          .clamp_max(k);
  auto next = at::zeros({rows, 4}, long_options);

  const auto row_ids = at::arange(rows, long_options);
  const auto row_base = row_ids * cols, list_base = row_ids * 4;
  const bool nm = opt.nm.has_value();
  const int64_t m = nm ? opt.nm->m : 0;
  auto examined = pruned.clone();  // N:M: only initially kept weights can be pruned, once
  const auto initial_sign = sign_of(e);
  const bool boundary = opt.gamma1.has_value() || opt.gamma2.has_value();
  auto active = at::ones({rows}, keep.options());

  for (int64_t cycle = 0; cycle < opt.max_cycles; ++cycle) {
    active &= e.abs() > opt.threshold;
    if (!active.any().item<bool>()) break;
    const auto positive = e > 0;
    // Grow: largest positive key when e > 0, most negative when e < 0.
    const auto grow_list = at::where(positive, 0, 1).to(at::kLong);
    const auto grow_at = pick(next, list_base, grow_list);
    active &= grow_at < pick(counts, list_base, grow_list);
    const auto r = pick(lists.reshape({rows, 4 * k}), row_ids * 4 * k, grow_list * k + grow_at.clamp_max(k - 1));
    next.reshape({-1}).index_add_(0, list_base + grow_list, at::ones({rows}, long_options));

    at::Tensor p_index;
    if (nm) {
      // The unexamined, initially kept weight of r's group with the lowest initial score.
      const auto group = (r - r % m).unsqueeze(1) + at::arange(m, long_options).unsqueeze(0);
      const auto flat = row_base.unsqueeze(1) + group;
      const auto scores = at::where(examined.reshape({-1}).index_select(0, flat.reshape({-1})).reshape({rows, m}),
                                    kInf, prune_key.reshape({-1}).index_select(0, flat.reshape({-1})).reshape({rows, m}));
      const auto best = at::argmin(scores, 1);
      active &= scores.gather(1, best.unsqueeze(1)).squeeze(1) < kInf;
      p_index = group.gather(1, best.unsqueeze(1)).squeeze(1);
      examined.reshape({-1}).index_fill_(0, (row_base + p_index).masked_select(active), true);
    } else {
      // Prune: next weight with D < 0 when e > 0, with D > 0 when e < 0.
      const auto prune_list = at::where(positive, 3, 2).to(at::kLong);
      const auto prune_at = pick(next, list_base, prune_list);
      active &= prune_at < pick(counts, list_base, prune_list);
      p_index = pick(lists.reshape({rows, 4 * k}), row_ids * 4 * k, prune_list * k + prune_at.clamp_max(k - 1));
      next.reshape({-1}).index_add_(0, list_base + prune_list, at::ones({rows}, long_options));
    }

    const auto e_after = e + pick(d, row_base, p_index).to(at::kDouble) - pick(d, row_base, r).to(at::kDouble);
    if (nm) active &= sign_of(e_after) == initial_sign;
    auto swap = active.clone();
    if (boundary) {
      const auto change = (e_after.abs() - e.abs()) / (e.abs() + 1e-12);
      swap &= change + opt.gamma1.value_or(0.0) * pick(p.phi, row_base, p_index).to(at::kDouble) -
                  opt.gamma2.value_or(0.0) * pick(p.phi, row_base, r).to(at::kDouble) < 0;
    }
    keep.reshape({-1}).index_fill_(0, (row_base + r).masked_select(swap), true);
    keep.reshape({-1}).index_fill_(0, (row_base + p_index).masked_select(swap), false);
    e = at::where(swap, e_after, e);
  }
  return keep;
}

}  // namespace symprune::detail
