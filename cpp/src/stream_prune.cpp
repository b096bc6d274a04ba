#include "stream_prune.h"

#include "symprune/prune.h"

#include <ATen/ops/count_nonzero.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <optional>

namespace symprune::detail {
namespace {

ScoreOptions score_options(const StreamOptions& o, const WeightStats& stats) {
  ScoreOptions options = o.score;
  if (stats.in_norm.defined()) options.in_norm = stats.in_norm;
  if (stats.out_norm.defined()) options.out_norm = stats.out_norm;
  return options;
}

// Zeros from the bits: one vectorised pass, where count_nonzero of a bf16 tensor converts
// every element.
template <typename Bits>
int64_t count_zero_bits(const at::Tensor& t) {
  constexpr Bits kMagnitude = static_cast<Bits>(~Bits{0}) >> 1;
  const Bits* bits = static_cast<const Bits*>(t.const_data_ptr());
  int64_t zeros = 0;
  for (int64_t i = 0, n = t.numel(); i < n; ++i) zeros += (bits[i] & kMagnitude) == 0;
  return zeros;
}

bool rows_independent(const StreamOptions& o) {
  return is_row_local(o.method) && (o.nm || o.group == MaskGroup::Row);
}

// How many rows are pruned together: all of them, unless rows are independent and the weight
// is over 4 M elements (CPU) or 32 M (GPU).
int64_t block_rows(const at::Tensor& weight, const StreamOptions& o) {
  const int64_t rows = std::max<int64_t>(weight.size(0), 1), cols = std::max<int64_t>(weight.size(1), 1);
  if (!rows_independent(o)) return rows;
  const int64_t elements = weight.is_cpu() ? int64_t{1} << 22 : int64_t{1} << 25;
  return std::clamp<int64_t>(elements / cols, 1, rows);
}

}  // namespace

at::Tensor prune_whole(const at::Tensor& weight, const StreamOptions& o, const WeightStats& stats) {
  const auto scores = score(weight, o.method, score_options(o, stats));
  auto keep = o.nm ? nm_mask(scores, *o.nm) : unstructured_mask(scores, *o.sparsity, o.group);
  if (o.refine) {
    DsnotOptions refine = *o.refine;
    refine.nm = o.nm;
    std::optional<at::Tensor> initial;
    if (o.nm) initial = scores;  // DSnoT's N:M branch prunes by the score that built the mask
    keep = dsnot({weight, keep, stats.in_norm, stats.in_mean, stats.in_var, initial}, refine);
  }
  return apply_mask(weight, keep);
}

// Per-row and N:M masks of row-local scores treat rows independently: without DSnoT, CPU
// weights are pruned a row at a time in one pass (prune.h); otherwise a block of rows at a
// time, so that temporaries (fp32 scores, and on a GPU the int64 indices of its sorts) stay at
// a few MB on the CPU and a few hundred MB on a GPU instead of several times the weight.
void prune_weight_into(const at::Tensor& weight, const StreamOptions& o, const WeightStats& stats, at::Tensor& out) {
  if (rows_independent(o) && !o.refine && weight.is_cpu()) {
    if (o.nm)
      prune_row_local_nm_out(weight, o.method, score_options(o, stats), *o.nm, out);
    else
      prune_row_local_out(weight, o.method, score_options(o, stats), *o.sparsity, out);
    return;
  }
  const int64_t rows = weight.size(0), block = block_rows(weight, o);
  for (int64_t begin = 0; begin < rows; begin += block) {
    const int64_t end = std::min(rows, begin + block);
    WeightStats part = stats;
    if (part.out_norm.defined()) part.out_norm = part.out_norm.slice(0, begin, end);
    out.slice(0, begin, end).copy_(prune_whole(weight.slice(0, begin, end), o, part));
  }
}

at::Tensor prune_weight(const at::Tensor& weight, const StreamOptions& o, const WeightStats& stats) {
  if (block_rows(weight, o) >= weight.size(0)) return prune_whole(weight, o, stats);
  auto out = at::empty_like(weight);
  prune_weight_into(weight, o, stats, out);
  return out;
}

int64_t count_zeros(const at::Tensor& t) {
  switch (t.element_size()) {
    case 2: return count_zero_bits<uint16_t>(t);
    case 4: return count_zero_bits<uint32_t>(t);
    case 8: return count_zero_bits<uint64_t>(t);
    default: return t.numel() - at::count_nonzero(t).item<int64_t>();
  }
}

}  // namespace symprune::detail
