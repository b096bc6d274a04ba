#include "symprune/mask.h"

#include "core/checks.h"
#include "core/mask_by_sort.h"
#include "core/select.h"

#include <c10/util/Exception.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <array>
#include <cmath>
#include <vector>

namespace symprune {
namespace {

at::Tensor new_mask(const at::Tensor& score) {
  return at::empty(score.sizes(), at::TensorOptions().dtype(at::kBool));
}

void check_score(const at::Tensor& score) { detail::check_matrix(score, "score"); }

at::Tensor row_mask(const at::Tensor& score, int64_t k) {
  auto mask = new_mask(score);
  const int64_t rows = score.size(0), cols = score.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "row_mask", [&] {
    const scalar_t* s = score.const_data_ptr<scalar_t>();
    bool* keep = mask.mutable_data_ptr<bool>();
    at::parallel_for(0, rows, detail::row_grain(cols), [&](int64_t begin, int64_t end) {
      detail::SelectScratch<detail::key_t<scalar_t>> scratch;
      for (int64_t r = begin; r < end; ++r)
        detail::keep_all_but_lowest(s + r * cols, cols, k, keep + r * cols, scratch);
    });
  });
  return mask;
}

// Layer-wide selection over up to billions of elements: a parallel radix select finds the
// k-th smallest key 16 bits at a time, then each chunk writes its part of the mask, pruning
// keys below the threshold and, in row-major order, the first ties that are still needed.
template <typename scalar_t>
void layer_mask_impl(const scalar_t* s, int64_t n, int64_t k, bool* keep) {
  using Key = detail::key_t<scalar_t>;
  constexpr int kDigitBits = 16;
  constexpr int64_t kBins = int64_t{1} << kDigitBits;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 65536 + 1));
  const int64_t chunk_len = (n + chunks - 1) / chunks;
  std::vector<std::vector<int64_t>> hist(chunks, std::vector<int64_t>(kBins));

  Key prefix = 0, prefix_mask = 0;
  int64_t rank = k;  // 1-based rank of the threshold among keys matching the prefix
  for (int shift = int(sizeof(Key) * 8) - kDigitBits; shift >= 0; shift -= kDigitBits) {
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        auto& h = hist[c];
        std::fill(h.begin(), h.end(), 0);
        const int64_t end = std::min(n, (c + 1) * chunk_len);
        for (int64_t i = c * chunk_len; i < end; ++i) {
          const Key key = detail::key_of(s[i]);
          if ((key & prefix_mask) == prefix) ++h[(key >> shift) & (kBins - 1)];
        }
      }
    });
    int64_t seen = 0, digit = 0;
    for (;; ++digit) {
      int64_t count = 0;
      for (int64_t c = 0; c < chunks; ++c) count += hist[c][digit];
      if (seen + count >= rank) break;
      seen += count;
    }
    rank -= seen;
    prefix |= static_cast<Key>(digit) << shift;
    prefix_mask |= static_cast<Key>(kBins - 1) << shift;
  }
  // After the last pass, hist[c][digit] counts the keys equal to the threshold in chunk c
  // and `rank` is how many of them must go, taken in index order.
  const Key threshold = prefix;
  const int64_t last_digit = threshold & (kBins - 1);
  std::vector<int64_t> ties_before(chunks + 1, 0);
  for (int64_t c = 0; c < chunks; ++c) ties_before[c + 1] = ties_before[c] + hist[c][last_digit];
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      int64_t ties_to_prune = std::clamp<int64_t>(rank - ties_before[c], 0, hist[c][last_digit]);
      const int64_t end = std::min(n, (c + 1) * chunk_len);
      for (int64_t i = c * chunk_len; i < end; ++i) {
        const Key key = detail::key_of(s[i]);
        const bool prune = key < threshold || (key == threshold && ties_to_prune-- > 0);
        keep[i] = !prune;
      }
    }
  });
}

at::Tensor layer_mask(const at::Tensor& score, int64_t k) {
  auto mask = new_mask(score);
  bool* keep = mask.mutable_data_ptr<bool>();
  const int64_t n = score.numel();
  if (k == 0 || n == 0) {
    mask.fill_(true);
    return mask;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "layer_mask", [&] {
    layer_mask_impl(score.const_data_ptr<scalar_t>(), n, k, keep);
  });
  return mask;
}

}  // namespace

void check_sparsity(double sparsity) {
  SYMPRUNE_CHECK(std::isfinite(sparsity) && sparsity >= 0.0 && sparsity < 1.0,
                    "sparsity must be in [0, 1), got ", sparsity);
}

void detail::check_nm_pattern(NM nm) {
  SYMPRUNE_CHECK(nm.m >= 2 && nm.n >= 1 && nm.n < nm.m,
                    "N:M must keep 1 <= n < m of every m weights, got ", nm.n, ":", nm.m);
}

void check_nm(NM nm, int64_t in_features) {
  detail::check_nm_pattern(nm);
  SYMPRUNE_CHECK(in_features % nm.m == 0, "N:M ", nm.n, ":", nm.m, " needs in_features divisible by ",
                    nm.m, ", got ", in_features);
}

int64_t pruned_count(int64_t count, double sparsity) {
  return static_cast<int64_t>(static_cast<double>(count) * sparsity);
}

at::Tensor unstructured_mask(const at::Tensor& score_in, double sparsity, MaskGroup group) {
  check_score(score_in);
  check_sparsity(sparsity);
  const auto count = group == MaskGroup::Row ? score_in.size(1) : score_in.numel();
  const auto k = pruned_count(count, sparsity);
  if (!score_in.device().is_cpu())
    return group == MaskGroup::Row ? detail::row_mask_by_sort(score_in, k) : detail::layer_mask_by_sort(score_in, k);
  const auto score = score_in.contiguous();
  return group == MaskGroup::Row ? row_mask(score, k) : layer_mask(score, k);
}

at::Tensor nm_mask(const at::Tensor& score_in, NM nm) {
  check_score(score_in);
  check_nm(nm, score_in.size(1));
  if (!score_in.device().is_cpu()) return detail::nm_mask_by_sort(score_in, nm);
  const auto score = score_in.contiguous();
  auto mask = new_mask(score);
  const int64_t groups = score.numel() / nm.m, prune = nm.m - nm.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "nm_mask", [&] {
    const scalar_t* s = score.const_data_ptr<scalar_t>();
    bool* keep = mask.mutable_data_ptr<bool>();
    at::parallel_for(0, groups, detail::row_grain(nm.m), [&](int64_t begin, int64_t end) {
      detail::SelectScratch<detail::key_t<scalar_t>> scratch;
      for (int64_t g = begin; g < end; ++g)
        detail::keep_all_but_lowest_in_group(s + g * nm.m, nm.m, prune, keep + g * nm.m, scratch);
    });
  });
  return mask;
}

}  // namespace symprune
