// Magnitude masks of 16-bit weights from their bit patterns, and writing masks into weights.

#include "symprune/mask.h"
#include "symprune/score.h"

#include "checks.h"
#include "select.h"

#include <c10/util/Exception.h>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cstring>
#include <vector>

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

}  // namespace

at::Tensor magnitude_unstructured_mask(const at::Tensor& weight_in, double sparsity, MaskGroup group) {
  if (!takes_fast_path(weight_in) || group != MaskGroup::Row)
    return unstructured_mask(score(weight_in, ScoreMethod::Magnitude), sparsity, group);
  detail::check_matrix(weight_in, "weight");
  check_sparsity(sparsity);
  const auto weight = weight_in.contiguous();
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const auto k = static_cast<int64_t>(static_cast<double>(cols) * sparsity);
  auto mask = bool_like(weight);
  const uint16_t* w = bits_of(weight);
  bool* keep = mask.mutable_data_ptr<bool>();
  at::parallel_for(0, rows, detail::row_grain(cols), [&](int64_t begin, int64_t end) {
    detail::SelectScratch<uint16_t> scratch;
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* row = w + r * cols;
      detail::keep_all_but_lowest_keyed(cols, k, keep + r * cols, scratch,
                                        [row](int64_t j) { return magnitude_key(row[j]); });
    }
  });
  return mask;
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
    detail::SelectScratch<uint16_t> scratch;
    uint16_t keys[32];
    for (int64_t g = begin; g < end; ++g) {
      const uint16_t* group = w + g * nm.m;
      bool* out = keep + g * nm.m;
      if (nm.m > 32) {
        detail::keep_all_but_lowest_keyed(nm.m, prune, out, scratch,
                                          [group](int64_t j) { return magnitude_key(group[j]); });
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
