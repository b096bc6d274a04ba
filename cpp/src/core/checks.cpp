#include "core/checks.h"

#include <c10/util/Exception.h>

#include <ATen/TensorOperators.h>

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/sum.h>

#include <atomic>
#include <cstdint>

namespace symprune::detail {
namespace {

// True when every element's exponent bits are not all ones (NaN and Inf have all ones). A test of
// the bits, unlike std::isfinite, vectorises: one parallel pass at memory speed, where
// at::isfinite(t).all() would first write a bool tensor.
template <typename bits_t>
bool exponents_finite(const void* data, int64_t numel, bits_t exponent) {
  const auto* bits = static_cast<const bits_t*>(data);
  std::atomic<bool> finite{true};
  at::parallel_for(0, numel, 1 << 16, [&](int64_t begin, int64_t end) {
    bool bad = false;
    for (int64_t i = begin; i < end; ++i) bad |= (bits[i] & exponent) == exponent;
    if (bad) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

bool all_finite_cpu(const at::Tensor& t) {
  const void* data = t.const_data_ptr();
  switch (t.scalar_type()) {
    case at::kDouble: return exponents_finite<uint64_t>(data, t.numel(), 0x7ff0000000000000ULL);
    case at::kFloat: return exponents_finite<uint32_t>(data, t.numel(), 0x7f800000U);
    case at::kBFloat16: return exponents_finite<uint16_t>(data, t.numel(), 0x7f80U);
    default: return exponents_finite<uint16_t>(data, t.numel(), 0x7c00U);  // fp16 (callers check the dtype)
  }
}

}  // namespace

bool is_supported_float(at::ScalarType type) {
  return type == at::kHalf || type == at::kBFloat16 || type == at::kFloat || type == at::kDouble;
}

void check_finite(const at::Tensor& t, const char* name) {
  const bool finite = t.device().is_cpu() && t.is_contiguous() && is_supported_float(t.scalar_type())
                          ? all_finite_cpu(t)
                          : at::isfinite(t).all().item<bool>();
  SYMPRUNE_CHECK(finite, name, " contains NaN or Inf");
}

void check_out(const at::Tensor& out, const at::Tensor& like) {
  SYMPRUNE_CHECK(out.sizes() == like.sizes() && out.scalar_type() == like.scalar_type() &&
                        out.device() == like.device() && out.is_contiguous(),
                    "out must be a contiguous tensor of the weight's shape, dtype and device");
  const auto overlap = at::get_overlap_status(out, like);
  SYMPRUNE_CHECK(overlap == at::MemOverlapStatus::No, "out must not overlap the weight");
}

void check_matrix(const at::Tensor& t, const char* name, bool check_values) {
  SYMPRUNE_CHECK(t.defined(), name, " is missing");
  SYMPRUNE_CHECK(t.dim() == 2, name, " must be 2-D (out_features, in_features), got shape ",
                    t.sizes());
  SYMPRUNE_CHECK(is_supported_float(t.scalar_type()), name,
                    " must be a floating-point tensor (fp16, bf16, fp32 or fp64), got ", t.scalar_type());
  if (check_values) check_finite(t, name);
}

void check_vector(const at::Tensor& t, int64_t size, const char* name) {
  SYMPRUNE_CHECK(t.defined(), name, " is missing");
  SYMPRUNE_CHECK(t.dim() == 1 && t.size(0) == size, name, " must have shape (", size,
                    "), got ", t.sizes());
  SYMPRUNE_CHECK(is_supported_float(t.scalar_type()), name,
                    " must be a floating-point tensor (fp16, bf16, fp32 or fp64), got ", t.scalar_type());
  check_finite(t, name);
}

bool keeps_n_of_every_m(const at::Tensor& mask, NM nm) {
  return (mask.reshape({mask.size(0), mask.size(1) / nm.m, nm.m}).sum(-1) == nm.n).all().item<bool>();
}

void check_mask(const at::Tensor& mask, const at::Tensor& like, const char* name) {
  SYMPRUNE_CHECK(mask.defined(), name, " is missing");
  SYMPRUNE_CHECK(mask.scalar_type() == at::kBool, name, " must be a bool tensor, got ",
                    mask.scalar_type());
  SYMPRUNE_CHECK(mask.sizes() == like.sizes(), name, " must have shape ", like.sizes(),
                    ", got ", mask.sizes());
}

}  // namespace symprune::detail
