#pragma once
// The per-row DSnoT walk. Rows are independent; dsnot.cpp validates the inputs and runs
// these kernels over rows in parallel. The per-element quantities of the default metrics
// are computed row by row here, so refining a layer allocates no matrix-sized temporaries.

#include <cstdint>
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

// Per-column statistics (length cols).
struct DsnotColumns {
  const float* mean;             // in_mean
  const float* var_denominator;  // max(in_var, eps)^v
  const float* norm;             // in_norm
};

// One row: its weights, optional metric overrides (R2-DSnoT, N:M initial score) and its
// mask (in: initial, out: refined).
struct DsnotRow {
  const float* w;
  const float* grow_key;   // null: D / var_denominator
  const float* prune_key;  // null: the Wanda metric |W| * in_norm
  const float* phi;        // normalised phi of the regularised boundary, null when off
  bool* keep;
};

// A candidate of one of the walk's lists, with the key it is ordered by.
struct Candidate {
  float key;
  int64_t index;
};

// The walk's four candidate lists, in the order they are read.
enum CandidateList { kGrowPositive = 0, kGrowNegative = 1, kPrunePositive = 2, kPruneNegative = 3, kLists = 4 };

// Reusable buffers of one worker thread.
struct DsnotScratch {
  std::vector<float> d, grow, prune;
  std::vector<Candidate> lists[kLists];
  std::vector<char> examined;
};

void refine_row_unstructured(const DsnotRow& row, const DsnotColumns& columns, const DsnotRowParams& params,
                             DsnotScratch& scratch);
void refine_row_nm(const DsnotRow& row, const DsnotColumns& columns, const DsnotRowParams& params,
                   DsnotScratch& scratch);

}  // namespace symprune::detail
