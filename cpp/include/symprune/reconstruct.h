#pragma once
// Weight reconstruction: pruning that also re-solves the weights it keeps, so that the layer's
// output on the calibration inputs X changes as little as possible. Both take the Gram of the
// layer's inputs, H = X^T X summed over tokens (ActivationStats::gram(); any positive scale:
// results do not depend on it), and damp it by percdamp * mean(diag H) before use. Inputs whose
// Gram diagonal is 0 (never active) are pruned. See docs/semantics.md#weight-reconstruction.

#include <ATen/core/Tensor.h>

#include "symprune/errors.h"
#include "symprune/export.h"
#include "symprune/mask.h"

#include <cstdint>
#include <optional>

namespace symprune {

// Internal loops, exposed for tests: Rows walks each row's block on the CPU (rows in
// parallel); Columns is the reference's column-at-a-time tensor ops (any device).
enum class SparseGptBackend { Auto, Rows, Columns };

struct SparseGptOptions {
  std::optional<double> sparsity;  // exactly one of sparsity and nm
  std::optional<NM> nm;            // a multiple of m must divide blocksize
  int64_t blocksize = 128;
  double percdamp = 0.01;
  SparseGptBackend backend = SparseGptBackend::Auto;
};

// SparseGPT (Frantar & Alistarh, 2023) as its reference code behaves: columns in blocks of
// `blocksize`, the mask of each block chosen from w^2 / U_jj^2 (U: upper Cholesky factor of
// the damped Gram's inverse) on the weights as updated so far, and optimal-brain-surgeon
// updates of the later columns. Returns the pruned, updated weight in the input's dtype and
// on its device; pruned entries are +0. fp16/bf16/fp32 weights are updated in fp32, fp64 in
// fp64. ValueError for a bad weight, Gram or option, and for a Gram whose Cholesky fails even
// after damping.
SYMPRUNE_API at::Tensor sparsegpt(const at::Tensor& weight, const at::Tensor& gram, const SparseGptOptions& options);

// The least-squares refit of the kept weights for any keep mask: per row, the weights on the
// kept support minimising (w - v)^T (H + lambda I) (w - v), lambda = percdamp * mean(diag H),
// with zeros (+0) elsewhere. Solved by a conjugate gradient over all rows at once,
// preconditioned by the damped Gram's inverse, to the precision of the compute dtype (fp32 for
// fp16/bf16/fp32 weights, fp64 for fp64). Returns the input's dtype and device. ValueError
// for a bad weight, mask or Gram, and for a Gram whose Cholesky fails even after damping.
SYMPRUNE_API at::Tensor refit(const at::Tensor& weight, const at::Tensor& keep, const at::Tensor& gram,
                              double percdamp = 0.01);

// The target weights of the residual objective (Recipe::target, docs/semantics.md#residual-target):
// with X~ the layer's inputs in the model pruned so far, X the dense model's inputs to the same
// layer and R an error the layer's output should also undo (the residual stream's, where the
// output joins it), min over V of ||X~ V^T - (X W^T + R)||^2 + lambda ||V - W||^2 (lambda =
// percdamp * mean(diag H)) equals, on any support, the Gram methods' min (T - V)(H + lambda I)(T - V)^T
// up to a constant, for
//   T = (W (G + lambda I)^T + E^T) (H + lambda I)^-1,  H = X~^T X~ (`gram`), G = X~^T X (`cross`),
//   E = X~^T R (`residual_cross`, (in_features, out_features); undefined: R = 0).
// So sparsegpt, refit and admm run unchanged on T. Returns T in fp32 (fp64 for an fp64 weight) on the
// weight's device. ValueError for a bad weight, Gram or cross-product, and where H + lambda I is not
// positive definite.
SYMPRUNE_API at::Tensor residual_target(const at::Tensor& weight, const at::Tensor& gram, const at::Tensor& cross,
                                        const at::Tensor& residual_cross, double percdamp = 0.01);

struct AdmmOptions {
  std::optional<double> sparsity;  // per row; exactly one of sparsity and nm
  std::optional<NM> nm;
  double percdamp = 0.01;
  // The penalty rho in the input-scaled coordinates (where diag H = 1): rho0 * growth^(iteration / 3).
  double rho0 = 0.1;
  double growth = 1.15;
  int64_t max_iterations = 300;
  int64_t patience = 10;  // stop once the support has not changed for this many iterations
};

// A joint search of mask and weights: ADMM on min_V (W - V) H (W - V)^T with V in the pattern (each
// row keeps in - floor(in * sparsity) weights, or n of every m), from the support of
// `initial_keep`, which must be in that pattern, as in ALPS (Meng et al., 2024). It works on W D,
// D = sqrt(diag H) (so the projection ranks |w_ij| * ||x_j||, Wanda's measure): each iteration solves
// V for the current penalty (through one eigendecomposition of the scaled Gram), projects V + U
// onto the pattern by magnitude and updates the dual U; the penalty grows until the support stops
// changing. The result is, row by row, the better of the refits (above) of the final and of the
// initial support, so it is never worse than its start: pruned entries +0, the input's dtype and
// device. `iterations`, if given, receives the number of iterations run (max_iterations: the
// support was still moving).
SYMPRUNE_API at::Tensor admm(const at::Tensor& weight, const at::Tensor& gram, const at::Tensor& initial_keep,
                             const AdmmOptions& options, int64_t* iterations = nullptr);

}  // namespace symprune
