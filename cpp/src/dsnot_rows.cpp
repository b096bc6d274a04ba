#include "dsnot_rows.h"

#include <algorithm>
#include <cmath>

namespace symprune::detail {
namespace {

// Sorts just the first `limit` candidates: a row never uses more than max_cycles of a list.
template <typename Less>
void partial_order(std::vector<int64_t>& list, int64_t limit, Less less) {
  const auto head = list.begin() + std::min<int64_t>(limit, static_cast<int64_t>(list.size()));
  std::partial_sort(list.begin(), head, list.end(), less);
}

// Grow candidates: initially pruned weights with D != 0, split by the sign of their key.
// Reading a stable ascending sort from its high end gives the largest key first and, among
// equal keys, the higher column first; from its low end the lower column first.
void collect_grow(const DsnotRow& row, const DsnotRowParams& params, DsnotScratch& s) {
  s.grow_pos.clear();
  s.grow_neg.clear();
  for (int64_t j = 0; j < params.cols; ++j) {
    if (row.keep[j] || row.d[j] == 0.0f) continue;
    if (row.grow_key[j] > 0.0f) s.grow_pos.push_back(j);
    else if (row.grow_key[j] < 0.0f) s.grow_neg.push_back(j);
  }
  const float* g = row.grow_key;
  partial_order(s.grow_pos, params.max_cycles,
                [g](int64_t a, int64_t b) { return g[a] > g[b] || (g[a] == g[b] && a > b); });
  partial_order(s.grow_neg, params.max_cycles,
                [g](int64_t a, int64_t b) { return g[a] < g[b] || (g[a] == g[b] && a < b); });
}

double pruned_error(const DsnotRow& row, int64_t cols) {
  double e = 0.0;
  for (int64_t j = 0; j < cols; ++j)
    if (!row.keep[j]) e += row.d[j];
  return e;
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

}  // namespace

void refine_row_unstructured(const DsnotRow& row, const DsnotRowParams& params, DsnotScratch& s) {
  collect_grow(row, params, s);
  // Prune candidates: initially kept weights with D != 0 in ascending prune metric.
  s.prune_pos.clear();
  s.prune_neg.clear();
  for (int64_t j = 0; j < params.cols; ++j) {
    if (!row.keep[j]) continue;
    if (row.d[j] > 0.0f) s.prune_pos.push_back(j);
    else if (row.d[j] < 0.0f) s.prune_neg.push_back(j);
  }
  const float* key = row.prune_key;
  auto ascending = [key](int64_t a, int64_t b) { return key[a] < key[b] || (key[a] == key[b] && a < b); };
  partial_order(s.prune_pos, params.max_cycles, ascending);
  partial_order(s.prune_neg, params.max_cycles, ascending);

  double e = pruned_error(row, params.cols);
  size_t grow_pos_i = 0, grow_neg_i = 0, prune_pos_i = 0, prune_neg_i = 0;
  for (int64_t cycle = 0; cycle < params.max_cycles && std::fabs(e) > params.threshold; ++cycle) {
    const int64_t r = next_grow(s, e, grow_pos_i, grow_neg_i);
    if (r < 0) break;
    // e > 0 asks for a weight with D < 0 to prune, e < 0 for one with D > 0.
    int64_t p;
    if (e > 0) p = prune_neg_i < s.prune_neg.size() ? s.prune_neg[prune_neg_i++] : -1;
    else p = prune_pos_i < s.prune_pos.size() ? s.prune_pos[prune_pos_i++] : -1;
    if (p < 0) break;
    const double e_after = e + row.d[p] - row.d[r];
    if (!accept(row, params, e, e_after, p, r)) continue;
    row.keep[r] = true;
    row.keep[p] = false;
    e = e_after;
  }
}

void refine_row_nm(const DsnotRow& row, const DsnotRowParams& params, DsnotScratch& s) {
  collect_grow(row, params, s);
  // Only initially kept weights can be pruned, each examined at most once.
  s.examined.assign(row.keep, row.keep + params.cols);
  for (auto& candidate : s.examined) candidate = !candidate;

  double e = pruned_error(row, params.cols);
  const double initial_sign = (e > 0) - (e < 0);
  size_t grow_pos_i = 0, grow_neg_i = 0;
  for (int64_t cycle = 0; cycle < params.max_cycles && std::fabs(e) > params.threshold; ++cycle) {
    const int64_t r = next_grow(s, e, grow_pos_i, grow_neg_i);
    if (r < 0) break;
    const int64_t start = r - r % params.m;
    int64_t p = -1;
    for (int64_t j = start; j < start + params.m; ++j)
      if (!s.examined[j] && (p < 0 || row.prune_key[j] < row.prune_key[p])) p = j;
    if (p < 0) break;
    s.examined[p] = 1;
    const double e_after = e + row.d[p] - row.d[r];
    if (((e_after > 0) - (e_after < 0)) != initial_sign) break;
    if (!accept(row, params, e, e_after, p, r)) continue;
    row.keep[r] = true;
    row.keep[p] = false;
    e = e_after;
  }
}

}  // namespace symprune::detail
