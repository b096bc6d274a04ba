// The target weights of the residual objective (reconstruct.h): the unconstrained minimiser of
// ||X~ V^T - (X W^T + R)||^2 + lambda ||V - W||^2, from its normal equations
// (H + lambda I) V^T = (G + lambda I) W^T + E with H = X~^T X~, G = X~^T X, E = X~^T R.
#include "symprune/reconstruct.h"

#include "core/checks.h"
#include "core/gram.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cholesky_solve.h>
#include <ATen/ops/matmul.h>

namespace symprune {
namespace {

// A finite floating-point matrix of the given shape, as fp64 on `device`.
at::Tensor checked_fp64(const at::Tensor& t, int64_t rows, int64_t cols, const char* name, const at::Device& device) {
  SYMPRUNE_CHECK(t.defined(), name, " is missing");
  SYMPRUNE_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " must have shape (", rows, ", ",
                 cols, "), got ", t.sizes());
  detail::check_matrix(t, name);  // its dtype and values
  return t.to(device, at::kDouble);
}

}  // namespace

at::Tensor residual_target(const at::Tensor& weight, const at::Tensor& gram, const at::Tensor& cross,
                           const at::Tensor& residual_cross, double percdamp) {
  at::NoGradGuard no_grad;
  detail::check_matrix(weight, "weight");
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const auto device = weight.device();
  // The damping lambda is the one the Gram methods add (damped_gram).
  const auto damped = detail::damped_gram(gram.to(device), cols, percdamp, /*dead_to_one=*/false);
  const auto w = weight.to(at::kDouble);
  auto rhs = at::matmul(checked_fp64(cross, cols, cols, "cross", device), w.t()) + damped.damping * w.t();
  if (residual_cross.defined()) rhs = rhs + checked_fp64(residual_cross, cols, rows, "residual_cross", device);
  const auto lower = detail::cholesky_or_throw(damped.h, percdamp, "gram");
  const auto compute = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::cholesky_solve(rhs, lower).t().to(compute).contiguous();
}

}  // namespace symprune
