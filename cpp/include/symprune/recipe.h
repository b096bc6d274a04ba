#pragma once
// A pruning recipe: which score, which pattern, which refinement, with which options. It is
// the one definition of the sequence score -> mask -> refinement that every front end runs
// (the Python pipeline, the streaming engine, the bindings, C++ programs), and the one place
// where its defaults and its validation live. Build it with make_recipe() (from names and
// key=value options, as the Python API and the command line have them) or fill the struct
// and call validate(); then prune each weight with symprune::prune() (prune.h).

#include "symprune/dsnot.h"
#include "symprune/errors.h"
#include "symprune/export.h"
#include "symprune/mask.h"
#include "symprune/owl.h"
#include "symprune/reconstruct.h"
#include "symprune/score.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace symprune {

// What a score method needs and how it can be computed.
struct SYMPRUNE_API MethodInfo {
  bool needs_input_stats = false;   // in_norm of the layer's inputs
  bool needs_output_stats = false;  // out_norm of the layer's outputs
  // Row i of the score depends only on row i of the weight (and statistics): per-row and
  // N:M masks can then be computed a row at a time.
  bool row_local = false;
  // Row i of the score depends only on row i, statistics and the whole weight's column norms
  // (score.h column_norm_order): rows can go in blocks once those are known.
  bool reads_column_norms = false;
  bool data_free = false;  // needs no statistics at all
};
SYMPRUNE_API MethodInfo method_info(ScoreMethod method);

enum class Refinement { None, Dsnot, R2Dsnot };

// How the pattern is chosen: from the score's mask, by SparseGPT (mask and weight updates
// together, from the Gram of the layer's inputs; reconstruct.h; method "sparsegpt"), or by
// ADMM from Wanda's mask (the Gram's diagonal gives the input norms; method "admm").
enum class Solver { Mask, SparseGpt, Admm };

// What happens to the kept weights last: nothing, or the exact least-squares refit on the final
// mask (reconstruct.h).
enum class Update { None, Refit };

// What the Gram methods make each Linear reproduce: its own dense outputs on the inputs it sees in
// the model pruned so far (Layer), or the dense model's outputs, plus, where the output joins the
// residual stream, that stream's error (Residual; reconstruct.h residual_target). Residual needs
// the dense model's activations next to the pruned ones (a front end's second stream).
enum class Target { Layer, Residual };

// An option value from Python or the command line.
using OptionValue = std::variant<std::monostate, bool, int64_t, double, std::string>;
using Options = std::map<std::string, OptionValue>;

struct SYMPRUNE_API Recipe {
  ScoreMethod method = ScoreMethod::Magnitude;
  std::optional<double> sparsity;  // exactly one of sparsity and nm
  std::optional<NM> nm;
  MaskGroup group = MaskGroup::Row;  // unstructured only
  bool permute = false;              // RIA's channel permutation; N:M only, no refinement
  ScoreOptions score;                // a, p, beta, seed; the norms come with each layer's statistics
  // make_recipe puts r2dsnot_defaults() into refine_options for R2Dsnot; a hand-filled recipe
  // runs the refine_options it holds.
  Refinement refine = Refinement::None;
  DsnotOptions refine_options;       // its nm is the recipe's
  // Weights whose name contains one of these fragments are not refined ("mlp": attention only).
  // make_recipe starts from default_refine_skip(refine).
  std::vector<std::string> refine_skip;
  Solver solver = Solver::Mask;
  Update update = Update::None;
  int64_t blocksize = 128;  // sparsegpt's column blocks
  double percdamp = 0.01;   // damping of the Gram (sparsegpt, admm, refit): percdamp * mean(diag H)
  AdmmOptions admm;         // admm's schedule (its pattern and percdamp are the recipe's)
  Target target = Target::Layer;  // Residual: LayerStats::cross (and residual_cross) come with each weight
  // OWL: the sparsity is the model-wide target and each block gets its own (owl.h); a front end
  // prunes block b with at_sparsity(its OWL sparsity). Unstructured patterns only.
  std::optional<OwlOptions> owl;

  // Throws ValueError naming the first problem.
  void validate() const;

  // Statistics that every pruned weight must come with.
  bool needs_input_stats() const;       // in_norm (the score, or any refinement)
  bool needs_input_stats(bool refined) const;  // in_norm for a weight that is (not) refined
  bool needs_refine_stats() const;      // in_mean and in_var (refinement)
  bool needs_output_stats() const;      // out_norm
  bool needs_gram() const;              // the Gram of the inputs (sparsegpt, refit)
  bool needs_cross() const { return target == Target::Residual; }  // LayerStats::cross
  bool data_free() const { return !needs_input_stats() && !needs_output_stats() && !needs_gram() && !owl; }
  // Whether the weight called `name` is refined (refinement on and no skip fragment matches).
  bool refines(std::string_view name) const;
  // Rows of a weight are pruned independently of each other, given the whole weight's column
  // norms where the score (MethodInfo::reads_column_norms) or R2-DSnoT's relative metrics read
  // them: they can go in blocks.
  bool rows_independent() const;
  // The order p of the whole weight's column norms that pruning reads (the score's, score.h
  // column_norm_order, or 1 for R2-DSnoT's relative metrics); nullopt if none.
  std::optional<double> column_norm_order() const;
  // A per-layer mask of a score whose rows would be independent: found a block of rows at a time,
  // in passes (a threshold by selection, then the masks and any refinement).
  bool layer_mask_in_passes() const;

  // This recipe at another sparsity and without OWL: what one block is pruned with under OWL.
  Recipe at_sparsity(double block_sparsity) const;
  // This recipe without the channel permutation: the plain N:M mask, for a Linear whose inputs'
  // producers cannot absorb a permutation.
  Recipe without_permute() const;

  // Options that differ from their defaults, by key (the keys make_recipe accepts).
  Options score_option_values() const;
  Options refine_option_values() const;
  // Every field, canonically: equal recipes give equal text (resume checks use it).
  std::string to_json() const;
  // One line for people, e.g. "wanda 2:4 + r2dsnot".
  std::string describe() const;
};

struct SYMPRUNE_API RecipeArgs {
  // magnitude, wanda, ria, stochria, symwanda, owanda, symmetric (scores), or sparsegpt
  std::string method;  // ... or admm
  std::optional<double> sparsity;
  std::optional<NM> nm;
  std::string group = "row";          // row or layer
  bool permute = false;
  std::optional<std::string> refine;  // dsnot or r2dsnot
  // Options of the method: a (ria, stochria), p (ria), beta and seed (stochria), blocksize and
  // percdamp (sparsegpt).
  Options score_options;
  // max_cycles, threshold, var_power, relative (prune|grow|none), a, gamma1, gamma2, q, and
  // skip (comma-separated name fragments of weights left unrefined).
  Options refine_options;
  std::optional<std::string> update;  // refit
  Options update_options;             // percdamp
  bool owl = false;                   // OWL block sparsities
  Options owl_options;                // m (outlier multiple, 5), lambda (spread, 0.08)
  std::string target = "layer";       // layer or residual (Target)
};

// The validated recipe; r2dsnot is dsnot with r2dsnot_defaults() under the given options.
SYMPRUNE_API Recipe make_recipe(const RecipeArgs& args);

// The names make_recipe accepts as method (the score methods, then sparsegpt), for refine, as
// refine option keys, and for update.
SYMPRUNE_API std::vector<std::string> method_names();
SYMPRUNE_API std::vector<std::string> update_names();
SYMPRUNE_API std::vector<std::string> target_names();
SYMPRUNE_API std::vector<std::string> refinement_names();
SYMPRUNE_API std::vector<std::string> refine_option_keys();

// The options R2-DSnoT adds to DSnoT (chosen on calibration text, see docs/r2dsnot.md).
SYMPRUNE_API Options r2dsnot_defaults();
// The refine option skip a refinement starts from: {"mlp"} for dsnot (attention projections
// only, as DSnoT's public code), none for r2dsnot. skip=none refines every layer.
SYMPRUNE_API std::vector<std::string> default_refine_skip(Refinement refine);

// Names as the Python API and the command line give them; ValueError for unknown ones.
SYMPRUNE_API NM parse_nm(std::string_view text);  // "2:4" -> {2, 4}, 1 <= N < M
SYMPRUNE_API MaskGroup parse_group(std::string_view name);  // row, layer
SYMPRUNE_API Relative parse_relative(std::string_view name);  // prune, grow, none

}  // namespace symprune
