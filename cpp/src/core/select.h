#pragma once
// Exact, stable selection of the k lowest values, the primitive behind every mask.
//
// Floats are mapped to unsigned keys whose integer order is the float order, so a selection
// is an integer selection; "stable" means that among equal keys the lower index is taken
// first, exactly what torch.sort(stable=True) ascending gives.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace symprune::detail {

inline uint32_t order_key(float v) {
  v += 0.0f;  // -0.0 -> +0.0: torch.sort treats them as equal
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

inline uint64_t order_key(double v) {
  v += 0.0;
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & (uint64_t{1} << 63)) ? ~bits : (bits | (uint64_t{1} << 63));
}

// The arithmetic type a score element is widened to before it becomes a key.
template <typename scalar_t>
using wide_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
inline auto key_of(scalar_t v) {
  return order_key(static_cast<wide_t<scalar_t>>(v));
}

template <typename scalar_t>
using key_t = decltype(key_of(scalar_t{}));

// Reusable buffers of one worker thread.
template <typename Key>
struct SelectScratch {
  std::vector<Key> keys, bucket;
  std::vector<int32_t> histogram;  // counts of one row or group: < 2^31
};

// The end of a selection of the k lowest of keys[0..n): `below` keys lie under every key of
// scratch.bucket, which holds the k-th lowest. Ranks the bucket for the threshold, then prunes
// everything below it and as many ties as are still needed, in index order.
template <typename Key>
void prune_through_members(const Key* keys, int64_t n, int64_t k, int64_t below, SelectScratch<Key>& scratch,
                           bool* keep) {
  auto& members = scratch.bucket;
  const int64_t rank = k - below;  // 1-based rank of the threshold among the members
  std::nth_element(members.begin(), members.begin() + (rank - 1), members.end());
  const Key threshold = members[rank - 1];
  for (const Key key : members) below += key < threshold;
  for (int64_t j = 0; j < n; ++j) keep[j] = !(keys[j] < threshold);
  for (int64_t j = 0, ties = k - below; ties > 0; ++j) {
    if (keys[j] == threshold) {
      keep[j] = false;
      --ties;
    }
  }
}

// Prunes the k lowest of values[0..n) with ties to the lower index: sets keep[j] = false for
// them and true elsewhere. The threshold is found by bucketing keys on their top bits and
// running nth_element inside the one bucket that holds the k-th key, which is far cheaper
// than nth_element over the whole row.
template <typename scalar_t>
void keep_all_but_lowest(const scalar_t* values, int64_t n, int64_t k, bool* keep,
                         SelectScratch<key_t<scalar_t>>& scratch) {
  using Key = key_t<scalar_t>;
  if (k <= 0) {
    std::fill(keep, keep + n, true);
    return;
  }
  if (k >= n) {
    std::fill(keep, keep + n, false);
    return;
  }
  constexpr int kBucketBits = 11;
  constexpr int64_t kBuckets = int64_t{1} << kBucketBits;
  constexpr int kShift = int(sizeof(Key) * 8) - kBucketBits;
  constexpr int kLanes = 4;  // interleaved histograms: scores crowd into few buckets, and
                             // increments of one counter would otherwise serialise
  scratch.keys.resize(n);
  scratch.histogram.assign(kLanes * kBuckets, 0);
  Key* keys = scratch.keys.data();  // raw pointers: no reloads through the vectors
  int32_t* histogram = scratch.histogram.data();
  for (int64_t j = 0; j < n; ++j) keys[j] = key_of(values[j]);  // vectorises on its own
  const int64_t whole = n - n % kLanes;
  for (int64_t j = 0; j < whole; j += kLanes)
    for (int64_t lane = 0; lane < kLanes; ++lane) ++histogram[lane * kBuckets + (keys[j + lane] >> kShift)];
  for (int64_t j = whole; j < n; ++j) ++histogram[keys[j] >> kShift];
  for (int64_t lane = 1; lane < kLanes; ++lane)
    for (int64_t b = 0; b < kBuckets; ++b) histogram[b] += histogram[lane * kBuckets + b];
  int64_t below = 0;
  Key bucket = 0;
  while (below + histogram[bucket] < k) below += histogram[bucket++];
  auto& members = scratch.bucket;
  members.clear();
  for (int64_t j = 0; j < n; ++j)
    if ((keys[j] >> kShift) == bucket) members.push_back(keys[j]);
  prune_through_members(keys, n, k, below, scratch, keep);
}

// The support of the pattern's largest |values| moves little between nearby inputs (ADMM's
// iterations): given `previous`, a selection of k of the same n entries, the k-th lowest key
// lies between the lowest key `previous` keeps and the highest it prunes (fewer than k keys lie
// below the former unless `previous` is already right, and k lie at or below the latter), so
// only the keys in that range are ranked. The result is keep_all_but_lowest's, bit for bit.
template <typename scalar_t>
void keep_all_but_lowest_near(const scalar_t* values, int64_t n, int64_t k, const bool* previous, bool* keep,
                              SelectScratch<key_t<scalar_t>>& scratch) {
  using Key = key_t<scalar_t>;
  scratch.keys.resize(n);
  Key* keys = scratch.keys.data();
  Key kept_min = std::numeric_limits<Key>::max(), pruned_max = 0;
  int64_t pruned = 0;
  for (int64_t j = 0; j < n; ++j) {
    const Key key = key_of(values[j]);
    keys[j] = key;
    if (previous[j]) {
      kept_min = std::min(kept_min, key);
    } else {
      pruned_max = std::max(pruned_max, key);
      ++pruned;
    }
  }
  if (pruned != k || k <= 0 || k >= n) return keep_all_but_lowest(values, n, k, keep, scratch);
  if (pruned_max < kept_min) {  // still the k lowest, ties included
    std::copy(previous, previous + n, keep);
    return;
  }
  auto& members = scratch.bucket;
  members.clear();
  int64_t below = 0;
  for (int64_t j = 0; j < n; ++j) {
    below += keys[j] < kept_min;
    if (keys[j] >= kept_min && keys[j] <= pruned_max) members.push_back(keys[j]);
  }
  prune_through_members(keys, n, k, below, scratch, keep);
}

// Rows are independent; give each parallel task at least ~32k elements of work.
inline int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)); }

// Same contract for one small N:M group: an element is pruned when fewer than k elements
// rank before it. Each pair is compared once (m(m-1)/2 comparisons, branch-free): of a < b,
// b ranks first if its value is lower, else a (ties go to the lower index). Values must not
// be NaN (callers check). M is a template argument for the common sizes so that the compiler
// unrolls it.
template <int64_t M, typename scalar_t>
inline void keep_all_but_lowest_small(const scalar_t* values, int64_t m, int64_t k, bool* keep) {
  const int64_t size = M > 0 ? M : m;
  wide_t<scalar_t> v[32];
  int32_t rank[32];
  for (int64_t j = 0; j < size; ++j) {
    v[j] = static_cast<wide_t<scalar_t>>(values[j]);
    rank[j] = 0;
  }
  for (int64_t a = 0; a < size; ++a) {
    for (int64_t b = a + 1; b < size; ++b) {
      const bool b_first = v[b] < v[a];
      rank[a] += b_first;
      rank[b] += !b_first;
    }
  }
  for (int64_t j = 0; j < size; ++j) keep[j] = rank[j] >= k;
}

// One N:M group of m values: the pairwise ranking above for the group sizes of practice
// (unrolled for 4 and 8), the bucketed selection beyond 32.
template <typename scalar_t>
inline void keep_all_but_lowest_in_group(const scalar_t* values, int64_t m, int64_t k, bool* keep,
                                         SelectScratch<key_t<scalar_t>>& scratch) {
  if (m == 4)
    keep_all_but_lowest_small<4>(values, m, k, keep);
  else if (m == 8)
    keep_all_but_lowest_small<8>(values, m, k, keep);
  else if (m <= 32)
    keep_all_but_lowest_small<0>(values, m, k, keep);
  else
    keep_all_but_lowest(values, m, k, keep, scratch);
}

}  // namespace symprune::detail
