#include "symprune/score.h"

#include "core/checks.h"
#include "core/score_inputs.h"
#include "symprune/recipe.h"

#include <c10/util/Exception.h>

#include <ATen/TensorOperators.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace symprune {
namespace {

constexpr std::array<std::pair<std::string_view, ScoreMethod>, 7> kMethods{{
    {"magnitude", ScoreMethod::Magnitude},
    {"wanda", ScoreMethod::Wanda},
    {"ria", ScoreMethod::Ria},
    {"stochria", ScoreMethod::StochRia},
    {"symwanda", ScoreMethod::SymWanda},
    {"owanda", ScoreMethod::OWanda},
    {"symmetric", ScoreMethod::Symmetric},
}};

// 1 / norm with an all-zero row or column mapped to 0 (its |W| entries are all 0 anyway):
// dividing by +inf keeps the expression 0 instead of 0/0.
at::Tensor safe_norm(at::Tensor norm64) {
  auto norm = norm64.to(at::kFloat);
  return at::where(norm == 0, std::numeric_limits<float>::infinity(), norm);
}

// ||W_:j||_p (dim 0) or ||W_i:||_p (dim 1), accumulated in fp64, returned in fp32.
at::Tensor lp_norm(const at::Tensor& abs_w, double p, int64_t dim) {
  return safe_norm(at::linalg_vector_norm(abs_w, p, at::IntArrayRef{dim}, false, at::kDouble));
}

// The column norms of `weight` that `method` reads: given (a block of the weight's rows) or taken
// from the weight, in fp64.
at::Tensor whole_column_norms(const at::Tensor& weight, double p, const ScoreOptions& options) {
  if (!options.column_norms) return column_norms(weight, p);
  detail::check_vector(*options.column_norms, weight.size(1), "column_norms");
  return options.column_norms->to(weight.device(), at::kDouble);
}

at::Tensor relative_from_norms(const at::Tensor& abs_w, const at::Tensor& col, const at::Tensor& row) {
  return abs_w / col.unsqueeze(0) + abs_w / row.unsqueeze(1);
}

// StochRIA's l1 norms, each estimated as (n / k) * (sum of k sampled |W|); subsets are drawn
// with torch.randperm from one generator, rows first, so a plain PyTorch oracle reproduces them.
std::pair<at::Tensor, at::Tensor> sampled_l1_norms(const at::Tensor& abs_w, double beta, uint64_t seed) {
  const int64_t out = abs_w.size(0), in = abs_w.size(1);
  const int64_t k_row = std::max<int64_t>(1, std::llround(beta * static_cast<double>(in)));
  const int64_t k_col = std::max<int64_t>(1, std::llround(beta * static_cast<double>(out)));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto index_options = at::TensorOptions().dtype(at::kLong);
  std::vector<at::Tensor> row_samples, col_samples;
  row_samples.reserve(out);
  col_samples.reserve(in);
  for (int64_t i = 0; i < out; ++i) row_samples.push_back(at::randperm(in, gen, index_options).slice(0, 0, k_row));
  for (int64_t j = 0; j < in; ++j) col_samples.push_back(at::randperm(out, gen, index_options).slice(0, 0, k_col));
  const auto device = abs_w.device();
  auto row_idx = at::stack(row_samples).to(device);     // (out, k_row)
  auto col_idx = at::stack(col_samples, 1).to(device);  // (k_col, in)
  auto rows = at::sum(at::gather(abs_w, 1, row_idx), {1}, false, at::kDouble) *
              (static_cast<double>(in) / static_cast<double>(k_row));
  auto cols = at::sum(at::gather(abs_w, 0, col_idx), {0}, false, at::kDouble) *
              (static_cast<double>(out) / static_cast<double>(k_col));
  return {safe_norm(cols), safe_norm(rows)};
}

}  // namespace

namespace detail {

at::Tensor require_stat(const std::optional<at::Tensor>& stat, int64_t size, ScoreMethod method,
                        const char* name, const at::Tensor& weight) {
  SYMPRUNE_CHECK(stat.has_value() && stat->defined(), "score method '",
                    score_method_name(method), "' needs ", name,
                    " (activation statistics from calibration)");
  detail::check_vector(*stat, size, name);
  SYMPRUNE_CHECK((*stat >= 0).all().item<bool>(), name, " must be non-negative");
  return stat->to(weight.device(), at::kFloat);
}

void check_score_options(ScoreMethod method, const ScoreOptions& options) {
  if (method == ScoreMethod::Ria)
    SYMPRUNE_CHECK(std::isfinite(options.p) && options.p > 0, "ria: p must be positive, got ", options.p);
  if (method == ScoreMethod::StochRia)
    SYMPRUNE_CHECK(options.beta > 0 && options.beta <= 1, "stochria: beta must be in (0, 1], got ", options.beta);
  SYMPRUNE_CHECK(std::isfinite(options.a), "a must be finite, got ", options.a);
}

}  // namespace detail

ScoreMethod parse_score_method(std::string_view name) {
  for (const auto& [key, method] : kMethods)
    if (key == name) return method;
  std::string known;
  for (const auto& entry : kMethods) known += (known.empty() ? "" : ", ") + std::string(entry.first);
  throw ValueError("unknown score method '" + std::string(name) + "' (known: " + known + ")");
}

std::vector<std::string> score_method_names() {
  std::vector<std::string> names;
  for (const auto& entry : kMethods) names.emplace_back(entry.first);
  return names;
}

std::vector<std::string> score_options_read(ScoreMethod method) {
  switch (method) {
    case ScoreMethod::Ria: return {"a", "p"};
    case ScoreMethod::StochRia: return {"a", "beta", "seed"};
    default: return {};
  }
}

std::string_view score_method_name(ScoreMethod method) {
  for (const auto& [key, value] : kMethods)
    if (value == method) return key;
  return "?";
}

at::Tensor relative_importance(const at::Tensor& weight, double p, const std::optional<at::Tensor>& column_norms) {
  at::NoGradGuard no_grad;  // scores are data, not part of a graph
  detail::check_matrix(weight, "weight");
  SYMPRUNE_CHECK(std::isfinite(p) && p > 0, "norm order p must be positive, got ", p);
  auto abs_w = at::abs(weight.to(at::kFloat));
  ScoreOptions given;
  given.column_norms = column_norms;
  return relative_from_norms(abs_w, safe_norm(whole_column_norms(weight, p, given)), lp_norm(abs_w, p, 1));
}

std::optional<double> column_norm_order(ScoreMethod method, const ScoreOptions& options) {
  if (method == ScoreMethod::Ria) return options.p;
  if (method == ScoreMethod::Symmetric) return 2.0;
  return std::nullopt;
}

at::Tensor column_norms(const at::Tensor& weight, double p, const std::function<void(int64_t, int64_t)>& after_block) {
  detail::check_matrix(weight, "weight", /*check_values=*/false);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const int64_t block =
      std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(cols, 1), 1, std::max<int64_t>(rows, 1));
  auto sums = at::zeros({cols}, weight.options().dtype(at::kDouble));
  for (int64_t begin = 0; begin < rows; begin += block) {
    const int64_t end = std::min(rows, begin + block);
    auto magnitude = at::abs(weight.slice(0, begin, end).to(at::kDouble));
    sums += p == 1.0 ? at::sum(magnitude, {0}) : at::sum(at::pow(magnitude, p), {0});
    if (after_block) after_block(begin, end);
  }
  return p == 1.0 ? sums : at::pow(sums, 1.0 / p);
}

at::Tensor score(const at::Tensor& weight, ScoreMethod method, const ScoreOptions& options) {
  at::NoGradGuard no_grad;  // scores are data, not part of a graph
  detail::check_matrix(weight, "weight");
  detail::check_score_options(method, options);
  const int64_t out = weight.size(0), in = weight.size(1);
  at::Tensor in_norm, out_norm;
  if (method_info(method).needs_input_stats) in_norm = detail::require_stat(options.in_norm, in, method, "in_norm", weight);
  if (method_info(method).needs_output_stats) out_norm = detail::require_stat(options.out_norm, out, method, "out_norm", weight);
  auto abs_w = at::abs(weight.to(at::kFloat));

  switch (method) {
    case ScoreMethod::Magnitude:
      return abs_w;
    case ScoreMethod::Wanda:
      return abs_w * in_norm.unsqueeze(0);
    case ScoreMethod::Ria: {
      auto col = safe_norm(whole_column_norms(weight, options.p, options));
      auto ri = relative_from_norms(abs_w, col, lp_norm(abs_w, options.p, 1));
      return ri * at::pow(in_norm, options.a).unsqueeze(0);
    }
    case ScoreMethod::StochRia: {
      auto [col, row] = sampled_l1_norms(abs_w, options.beta, options.seed);
      return relative_from_norms(abs_w, col, row) * at::pow(in_norm, options.a).unsqueeze(0);
    }
    case ScoreMethod::SymWanda:
      return abs_w * (in_norm.unsqueeze(0) + out_norm.unsqueeze(1));
    case ScoreMethod::OWanda:
      return abs_w * out_norm.unsqueeze(1);
    case ScoreMethod::Symmetric: {
      auto col = whole_column_norms(weight, 2, options).to(at::kFloat);
      auto row = at::linalg_vector_norm(abs_w, 2, at::IntArrayRef{1}, false, at::kDouble).to(at::kFloat);
      return abs_w * (col.unsqueeze(0) + row.unsqueeze(1));
    }
  }
  throw ValueError("unhandled score method");
}

}  // namespace symprune
