#include "symprune/dsnot.h"

#include "checks.h"
#include "dsnot_rows.h"
#include "symprune/score.h"

#include <c10/util/Exception.h>

#include <ATen/TensorOperators.h>

#include <ATen/Parallel.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/where.h>

#include <cmath>

namespace symprune {
namespace {

constexpr double kVarEpsilon = 1e-12;

void validate(const DsnotInputs& in, const DsnotOptions& opt) {
  detail::check_matrix(in.weight, "weight");
  const int64_t cols = in.weight.size(1);
  detail::check_mask(in.keep_mask, in.weight, "keep_mask");
  detail::check_vector(in.in_norm, cols, "in_norm");
  detail::check_vector(in.in_mean, cols, "in_mean");
  detail::check_vector(in.in_var, cols, "in_var");
  TORCH_CHECK_VALUE((in.in_var >= 0).all().item<bool>(), "in_var must be non-negative");
  TORCH_CHECK_VALUE((in.in_norm >= 0).all().item<bool>(), "in_norm must be non-negative");
  if (in.initial_score) {
    detail::check_matrix(*in.initial_score, "initial_score");
    TORCH_CHECK_VALUE(in.initial_score->sizes() == in.weight.sizes(), "initial_score must have shape ",
                      in.weight.sizes(), ", got ", in.initial_score->sizes());
    TORCH_CHECK_VALUE(opt.nm.has_value(), "initial_score is only used by the N:M branch (nm=...); the "
                      "unstructured branch orders prune candidates by the Wanda metric");
  }
  if (opt.nm) check_nm(*opt.nm, cols);
  TORCH_CHECK_VALUE(opt.max_cycles >= 0, "max_cycles must be >= 0, got ", opt.max_cycles);
  TORCH_CHECK_VALUE(std::isfinite(opt.threshold) && opt.threshold >= 0, "threshold must be >= 0, got ",
                    opt.threshold);
  TORCH_CHECK_VALUE(std::isfinite(opt.var_power), "var_power must be finite");
  TORCH_CHECK_VALUE(std::isfinite(opt.a) && std::isfinite(opt.q), "a and q must be finite");
  TORCH_CHECK_VALUE(std::isfinite(opt.gamma1.value_or(0)) && std::isfinite(opt.gamma2.value_or(0)),
                    "gamma1 and gamma2 must be finite");
}

at::Tensor cpu_float(const at::Tensor& t) { return t.to(at::kCPU, at::kFloat).contiguous(); }

// Inputs of the row walk on CPU in fp32. The default metrics are computed inside the walk;
// R2-DSnoT's relative metrics and an explicit N:M initial score are whole-matrix tensors.
struct Prepared {
  at::Tensor w, mean, var_denominator, norm;
  at::Tensor grow_key, prune_key, phi;  // undefined = default / off
};

Prepared prepare(const DsnotInputs& in, const DsnotOptions& opt) {
  Prepared p;
  p.w = cpu_float(in.weight);
  p.norm = cpu_float(in.in_norm);
  p.mean = cpu_float(in.in_mean);
  p.var_denominator = at::pow(at::clamp_min(cpu_float(in.in_var), kVarEpsilon), opt.var_power).contiguous();
  if (opt.relative == Relative::Grow)
    p.grow_key = (at::sign(p.w) * relative_importance(p.w) * p.mean.unsqueeze(0) /
                  p.var_denominator.unsqueeze(0)).contiguous();
  if (opt.relative == Relative::Prune) {
    ScoreOptions ria;
    ria.in_norm = p.norm;
    ria.a = opt.a;
    p.prune_key = score(p.w, ScoreMethod::Ria, ria).contiguous();
  } else if (opt.nm && in.initial_score) {
    p.prune_key = cpu_float(*in.initial_score);
  }
  if (opt.gamma1 || opt.gamma2) {
    const auto phi = at::pow(at::abs(p.w), opt.q) * p.norm.unsqueeze(0);
    const auto row_mean = phi.mean({1}, /*keepdim=*/true);
    p.phi = at::where(row_mean > 0, phi / row_mean, 0.0f).contiguous();
  }
  return p;
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

}  // namespace

at::Tensor dsnot(const DsnotInputs& inputs, const DsnotOptions& options) {
  validate(inputs, options);
  const auto prepared = prepare(inputs, options);
  auto keep = inputs.keep_mask.to(at::kCPU).contiguous().clone();
  const int64_t rows = keep.size(0), cols = keep.size(1);

  detail::DsnotRowParams params;
  params.cols = cols;
  params.max_cycles = options.max_cycles;
  params.threshold = options.threshold;
  params.m = options.nm ? options.nm->m : 0;
  params.boundary = options.gamma1.has_value() || options.gamma2.has_value();
  params.gamma1 = options.gamma1.value_or(0.0);
  params.gamma2 = options.gamma2.value_or(0.0);

  const detail::DsnotColumns columns{prepared.mean.const_data_ptr<float>(),
                                     prepared.var_denominator.const_data_ptr<float>(),
                                     prepared.norm.const_data_ptr<float>()};
  const float* w = prepared.w.const_data_ptr<float>();
  const float* grow = data_or_null(prepared.grow_key);
  const float* prune = data_or_null(prepared.prune_key);
  const float* phi = data_or_null(prepared.phi);
  bool* mask = keep.mutable_data_ptr<bool>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    detail::DsnotScratch scratch;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r * cols;
      const detail::DsnotRow row{w + o, grow ? grow + o : nullptr, prune ? prune + o : nullptr,
                                 phi ? phi + o : nullptr, mask + o};
      if (params.m) detail::refine_row_nm(row, columns, params, scratch);
      else detail::refine_row_unstructured(row, columns, params, scratch);
    }
  });
  return keep.to(inputs.keep_mask.device());
}

}  // namespace symprune
