#pragma once
// The refit's solver (refit.cpp) for callers that already hold the damped Gram and its inverse.

#include <ATen/core/Tensor.h>

namespace symprune::detail {

// The least-squares refit of `w` on the support `k` (1 = kept, `w`'s dtype) by the
// preconditioned conjugate gradient of refit(), from `start` (zero off the support; updated
// in place and returned): `h` is the damped Gram and `h_inv` its inverse, both in `w`'s dtype
// (fp32 or fp64). Pruned entries come back +0.
//
// With `rival` (one objective (w - v)^T H (w - v) per row, (rows, 1)), a race: the iteration
// also ends for a row once its optimum is proven worse than the rival's, and `beaten` (rows, 1)
// says which rows those are. Their returned values are unfinished and must not be used; the
// other rows are refitted as without a rival.
at::Tensor refit_from(const at::Tensor& w, const at::Tensor& k, const at::Tensor& h, const at::Tensor& h_inv,
                      at::Tensor start, const at::Tensor& rival = {}, at::Tensor* beaten = nullptr);

}  // namespace symprune::detail
