// SparseGPT: mask selection and optimal-brain-surgeon updates, a block of columns at a time.
#include "symprune/reconstruct.h"
#include "symprune/mask.h"

#include "core/checks.h"
#include "core/gram.h"
#include "core/select.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/flip.h>
#include <ATen/ops/linalg_solve_triangular.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/diagonal.h>
#include <ATen/ops/kthvalue.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/scatter.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace symprune {
namespace {

// Entries of one N:M group pruned by SparseGPT: the m - n lowest w^2 / d_j^2, ties broken by
// the lower index first (what a stable ascending sort gives): the masks' group selection.
template <typename scalar_t>
void prune_group(const scalar_t* w, const scalar_t* d, int64_t m, int64_t pruned, bool* out,
                 detail::SelectScratch<detail::key_t<scalar_t>>& scratch) {
  scalar_t key[64];
  bool keep[64];
  for (int64_t j = 0; j < m; ++j) key[j] = w[j] * w[j] / (d[j] * d[j]);
  detail::keep_all_but_lowest_in_group(key, m, pruned, keep, scratch);
  for (int64_t j = 0; j < m; ++j) out[j] = !keep[j];
}

// One block on the CPU, each row on its own: w1 (rows, count) holds the block's weights as
// updated so far and receives Q1 (the pruned, updated block); u1 (count, count) is the block of
// U; prune (rows, count) is the block's unstructured mask, or null for N:M (chosen per group as
// the walk reaches it).
template <typename scalar_t>
void block_rows(scalar_t* w1, const scalar_t* u1, const bool* prune, int64_t rows, int64_t count, int64_t m,
                int64_t pruned_per_group) {
  std::vector<scalar_t> diag(count);
  for (int64_t i = 0; i < count; ++i) diag[i] = u1[i * count + i];
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    bool group[64];
    detail::SelectScratch<detail::key_t<scalar_t>> scratch;
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* w = w1 + r * count;
      for (int64_t i = 0; i < count; ++i) {
        bool pruned;
        if (prune) {
          pruned = prune[r * count + i];
        } else {
          if (i % m == 0) prune_group(w + i, diag.data() + i, m, pruned_per_group, group, scratch);
          pruned = group[i % m];
        }
        const scalar_t q = pruned ? scalar_t(0) : w[i];
        const scalar_t scaled = (w[i] - q) / diag[i];
        if (scaled != scalar_t(0)) {
          const scalar_t* u = u1 + i * count;
          for (int64_t j = i + 1; j < count; ++j) w[j] -= scaled * u[j];
        }
        w[i] = q;
      }
    }
  });
}

// The same block with the reference's column-at-a-time tensor ops (any device).
void block_columns(at::Tensor& w1, const at::Tensor& u1, at::Tensor prune, int64_t m, int64_t pruned_per_group) {
  const int64_t count = w1.size(1);
  const auto diag = u1.diagonal();
  const bool nm = !prune.defined();
  if (nm) prune = at::zeros(w1.sizes(), w1.options().dtype(at::kBool));
  for (int64_t i = 0; i < count; ++i) {
    if (nm && i % m == 0) {
      const auto key = w1.narrow(1, i, m).square() / diag.narrow(0, i, m).square().unsqueeze(0);
      const auto order = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/1, /*descending=*/false));
      prune.narrow(1, i, m).scatter_(1, order.narrow(1, 0, pruned_per_group), true);
    }
    auto w = w1.select(1, i);
    const auto q = w.masked_fill(prune.select(1, i), 0);
    const auto scaled = (w - q) / diag[i];
    w1.narrow(1, i, count - i).sub_(scaled.unsqueeze(1) * u1[i].narrow(0, i, count - i).unsqueeze(0));
    w.copy_(q);
  }
}

void check(const at::Tensor& weight, const SparseGptOptions& o) {
  detail::check_matrix(weight, "weight");
  SYMPRUNE_CHECK(o.sparsity.has_value() != o.nm.has_value(), "give exactly one of sparsity and nm");
  if (o.sparsity) check_sparsity(*o.sparsity);
  SYMPRUNE_CHECK(o.blocksize >= 1, "blocksize must be >= 1, got ", o.blocksize);
  if (o.nm) {
    check_nm(*o.nm, weight.size(1));
    SYMPRUNE_CHECK(o.nm->m <= 64, "sparsegpt supports N:M groups of at most 64 columns, got M=", o.nm->m);
    SYMPRUNE_CHECK(o.blocksize % o.nm->m == 0, "blocksize (", o.blocksize, ") must be a multiple of M=", o.nm->m,
                   " so that N:M groups do not straddle blocks");
  }
}

}  // namespace

at::Tensor sparsegpt(const at::Tensor& weight, const at::Tensor& gram, const SparseGptOptions& o) {
  at::NoGradGuard no_grad;
  check(weight, o);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  // The walk needs U, the upper Cholesky factor of H^-1 (H^-1 = U^T U), and never forms it: U =
  // R^-1 for the upper factor R of H = R R^T, which is J M J for the Cholesky factor M of the
  // reversed Gram J H J = M M^T (one fp64 factorisation, n^3 / 3 flops, and no inverse). Block
  // b's diagonal part of U is the small inverse (R_bb)^-1, and the updates that the finished
  // columns owe it, -E_<b U_<b,b (E: the scaled errors), equal D_<b R_<b,b (R_bb)^-1, with D = W - Q
  // what the walk changed in them: E U = D and U R = I give U_<b,b = -U_<b,<b R_<b,b (R_bb)^-1.
  const auto compute = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto reversed = detail::damped_gram(gram.to(weight.device()).flip({0, 1}), cols, o.percdamp, /*dead_to_one=*/true);
  const auto dead = reversed.dead.flip({0});
  auto factor = detail::cholesky_or_throw(reversed.h, o.percdamp, "gram");
  reversed.h.reset();
  const auto r64 = factor.flip({0, 1});
  factor.reset();
  const auto r = r64.to(compute);
  auto w = weight.to(compute, /*non_blocking=*/false, /*copy=*/true).contiguous();
  w.masked_fill_(dead.unsqueeze(0), 0);
  auto change = at::empty_like(w);  // D = W - Q of the finished columns

  const bool rows_backend = o.backend == SparseGptBackend::Rows ||
                            (o.backend == SparseGptBackend::Auto && weight.device().is_cpu());
  SYMPRUNE_CHECK(!rows_backend || weight.device().is_cpu(), "the Rows backend runs on CPU tensors");
  const int64_t m = o.nm ? o.nm->m : 0, pruned_per_group = o.nm ? o.nm->m - o.nm->n : 0;
  for (int64_t i1 = 0; i1 < cols; i1 += o.blocksize) {
    const int64_t i2 = std::min(cols, i1 + o.blocksize), count = i2 - i1;
    const auto r_bb = r64.narrow(0, i1, count).narrow(1, i1, count);
    const auto u1 =
        at::linalg_solve_triangular(r_bb, at::eye(count, r64.options()), /*upper=*/true).to(compute).contiguous();
    auto w1 = w.narrow(1, i1, count).contiguous();
    const auto start = w1.clone();
    if (i1 > 0) w1.addmm_(at::mm(change.narrow(1, 0, i1), r.narrow(0, 0, i1).narrow(1, i1, count)), u1);
    at::Tensor prune;
    if (o.sparsity) {
      const auto key = (w1.square() / u1.diagonal().square().unsqueeze(0)).flatten();
      // The reference prunes every entry at or below sorted(key)[k], k = int(numel * sparsity).
      const auto k = pruned_count(key.numel(), *o.sparsity);
      const auto threshold = std::get<0>(at::kthvalue(key, k + 1));
      prune = (key <= threshold).view({rows, count}).contiguous();
    }
    if (rows_backend) {
      AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "sparsegpt_block", [&] {
        block_rows<scalar_t>(w1.data_ptr<scalar_t>(), u1.const_data_ptr<scalar_t>(),
                             prune.defined() ? prune.const_data_ptr<bool>() : nullptr, rows, count, m,
                             pruned_per_group);
      });
    } else {
      block_columns(w1, u1, prune, m, pruned_per_group);
    }
    w.narrow(1, i1, count).copy_(w1);
    change.narrow(1, i1, count).copy_(start - w1);
  }
  // Pruned entries are +0 (masked_fill and the zeros written above); convert back.
  return w.to(weight.scalar_type());
}

}  // namespace symprune
