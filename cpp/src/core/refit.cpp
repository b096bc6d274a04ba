// The least-squares refit of the kept weights, for any mask: per row r with kept set S, the
// v_S that solves H_SS v_S = (H w)_S (H damped). Rows have different supports, so instead of a
// factorisation per row (|S|^3 each) all rows run a preconditioned conjugate gradient
// together, each iteration two products with H-sized matrices. The preconditioner is the
// damped Gram's inverse restricted to S, (H^-1)_SS: exact when nothing is pruned, and in
// practice it reaches the optimum to 1e-10 (relative objective) in tens of iterations.
#include "symprune/reconstruct.h"

#include "core/checks.h"
#include "core/gram.h"
#include "core/refit_from.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cholesky_inverse.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

namespace symprune {
namespace {

constexpr int64_t kMaxIterations = 500;
// A row has converged once its preconditioned residual r^T z is this factor (fp64; fp32) of
// its start's, about the square of the solution's relative error, or of its objective: r^T z
// bounds the objective's distance to the optimum (below), so a good start stops early. In fp32
// the objective reaches its rounding floor by the time r^T z is 1e-10 of it: iterating on to
// 1e-12 (one more check period on LLM Grams) changes nothing measurable.
constexpr double kTolerance64 = 1e-24, kTolerance32 = 1e-10;
constexpr int64_t kCheckEvery = 5;  // iterations between convergence checks (a device sync)

at::Tensor row_dot(const at::Tensor& a, const at::Tensor& b) { return (a * b).sum(1, /*keepdim=*/true); }

// Where the denominator is 0 (a row that has converged exactly, or keeps nothing) the step is 0.
at::Tensor safe_ratio(const at::Tensor& num, const at::Tensor& den) {
  return at::where(den > 0, num / at::where(den > 0, den, at::ones_like(den)), at::zeros_like(num));
}

}  // namespace

at::Tensor detail::refit_from(const at::Tensor& w, const at::Tensor& k, const at::Tensor& h, const at::Tensor& h_inv,
                              at::Tensor v, const at::Tensor& rival, at::Tensor* beaten) {
  const double tolerance = w.scalar_type() == at::kDouble ? kTolerance64 : kTolerance32;
  // Minimise f(v) = (w - v)^T H (w - v) over v with v = 0 off the support, for every row:
  // the residual is the projected gradient b - A v with A v = (v H) * k and b = (w H) * k.
  const auto gradient = at::matmul(w - v, h);
  auto r = gradient * k;
  auto z = at::matmul(r, h_inv) * k;
  auto p = z.clone();
  auto rz = row_dot(r, z);
  const auto rz0 = rz.clone();
  // The objective f, which each step lowers by alpha r^T z, and a lower bound of the optimum,
  // f - r^T z: the gap f(v) - f* = r^T A^-1 r is at most r^T z because the preconditioner
  // (H^-1)_SS is at least (H_SS)^-1 (the inverse of a Schur complement of H against that of
  // H_SS). In a race, the margin covers the rounding of the tracked f.
  const bool racing = rival.defined();
  auto f = row_dot(gradient, w - v);
  constexpr double kMargin = 1e-3;
  const auto lost = [&] { return (f - rz) * (1 - kMargin) > rival; };
  const auto done = [&] {
    auto converged = (rz <= rz0 * tolerance).logical_or_(rz <= f * tolerance);
    return racing ? converged.logical_or_(lost()) : converged;
  };
  for (int64_t it = 1; it <= kMaxIterations; ++it) {
    const auto ap = at::matmul(p, h) * k;
    const auto alpha = safe_ratio(rz, row_dot(p, ap));
    v.add_(alpha * p);
    r.sub_(alpha * ap);
    f.sub_(alpha * rz);
    z = at::matmul(r, h_inv) * k;
    const auto rz_next = row_dot(r, z);
    p = z + safe_ratio(rz_next, rz) * p;
    rz = rz_next;
    if (it % kCheckEvery == 0 && done().all().item<bool>()) break;
  }
  if (beaten) *beaten = racing ? lost() : at::zeros_like(rz, at::kBool);
  // Pruned entries are +0 (v * k is -0 where v < 0: masked_fill writes +0).
  return v.masked_fill_(k == 0, 0);
}

at::Tensor refit(const at::Tensor& weight, const at::Tensor& keep, const at::Tensor& gram, double percdamp) {
  at::NoGradGuard no_grad;
  detail::check_matrix(weight, "weight");
  detail::check_mask(keep, weight, "keep");
  const int64_t cols = weight.size(1);
  const auto h64 = detail::damped_gram(gram.to(weight.device()), cols, percdamp, /*dead_to_one=*/false).h;
  const auto lower = detail::cholesky_or_throw(h64, percdamp, "gram");
  const auto compute = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto h_inv = at::cholesky_inverse(lower).to(compute);  // LAPACK potri: no identity, 1/3 of two solves' flops
  const auto k = keep.to(weight.device(), compute);  // 1 = kept
  const auto w = weight.to(compute);
  return detail::refit_from(w, k, h64.to(compute), h_inv, w * k).to(weight.scalar_type());
}

}  // namespace symprune
