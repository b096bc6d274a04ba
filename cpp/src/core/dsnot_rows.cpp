// The per-row DSnoT walk on the CPU: rows are independent and run in parallel. The
// per-element quantities of the default metrics are computed row by row, so refining a
// layer allocates no matrix-sized temporaries.
#include "core/dsnot_prepared.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace symprune::detail {
namespace {

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


// D = W * in_mean for the row; returns e, the summed D of the pruned weights.
double expected_error(const DsnotRow& row, const DsnotColumns& columns, int64_t cols, DsnotScratch& s) {
  s.d.resize(cols);
  double e = 0.0;
  for (int64_t j = 0; j < cols; ++j) {
    s.d[j] = row.w[j] * columns.mean[j];
    e += row.keep[j] ? 0.0 : double(s.d[j]);  // in column order, like the oracle
  }
  return e;
}

void fill_metrics(const DsnotRow& row, const DsnotColumns& columns, int64_t cols, DsnotScratch& s) {
  s.grow.resize(cols);
  s.prune.resize(cols);
  for (int64_t j = 0; j < cols; ++j) {
    s.grow[j] = row.grow_key ? row.grow_key[j] : s.d[j] / columns.var_denominator[j];
    s.prune[j] = row.prune_key ? row.prune_key[j] : std::fabs(row.w[j]) * columns.norm[j];
  }
}

// Fills the candidate lists with their first max_cycles entries each (a row never uses
// more). Grow candidates are initially pruned weights with D != 0, split by the sign of their
// grow key: the largest positive key first, ties to the higher column (a stable ascending
// sort read from its high end), or the most negative first, ties to the lower column. Prune
// candidates (unstructured only) are initially kept weights with D != 0, split by the sign
// of D, in ascending prune metric, ties to the lower column.
//
// One pass, with bounded heaps whose top is the worst entry kept so far; the rare element
// that beats it is the only unpredictable branch, which is what makes this pass fast.
void collect_candidates(const DsnotRow& row, const DsnotRowParams& params, bool with_prune, DsnotScratch& s) {
  constexpr int kNone = kLists;
  const float inf = std::numeric_limits<float>::infinity();
  float worst[kLists + 1] = {inf, inf, inf, inf, -inf};  // kNone never admits anything
  // Keys are stored so that every list is ascending; the positive grow list is read by
  // descending key, so it stores -key and lets a later column win ties.
  auto before = [](bool later_wins) {
    return [later_wins](const Candidate& a, const Candidate& b) {
      return a.key < b.key || (a.key == b.key && (later_wins ? a.index > b.index : a.index < b.index));
    };
  };
  for (auto& list : s.lists) list.clear();
  const auto limit = static_cast<size_t>(params.max_cycles);
  const float* d = s.d.data();
  const float* g = s.grow.data();
  const float* metric = s.prune.data();
  for (int64_t j = 0; j < params.cols; ++j) {
    // Arithmetic instead of branches: the sign tests are coin flips. Grow keys are stored
    // as -|g| (the positive list is read by descending g), prune keys are the metric.
    const int pruned = !row.keep[j];
    const float dj = d[j], gj = g[j];
    const int grow_slot = kNone - (kNone - kGrowPositive) * (gj > 0.0f) - (kNone - kGrowNegative) * (gj < 0.0f);
    const int prune_slot = with_prune ? kPruneNegative - (dj > 0.0f) : kNone;
    const int slot = kNone + (dj != 0.0f) * (pruned * (grow_slot - kNone) + (1 - pruned) * (prune_slot - kNone));
    const float key = pruned ? -std::fabs(gj) : metric[j];
    const bool later_wins = slot == kGrowPositive;
    const bool admit = (key < worst[slot]) | ((key == worst[slot]) & later_wins);
    if (!admit) continue;
    auto& list = s.lists[slot];
    const auto order = before(later_wins);
    if (list.size() < limit) {
      list.push_back({key, j});
      std::push_heap(list.begin(), list.end(), order);
    } else {
      std::pop_heap(list.begin(), list.end(), order);
      list.back() = {key, j};
      std::push_heap(list.begin(), list.end(), order);
    }
    if (list.size() == limit) worst[slot] = list.front().key;
  }
  for (int slot = 0; slot < kLists; ++slot)
    std::sort_heap(s.lists[slot].begin(), s.lists[slot].end(), before(slot == kGrowPositive));
}

// The regularised decision boundary of R2-DSnoT (off: every swap is accepted).
bool accept(const DsnotRow& row, const DsnotRowParams& params, double e, double e_after, int64_t p, int64_t r) {
  if (!params.boundary) return true;
  const double change = (std::fabs(e_after) - std::fabs(e)) / (std::fabs(e) + 1e-12);
  return change + params.gamma1 * row.phi[p] - params.gamma2 * row.phi[r] < 0.0;
}

// Regrows r and prunes p unless the boundary rejects the swap; returns the row's error.
double swap_unless_rejected(const DsnotRow& row, const DsnotRowParams& params, double e, double e_after, int64_t p, int64_t r) {
  if (!accept(row, params, e, e_after, p, r)) return e;
  row.keep[r] = true;
  row.keep[p] = false;
  return e_after;
}

// Next entry of a list, or -1 when it is exhausted.
int64_t take(const DsnotScratch& s, CandidateList list, size_t& next) {
  return next < s.lists[list].size() ? s.lists[list][next++].index : -1;
}

// Rows whose error is already within the threshold never swap: skip their candidate lists.
bool needs_refinement(double e, const DsnotRowParams& params) {
  return params.max_cycles > 0 && std::fabs(e) > params.threshold;
}

// Computes the row's error e; when the row needs refining, also its metrics and candidate
// lists. Returns whether the walk should run.
bool begin_walk(const DsnotRow& row, const DsnotColumns& columns, const DsnotRowParams& params, bool with_prune,
                DsnotScratch& s, double& e) {
  e = expected_error(row, columns, params.cols, s);
  if (!needs_refinement(e, params)) return false;
  fill_metrics(row, columns, params.cols, s);
  collect_candidates(row, params, with_prune, s);
  return true;
}

void refine_row_unstructured(const DsnotRow& row, const DsnotColumns& columns, const DsnotRowParams& params,
                             DsnotScratch& s) {
  double e = 0.0;
  if (!begin_walk(row, columns, params, /*with_prune=*/true, s, e)) return;
  size_t next[kLists] = {0, 0, 0, 0};
  for (int64_t cycle = 0; cycle < params.max_cycles && std::fabs(e) > params.threshold; ++cycle) {
    // e > 0: regrow a weight with D > 0 and prune one with D < 0; e < 0: the opposite.
    const auto grow = e > 0 ? kGrowPositive : kGrowNegative;
    const int64_t r = take(s, grow, next[grow]);
    if (r < 0) break;
    const auto prune = e > 0 ? kPruneNegative : kPrunePositive;
    const int64_t p = take(s, prune, next[prune]);
    if (p < 0) break;
    e = swap_unless_rejected(row, params, e, e + s.d[p] - s.d[r], p, r);
  }
}

void refine_row_nm(const DsnotRow& row, const DsnotColumns& columns, const DsnotRowParams& params,
                   DsnotScratch& s) {
  double e = 0.0;
  if (!begin_walk(row, columns, params, /*with_prune=*/false, s, e)) return;
  // Only initially kept weights can be pruned, each examined at most once.
  s.examined.assign(row.keep, row.keep + params.cols);
  for (auto& candidate : s.examined) candidate = !candidate;

  const double initial_sign = (e > 0) - (e < 0);
  size_t next[kLists] = {0, 0, 0, 0};
  for (int64_t cycle = 0; cycle < params.max_cycles && std::fabs(e) > params.threshold; ++cycle) {
    const auto grow = e > 0 ? kGrowPositive : kGrowNegative;
    const int64_t r = take(s, grow, next[grow]);
    if (r < 0) break;
    const int64_t start = r - r % params.m;
    int64_t p = -1;
    for (int64_t j = start; j < start + params.m; ++j)
      if (!s.examined[j] && (p < 0 || s.prune[j] < s.prune[p])) p = j;
    if (p < 0) break;
    s.examined[p] = 1;
    const double e_after = e + s.d[p] - s.d[r];
    if (((e_after > 0) - (e_after < 0)) != initial_sign) break;
    e = swap_unless_rejected(row, params, e, e_after, p, r);
  }
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

}  // namespace

at::Tensor refine_rows(const DsnotPrepared& prepared, const at::Tensor& keep_in, const DsnotOptions& options) {
  auto keep = keep_in.clone();
  const int64_t rows = keep.size(0), cols = keep.size(1);
  DsnotRowParams params;
  params.cols = cols;
  params.max_cycles = options.max_cycles;
  params.threshold = options.threshold;
  params.m = options.nm ? options.nm->m : 0;
  params.boundary = options.gamma1.has_value() || options.gamma2.has_value();
  params.gamma1 = options.gamma1.value_or(0.0);
  params.gamma2 = options.gamma2.value_or(0.0);

  const DsnotColumns columns{prepared.mean.const_data_ptr<float>(), prepared.var_denominator.const_data_ptr<float>(),
                             prepared.norm.const_data_ptr<float>()};
  const float* w = prepared.w.const_data_ptr<float>();
  const float* grow = data_or_null(prepared.grow_key);
  const float* prune = data_or_null(prepared.prune_key);
  const float* phi = data_or_null(prepared.phi);
  bool* mask = keep.mutable_data_ptr<bool>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    DsnotScratch scratch;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r * cols;
      const DsnotRow row{w + o, grow ? grow + o : nullptr, prune ? prune + o : nullptr, phi ? phi + o : nullptr,
                         mask + o};
      if (params.m) refine_row_nm(row, columns, params, scratch);
      else refine_row_unstructured(row, columns, params, scratch);
    }
  });
  return keep;
}

}  // namespace symprune::detail
