#include "checks.h"

#include <c10/util/Exception.h>

#include <ATen/TensorOperators.h>

#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>

namespace symprune::detail {

void check_finite(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(at::isfinite(t).all().item<bool>(), name, " contains NaN or Inf");
}

void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), name, " is missing");
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D (out_features, in_features), got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), name,
                    " must be a floating-point tensor, got ", t.scalar_type());
  check_finite(t, name);
}

void check_vector(const at::Tensor& t, int64_t size, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), name, " is missing");
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, name, " must have shape (", size,
                    "), got ", t.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), name,
                    " must be a floating-point tensor, got ", t.scalar_type());
  check_finite(t, name);
}

void check_mask(const at::Tensor& mask, const at::Tensor& like, const char* name) {
  TORCH_CHECK_VALUE(mask.defined(), name, " is missing");
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool, name, " must be a bool tensor, got ",
                    mask.scalar_type());
  TORCH_CHECK_VALUE(mask.sizes() == like.sizes(), name, " must have shape ", like.sizes(),
                    ", got ", mask.sizes());
}

}  // namespace symprune::detail
