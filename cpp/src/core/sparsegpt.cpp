// SparseGPT: mask selection and optimal-brain-surgeon updates, a block of columns at a time.
#include "symprune/reconstruct.h"

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
// updated so far and receives Q1 (the pruned, updated block); err (rows, count) receives the
// scaled errors; u1 (count, count) is the block of U; prune (rows, count) is the block's
// unstructured mask, or null for N:M (chosen per group as the walk reaches it).
template <typename scalar_t>
void block_rows(scalar_t* w1, scalar_t* err, const scalar_t* u1, const bool* prune, int64_t rows, int64_t count,
                int64_t m, int64_t pruned_per_group) {
  std::vector<scalar_t> diag(count);
  for (int64_t i = 0; i < count; ++i) diag[i] = u1[i * count + i];
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    bool group[64];
    detail::SelectScratch<detail::key_t<scalar_t>> scratch;
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* w = w1 + r * count;
      scalar_t* e = err + r * count;
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
        e[i] = scaled;
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
void block_columns(at::Tensor& w1, at::Tensor& err, const at::Tensor& u1, at::Tensor prune, int64_t m,
                   int64_t pruned_per_group) {
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
    err.select(1, i).copy_(scaled);
    w1.narrow(1, i, count - i).sub_(scaled.unsqueeze(1) * u1[i].narrow(0, i, count - i).unsqueeze(0));
    w.copy_(q);
  }
}

// Inverts the lower-triangular `l` in place (zero above the diagonal on return), by blocks:
// [[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]], the corner from A, B and C by two
// triangular solves (n^3 / 4 flops at the top level), then A and C by recursion: n^3 / 3 flops in
// all, as LAPACK's trtri, where a solve against the identity takes n^3 (and another n x n matrix).
void invert_lower_in_place(const at::Tensor& l) {
  const int64_t n = l.size(0);
  if (n <= 256) {
    l.copy_(at::linalg_solve_triangular(l, at::eye(n, l.options()), /*upper=*/false));
    return;
  }
  const int64_t h = n / 2;
  const auto a = l.narrow(0, 0, h).narrow(1, 0, h), b = l.narrow(0, h, n - h).narrow(1, 0, h),
             c = l.narrow(0, h, n - h).narrow(1, h, n - h);
  b.copy_(at::linalg_solve_triangular(c, at::linalg_solve_triangular(a, b, /*upper=*/false, /*left=*/false),
                                      /*upper=*/false))
      .neg_();
  invert_lower_in_place(a);
  invert_lower_in_place(c);
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
  // U: the upper Cholesky factor of the damped Gram's inverse, in fp64, without forming the
  // inverse: with J the reversal of rows and columns and J H J = M M^T, H^-1 = (J M^-1 J)^T (J M^-1 J),
  // so U = J M^-1 J, one factorisation and one triangular inverse (both fp64: inverting M in fp32
  // instead halved the inverse's time but moved SmolLM2's 2:4 perplexity from 130.4 to 132.4).
  // The Gram is reversed before its fp64 copy (the smaller copy), the inverse overwrites the
  // factor, and each n x n matrix is dropped once used: at n = 11008, fresh memory's page
  // faults cost seconds.
  const auto compute = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto reversed = detail::damped_gram(gram.to(weight.device()).flip({0, 1}), cols, o.percdamp, /*dead_to_one=*/true);
  const auto dead = reversed.dead.flip({0});
  auto inverse = detail::cholesky_or_throw(reversed.h, o.percdamp, "gram");
  reversed.h.reset();
  invert_lower_in_place(inverse);
  const auto u = inverse.to(compute).flip({0, 1});
  inverse.reset();
  auto w = weight.to(compute, /*non_blocking=*/false, /*copy=*/true).contiguous();
  w.masked_fill_(dead.unsqueeze(0), 0);

  const bool rows_backend = o.backend == SparseGptBackend::Rows ||
                            (o.backend == SparseGptBackend::Auto && weight.device().is_cpu());
  SYMPRUNE_CHECK(!rows_backend || weight.device().is_cpu(), "the Rows backend runs on CPU tensors");
  const int64_t m = o.nm ? o.nm->m : 0, pruned_per_group = o.nm ? o.nm->m - o.nm->n : 0;
  for (int64_t i1 = 0; i1 < cols; i1 += o.blocksize) {
    const int64_t i2 = std::min(cols, i1 + o.blocksize), count = i2 - i1;
    auto w1 = w.narrow(1, i1, count).contiguous();
    auto err = at::zeros_like(w1);
    const auto u1 = u.narrow(0, i1, count).narrow(1, i1, count).contiguous();
    at::Tensor prune;
    if (o.sparsity) {
      const auto key = (w1.square() / u1.diagonal().square().unsqueeze(0)).flatten();
      // The reference prunes every entry at or below sorted(key)[k], k = int(numel * sparsity).
      const auto k = static_cast<int64_t>(static_cast<double>(key.numel()) * *o.sparsity);
      const auto threshold = std::get<0>(at::kthvalue(key, k + 1));
      prune = (key <= threshold).view({rows, count}).contiguous();
    }
    if (rows_backend) {
      AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "sparsegpt_block", [&] {
        block_rows<scalar_t>(w1.data_ptr<scalar_t>(), err.data_ptr<scalar_t>(), u1.const_data_ptr<scalar_t>(),
                             prune.defined() ? prune.const_data_ptr<bool>() : nullptr, rows, count, m,
                             pruned_per_group);
      });
    } else {
      block_columns(w1, err, u1, prune, m, pruned_per_group);
    }
    w.narrow(1, i1, count).copy_(w1);
    // The lazy update: the block's errors reach the later columns in one product.
    if (i2 < cols) {
      auto rest = w.narrow(1, i2, cols - i2);
      rest.addmm_(err, u.narrow(0, i1, count).narrow(1, i2, cols - i2), /*beta=*/1, /*alpha=*/-1);
    }
  }
  // Pruned entries are +0 (masked_fill and the zeros written above); convert back.
  return w.to(weight.scalar_type());
}

}  // namespace symprune
