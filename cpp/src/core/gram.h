#pragma once
// The Gram of a layer's inputs as the reconstruction methods use it: checked, dead inputs
// marked, damped.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace symprune::detail {

struct DampedGram {
  at::Tensor h;     // (in, in) fp64 on the gram's device, damped
  at::Tensor dead;  // (in) bool: inputs whose Gram diagonal was 0
  double damping = 0;  // what was added to the diagonal: percdamp * mean(diag H)
};

// H + percdamp * mean(diag H) * I in fp64, where H is `gram` with, if dead_to_one, the zero
// diagonal entries of dead inputs set to 1 first (SparseGPT's rule). ValueError unless `gram`
// is a finite floating-point (in_features, in_features) matrix with a non-negative diagonal,
// and percdamp a finite number >= 0.
DampedGram damped_gram(const at::Tensor& gram, int64_t in_features, double percdamp, bool dead_to_one);

// The lower Cholesky factor of `h` (or of each of a batch); ValueError (naming percdamp) where
// it fails.
at::Tensor cholesky_or_throw(const at::Tensor& h, double percdamp, const char* what);

}  // namespace symprune::detail
