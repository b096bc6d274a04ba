// Magnitude masks of 16-bit weights from their bit patterns, and writing masks into weights.

#include "symprune/mask.h"
#include "symprune/score.h"

#include "core/checks.h"
#include "core/select.h"

#include <c10/util/Exception.h>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <atomic>
#include <cstring>

namespace symprune {
namespace {

// fp16 and bf16 are sign-magnitude: with the sign bit cleared, the integer order of the bits
// is the order of |x| for every finite x, and +0/-0 meet at 0, as they do in the fp32 score.
inline uint16_t magnitude_key(uint16_t bits) { return bits & 0x7fffu; }

bool takes_fast_path(const at::Tensor& weight) {
  const auto dtype = weight.scalar_type();
  return weight.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
}

const uint16_t* bits_of(const at::Tensor& contiguous) {
  return static_cast<const uint16_t*>(contiguous.const_data_ptr());
}

at::Tensor bool_like(const at::Tensor& weight) {
  return at::empty(weight.sizes(), at::TensorOptions().dtype(at::kBool));
}

// Where one row's selection ends: keys below `key` are pruned, and of the `tied` keys equal
// to it the first `ties_pruned` (in index order, as a stable sort gives).
struct Threshold {
  uint16_t key = 0;
  int64_t tied = 0;
  int64_t ties_pruned = 0;
  bool finite = true;
};

constexpr int kLanes = 4;
using Histogram = int32_t[kLanes][256];

int64_t total(const Histogram& h, int bin) { return int64_t{h[0][bin]} + h[1][bin] + h[2][bin] + h[3][bin]; }

// The k-th smallest key of a row (0 < k < n) by counting, which beats select.h's bucketing
// for 15-bit keys: a histogram of the top 8 bits finds the threshold's bin and a histogram of
// the low 7 bits inside it the threshold. Histograms are split in lanes so that runs of equal
// keys do not serialise on one counter. Bins from `nonfinite_bin` up hold NaN/Inf.
Threshold find_threshold(const uint16_t* w, int64_t n, int64_t k, int nonfinite_bin) {
  const int64_t whole = n - n % kLanes;
  Histogram coarse = {};
  for (int64_t j = 0; j < whole; j += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) ++coarse[lane][magnitude_key(w[j + lane]) >> 7];
  for (int64_t j = whole; j < n; ++j) ++coarse[0][magnitude_key(w[j]) >> 7];
  Threshold t;
  for (int bin = nonfinite_bin; bin < 256; ++bin) t.finite &= total(coarse, bin) == 0;
  int64_t below = 0;
  int bin = 0;
  while (below + total(coarse, bin) < k) below += total(coarse, bin++);

  Histogram fine = {};  // low 7 bits of the keys in `bin`
  for (int64_t j = 0; j < whole; j += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      const uint16_t key = magnitude_key(w[j + lane]);
      fine[lane][key & 127] += (key >> 7) == bin;
    }
  }
  for (int64_t j = whole; j < n; ++j) {
    const uint16_t key = magnitude_key(w[j]);
    fine[0][key & 127] += (key >> 7) == bin;
  }
  int low = 0;
  while (below + total(fine, low) < k) below += total(fine, low++);
  t.key = static_cast<uint16_t>((bin << 7) | low);
  t.tied = total(fine, low);
  t.ties_pruned = k - below;
  return t;
}

// Calls write(j, kept) for every element of the row. Ties first all go to the side fewer of
// them end up on (one vectorised pass), then a scan from the nearer end moves the others.
template <typename Write>
void write_row(const uint16_t* w, int64_t n, const Threshold& t, Write&& write) {
  const int64_t ties_kept = t.tied - t.ties_pruned;
  if (t.ties_pruned <= ties_kept) {
    for (int64_t j = 0; j < n; ++j) write(j, magnitude_key(w[j]) >= t.key);
    for (int64_t j = 0, left = t.ties_pruned; left > 0; ++j) {
      if (magnitude_key(w[j]) == t.key) {
        write(j, false);
        --left;
      }
    }
  } else {
    for (int64_t j = 0; j < n; ++j) write(j, magnitude_key(w[j]) > t.key);
    for (int64_t j = n - 1, left = ties_kept; left > 0; --j) {
      if (magnitude_key(w[j]) == t.key) {
        write(j, true);
        --left;
      }
    }
  }
}

// Per-row magnitude selection of a contiguous 2-D fp16/bf16 CPU weight: write(row, j, kept)
// for every element, rows in parallel. NaN/Inf show up in the histograms: no separate pass.
template <typename Write>
void select_rows(const at::Tensor& weight, int64_t k, Write&& write) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const uint16_t* w = bits_of(weight);
  // |x| >= 0x7f80 (bf16) or 0x7c00 (fp16) is NaN/Inf: exactly the top bins of the histogram.
  const int nonfinite_bin = (weight.scalar_type() == at::kBFloat16 ? 0x7f80 : 0x7c00) >> 7;
  const bool trivial = k <= 0 || k >= cols;
  if (trivial) detail::check_finite(weight, "weight");
  std::atomic<bool> finite{true};
  at::parallel_for(0, rows, detail::row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* row = w + r * cols;
      Threshold t;  // trivial rows: key 0 keeps everything, key 0x8000 prunes everything
      if (!trivial)
        t = find_threshold(row, cols, k, nonfinite_bin);
      else if (k > 0)
        t.key = 0x8000;
      if (!t.finite) finite.store(false, std::memory_order_relaxed);
      write_row(row, cols, t, [&](int64_t j, bool kept) { write(r, j, kept); });
    }
  });
  SYMPRUNE_CHECK(finite.load(), "weight contains NaN or Inf");
}

int64_t pruned_per_row(const at::Tensor& weight, double sparsity) {
  detail::check_matrix(weight, "weight", /*check_values=*/false);
  check_sparsity(sparsity);
  return pruned_count(weight.size(1), sparsity);
}

}  // namespace

at::Tensor magnitude_unstructured_mask(const at::Tensor& weight_in, double sparsity, MaskGroup group) {
  if (!takes_fast_path(weight_in) || group != MaskGroup::Row)
    return unstructured_mask(score(weight_in, ScoreMethod::Magnitude), sparsity, group);
  const int64_t k = pruned_per_row(weight_in, sparsity);
  const auto weight = weight_in.contiguous();
  const int64_t cols = weight.size(1);
  auto mask = bool_like(weight);
  bool* keep = mask.mutable_data_ptr<bool>();
  select_rows(weight, k, [&](int64_t r, int64_t j, bool kept) { keep[r * cols + j] = kept; });
  return mask;
}

at::Tensor magnitude_prune(const at::Tensor& weight, double sparsity, MaskGroup group) {
  if (!takes_fast_path(weight) || group != MaskGroup::Row)
    return apply_mask(weight, magnitude_unstructured_mask(weight, sparsity, group));
  auto pruned = at::empty(weight.sizes(), weight.options());
  return magnitude_prune_out(weight, sparsity, group, pruned);
}

at::Tensor& magnitude_prune_out(const at::Tensor& weight_in, double sparsity, MaskGroup group, at::Tensor& out) {
  detail::check_out(out, weight_in);  // no overlap: the selection reads the weight after writing out
  if (!takes_fast_path(weight_in) || group != MaskGroup::Row)
    return out.copy_(apply_mask(weight_in, magnitude_unstructured_mask(weight_in, sparsity, group)));
  const int64_t k = pruned_per_row(weight_in, sparsity);
  const auto weight = weight_in.contiguous();
  const int64_t cols = weight.size(1);
  const uint16_t* __restrict w = bits_of(weight);
  uint16_t* __restrict pruned = static_cast<uint16_t*>(out.mutable_data_ptr());
  select_rows(weight, k, [w, pruned, cols](int64_t r, int64_t j, bool kept) {
    pruned[r * cols + j] = w[r * cols + j] & static_cast<uint16_t>(-static_cast<uint16_t>(kept));
  });
  return out;
}

at::Tensor magnitude_nm_mask(const at::Tensor& weight_in, NM nm) {
  if (!takes_fast_path(weight_in)) return nm_mask(score(weight_in, ScoreMethod::Magnitude), nm);
  detail::check_matrix(weight_in, "weight");
  check_nm(nm, weight_in.size(1));
  const auto weight = weight_in.contiguous();
  auto mask = bool_like(weight);
  const int64_t groups = weight.numel() / nm.m, prune = nm.m - nm.n;
  const uint16_t* w = bits_of(weight);
  bool* keep = mask.mutable_data_ptr<bool>();
  at::parallel_for(0, groups, detail::row_grain(nm.m), [&](int64_t begin, int64_t end) {
    uint16_t keys[32];
    for (int64_t g = begin; g < end; ++g) {
      const uint16_t* group = w + g * nm.m;
      bool* out = keep + g * nm.m;
      if (nm.m > 32) {  // finite: checked above, so no bin is NaN/Inf
        write_row(group, nm.m, find_threshold(group, nm.m, prune, 256), [&](int64_t j, bool kept) { out[j] = kept; });
        continue;
      }
      for (int64_t j = 0; j < nm.m; ++j) keys[j] = magnitude_key(group[j]);
      if (nm.m == 4)
        detail::keep_all_but_lowest_small<4>(keys, nm.m, prune, out);
      else if (nm.m == 8)
        detail::keep_all_but_lowest_small<8>(keys, nm.m, prune, out);
      else
        detail::keep_all_but_lowest_small<0>(keys, nm.m, prune, out);
    }
  });
  return mask;
}

namespace {

// out = keep ? w : 0 on the raw bits: branch-free and vectorised for any element size.
template <typename Bits>
void select_bits(const void* weight, const bool* keep, void* out, int64_t n) {
  const Bits* w = static_cast<const Bits*>(weight);
  Bits* o = static_cast<Bits*>(out);
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) o[i] = w[i] & static_cast<Bits>(-static_cast<Bits>(keep[i]));
  });
}

}  // namespace

at::Tensor apply_mask(const at::Tensor& weight, const at::Tensor& keep_in) {
  detail::check_mask(keep_in, weight, "keep mask");
  if (!weight.device().is_cpu()) return weight.masked_fill(keep_in.logical_not(), 0);
  const auto w = weight.contiguous();
  const auto keep = keep_in.to(at::kCPU).contiguous();
  auto out = at::empty_like(w);
  const bool* k = keep.const_data_ptr<bool>();
  switch (w.element_size()) {
    case 1: select_bits<uint8_t>(w.const_data_ptr(), k, out.mutable_data_ptr(), w.numel()); break;
    case 2: select_bits<uint16_t>(w.const_data_ptr(), k, out.mutable_data_ptr(), w.numel()); break;
    case 4: select_bits<uint32_t>(w.const_data_ptr(), k, out.mutable_data_ptr(), w.numel()); break;
    case 8: select_bits<uint64_t>(w.const_data_ptr(), k, out.mutable_data_ptr(), w.numel()); break;
    default: return weight.masked_fill(keep_in.logical_not(), 0);
  }
  return out;
}

}  // namespace symprune
