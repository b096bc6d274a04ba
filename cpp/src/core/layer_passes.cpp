#include "core/layer_passes.h"

#include "core/score_inputs.h"
#include "core/select.h"
#include "core/checks.h"
#include "symprune/mask.h"

#include <ATen/ops/empty.h>

#include <algorithm>

namespace symprune::detail {
namespace {
constexpr int kDigitBits = 16;
constexpr int64_t kBins = int64_t{1} << kDigitBits;

// Calls f(first, end) for consecutive parts of `rows` of about 1 M elements (at least one row),
// so that a part's scores and their temporaries stay at a few MB.
template <typename F>
void for_each_part(const at::Tensor& rows, F&& f) {
  const int64_t count = rows.size(0);
  const int64_t step = std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(rows.size(1), 1), 1,
                                           std::max<int64_t>(count, 1));
  for (int64_t first = 0; first < count; first += step) f(first, std::min(count, first + step));
}
}  // namespace

LayerPasses::LayerPasses(const Recipe& recipe, LayerStats whole, int64_t rows, int64_t cols, bool refined)
    : recipe_(recipe), whole_(std::move(whole)), refined_(refined), histogram_(kBins) {
  if (refined_)
    SYMPRUNE_CHECK(whole_.in_norm.defined() && whole_.in_mean.defined() && whole_.in_var.defined(), "recipe '",
                   recipe_.describe(), "' needs in_norm, in_mean and in_var (activation statistics from calibration)");
  rank_ = pruned_count(rows * cols, recipe.sparsity.value());
  if (rank_ == 0) shift_ = -1;  // threshold key 0: below every score's key, nothing is pruned
}

at::Tensor LayerPasses::scores(const at::Tensor& rows, int64_t begin) const {
  LayerStats part = whole_;
  if (part.out_norm.defined()) part.out_norm = part.out_norm.slice(0, begin, begin + rows.size(0));
  return score(rows, recipe_.method, score_options(recipe_, part)).contiguous();  // fp32
}

void LayerPasses::count(const at::Tensor& rows, int64_t begin) {
  for_each_part(rows, [&](int64_t first, int64_t end) {
    const auto part = scores(rows.slice(0, first, end), begin + first);
    const float* s = part.const_data_ptr<float>();
    for (int64_t i = 0, n = part.numel(); i < n; ++i) {
      const uint32_t key = order_key(s[i]);
      if ((key & prefix_mask_) == prefix_) ++histogram_[(key >> shift_) & (kBins - 1)];
    }
  });
}

void LayerPasses::end_pass() {
  int64_t seen = 0, digit = 0;
  while (seen + histogram_[digit] < rank_) seen += histogram_[digit++];
  rank_ -= seen;
  prefix_ |= static_cast<uint32_t>(digit) << shift_;
  prefix_mask_ |= static_cast<uint32_t>(kBins - 1) << shift_;
  std::fill(histogram_.begin(), histogram_.end(), 0);
  shift_ -= kDigitBits;  // after the last pass, rank_ ties of the threshold are to be pruned
}

void LayerPasses::prune_into(const at::Tensor& rows, int64_t begin, at::Tensor& out) {
  for_each_part(rows, [&](int64_t first, int64_t end) {
    const auto input = rows.slice(0, first, end);
    const auto part = scores(input, begin + first);
    auto keep = at::empty(part.sizes(), at::TensorOptions().dtype(at::kBool));
    const float* s = part.const_data_ptr<float>();
    bool* k = keep.mutable_data_ptr<bool>();
    for (int64_t i = 0, n = part.numel(); i < n; ++i) {
      const uint32_t key = order_key(s[i]);
      bool prune = key < prefix_;
      if (key == prefix_ && rank_ > 0) {
        prune = true;
        --rank_;
      }
      k[i] = !prune;
    }
    if (refined_) keep = dsnot(dsnot_inputs(input, keep, whole_), recipe_.refine_options);
    out.slice(0, first, end).copy_(apply_mask(input, keep));
  });
}

}  // namespace symprune::detail
