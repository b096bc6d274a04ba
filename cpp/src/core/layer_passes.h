#pragma once
// A per-layer mask found a block of rows at a time, for a weight too large to hold (the
// streaming engine reads it from its mapping in passes). Counting passes find the k-th smallest
// score, 16 bits of its order key per pass, as the in-memory radix select does; the last pass
// prunes each block's scores below that threshold and, in row-major order, the first ties still
// needed: bit for bit the mask of unstructured_mask(score(weight), sparsity, Layer), then the
// recipe's refinement, whose walk keeps each row's count (DSnoT's unstructured branch).

#include "symprune/prune.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace symprune::detail {

class LayerPasses {
 public:
  // `recipe`: a mask recipe with a per-layer sparsity (Recipe::layer_mask_in_passes); `whole`:
  // the weight's statistics, with its column norms where the score or refinement reads them;
  // `refined`: whether the recipe refines this weight (Recipe::refines).
  LayerPasses(const Recipe& recipe, LayerStats whole, int64_t rows, int64_t cols, bool refined);
  // Another counting pass over every block, in order, is needed.
  bool counting() const { return shift_ >= 0; }
  // Rows [begin, begin + rows.size(0)) of the weight, during a counting pass.
  void count(const at::Tensor& rows, int64_t begin);
  void end_pass();
  // After the counting passes, every block in order: its pruned rows into `out`.
  void prune_into(const at::Tensor& rows, int64_t begin, at::Tensor& out);

 private:
  at::Tensor scores(const at::Tensor& rows, int64_t begin) const;

  Recipe recipe_;
  LayerStats whole_;
  bool refined_;
  std::vector<int64_t> histogram_;
  // 1-based rank of the threshold among the keys that match the prefix; once the threshold is
  // known, the keys equal to it still to prune, in row-major order.
  int64_t rank_;
  uint32_t prefix_ = 0;     // the threshold's key bits found so far
  uint32_t prefix_mask_ = 0;
  int shift_ = 16;          // the digit the next counting pass finds; -1 once the threshold is known
};

}  // namespace symprune::detail
