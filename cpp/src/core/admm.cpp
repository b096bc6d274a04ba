// ADMM pruning: mask and weights searched together, then the exact refit of the support.
#include "symprune/reconstruct.h"
#include "symprune/mask.h"

#include "core/checks.h"
#include "core/gram.h"
#include "core/refit_from.h"
#include "core/select.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/all.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/linalg_eigh.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

namespace symprune {
namespace {

// The weights a row prunes at an unstructured sparsity; 0 for N:M.
int64_t pruned_in_row(const AdmmOptions& o, int64_t in) {
  return o.sparsity ? pruned_count(in, *o.sparsity) : 0;
}

void check(const at::Tensor& weight, const at::Tensor& keep, const AdmmOptions& o) {
  detail::check_matrix(weight, "weight");
  detail::check_mask(keep, weight, "initial_keep");
  SYMPRUNE_CHECK(o.sparsity.has_value() != o.nm.has_value(), "give exactly one of sparsity and nm");
  if (o.sparsity) check_sparsity(*o.sparsity);
  if (o.nm) check_nm(*o.nm, weight.size(1));
  SYMPRUNE_CHECK(std::isfinite(o.rho0) && o.rho0 > 0, "rho0 must be > 0, got ", o.rho0);
  SYMPRUNE_CHECK(std::isfinite(o.growth) && o.growth >= 1, "growth must be >= 1, got ", o.growth);
  SYMPRUNE_CHECK(o.max_iterations >= 0 && o.patience >= 1, "max_iterations must be >= 0 and patience >= 1");
  // The start must be in the pattern: each row keeps whichever refit wins, the start's included.
  const int64_t in = weight.size(1);
  if (o.nm) {
    SYMPRUNE_CHECK(detail::keeps_n_of_every_m(keep, *o.nm), "initial_keep must be in the pattern: keep ", o.nm->n,
                   " of every ", o.nm->m, " weights of each row");
  } else {
    const int64_t kept = in - pruned_in_row(o, in);
    SYMPRUNE_CHECK(at::all(keep.sum(1) == kept).item<bool>(), "initial_keep must be in the pattern: keep ", kept,
                   " of the ", in, " weights of each row (sparsity ", *o.sparsity, ")");
  }
}

void check_positive_definite(bool is, double percdamp) {
  SYMPRUNE_CHECK(is, "gram is not positive definite even after damping (percdamp=", percdamp,
                 "); raise percdamp or calibrate on more tokens");
}

// The pattern's support of the largest |x|, with the mask rules of mask.h.
at::Tensor project_support(const at::Tensor& x, const AdmmOptions& o) {
  const auto magnitude = at::abs(x).to(at::kFloat);
  return o.nm ? nm_mask(magnitude, *o.nm) : unstructured_mask(magnitude, *o.sparsity, MaskGroup::Row);
}

// The state of the iteration: V, the scaled dual U, Z = V + U on the support, Z - U - B0 (what
// the next solve multiplies) and the support, all (rows, in), updated in place; B0, the start.
struct Iterate {
  at::Tensor v, u, z, step, keep, b0;
};

// The elementwise half of an iteration, fused row by row on the CPU (no temporaries): X = V + U;
// the support of the largest |X| (|X| in fp32, the masks' own selection, so ties go as in
// project_support); Z = X on it and +0 elsewhere; U = X - Z; the step Z - U - B0. Returns whether
// a row's support changed.
template <typename scalar_t>
bool project_rows_cpu(Iterate& s, const AdmmOptions& o) {
  const int64_t rows = s.v.size(0), cols = s.v.size(1);
  const int64_t k = pruned_in_row(o, cols);
  const scalar_t *v = s.v.const_data_ptr<scalar_t>(), *b0 = s.b0.const_data_ptr<scalar_t>();
  scalar_t *u = s.u.mutable_data_ptr<scalar_t>(), *z = s.z.mutable_data_ptr<scalar_t>(),
           *step = s.step.mutable_data_ptr<scalar_t>();
  bool* keep = s.keep.mutable_data_ptr<bool>();
  std::atomic<bool> changed{false};
  at::parallel_for(0, rows, detail::row_grain(cols), [&](int64_t begin, int64_t end) {
    std::vector<float> magnitude(cols);
    std::unique_ptr<bool[]> next(new bool[cols]);
    detail::SelectScratch<uint32_t> scratch;
    bool any = false;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t row = r * cols;
      for (int64_t j = 0; j < cols; ++j) magnitude[j] = static_cast<float>(std::abs(v[row + j] + u[row + j]));
      if (o.nm) {
        for (int64_t g = 0; g < cols; g += o.nm->m)
          detail::keep_all_but_lowest_in_group(magnitude.data() + g, o.nm->m, o.nm->m - o.nm->n, next.get() + g, scratch);
      } else {
        detail::keep_all_but_lowest_near(magnitude.data(), cols, k, keep + row, next.get(), scratch);
      }
      for (int64_t j = 0; j < cols; ++j) {
        const scalar_t x = v[row + j] + u[row + j];
        const scalar_t zj = next[j] ? x : scalar_t(0);
        z[row + j] = zj;
        u[row + j] = x - zj;
        step[row + j] = zj - (x - zj) - b0[row + j];
        any |= next[j] != keep[row + j];
        keep[row + j] = next[j];
      }
    }
    if (any) changed.store(true, std::memory_order_relaxed);
  });
  return changed.load();
}

// The same step with tensor operations (any device).
bool project_rows(Iterate& s, const AdmmOptions& o) {
  if (s.v.device().is_cpu()) {
    bool changed = false;
    AT_DISPATCH_FLOATING_TYPES(s.v.scalar_type(), "admm_project", [&] { changed = project_rows_cpu<scalar_t>(s, o); });
    return changed;
  }
  const auto x = s.v + s.u;
  const auto next = project_support(x, o);
  s.z.copy_(x.masked_fill(next.logical_not(), 0));
  s.u.copy_(x - s.z);
  s.step.copy_(s.z - s.u - s.b0);
  const bool changed = at::ne(next, s.keep).any().item<bool>();
  s.keep.copy_(next);
  return changed;
}

}  // namespace

at::Tensor admm(const at::Tensor& weight, const at::Tensor& gram, const at::Tensor& initial_keep,
                const AdmmOptions& o, int64_t* iterations) {
  at::NoGradGuard no_grad;
  check(weight, initial_keep, o);
  const int64_t cols = weight.size(1);
  const auto compute = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto h64 = detail::damped_gram(gram.to(weight.device()), cols, o.percdamp, /*dead_to_one=*/false).h;
  // ADMM runs on B = W D with D = sqrt(diag H): the scaled Gram D^-1 H D^-1 has a unit diagonal,
  // so one rho0 suits every layer, and projecting |B| ranks weights by |w_ij| * ||x_j|| (Wanda's
  // measure) rather than by |w_ij|, which lowered the layers' output error (docs/semantics.md).
  const auto diag = h64.diagonal();
  check_positive_definite(at::all(diag > 0).item<bool>(), o.percdamp);
  const auto d64 = diag.sqrt();
  const auto hs64 = h64 / d64.unsqueeze(0) / d64.unsqueeze(1);
  // Hs = Q diag(lambda) Q^T once: (Hs + rho I)^-1 = Q diag(1 / (lambda + rho)) Q^T for every rho,
  // products instead of a factorisation per penalty and triangular solves.
  auto [lambda64, q64] = at::linalg_eigh(hs64);
  // Numerically singular too: rounding leaves the null eigenvalues of a rank-deficient Gram
  // anywhere within a few n * eps of the largest one, on either side of 0.
  const double noise = lambda64.max().item<double>() * static_cast<double>(cols) * std::numeric_limits<double>::epsilon();
  check_positive_definite(at::all(lambda64 > noise).item<bool>(), o.percdamp);
  const auto q = q64.to(compute), lambda = lambda64.to(compute);
  const auto w0 = weight.to(compute);

  // A copy: the support is updated in place, and initial_keep is the caller's.
  Iterate s;
  s.keep = initial_keep.to(weight.device(), at::kBool, /*non_blocking=*/false, /*copy=*/true).contiguous();
  s.b0 = (w0 * d64.to(compute)).contiguous();
  s.z = s.b0.masked_fill(s.keep.logical_not(), 0).contiguous();
  s.u = at::zeros_like(s.z);
  s.step = s.z - s.b0;
  s.v = at::empty_like(s.z);
  // V = argmin (B0 - V) Hs (B0 - V)^T + rho |V - Z + U|^2, row by row: (Hs + rho I) v = Hs b0 + rho (z - u),
  // i.e. V = B0 + (Z - U - B0) M with M = rho (Hs + rho I)^-1 = Q diag(rho / (lambda + rho)) Q^T. rho
  // changes every 3 iterations: forming M then (2 n^3 flops) and one product per iteration
  // (2 rows n^2) beats two products with Q per iteration unless the layer has at most a third as
  // many rows as inputs. Every product writes into buffers of the iteration.
  const bool form_m = cols < 3 * weight.size(0);
  at::Tensor m, scale, projected = form_m ? at::Tensor() : at::empty_like(s.z);
  double rho = -1;
  int64_t unchanged = 0, it = 0;
  for (; it < o.max_iterations && unchanged < o.patience; ++it) {
    const double next = o.rho0 * std::pow(o.growth, static_cast<double>(it / 3));
    if (next != rho) {
      rho = next;
      scale = rho / (lambda + rho);
      if (form_m) m = at::matmul(q * scale.unsqueeze(0), q.t());
    }
    if (form_m) {
      at::addmm_out(s.v, s.b0, s.step, m);
    } else {
      at::mm_out(projected, s.step, q);
      projected.mul_(scale.unsqueeze(0));
      at::addmm_out(s.v, s.b0, projected, q.t());
    }
    unchanged = project_rows(s, o) ? 0 : unchanged + 1;
  }
  if (iterations) *iterations = it;
  const auto& keep = s.keep;
  const auto& z = s.z;
  // ADMM is a heuristic: each row keeps the better (by its own objective) of the refits of the
  // final support and of the initial one, so the result is never worse than its start. Both
  // refits use H^-1 = D^-1 Q diag(1 / lambda) Q^T D^-1 from the eigendecomposition (no new
  // factorisation), and the final support's starts from ADMM's own iterate on it. The initial
  // support's refit races the final one's objective: it ends for the rows whose optimum is
  // proven worse (nearly all, within a few iterations), and the other rows finish and compare.
  const auto h = h64.to(compute);
  const auto d_inv = d64.reciprocal();
  const auto h_inv = (at::matmul(q64 / lambda64.unsqueeze(0), q64.t()) * d_inv.unsqueeze(0) * d_inv.unsqueeze(1)).to(compute);
  const auto kept = keep.to(compute);
  const auto found = detail::refit_from(w0, kept, h, h_inv, z / d64.to(compute));
  const auto initial = initial_keep.to(weight.device());
  if (at::equal(keep, initial)) return found.to(weight.scalar_type());
  const auto row_error = [&](const at::Tensor& v) {
    const auto d = w0 - v;
    return (at::matmul(d, h) * d).sum(1, /*keepdim=*/true);
  };
  const auto found_error = row_error(found);
  const auto start_kept = initial.to(compute);
  at::Tensor beaten;
  const auto start = detail::refit_from(w0, start_kept, h, h_inv, w0 * start_kept, found_error, &beaten);
  const auto keep_found = beaten.logical_or(found_error <= row_error(start));
  return at::where(keep_found, found, start).to(weight.scalar_type());
}

}  // namespace symprune
