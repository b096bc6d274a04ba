#pragma once
// DSnoT (Zhang et al., ICLR 2024) as its public code behaves (docs/semantics.md#dsnot), and the
// R2-DSnoT options of the symmetric paper (section 5). Both refine a keep mask without
// training: every swap regrows one pruned weight and prunes one kept weight of the same row.

#include "symprune/errors.h"
#include "symprune/export.h"
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "symprune/mask.h"

namespace symprune {

enum class Relative { None, Prune, Grow };

// Rows: a per-row walk on the CPU, parallel over rows (tensors on other devices are copied
// there and the result back).
// Batched: all rows advanced together with tensor ops on the weight's device (CUDA).
// Auto: Rows for CPU tensors, Batched otherwise. Both give the same masks.
enum class DsnotBackend { Auto, Rows, Batched };

struct SYMPRUNE_API DsnotOptions {
  std::optional<NM> nm;          // N:M branch; the pattern of the keep mask is preserved
  int64_t max_cycles = 50;
  double threshold = 0.1;        // |e| in DSnoT's units (in_mean is L x the per-token mean)
  double var_power = 1.0;        // v in D / in_var^v
  // R2-DSnoT; all off = exact DSnoT.
  Relative relative = Relative::None;
  double a = 0.5;                // activation power in the relative prune score
  std::optional<double> gamma1;  // regularised decision boundary: on when either is set
  std::optional<double> gamma2;
  double q = 1.0;                // phi_j = |W_ij|^q * in_norm_j
  DsnotBackend backend = DsnotBackend::Auto;
};

struct SYMPRUNE_API DsnotInputs {
  at::Tensor weight;     // (out, in), any floating dtype
  at::Tensor keep_mask;  // (out, in) bool, true = kept
  at::Tensor in_norm;    // (in)
  at::Tensor in_mean;    // (in)
  at::Tensor in_var;     // (in)
  // N:M branch only: the initial score whose lowest kept entry in the group of a regrown
  // weight is pruned; defaults to the Wanda metric |W| * in_norm.
  std::optional<at::Tensor> initial_score;
  // R2-DSnoT's relative metrics only: the whole weight's l1 column norms (column_norms(W, 1))
  // when `weight` is a block of its rows; computed from `weight` when absent.
  std::optional<at::Tensor> column_norms;
};

// Returns the refined keep mask. Kept weights per row (and per N:M group) are unchanged.
SYMPRUNE_API at::Tensor dsnot(const DsnotInputs& inputs, const DsnotOptions& options = {});

}  // namespace symprune
