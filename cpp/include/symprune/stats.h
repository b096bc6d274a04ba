#pragma once
// Activation statistics of one Linear layer (docs/semantics.md#statistics), accumulated in fp64.

#include "symprune/errors.h"
#include "symprune/export.h"
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace symprune {

// Accumulates per-feature statistics of a stream of activations.
//
// Each update() is one unit for the variance: DSnoT's `in_var` is the token-weighted
// average of the per-update population variance, so feed one sequence per call to get
// its per-sequence definition. A tensor of shape (B, L, F) counts as B sequences,
// anything of lower rank as one.
class SYMPRUNE_API ActivationStats {
 public:
  explicit ActivationStats(int64_t features);

  void update(const at::Tensor& x);

  int64_t features() const { return features_; }
  int64_t tokens() const { return tokens_; }
  int64_t sequences() const { return sequences_; }

  // Named for a layer's inputs, as in LayerStats and Python; the same accumulator serves a
  // layer's outputs (out_norm = in_norm() of the outputs).
  at::Tensor in_sq() const;    // sum over tokens of x^2                      (fp32)
  at::Tensor in_norm() const;  // sqrt(in_sq / sequences): Wanda's sqrt(scaler_row)
  at::Tensor in_mean() const;  // sum over tokens / sequences: L x per-token mean (DSnoT)
  at::Tensor in_var() const;   // token-weighted mean of per-update population variance

  // The running sums as one fp64 vector [sum of squares, sum, weighted variance, tokens,
  // sequences] (a copy). The elementwise sum of the states of accumulators that saw disjoint
  // updates is the state of one that saw them all: how processes that each ran other windows
  // combine their statistics (all-reduce, then load_state).
  at::Tensor state() const;
  void load_state(const at::Tensor& state);  // ValueError for a vector of another size

 private:
  void require_data(const char* what) const;

  int64_t features_;
  int64_t tokens_ = 0;
  int64_t sequences_ = 0;
  at::Tensor sum_sq_;        // fp64 (features)
  at::Tensor sum_;           // fp64 (features)
  at::Tensor weighted_var_;  // fp64 (features): sum over updates of tokens * variance
};

// Accumulates the cross-product A^T B of two streams of activations with the same tokens (rows
// of a and b), e.g. a layer's inputs in the pruned model against the dense model's, for the
// residual target (reconstruct.h residual_target): each update's product in fp32, summed in fp64.
class SYMPRUNE_API CrossStats {
 public:
  CrossStats(int64_t left_features, int64_t right_features);

  // ValueError unless a is (..., left_features) and b (..., right_features) with as many tokens.
  void update(const at::Tensor& a, const at::Tensor& b);

  int64_t left_features() const { return left_; }
  int64_t right_features() const { return right_; }
  int64_t tokens() const { return tokens_; }
  at::Tensor sum() const;  // (left, right) fp64, summed over tokens

  // [the sum, flattened; tokens] in fp64 (a copy), summable over processes like GramStats::state.
  at::Tensor state() const;
  void load_state(const at::Tensor& state);

 private:
  int64_t left_;
  int64_t right_;
  int64_t tokens_ = 0;
  at::Tensor sum_;  // fp64 (left, right)
};

// Accumulates the Gram X^T X of a stream of activations (rows of x are tokens), the input of
// the weight-reconstruction methods (reconstruct.h): the cross-product of x with itself.
// Linears that read the same input share one.
class SYMPRUNE_API GramStats {
 public:
  explicit GramStats(int64_t features);

  void update(const at::Tensor& x);

  int64_t features() const { return products_.left_features(); }
  int64_t tokens() const { return products_.tokens(); }
  at::Tensor gram() const;  // (features, features) fp64, summed over tokens

  // [the Gram, flattened; tokens] in fp64 (a copy), summable over processes like
  // ActivationStats::state.
  at::Tensor state() const { return products_.state(); }
  void load_state(const at::Tensor& state);

 private:
  CrossStats products_;
};

}  // namespace symprune
