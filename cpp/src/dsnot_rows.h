#pragma once
// The per-row DSnoT walk. Rows are independent; dsnot.cpp prepares the per-element
// quantities with tensor ops and runs these kernels over rows in parallel.

#include <cstdint>
#include <optional>
#include <vector>

namespace symprune::detail {

struct DsnotRowParams {
  int64_t cols = 0;
  int64_t max_cycles = 50;
  double threshold = 0.1;
  int64_t m = 0;  // 0 = unstructured, else the N:M group size
  bool boundary = false;
  double gamma1 = 0.0, gamma2 = 0.0;
};

// One row's inputs (length cols each) and its mask (in: initial, out: refined).
struct DsnotRow {
  const float* d;           // W * in_mean: the expected output contribution
  const float* grow_key;    // rank of a pruned weight for regrowing
  const float* prune_key;   // unstructured: prune order; N:M: initial score within a group
  const float* phi;         // normalised phi for the regularised boundary (may be null)
  bool* keep;
};

// Reusable buffers of one worker thread.
struct DsnotScratch {
  std::vector<int64_t> grow_pos, grow_neg, prune_pos, prune_neg;
  std::vector<char> examined;
};

void refine_row_unstructured(const DsnotRow& row, const DsnotRowParams& params, DsnotScratch& scratch);
void refine_row_nm(const DsnotRow& row, const DsnotRowParams& params, DsnotScratch& scratch);

}  // namespace symprune::detail
