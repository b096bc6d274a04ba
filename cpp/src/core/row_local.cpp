// Row-local pruning: each row's fp32 scores, its mask and its pruned copy, one row at a time.

#include "symprune/prune.h"
#include "symprune/mask.h"

#include "core/checks.h"
#include "core/score_inputs.h"
#include "core/select.h"

#include <c10/util/Exception.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

namespace symprune {
namespace {

// score(i, j) = |w(i, j)| * factor, computed in fp32 exactly as score() does: the weight is
// rounded to fp32 first, and symwanda's factor is the fp32 sum in_norm[j] + out_norm[i].
struct ScoreFactors {
  const float* in = nullptr;   // per column: wanda, symwanda
  const float* out = nullptr;  // per row: symwanda, owanda
};

template <typename scalar_t>
void score_row(const scalar_t* w, int64_t n, const ScoreFactors& f, int64_t row, float* s) {
  if (f.in && f.out) {
    const float out = f.out[row];
    for (int64_t j = 0; j < n; ++j) s[j] = std::fabs(static_cast<float>(w[j])) * (f.in[j] + out);
  } else if (f.in) {
    for (int64_t j = 0; j < n; ++j) s[j] = std::fabs(static_cast<float>(w[j])) * f.in[j];
  } else if (f.out) {
    const float out = f.out[row];
    for (int64_t j = 0; j < n; ++j) s[j] = std::fabs(static_cast<float>(w[j])) * out;
  } else {
    for (int64_t j = 0; j < n; ++j) s[j] = std::fabs(static_cast<float>(w[j]));
  }
}

// Scores are |w| times non-negative factors: not finite exactly when score() would fail.
bool all_finite(const float* s, int64_t n) {
  bool finite = true;
  for (int64_t j = 0; j < n; ++j) finite &= s[j] <= std::numeric_limits<float>::max();
  return finite;
}

// dst = keep ? row : +0 on the raw bits: branch-free (a branch on a random mask mispredicts
// half the time) and vectorised.
template <typename scalar_t>
void write_row(const scalar_t* row, const bool* keep, int64_t n, scalar_t* dst) {
  using Bits = std::conditional_t<sizeof(scalar_t) == 2, uint16_t, std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;
  const auto* w = reinterpret_cast<const Bits*>(row);
  auto* o = reinterpret_cast<Bits*>(dst);
  for (int64_t j = 0; j < n; ++j) o[j] = w[j] & static_cast<Bits>(-static_cast<Bits>(keep[j]));
}

// Prunes every row of `weight` into `out`: select(scores, keep, scratch) writes one row's mask.
template <typename Select>
void prune_rows(const at::Tensor& weight, const ScoreFactors& factors, at::Tensor& out, Select&& select) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "prune_row_local", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* pruned = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, detail::row_grain(cols), [&](int64_t begin, int64_t end) {
      std::vector<float> scores(static_cast<std::size_t>(cols));
      const auto keep = std::make_unique<bool[]>(static_cast<std::size_t>(cols));
      detail::SelectScratch<uint32_t> scratch;
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = w + r * cols;
        score_row(row, cols, factors, r, scores.data());
        if (!all_finite(scores.data(), cols)) {
          finite.store(false, std::memory_order_relaxed);
          return;
        }
        select(scores.data(), keep.get(), scratch);
        write_row(row, keep.get(), cols, pruned + r * cols);
      }
    });
  });
  if (!finite.load()) {
    detail::check_finite(weight, "weight");  // the message score() gives first
    throw ValueError("score contains NaN or Inf");
  }
}

// The checks of score() and of an *_out function; returns the weight contiguous and the
// fp32 statistics its score multiplies by.
std::pair<at::Tensor, ScoreFactors> prepare(const at::Tensor& weight_in, ScoreMethod method,
                                            const ScoreOptions& options, const at::Tensor& out,
                                            at::Tensor& in_norm, at::Tensor& out_norm) {
  const auto info = method_info(method);
  SYMPRUNE_CHECK(info.row_local, "score method '", score_method_name(method),
                    "' is not row-local (its scores use norms of the whole weight)");
  detail::check_matrix(weight_in, "weight", /*check_values=*/false);  // values: in the pass
  SYMPRUNE_CHECK(weight_in.device().is_cpu(), "row-local pruning runs on CPU weights, got ",
                    weight_in.device());
  detail::check_out(out, weight_in);
  ScoreFactors factors;
  if (info.needs_input_stats) {
    in_norm = detail::require_stat(options.in_norm, weight_in.size(1), method, "in_norm", weight_in).contiguous();
    factors.in = in_norm.const_data_ptr<float>();
  }
  if (info.needs_output_stats) {
    out_norm = detail::require_stat(options.out_norm, weight_in.size(0), method, "out_norm", weight_in).contiguous();
    factors.out = out_norm.const_data_ptr<float>();
  }
  return {weight_in.contiguous(), factors};
}

bool is_16_bit(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

}  // namespace

at::Tensor& prune_row_local_out(const at::Tensor& weight_in, ScoreMethod method, const ScoreOptions& options,
                                double sparsity, at::Tensor& out) {
  if (method == ScoreMethod::Magnitude && weight_in.device().is_cpu() && is_16_bit(weight_in))
    return magnitude_prune_out(weight_in, sparsity, MaskGroup::Row, out);  // ranks the bit patterns
  at::Tensor in_norm, out_norm;
  const auto [weight, factors] = prepare(weight_in, method, options, out, in_norm, out_norm);
  check_sparsity(sparsity);
  const int64_t cols = weight.size(1);
  const auto k = pruned_count(cols, sparsity);
  prune_rows(weight, factors, out, [&](const float* s, bool* keep, detail::SelectScratch<uint32_t>& scratch) {
    detail::keep_all_but_lowest(s, cols, k, keep, scratch);
  });
  return out;
}

at::Tensor& prune_row_local_nm_out(const at::Tensor& weight_in, ScoreMethod method, const ScoreOptions& options,
                                   NM nm, at::Tensor& out) {
  at::Tensor in_norm, out_norm;
  const auto [weight, factors] = prepare(weight_in, method, options, out, in_norm, out_norm);
  check_nm(nm, weight.size(1));
  const int64_t cols = weight.size(1), prune = nm.m - nm.n;
  prune_rows(weight, factors, out, [&](const float* s, bool* keep, detail::SelectScratch<uint32_t>& scratch) {
    for (int64_t g = 0; g < cols; g += nm.m)  // the same selection as nm_mask
      detail::keep_all_but_lowest_in_group(s + g, nm.m, prune, keep + g, scratch);
  });
  return out;
}

}  // namespace symprune
