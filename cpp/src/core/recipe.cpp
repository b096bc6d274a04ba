// Recipe: defaults, option parsing and validation, defined once for every front end.
#include "symprune/recipe.h"

#include "core/checks.h"

#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <set>
#include <sstream>

namespace symprune {
namespace {

constexpr std::array<std::pair<std::string_view, Refinement>, 2> kRefinements{{
    {"dsnot", Refinement::Dsnot},
    {"r2dsnot", Refinement::R2Dsnot},
}};

std::string_view refinement_name(Refinement r) {
  for (const auto& [name, value] : kRefinements)
    if (value == r) return name;
  return "none";
}

std::string_view relative_name(Relative r) {
  return r == Relative::Prune ? "prune" : r == Relative::Grow ? "grow" : "none";
}

std::string show(const OptionValue& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) return "none";
        else if constexpr (std::is_same_v<T, bool>) return x ? "true" : "false";
        else if constexpr (std::is_same_v<T, std::string>) return "'" + x + "'";
        else {
          std::ostringstream out;
          out << x;
          // 1.0 shows as 1.0, not as the integer 1.
          if (std::is_floating_point_v<T> && out.str().find_first_of(".eEni") == std::string::npos) out << ".0";
          return out.str();
        }
      },
      v);
}

// Typed readers of one option: `what` is e.g. "refine option 'max_cycles'".
double number(const OptionValue& v, const std::string& what) {
  if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  if (const auto* d = std::get_if<double>(&v)) return *d;
  throw ValueError(what + " must be a number, got " + show(v));
}

std::optional<double> optional_number(const OptionValue& v, const std::string& what) {
  if (std::holds_alternative<std::monostate>(v)) return std::nullopt;
  return number(v, what);
}

int64_t integer(const OptionValue& v, const std::string& what) {
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  throw ValueError(what + " must be an integer, got " + show(v));
}

std::string text(const OptionValue& v, const std::string& what) {
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  throw ValueError(what + " must be text, got " + show(v));
}

Relative relative(const OptionValue& v, const std::string& what) {
  if (std::holds_alternative<std::monostate>(v)) return Relative::None;
  return parse_relative(text(v, what));
}

std::vector<std::string> fragments(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  for (std::string part; std::getline(in, part, ',');)
    if (!part.empty()) out.push_back(part);
  return out;
}

constexpr std::string_view kSparseGpt = "sparsegpt";
constexpr std::string_view kAdmm = "admm";

// Which options each method reads: an option the method ignores is refused.
std::set<std::string> score_option_keys(const Recipe& r) {
  if (r.solver == Solver::SparseGpt) return {"blocksize", "percdamp"};
  if (r.solver == Solver::Admm) return {"percdamp", "rho0", "growth", "max_iterations", "patience"};
  const auto read = score_options_read(r.method);
  return {read.begin(), read.end()};
}

std::string joined(const std::set<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) out += (out.empty() ? "" : ", ") + k;
  return out.empty() ? "none" : out;
}

std::string method_name(const Recipe& r) {
  if (r.solver == Solver::SparseGpt) return std::string(kSparseGpt);
  if (r.solver == Solver::Admm) return std::string(kAdmm);
  return std::string(score_method_name(r.method));
}

void set_score_option(Recipe& r, const std::string& key, const OptionValue& v) {
  const auto allowed = score_option_keys(r);
  if (!allowed.count(key))
    throw ValueError("unknown score option '" + key + "' for method '" + method_name(r) + "' (its options: " +
                     joined(allowed) + ")");
  const std::string what = "score option '" + key + "'";
  auto& o = r.score;
  if (key == "blocksize") r.blocksize = integer(v, what);
  else if (key == "percdamp") r.percdamp = number(v, what);
  else if (key == "rho0") r.admm.rho0 = number(v, what);
  else if (key == "growth") r.admm.growth = number(v, what);
  else if (key == "max_iterations") r.admm.max_iterations = integer(v, what);
  else if (key == "patience") r.admm.patience = integer(v, what);
  else if (key == "a") o.a = number(v, what);
  else if (key == "p") o.p = number(v, what);
  else if (key == "beta") o.beta = number(v, what);
  else {
    const int64_t seed = integer(v, what);
    if (seed < 0) throw ValueError(what + " must be >= 0, got " + std::to_string(seed));
    o.seed = static_cast<uint64_t>(seed);
  }
}

const std::set<std::string> kRefineKeys{"max_cycles", "threshold", "var_power", "relative", "a",
                                        "gamma1",     "gamma2",    "q",         "skip"};

void set_refine_option(Recipe& r, const std::string& key, const OptionValue& v) {
  if (!kRefineKeys.count(key))
    throw ValueError("unknown refine option '" + key + "' (known: " + joined(kRefineKeys) + ")");
  const std::string what = "refine option '" + key + "'";
  auto& o = r.refine_options;
  if (key == "max_cycles") o.max_cycles = integer(v, what);
  else if (key == "threshold") o.threshold = number(v, what);
  else if (key == "var_power") o.var_power = number(v, what);
  else if (key == "relative") o.relative = relative(v, what);
  else if (key == "a") o.a = number(v, what);
  else if (key == "gamma1") o.gamma1 = optional_number(v, what);
  else if (key == "gamma2") o.gamma2 = optional_number(v, what);
  else if (key == "q") o.q = number(v, what);
  else r.refine_skip = std::holds_alternative<std::monostate>(v) ? std::vector<std::string>{} : fragments(text(v, what));
}

OptionValue optional_value(const std::optional<double>& v) {
  return v ? OptionValue(*v) : OptionValue(std::monostate{});
}

}  // namespace

MethodInfo method_info(ScoreMethod method) {
  MethodInfo info;
  info.needs_input_stats = method == ScoreMethod::Wanda || method == ScoreMethod::Ria ||
                           method == ScoreMethod::StochRia || method == ScoreMethod::SymWanda;
  info.needs_output_stats = method == ScoreMethod::SymWanda || method == ScoreMethod::OWanda;
  info.row_local = method == ScoreMethod::Magnitude || method == ScoreMethod::Wanda ||
                   method == ScoreMethod::SymWanda || method == ScoreMethod::OWanda;
  info.reads_column_norms = method == ScoreMethod::Ria || method == ScoreMethod::Symmetric;
  info.data_free = !info.needs_input_stats && !info.needs_output_stats;
  return info;
}

NM parse_nm(std::string_view text) {
  const auto colon = text.find(':');
  const auto digits = [](std::string_view s) {
    return !s.empty() && s.size() < 10 && s.find_first_not_of("0123456789") == std::string_view::npos;
  };
  if (colon == std::string_view::npos || !digits(text.substr(0, colon)) || !digits(text.substr(colon + 1)))
    throw ValueError("N:M pattern must look like '2:4', got '" + std::string(text) + "'");
  const NM nm{std::stoll(std::string(text.substr(0, colon))), std::stoll(std::string(text.substr(colon + 1)))};
  detail::check_nm_pattern(nm);
  return nm;
}

MaskGroup parse_group(std::string_view name) {
  if (name == "row") return MaskGroup::Row;
  if (name == "layer") return MaskGroup::Layer;
  throw ValueError("group must be 'row' or 'layer', got '" + std::string(name) + "'");
}

Relative parse_relative(std::string_view name) {
  if (name == "prune") return Relative::Prune;
  if (name == "grow") return Relative::Grow;
  if (name == "none") return Relative::None;
  throw ValueError("relative must be 'prune', 'grow' or none, got '" + std::string(name) + "'");
}

std::vector<std::string> method_names() {
  auto names = score_method_names();
  names.emplace_back(kSparseGpt);
  names.emplace_back(kAdmm);
  return names;
}

std::vector<std::string> update_names() { return {"refit"}; }
std::vector<std::string> target_names() { return {"layer", "residual"}; }

std::vector<std::string> refinement_names() {
  std::vector<std::string> names;
  for (const auto& entry : kRefinements) names.emplace_back(entry.first);
  return names;
}

std::vector<std::string> refine_option_keys() { return {kRefineKeys.begin(), kRefineKeys.end()}; }

Options r2dsnot_defaults() { return {{"gamma1", 0.1}, {"gamma2", 0.0}}; }

std::vector<std::string> default_refine_skip(Refinement refine) {
  // DSnoT's public code refines attention projections only unless told otherwise; R2-DSnoT's
  // defaults were chosen refining every layer (docs/r2dsnot.md).
  if (refine == Refinement::Dsnot) return {"mlp"};
  return {};
}

Recipe make_recipe(const RecipeArgs& args) {
  Recipe r;
  if (args.method == kSparseGpt) r.solver = Solver::SparseGpt;
  else if (args.method == kAdmm) r.solver = Solver::Admm;
  else r.method = parse_score_method(args.method);
  r.sparsity = args.sparsity;
  r.nm = args.nm;
  r.group = parse_group(args.group);
  r.permute = args.permute;
  if (args.refine) {
    const auto it = std::find_if(kRefinements.begin(), kRefinements.end(),
                                 [&](const auto& entry) { return entry.first == *args.refine; });
    if (it == kRefinements.end())
      throw ValueError("unknown refine '" + *args.refine + "'; choose dsnot or r2dsnot");
    r.refine = it->second;
  } else if (!args.refine_options.empty()) {
    throw ValueError("refine options given without refine (dsnot or r2dsnot)");
  }
  for (const auto& [key, value] : args.score_options) set_score_option(r, key, value);
  if (args.update) {
    if (*args.update != "refit") throw ValueError("unknown update '" + *args.update + "'; choose refit");
    r.update = Update::Refit;
  } else if (!args.update_options.empty()) {
    throw ValueError("update options given without update (refit)");
  }
  for (const auto& [key, value] : args.update_options) {
    if (key != "percdamp") throw ValueError("unknown update option '" + key + "' (known: percdamp)");
    r.percdamp = number(value, "update option 'percdamp'");
  }
  if (args.target == "residual") r.target = Target::Residual;
  else if (args.target != "layer") throw ValueError("unknown target '" + args.target + "'; choose layer or residual");
  if (args.owl) {
    r.owl = OwlOptions{};
    for (const auto& [key, value] : args.owl_options) {
      if (key == "m") r.owl->outlier_multiple = number(value, "owl option 'm'");
      else if (key == "lambda") r.owl->lambda = number(value, "owl option 'lambda'");
      else throw ValueError("unknown owl option '" + key + "' (known: lambda, m)");
    }
  } else if (!args.owl_options.empty()) {
    throw ValueError("owl options given without owl");
  }
  r.refine_skip = default_refine_skip(r.refine);
  if (r.refine == Refinement::R2Dsnot)
    for (const auto& [key, value] : r2dsnot_defaults())
      if (!args.refine_options.count(key)) set_refine_option(r, key, value);
  for (const auto& [key, value] : args.refine_options) set_refine_option(r, key, value);
  r.validate();
  return r;
}

void Recipe::validate() const {
  if (sparsity.has_value() == nm.has_value())
    throw ValueError("give exactly one of sparsity (e.g. 0.5) and nm (e.g. 2:4)");
  if (sparsity) check_sparsity(*sparsity);
  if (nm) {
    detail::check_nm_pattern(*nm);
    if (group != MaskGroup::Row) throw ValueError("group applies to unstructured patterns only; N:M groups are fixed");
  }
  if (owl) {
    if (!sparsity) throw ValueError("OWL sets a sparsity per block: it applies to unstructured patterns, not N:M");
    check_owl_options(*owl);
  }
  if (permute && !nm) throw ValueError("permute applies to N:M patterns only (give nm)");
  if (permute && refine != Refinement::None)
    throw ValueError("refine cannot be combined with permute: DSnoT's N:M groups are consecutive columns, "
                     "not the permuted ones");
  if (refine == Refinement::None && !refine_skip.empty())
    throw ValueError("refine option 'skip' given without refine (dsnot or r2dsnot)");
  detail::check_score_options(method, score);
  detail::check_dsnot_options(refine_options);
  if (!std::isfinite(percdamp) || percdamp < 0) throw ValueError("percdamp must be >= 0, got " + std::to_string(percdamp));
  if (solver != Solver::Mask) {
    const auto name = method_name(*this);
    if (refine != Refinement::None)
      throw ValueError(name + " chooses its mask together with its weight updates: refine applies to score masks");
    if (permute) throw ValueError(name + " does not support permute");
    if (!nm && group != MaskGroup::Row)
      throw ValueError(name + " chooses its own mask for each row or block: group does not apply");
  }
  if (target == Target::Residual) {
    if (!needs_gram())
      throw ValueError("target residual moves the kept weights towards the dense model's outputs: it needs a "
                       "method that solves the weights (sparsegpt, admm) or update refit");
    if (permute) throw ValueError("target residual does not support permute");
  }
  if (solver == Solver::Admm) {
    if (update != Update::None) throw ValueError("admm already finishes with the refit: drop update");
    if (!std::isfinite(admm.rho0) || admm.rho0 <= 0 || !std::isfinite(admm.growth) || admm.growth < 1 ||
        admm.max_iterations < 0 || admm.patience < 1)
      throw ValueError("admm needs rho0 > 0, growth >= 1, max_iterations >= 0 and patience >= 1");
  }
  if (solver == Solver::SparseGpt) {
    if (blocksize < 1) throw ValueError("blocksize must be >= 1, got " + std::to_string(blocksize));
    if (nm && (nm->m > 64 || blocksize % nm->m != 0))
      throw ValueError("sparsegpt needs M <= 64 and a blocksize that is a multiple of M (blocksize " +
                       std::to_string(blocksize) + ", M " + std::to_string(nm->m) + ")");
  }
}

bool Recipe::needs_input_stats() const { return needs_input_stats(refine != Refinement::None); }
bool Recipe::needs_input_stats(bool refined) const {
  return (solver == Solver::Mask && method_info(method).needs_input_stats) || refined;
}
bool Recipe::needs_refine_stats() const { return refine != Refinement::None; }
bool Recipe::needs_output_stats() const {
  return solver == Solver::Mask && method_info(method).needs_output_stats;
}
bool Recipe::needs_gram() const { return solver != Solver::Mask || update == Update::Refit; }

bool Recipe::refines(std::string_view name) const {
  if (refine == Refinement::None) return false;
  for (const auto& part : refine_skip)
    if (name.find(part) != std::string_view::npos) return false;
  return true;
}

namespace {
bool refines_relatively(const Recipe& r) { return r.refine != Refinement::None && r.refine_options.relative != Relative::None; }

// A mask recipe whose weight's rows can be pruned in blocks once the whole weight's column norms
// are known. R2-DSnoT's relative metrics read l1 column norms: a score that reads norms of
// another order would need two vectors, so such a weight is pruned whole.
bool rows_need_only_column_norms(const Recipe& r) {
  const auto info = method_info(r.method);
  const auto score_order = column_norm_order(r.method, r.score);
  return r.solver == Solver::Mask && r.update == Update::None && !r.permute &&
         (info.row_local || info.reads_column_norms) && !(refines_relatively(r) && score_order && *score_order != 1.0);
}
}  // namespace

bool Recipe::rows_independent() const { return rows_need_only_column_norms(*this) && (nm || group == MaskGroup::Row); }

std::optional<double> Recipe::column_norm_order() const {
  if (refines_relatively(*this)) return 1.0;
  return symprune::column_norm_order(method, score);
}

bool Recipe::layer_mask_in_passes() const {
  return rows_need_only_column_norms(*this) && !owl && sparsity && group == MaskGroup::Layer;
}

Recipe Recipe::at_sparsity(double block_sparsity) const {
  if (!sparsity) throw ValueError("at_sparsity applies to unstructured recipes, not N:M");
  Recipe block = *this;
  block.sparsity = block_sparsity;
  block.owl.reset();
  block.validate();
  return block;
}

Recipe Recipe::without_permute() const {
  Recipe plain = *this;
  plain.permute = false;
  plain.validate();
  return plain;
}

std::map<std::string, OptionValue> Recipe::score_option_values() const {
  const ScoreOptions defaults;
  const Recipe recipe_defaults;
  std::map<std::string, OptionValue> out;
  const auto keys = score_option_keys(*this);
  if (keys.count("blocksize") && blocksize != recipe_defaults.blocksize) out["blocksize"] = blocksize;
  if (keys.count("percdamp") && percdamp != recipe_defaults.percdamp) out["percdamp"] = percdamp;
  const AdmmOptions a;
  if (keys.count("rho0") && admm.rho0 != a.rho0) out["rho0"] = admm.rho0;
  if (keys.count("growth") && admm.growth != a.growth) out["growth"] = admm.growth;
  if (keys.count("max_iterations") && admm.max_iterations != a.max_iterations) out["max_iterations"] = admm.max_iterations;
  if (keys.count("patience") && admm.patience != a.patience) out["patience"] = admm.patience;
  if (keys.count("a") && score.a != defaults.a) out["a"] = score.a;
  if (keys.count("p") && score.p != defaults.p) out["p"] = score.p;
  if (keys.count("beta") && score.beta != defaults.beta) out["beta"] = score.beta;
  if (keys.count("seed") && score.seed != defaults.seed) out["seed"] = static_cast<int64_t>(score.seed);
  return out;
}

std::map<std::string, OptionValue> Recipe::refine_option_values() const {
  std::map<std::string, OptionValue> out;
  if (refine == Refinement::None) return out;
  const DsnotOptions d;
  const auto& o = refine_options;
  if (o.max_cycles != d.max_cycles) out["max_cycles"] = o.max_cycles;
  if (o.threshold != d.threshold) out["threshold"] = o.threshold;
  if (o.var_power != d.var_power) out["var_power"] = o.var_power;
  if (o.relative != d.relative) out["relative"] = std::string(relative_name(o.relative));
  if (o.a != d.a) out["a"] = o.a;
  if (o.gamma1 != d.gamma1) out["gamma1"] = optional_value(o.gamma1);
  if (o.gamma2 != d.gamma2) out["gamma2"] = optional_value(o.gamma2);
  if (o.q != d.q) out["q"] = o.q;
  if (refine_skip != default_refine_skip(refine)) {
    std::string skip;
    for (const auto& part : refine_skip) skip += (skip.empty() ? "" : ",") + part;
    out["skip"] = skip.empty() ? OptionValue(std::monostate{}) : OptionValue(skip);
  }
  return out;
}

std::string Recipe::to_json() const {
  nlohmann::json j = {
      {"method", method_name(*this)},
      {"group", group == MaskGroup::Row ? "row" : "layer"},
      {"permute", permute},
      {"score", {{"a", score.a}, {"p", score.p}, {"beta", score.beta}, {"seed", score.seed}}},
  };
  if (sparsity) j["sparsity"] = *sparsity;
  if (nm) j["nm"] = {nm->n, nm->m};
  if (needs_gram()) j["percdamp"] = percdamp;
  if (solver == Solver::SparseGpt) j["blocksize"] = blocksize;
  if (solver == Solver::Admm)
    j["admm"] = {{"rho0", admm.rho0}, {"growth", admm.growth}, {"max_iterations", admm.max_iterations},
                 {"patience", admm.patience}};
  if (update == Update::Refit) j["update"] = "refit";
  if (target == Target::Residual) j["target"] = "residual";  // absent for layer: older texts stay equal
  if (owl) j["owl"] = {{"m", owl->outlier_multiple}, {"lambda", owl->lambda}};
  if (refine != Refinement::None) {
    const auto& r = refine_options;
    j["refine"] = {{"kind", refinement_name(refine)},
                   {"max_cycles", r.max_cycles},
                   {"threshold", r.threshold},
                   {"var_power", r.var_power},
                   {"relative", relative_name(r.relative)},
                   {"a", r.a},
                   {"q", r.q},
                   {"gamma1", r.gamma1 ? nlohmann::json(*r.gamma1) : nlohmann::json()},
                   {"gamma2", r.gamma2 ? nlohmann::json(*r.gamma2) : nlohmann::json()},
                   {"skip", refine_skip}};
  }
  return j.dump();
}

std::string Recipe::describe() const {
  std::ostringstream out;
  out << method_name(*this) << ' ';
  if (nm) out << nm->n << ':' << nm->m << (permute ? " permuted" : "");
  else out << *sparsity << " per " << (group == MaskGroup::Row ? "row" : "layer");
  if (owl) out << " + owl (M " << owl->outlier_multiple << ", lambda " << owl->lambda << ")";
  if (refine != Refinement::None) out << " + " << refinement_name(refine);
  if (update == Update::Refit) out << " + refit";
  if (target == Target::Residual) out << ", residual target";
  return out.str();
}

}  // namespace symprune
