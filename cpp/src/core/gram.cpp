#include "core/gram.h"

#include "core/checks.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/any.h>
#include <ATen/ops/diagonal.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/mean.h>

#include <cmath>

namespace symprune::detail {

DampedGram damped_gram(const at::Tensor& gram, int64_t in_features, double percdamp, bool dead_to_one) {
  SYMPRUNE_CHECK(gram.defined(), "gram is missing (the Gram X^T X of the layer's inputs)");
  SYMPRUNE_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1), "gram must be a square matrix, got shape ",
                 gram.sizes());
  SYMPRUNE_CHECK(gram.size(0) == in_features, "gram is ", gram.size(0), " x ", gram.size(1),
                 " but the weight has ", in_features, " input features");
  SYMPRUNE_CHECK(is_supported_float(gram.scalar_type()), "gram must be fp16, bf16, fp32 or fp64, got ",
                 gram.scalar_type());
  SYMPRUNE_CHECK(std::isfinite(percdamp) && percdamp >= 0, "percdamp must be >= 0, got ", percdamp);
  check_finite(gram, "gram");
  DampedGram out;
  out.h = gram.to(at::kDouble, /*non_blocking=*/false, /*copy=*/true);
  auto diag = out.h.diagonal();
  SYMPRUNE_CHECK(!at::any(diag < 0).item<bool>(), "gram has a negative diagonal entry (not a Gram matrix)");
  out.dead = diag == 0;
  if (dead_to_one) diag.masked_fill_(out.dead, 1.0);
  out.damping = percdamp * at::mean(diag).item<double>();
  diag.add_(out.damping);
  return out;
}

at::Tensor cholesky_or_throw(const at::Tensor& h, double percdamp, const char* what) {
  auto [factor, info] = at::linalg_cholesky_ex(h);
  SYMPRUNE_CHECK(!at::any(info != 0).item<bool>(), what, " is not positive definite even after damping (percdamp=",
                 percdamp, "); raise percdamp or calibrate on more tokens");
  return factor;
}

}  // namespace symprune::detail
