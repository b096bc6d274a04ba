#pragma once
// Exact, stable selection of the k lowest values, the primitive behind every mask.
//
// Floats are mapped to unsigned keys whose integer order is the float order, so a selection
// is an integer selection; "stable" means that among equal keys the lower index is taken
// first, exactly what torch.sort(stable=True) ascending gives.

#include <algorithm>
#include <cstdint>
#include <cstring>
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

// Prunes the k lowest of values[0..n) with ties to the lower index: sets keep[j] = false for
// them and true elsewhere. `scratch` is reused across calls to avoid allocations.
template <typename scalar_t>
void keep_all_but_lowest(const scalar_t* values, int64_t n, int64_t k, bool* keep,
                         std::vector<key_t<scalar_t>>& scratch) {
  if (k <= 0) {
    std::fill(keep, keep + n, true);
    return;
  }
  if (k >= n) {
    std::fill(keep, keep + n, false);
    return;
  }
  scratch.resize(n);
  for (int64_t j = 0; j < n; ++j) scratch[j] = key_of(values[j]);
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end());
  const auto threshold = scratch[k - 1];
  int64_t below = 0;
  for (int64_t j = 0; j < n; ++j) below += key_of(values[j]) < threshold;
  int64_t equal_to_prune = k - below;
  for (int64_t j = 0; j < n; ++j) {
    const auto key = key_of(values[j]);
    const bool prune = key < threshold || (key == threshold && equal_to_prune-- > 0);
    keep[j] = !prune;
  }
}

// Same contract for small groups (N:M): an element is pruned when fewer than k elements
// rank before it. Quadratic, but branch-light and allocation-free for m <= 32.
template <typename scalar_t>
void keep_all_but_lowest_small(const scalar_t* values, int64_t n, int64_t k, bool* keep) {
  key_t<scalar_t> keys[32];
  for (int64_t j = 0; j < n; ++j) keys[j] = key_of(values[j]);
  for (int64_t a = 0; a < n; ++a) {
    int64_t rank = 0;
    for (int64_t b = 0; b < n; ++b) rank += keys[b] < keys[a] || (keys[b] == keys[a] && b < a);
    keep[a] = rank >= k;
  }
}

}  // namespace symprune::detail
