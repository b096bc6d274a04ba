#pragma once
// The refit's solver (refit.cpp) for callers that already hold the damped Gram and its inverse.

#include <ATen/core/Tensor.h>

namespace symprune::detail {

// The least-squares refit of `w` on the support `k` (1 = kept, `w`'s dtype) by the
// preconditioned conjugate gradient of refit(), from `start` (zero off the support; updated
// in place and returned): `h` is the damped Gram and `h_inv` its inverse, both in `w`'s dtype
// (fp32 or fp64). Pruned entries come back +0.
at::Tensor refit_from(const at::Tensor& w, const at::Tensor& k, const at::Tensor& h, const at::Tensor& h_inv,
                      at::Tensor start);

}  // namespace symprune::detail
