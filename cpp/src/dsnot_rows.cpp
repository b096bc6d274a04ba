#include "dsnot_rows.h"

#include <algorithm>
#include <cmath>

namespace symprune::detail {
namespace {

// Keeps the first `limit` candidates in `list` order (by `before`) in a bounded heap whose
// top is the worst kept one: a row never uses more than max_cycles of a list, and most
// candidates are rejected by a single comparison.
template <typename Before>
struct BestCandidates {
  std::vector<int64_t>& list;
  int64_t limit;
  Before before;

  void offer(int64_t j) {
    if (static_cast<int64_t>(list.size()) < limit) {
      list.push_back(j);
      std::push_heap(list.begin(), list.end(), before);
    } else if (limit > 0 && before(j, list.front())) {
      std::pop_heap(list.begin(), list.end(), before);
      list.back() = j;
      std::push_heap(list.begin(), list.end(), before);
    }
  }
  void finish() { std::sort_heap(list.begin(), list.end(), before); }
};

template <typename Before>
BestCandidates<Before> best(std::vector<int64_t>& list, int64_t limit, Before before) {
  list.clear();
  return {list, limit, before};
}

// D = W * in_mean for the row; returns e, the summed D of the pruned weights.
double expected_error(const DsnotRow& row, const DsnotColumns& columns, int64_t cols, DsnotScratch& s) {
  s.d.resize(cols);
  double e = 0.0;
  for (int64_t j = 0; j < cols; ++j) {
    s.d[j] = row.w[j] * columns.mean[j];
    if (!row.keep[j]) e += s.d[j];
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

// Grow candidates: initially pruned weights with D != 0, split by the sign of their key.
// Reading a stable ascending sort from its high end gives the largest key first and, among
// equal keys, the higher column first; from its low end the lower column first.
void collect_grow(const DsnotRow& row, const DsnotRowParams& params, DsnotScratch& s) {
  const float* g = s.grow.data();
  auto pos = best(s.grow_pos, params.max_cycles,
                  [g](int64_t a, int64_t b) { return g[a] > g[b] || (g[a] == g[b] && a > b); });
  auto neg = best(s.grow_neg, params.max_cycles,
                  [g](int64_t a, int64_t b) { return g[a] < g[b] || (g[a] == g[b] && a < b); });
  for (int64_t j = 0; j < params.cols; ++j) {
    if (row.keep[j] || s.d[j] == 0.0f) continue;
    if (g[j] > 0.0f) pos.offer(j);
    else if (g[j] < 0.0f) neg.offer(j);
  }
  pos.finish();
  neg.finish();
}

// The regularised decision boundary of R2-DSnoT (off: every swap is accepted).
bool accept(const DsnotRow& row, const DsnotRowParams& params, double e, double e_after, int64_t p, int64_t r) {
  if (!params.boundary) return true;
  const double change = (std::fabs(e_after) - std::fabs(e)) / (std::fabs(e) + 1e-12);
  return change + params.gamma1 * row.phi[p] - params.gamma2 * row.phi[r] < 0.0;
}

// Next grow candidate for the sign of e, or -1 when that side is exhausted.
int64_t next_grow(const DsnotScratch& s, double e, size_t& pos_i, size_t& neg_i) {
  if (e > 0) return pos_i < s.grow_pos.size() ? s.grow_pos[pos_i++] : -1;
  return neg_i < s.grow_neg.size() ? s.grow_neg[neg_i++] : -1;
}

// Rows whose error is already within the threshold never swap: skip their candidate lists.
bool needs_refinement(double e, const DsnotRowParams& params) {
  return params.max_cycles > 0 && std::fabs(e) > params.threshold;
}

}  // namespace

void refine_row_unstructured(const DsnotRow& row, const DsnotColumns& columns, const DsnotRowParams& params,
                             DsnotScratch& s) {
  double e = expected_error(row, columns, params.cols, s);
  if (!needs_refinement(e, params)) return;
  fill_metrics(row, columns, params.cols, s);
  collect_grow(row, params, s);
  // Prune candidates: initially kept weights with D != 0 in ascending prune metric.
  const float* key = s.prune.data();
  auto ascending = [key](int64_t a, int64_t b) { return key[a] < key[b] || (key[a] == key[b] && a < b); };
  auto pos = best(s.prune_pos, params.max_cycles, ascending);
  auto neg = best(s.prune_neg, params.max_cycles, ascending);
  for (int64_t j = 0; j < params.cols; ++j) {
    if (!row.keep[j]) continue;
    if (s.d[j] > 0.0f) pos.offer(j);
    else if (s.d[j] < 0.0f) neg.offer(j);
  }
  pos.finish();
  neg.finish();

  size_t grow_pos_i = 0, grow_neg_i = 0, prune_pos_i = 0, prune_neg_i = 0;
  for (int64_t cycle = 0; cycle < params.max_cycles && std::fabs(e) > params.threshold; ++cycle) {
    const int64_t r = next_grow(s, e, grow_pos_i, grow_neg_i);
    if (r < 0) break;
    // e > 0 asks for a weight with D < 0 to prune, e < 0 for one with D > 0.
    int64_t p;
    if (e > 0) p = prune_neg_i < s.prune_neg.size() ? s.prune_neg[prune_neg_i++] : -1;
    else p = prune_pos_i < s.prune_pos.size() ? s.prune_pos[prune_pos_i++] : -1;
    if (p < 0) break;
    const double e_after = e + s.d[p] - s.d[r];
    if (!accept(row, params, e, e_after, p, r)) continue;
    row.keep[r] = true;
    row.keep[p] = false;
    e = e_after;
  }
}

void refine_row_nm(const DsnotRow& row, const DsnotColumns& columns, const DsnotRowParams& params,
                   DsnotScratch& s) {
  double e = expected_error(row, columns, params.cols, s);
  if (!needs_refinement(e, params)) return;
  fill_metrics(row, columns, params.cols, s);
  collect_grow(row, params, s);
  // Only initially kept weights can be pruned, each examined at most once.
  s.examined.assign(row.keep, row.keep + params.cols);
  for (auto& candidate : s.examined) candidate = !candidate;

  const double initial_sign = (e > 0) - (e < 0);
  size_t grow_pos_i = 0, grow_neg_i = 0;
  for (int64_t cycle = 0; cycle < params.max_cycles && std::fabs(e) > params.threshold; ++cycle) {
    const int64_t r = next_grow(s, e, grow_pos_i, grow_neg_i);
    if (r < 0) break;
    const int64_t start = r - r % params.m;
    int64_t p = -1;
    for (int64_t j = start; j < start + params.m; ++j)
      if (!s.examined[j] && (p < 0 || s.prune[j] < s.prune[p])) p = j;
    if (p < 0) break;
    s.examined[p] = 1;
    const double e_after = e + s.d[p] - s.d[r];
    if (((e_after > 0) - (e_after < 0)) != initial_sign) break;
    if (!accept(row, params, e, e_after, p, r)) continue;
    row.keep[r] = true;
    row.keep[p] = false;
    e = e_after;
  }
}

}  // namespace symprune::detail
