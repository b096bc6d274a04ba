// The composed entry point: one weight, its statistics and a Recipe -> the pruned weight.
#include "symprune/prune.h"

#include "core/checks.h"
#include "core/score_inputs.h"
#include "symprune/dsnot.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/diagonal.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/sum.h>

#include <algorithm>
#include <string>

namespace symprune {

ScoreOptions detail::score_options(const Recipe& recipe, const LayerStats& stats) {
  ScoreOptions options = recipe.score;
  options.in_norm = stats.in_norm.defined() ? std::optional<at::Tensor>(stats.in_norm) : std::nullopt;
  options.out_norm = stats.out_norm.defined() ? std::optional<at::Tensor>(stats.out_norm) : std::nullopt;
  if (stats.column_norms.defined()) options.column_norms = stats.column_norms;
  return options;
}

DsnotInputs detail::dsnot_inputs(const at::Tensor& weight, const at::Tensor& keep, const LayerStats& stats,
                                 std::optional<at::Tensor> initial_score) {
  std::optional<at::Tensor> column_norms;  // of the whole weight, when `weight` is a block of its rows
  if (stats.column_norms.defined()) column_norms = stats.column_norms;
  return {weight, keep, stats.in_norm, stats.in_mean, stats.in_var, std::move(initial_score), column_norms};
}

namespace {

void require(const at::Tensor& stat, const char* name, const Recipe& recipe) {
  SYMPRUNE_CHECK(stat.defined(), "recipe '", recipe.describe(), "' needs ", name,
                 " (activation statistics from calibration)");
}

void check_stats(const LayerStats& stats, const Recipe& recipe, bool refined) {
  if (recipe.needs_input_stats(refined)) require(stats.in_norm, "in_norm", recipe);
  if (recipe.needs_output_stats()) require(stats.out_norm, "out_norm", recipe);
  if (recipe.needs_gram()) require(stats.gram, "gram", recipe);
  if (recipe.needs_cross()) require(stats.cross, "cross", recipe);
  if (refined) {
    require(stats.in_mean, "in_mean", recipe);
    require(stats.in_var, "in_var", recipe);
  }
}

// How many rows are pruned together: all of them, unless rows are independent and the weight
// is over 4 M elements (CPU) or 32 M (GPU), so that temporaries (fp32 scores, and on a GPU the
// int64 indices of its sorts) stay at a few MB on the CPU and a few hundred MB on a GPU.
int64_t block_rows(const at::Tensor& weight, const Recipe& recipe) {
  const int64_t rows = std::max<int64_t>(weight.size(0), 1), cols = std::max<int64_t>(weight.size(1), 1);
  if (!recipe.rows_independent()) return rows;
  const int64_t elements = weight.is_cpu() ? int64_t{1} << 20 : int64_t{1} << 25;
  return std::clamp<int64_t>(elements / cols, 1, rows);
}

// The score, mask and zeroing of a CPU weight go a row at a time (prune_row_local_out).
bool row_by_row(const at::Tensor& weight, const Recipe& recipe, bool refined) {
  return recipe.rows_independent() && method_info(recipe.method).row_local && !refined && weight.is_cpu();
}

// A valid recipe for one weight: OWL's target is model-wide, each block has its own sparsity.
void check_layer_recipe(const Recipe& recipe) {
  recipe.validate();
  if (recipe.owl)
    throw ValueError("recipe '" + recipe.describe() + "' sets one sparsity per block (OWL): prune each weight "
                     "with recipe.at_sparsity(its block's sparsity)");
}

}  // namespace

namespace {

// The recipe's steps on `weight`, the weights to reproduce: the layer's own, or the residual target's T.
Pruned prune_towards(const at::Tensor& weight, const LayerStats& stats, const Recipe& recipe, bool refined) {
  Pruned result;
  if (recipe.solver == Solver::SparseGpt) {
    SparseGptOptions options;
    options.sparsity = recipe.sparsity;
    options.nm = recipe.nm;
    options.blocksize = recipe.blocksize;
    options.percdamp = recipe.percdamp;
    result.weight = sparsegpt(weight, stats.gram, options);
    result.keep = result.weight != 0;
    if (recipe.update == Update::Refit) result.weight = refit(weight, result.keep, stats.gram, recipe.percdamp);
    return result;
  }
  if (recipe.solver == Solver::Admm) {
    // The start is Wanda's mask; the Gram's diagonal orders inputs as in_norm does.
    ScoreOptions wanda;
    wanda.in_norm = stats.gram.diagonal().clamp_min(0).sqrt().to(at::kFloat);
    const auto scores = score(weight, ScoreMethod::Wanda, wanda);
    const auto start = recipe.nm ? nm_mask(scores, *recipe.nm) : unstructured_mask(scores, *recipe.sparsity, MaskGroup::Row);
    AdmmOptions options = recipe.admm;
    options.sparsity = recipe.sparsity;
    options.nm = recipe.nm;
    options.percdamp = recipe.percdamp;
    result.weight = admm(weight, stats.gram, start, options, &result.iterations);
    result.keep = result.weight != 0;
    return result;
  }
  const auto scores = score(weight, recipe.method, detail::score_options(recipe, stats));
  if (recipe.permute) {
    auto [keep, permutation] = permuted_nm_mask(scores, *recipe.nm);
    result.keep = std::move(keep);
    result.permutation = std::move(permutation);
  } else {
    result.keep = recipe.nm ? nm_mask(scores, *recipe.nm) : unstructured_mask(scores, *recipe.sparsity, recipe.group);
  }
  if (refined) {
    DsnotOptions options = recipe.refine_options;
    options.nm = recipe.nm;
    std::optional<at::Tensor> initial;
    if (recipe.nm) initial = scores;  // DSnoT's N:M branch prunes by the score that built the mask
    auto keep = dsnot(detail::dsnot_inputs(weight, result.keep, stats, initial), options);
    result.refined = at::ne(keep, result.keep).sum().item<int64_t>();
    result.keep = std::move(keep);
  }
  result.weight = recipe.update == Update::Refit ? refit(weight, result.keep, stats.gram, recipe.percdamp)
                                                 : apply_mask(weight, result.keep);
  return result;
}

}  // namespace

Pruned prune(const at::Tensor& weight, const LayerStats& stats, const Recipe& recipe, std::string_view name) {
  at::NoGradGuard no_grad;  // pruned weights are data, not part of a graph
  check_layer_recipe(recipe);
  const bool refined = recipe.refines(name);
  check_stats(stats, recipe, refined);
  if (recipe.target == Target::Layer) return prune_towards(weight, stats, recipe, refined);
  // The methods run on the target weights (fp32 or fp64); the result goes back to the weight's dtype.
  auto result = prune_towards(residual_target(weight, stats.gram, stats.cross, stats.residual_cross, recipe.percdamp),
                              stats, recipe, refined);
  result.weight = result.weight.to(weight.scalar_type());
  return result;
}

at::Tensor& prune_into(const at::Tensor& weight, const LayerStats& stats, const Recipe& recipe, at::Tensor& out,
                       std::string_view name) {
  at::NoGradGuard no_grad;
  check_layer_recipe(recipe);
  detail::check_matrix(weight, "weight", /*check_values=*/false);
  detail::check_out(out, weight);
  const bool refined = recipe.refines(name);
  if (row_by_row(weight, recipe, refined)) {
    check_stats(stats, recipe, refined);
    const auto options = detail::score_options(recipe, stats);
    if (recipe.nm) return prune_row_local_nm_out(weight, recipe.method, options, *recipe.nm, out);
    return prune_row_local_out(weight, recipe.method, options, *recipe.sparsity, out);
  }
  const int64_t rows = weight.size(0), block = block_rows(weight, recipe);
  if (block >= rows) return out.copy_(prune(weight, stats, recipe, name).weight);
  LayerStats whole = stats;  // a block's score or refinement reads the whole weight's column norms, if any
  const auto order = recipe.column_norm_order();
  if (order && !whole.column_norms.defined()) whole.column_norms = column_norms(weight, *order);
  for (int64_t begin = 0; begin < rows; begin += block) {
    const int64_t end = std::min(rows, begin + block);
    LayerStats part = whole;
    if (part.out_norm.defined()) part.out_norm = part.out_norm.slice(0, begin, end);
    out.slice(0, begin, end).copy_(prune(weight.slice(0, begin, end), part, recipe, name).weight);
  }
  return out;
}

at::Tensor prune_weight(const at::Tensor& weight, const LayerStats& stats, const Recipe& recipe,
                        std::string_view name) {
  detail::check_matrix(weight, "weight", /*check_values=*/false);
  if (!row_by_row(weight, recipe, recipe.refines(name)) && block_rows(weight, recipe) >= weight.size(0))
    return prune(weight, stats, recipe, name).weight;
  auto out = at::empty(weight.sizes(), weight.options());  // contiguous, whatever the weight's strides
  return prune_into(weight, stats, recipe, out, name);
}

}  // namespace symprune
