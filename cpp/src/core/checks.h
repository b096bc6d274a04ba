#pragma once
// Input validation shared by the core's entry points. Every failure throws symprune::ValueError
// (Python: ValueError) with a message that names the argument and what was expected.

#include "symprune/dsnot.h"
#include "symprune/errors.h"
#include "symprune/mask.h"
#include "symprune/score.h"

#include <ATen/core/Tensor.h>
#include <c10/util/StringUtil.h>

#include <cstdint>

// Throws symprune::ValueError with the arguments concatenated (c10::str) unless `cond` holds.
#define SYMPRUNE_CHECK(cond, ...) \
  do {                            \
    if (!(cond)) throw ::symprune::ValueError(::c10::str(__VA_ARGS__)); \
  } while (false)

namespace symprune::detail {

// A 2-D floating-point matrix with finite entries (check_values=false: callers that find
// NaN/Inf in a pass of their own).
void check_matrix(const at::Tensor& t, const char* name, bool check_values = true);
// A 1-D floating-point vector of `size` finite entries.
void check_vector(const at::Tensor& t, int64_t size, const char* name);
// Same shape as `like`, dtype bool (on any device: callers move it where they compute).
void check_mask(const at::Tensor& mask, const at::Tensor& like, const char* name);
// Whether a mask of shape (rows, in), in divisible by m, keeps exactly n of every m consecutive
// entries of each row (the caller words the error: what the pattern is needed for differs).
bool keeps_n_of_every_m(const at::Tensor& mask, NM nm);
void check_finite(const at::Tensor& t, const char* name);
// fp16, bf16, fp32 or fp64: the dtypes the kernels handle (fp8 is floating-point but is not).
bool is_supported_float(at::ScalarType type);
// `out` of an *_out function: contiguous, the shape, dtype and device of `like`, not
// overlapping it.
void check_out(const at::Tensor& out, const at::Tensor& like);

// Options, independent of any tensor: the checks a Recipe runs before anything is pruned and
// that the algorithms repeat for direct callers.
void check_nm_pattern(NM nm);                                           // 1 <= n < m
void check_score_options(ScoreMethod method, const ScoreOptions& options);  // a, p, beta
void check_dsnot_options(const DsnotOptions& options);                  // max_cycles, threshold, ...

}  // namespace symprune::detail
