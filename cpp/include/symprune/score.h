#pragma once
// Importance scores (docs/semantics.md#scores). Higher = more important = kept.

#include "symprune/errors.h"
#include "symprune/export.h"
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace symprune {

enum class ScoreMethod { Magnitude, Wanda, Ria, StochRia, SymWanda, OWanda, Symmetric };

// Parses "magnitude", "wanda", "ria", "stochria", "symwanda", "owanda", "symmetric".
SYMPRUNE_API ScoreMethod parse_score_method(std::string_view name);
SYMPRUNE_API std::string_view score_method_name(ScoreMethod method);
SYMPRUNE_API std::vector<std::string> score_method_names();  // in the order above

struct SYMPRUNE_API ScoreOptions {
  std::optional<at::Tensor> in_norm;   // (in_features), required by wanda/ria/stochria/symwanda
  std::optional<at::Tensor> out_norm;  // (out_features), required by symwanda/owanda
  double a = 0.5;      // activation power of ria/stochria
  double p = 1.0;      // norm order of ria's relative importance (1 = RIA)
  double beta = 0.1;   // sampled fraction of each row/column for stochria
  uint64_t seed = 0;   // stochria's sampling seed
  // The whole weight's column norms (fp64, from column_norms()) when a block of its rows is
  // scored by a method that reads them (column_norm_order); computed from the weight when absent.
  std::optional<at::Tensor> column_norms;
};

// The order p of the column norms ||W_:j||_p that `method` reads of the whole weight (ria: its p;
// symmetric: 2); nullopt for the others (stochria samples whole columns: it is scored whole).
SYMPRUNE_API std::optional<double> column_norm_order(ScoreMethod method, const ScoreOptions& options);

// The column l_p norms of `weight` (fp64), accumulated over blocks of 1 M elements in a fixed
// order: the same bits whether the weight is in memory or mapped from a file and read a block at
// a time. `after_block(begin, end)`, if given, runs once rows [begin, end) are read (the streaming
// engine drops their pages there).
SYMPRUNE_API at::Tensor column_norms(const at::Tensor& weight, double p,
                                     const std::function<void(int64_t, int64_t)>& after_block = {});

// The options of ScoreOptions (besides the norms) that `method` reads: ria a and p; stochria a,
// beta and seed; none for the others. Front ends refuse the rest instead of ignoring them.
SYMPRUNE_API std::vector<std::string> score_options_read(ScoreMethod method);

// Scores a weight of shape (out_features, in_features), any floating dtype.
// Returns an fp32 tensor of the same shape on the weight's device. Row/column norms
// are accumulated in fp64 and rounded once, so results do not depend on summation order.
SYMPRUNE_API at::Tensor score(const at::Tensor& weight, ScoreMethod method, const ScoreOptions& options = {});

// RIA's relative importance |W|/||W_:j||_p + |W|/||W_i:||_p (fp32), the building block of
// ria, stochria (with sampled norms) and R2-DSnoT. `column_norms`: the whole weight's (fp64, from
// column_norms()) when `weight` is a block of its rows; computed from `weight` when absent.
SYMPRUNE_API at::Tensor relative_importance(const at::Tensor& weight, double p = 1.0,
                                            const std::optional<at::Tensor>& column_norms = std::nullopt);

}  // namespace symprune
