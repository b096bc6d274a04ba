#include "symprune/dsnot.h"

#include "core/checks.h"
#include "core/dsnot_prepared.h"
#include "symprune/score.h"

#include <c10/util/Exception.h>

#include <ATen/TensorOperators.h>

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
  SYMPRUNE_CHECK((in.in_var >= 0).all().item<bool>(), "in_var must be non-negative");
  SYMPRUNE_CHECK((in.in_norm >= 0).all().item<bool>(), "in_norm must be non-negative");
  if (in.initial_score) {
    detail::check_matrix(*in.initial_score, "initial_score");
    SYMPRUNE_CHECK(in.initial_score->sizes() == in.weight.sizes(), "initial_score must have shape ",
                      in.weight.sizes(), ", got ", in.initial_score->sizes());
    SYMPRUNE_CHECK(opt.nm.has_value(), "initial_score is only used by the N:M branch (nm=...); the "
                      "unstructured branch orders prune candidates by the Wanda metric");
  }
  if (opt.nm) {
    check_nm(*opt.nm, cols);
    // The N:M branch swaps within groups: a mask that is not N:M would stay not N:M.
    SYMPRUNE_CHECK(detail::keeps_n_of_every_m(in.keep_mask, *opt.nm), "keep_mask is not ", opt.nm->n, ":", opt.nm->m,
                   ": every group of ", opt.nm->m, " consecutive inputs must keep exactly ", opt.nm->n);
  }
  detail::check_dsnot_options(opt);
}

// Inputs of the walk in fp32 on the compute device. The default metrics are computed inside
// the walk; R2-DSnoT's relative metrics and an explicit N:M initial score are whole matrices.
detail::DsnotPrepared prepare(const DsnotInputs& in, const DsnotOptions& opt, at::Device device) {
  auto to_device = [device](const at::Tensor& t) { return t.to(device, at::kFloat).contiguous(); };
  detail::DsnotPrepared p;
  p.w = to_device(in.weight);
  p.norm = to_device(in.in_norm);
  p.mean = to_device(in.in_mean);
  p.var_denominator = at::pow(at::clamp_min(to_device(in.in_var), kVarEpsilon), opt.var_power).contiguous();
  if (opt.relative == Relative::Grow)
    p.grow_key = (at::sign(p.w) * relative_importance(p.w, 1.0, in.column_norms) * p.mean.unsqueeze(0) /
                  p.var_denominator.unsqueeze(0)).contiguous();
  if (opt.relative == Relative::Prune) {
    ScoreOptions ria;
    ria.in_norm = p.norm;
    ria.a = opt.a;
    ria.column_norms = in.column_norms;
    p.prune_key = score(p.w, ScoreMethod::Ria, ria).contiguous();
  } else if (opt.nm && in.initial_score) {
    p.prune_key = to_device(*in.initial_score);
  }
  if (opt.gamma1 || opt.gamma2) {
    const auto phi = at::pow(at::abs(p.w), opt.q) * p.norm.unsqueeze(0);
    const auto row_mean = phi.mean({1}, /*keepdim=*/true);
    p.phi = at::where(row_mean > 0, phi / row_mean, 0.0f).contiguous();
  }
  return p;
}

}  // namespace

void detail::check_dsnot_options(const DsnotOptions& opt) {
  SYMPRUNE_CHECK(opt.max_cycles >= 0, "max_cycles must be >= 0, got ", opt.max_cycles);
  SYMPRUNE_CHECK(std::isfinite(opt.threshold) && opt.threshold >= 0, "threshold must be >= 0, got ",
                 opt.threshold);
  SYMPRUNE_CHECK(std::isfinite(opt.var_power), "var_power must be finite");
  SYMPRUNE_CHECK(std::isfinite(opt.a) && std::isfinite(opt.q), "a and q must be finite");
  SYMPRUNE_CHECK(std::isfinite(opt.gamma1.value_or(0)) && std::isfinite(opt.gamma2.value_or(0)),
                 "gamma1 and gamma2 must be finite");
}

at::Tensor dsnot(const DsnotInputs& inputs, const DsnotOptions& options) {
  validate(inputs, options);
  const auto device = inputs.weight.device();
  const bool batched = options.backend == DsnotBackend::Batched ||
                       (options.backend == DsnotBackend::Auto && !device.is_cpu());
  const auto compute = batched ? device : at::Device(at::kCPU);
  const auto prepared = prepare(inputs, options, compute);
  const auto keep = inputs.keep_mask.to(compute).contiguous();
  const auto refined = batched ? detail::refine_batched(prepared, keep, options)
                               : detail::refine_rows(prepared, keep, options);
  return refined.to(inputs.keep_mask.device());
}

}  // namespace symprune
