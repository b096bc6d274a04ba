// The Recipe and symprune::prune for Python.
#include "convert.h"

#include <map>

namespace py = pybind11;

namespace symprune::bindings {
namespace {

// One option value by its Python type (a plain variant cast would take anything with __bool__,
// e.g. numpy numbers, as a bool).
OptionValue option_value(const std::string& key, const py::handle& v) {
  PyObject* o = v.ptr();
  if (v.is_none()) return std::monostate{};
  if (PyBool_Check(o)) return v.cast<bool>();
  if (PyUnicode_Check(o)) return v.cast<std::string>();
  if (PyFloat_Check(o)) return v.cast<double>();
  if (PyIndex_Check(o)) {
    int overflow = 0;
    const long long value = PyLong_AsLongLongAndOverflow(py::reinterpret_steal<py::object>(PyNumber_Index(o)).ptr(),
                                                         &overflow);
    if (overflow != 0) throw ValueError("option '" + key + "' is out of range");
    return static_cast<int64_t>(value);
  }
  if (py::hasattr(v, "__float__")) return PyFloat_AsDouble(o);
  throw ValueError("option '" + key + "' must be a number, text, a bool or None, got " +
                   std::string(py::str(py::type::of(v).attr("__name__"))));
}

Options options(const std::optional<py::dict>& dict) {
  Options out;
  if (!dict) return out;
  for (const auto& [key, value] : *dict) {
    const auto name = py::str(key).cast<std::string>();
    out[name] = option_value(name, value);
  }
  return out;
}

Recipe make(const std::string& method, std::optional<double> sparsity, const std::optional<PyNM>& nm,
            const std::string& group, bool permute, const std::optional<std::string>& refine,
            const std::optional<py::dict>& refine_options, const std::optional<py::dict>& score_options,
            const std::optional<std::string>& update, const std::optional<py::dict>& update_options, bool owl,
            const std::optional<py::dict>& owl_options, const std::string& target) {
  RecipeArgs args;
  args.method = method;
  args.sparsity = sparsity;
  args.nm = to_nm(nm);
  args.group = group;
  args.permute = permute;
  args.refine = refine;
  args.refine_options = options(refine_options);
  args.score_options = options(score_options);
  args.update = update;
  args.update_options = options(update_options);
  args.owl = owl;
  args.owl_options = options(owl_options);
  args.target = target;
  return make_recipe(args);
}

at::Tensor or_undefined(const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); }

}  // namespace

void bind_recipe(py::module_& m) {
  py::class_<Recipe>(m, "Recipe",
                     "A validated pruning recipe: score method, pattern (sparsity per row or layer, or N:M), "
                     "refinement and their options; see docs/semantics.md.")
      .def(py::init(&make), py::arg("method"), py::arg("sparsity") = py::none(), py::kw_only(),
           py::arg("nm") = py::none(), py::arg("group") = "row", py::arg("permute") = false,
           py::arg("refine") = py::none(), py::arg("refine_options") = py::none(),
           py::arg("score_options") = py::none(), py::arg("update") = py::none(),
           py::arg("update_options") = py::none(), py::arg("owl") = false, py::arg("owl_options") = py::none(),
           py::arg("target") = "layer")
      .def_property_readonly("method",
                             [](const Recipe& r) {
                               if (r.solver == Solver::SparseGpt) return std::string("sparsegpt");
                               if (r.solver == Solver::Admm) return std::string("admm");
                               return std::string(score_method_name(r.method));
                             })
      .def_property_readonly("update",
                             [](const Recipe& r) -> std::optional<std::string> {
                               if (r.update == Update::None) return std::nullopt;
                               return "refit";
                             })
      .def_readonly("percdamp", &Recipe::percdamp)
      .def_property_readonly("target",
                             [](const Recipe& r) { return r.target == Target::Residual ? "residual" : "layer"; })
      .def_property_readonly("needs_cross", &Recipe::needs_cross)
      .def_property_readonly("owl", [](const Recipe& r) { return r.owl.has_value(); })
      .def_property_readonly("owl_options",
                             [](const Recipe& r) {
                               Options out;
                               if (r.owl) out = {{"m", r.owl->outlier_multiple}, {"lambda", r.owl->lambda}};
                               return out;
                             })
      .def("at_sparsity", &Recipe::at_sparsity, py::arg("sparsity"),
           "This recipe at another sparsity and without OWL: what one block is pruned with under OWL.")
      .def("without_permute", &Recipe::without_permute,
           "This recipe without the channel permutation: the plain N:M mask.")
      .def_readonly("sparsity", &Recipe::sparsity)
      .def_property_readonly("nm",
                             [](const Recipe& r) -> std::optional<std::tuple<int64_t, int64_t>> {
                               if (!r.nm) return std::nullopt;
                               return std::make_tuple(r.nm->n, r.nm->m);
                             })
      .def_property_readonly("group", [](const Recipe& r) { return r.group == MaskGroup::Row ? "row" : "layer"; })
      .def_readonly("permute", &Recipe::permute)
      .def_property_readonly("refine",
                             [](const Recipe& r) -> std::optional<std::string> {
                               if (r.refine == Refinement::None) return std::nullopt;
                               return r.refine == Refinement::Dsnot ? "dsnot" : "r2dsnot";
                             })
      .def_property_readonly("score_options", &Recipe::score_option_values,
                             "Score options that differ from their defaults.")
      .def_property_readonly("refine_options", &Recipe::refine_option_values,
                             "Refinement options that differ from DSnoT's defaults (r2dsnot's included).")
      .def_property_readonly("needs_input_stats", [](const Recipe& r) { return r.needs_input_stats(); })
      .def_property_readonly("needs_refine_stats", &Recipe::needs_refine_stats)
      .def_property_readonly("needs_output_stats", &Recipe::needs_output_stats)
      .def_property_readonly("needs_gram", &Recipe::needs_gram)
      .def_property_readonly("data_free", &Recipe::data_free)
      .def_property_readonly("rows_independent", &Recipe::rows_independent)
      .def("refines", &Recipe::refines, py::arg("name"), "Whether the weight called `name` is refined.")
      .def("describe", &Recipe::describe)
      .def("to_json", &Recipe::to_json)
      .def("__eq__", [](const Recipe& a, const Recipe& b) { return a.to_json() == b.to_json(); }, py::is_operator())
      .def("__hash__", [](const Recipe& r) { return std::hash<std::string>{}(r.to_json()); })
      .def("__repr__", [](const Recipe& r) { return "Recipe(" + r.describe() + ")"; });

  m.def("method_info", [](const std::string& method) {
    const auto info = method_info(parse_score_method(method));
    return std::map<std::string, bool>{{"needs_input_stats", info.needs_input_stats},
                                       {"needs_output_stats", info.needs_output_stats},
                                       {"row_local", info.row_local},
                                       {"data_free", info.data_free}};
  }, py::arg("method"), "What a score method needs: its statistics, and whether it is row-local or data-free.");
  m.def("score_methods", &score_method_names, "The score methods, by name.");
  m.def("methods", &method_names, "Every method a Recipe accepts: the score methods, then sparsegpt.");
  m.def("updates", &update_names, "The weight updates a Recipe accepts.");
  m.def("targets", &target_names, "The targets a Recipe accepts (layer, residual).");
  m.def("refinements", &refinement_names, "The refinements, by name.");
  m.def("refine_option_keys", &refine_option_keys, "The options a refinement accepts.");
  m.def("r2dsnot_defaults", &r2dsnot_defaults, "The options R2-DSnoT adds to DSnoT.");
  m.def("parse_nm", [](const std::string& text) {
    const auto nm = parse_nm(text);
    return std::make_tuple(nm.n, nm.m);
  }, py::arg("text"), "'2:4' -> (2, 4); ValueError unless 1 <= N < M.");

  py::class_<Pruned>(m, "Pruned",
                     "The result of prune(): weight, keep (True = kept), permutation, refined, iterations (ADMM's).")
      .def_readonly("weight", &Pruned::weight)
      .def_readonly("keep", &Pruned::keep)
      .def_readonly("permutation", &Pruned::permutation)
      .def_readonly("refined", &Pruned::refined)
      .def_readonly("iterations", &Pruned::iterations);

  m.def("prune",
        [](const at::Tensor& weight, const Recipe& recipe, const std::optional<at::Tensor>& in_norm,
           const std::optional<at::Tensor>& in_mean, const std::optional<at::Tensor>& in_var,
           const std::optional<at::Tensor>& out_norm, const std::optional<at::Tensor>& gram,
           const std::optional<at::Tensor>& cross, const std::optional<at::Tensor>& residual_cross,
           const std::string& name) {
          refuse_unread("recipe '" + recipe.describe() + "'",
                        {{"in_norm", in_norm.has_value(), recipe.needs_input_stats()},
                         {"in_mean", in_mean.has_value(), recipe.needs_refine_stats()},
                         {"in_var", in_var.has_value(), recipe.needs_refine_stats()},
                         {"out_norm", out_norm.has_value(), recipe.needs_output_stats()},
                         {"gram", gram.has_value(), recipe.needs_gram()},
                         {"cross", cross.has_value(), recipe.needs_cross()},
                         {"residual_cross", residual_cross.has_value(), recipe.needs_cross()}});
          LayerStats stats{or_undefined(in_norm), or_undefined(in_mean), or_undefined(in_var),
                           or_undefined(out_norm), or_undefined(gram)};
          stats.cross = or_undefined(cross);
          stats.residual_cross = or_undefined(residual_cross);
          return prune(weight, stats, recipe, name);
        },
        py::arg("weight"), py::arg("recipe"), py::kw_only(), py::arg("in_norm") = py::none(),
        py::arg("in_mean") = py::none(), py::arg("in_var") = py::none(), py::arg("out_norm") = py::none(),
        py::arg("gram") = py::none(), py::arg("cross") = py::none(), py::arg("residual_cross") = py::none(),
        py::arg("name") = "", py::call_guard<py::gil_scoped_release>(),
        "Prunes one weight by a Recipe (score -> mask -> refinement); the weight itself is not changed. "
        "`name` is matched against the recipe's refine option 'skip'.");
}

void bind_owl(py::module_& m) {
  m.def("count_outliers",
        [](const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& in_norms, double outlier_multiple) {
          py::gil_scoped_release release;
          const auto count = count_outliers(weights, in_norms, outlier_multiple);
          return std::make_tuple(count.outliers, count.entries);
        },
        py::arg("weights"), py::arg("in_norms"), py::arg("outlier_multiple") = 5.0,
        "OWL: (outliers, entries) of |W| * in_norm over all the weights together; an outlier exceeds "
        "outlier_multiple times their mean.");
  m.def("owl_sparsities",
        [](const std::vector<double>& ratios, double sparsity, double lambda) {
          OwlOptions options;
          options.lambda = lambda;
          return owl_sparsities(ratios, sparsity, options);
        },
        py::arg("ratios"), py::arg("sparsity"), py::kw_only(), py::arg("lambda_") = 0.08,
        "OWL's block sparsities from the blocks' outlier ratios; their mean is `sparsity`.");
}

void bind_reconstruct(py::module_& m) {
  py::class_<GramStats>(m, "GramStats", "Accumulates the Gram X^T X of a layer's inputs (fp64).")
      .def(py::init<int64_t>(), py::arg("features"))
      .def("update", &GramStats::update, py::arg("x"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("features", &GramStats::features)
      .def_property_readonly("tokens", &GramStats::tokens)
      .def_property_readonly("gram", &GramStats::gram)
      .def("state", &GramStats::state, "The Gram and token count as one fp64 vector (see ActivationStats.state).")
      .def("load_state", &GramStats::load_state, py::arg("state"));
  py::class_<CrossStats>(m, "CrossStats",
                         "Accumulates the cross-product A^T B of two activation streams with the same tokens (fp64).")
      .def(py::init<int64_t, int64_t>(), py::arg("left_features"), py::arg("right_features"))
      .def("update", &CrossStats::update, py::arg("a"), py::arg("b"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("left_features", &CrossStats::left_features)
      .def_property_readonly("right_features", &CrossStats::right_features)
      .def_property_readonly("tokens", &CrossStats::tokens)
      .def_property_readonly("sum", &CrossStats::sum)
      .def("state", &CrossStats::state, "The sum and token count as one fp64 vector (see ActivationStats.state).")
      .def("load_state", &CrossStats::load_state, py::arg("state"));
  m.def("residual_target",
        [](const at::Tensor& weight, const at::Tensor& gram, const at::Tensor& cross,
           const std::optional<at::Tensor>& residual_cross, double percdamp) {
          return residual_target(weight, gram, cross, or_undefined(residual_cross), percdamp);
        },
        py::arg("weight"), py::arg("gram"), py::arg("cross"), py::arg("residual_cross") = py::none(), py::kw_only(),
        py::arg("percdamp") = 0.01,
        py::call_guard<py::gil_scoped_release>(),
        "The target weights T of the residual objective: the Gram methods run on T with the Gram H "
        "reproduce the dense model's outputs (see symprune/reconstruct.h).");
  m.def("sparsegpt",
        [](const at::Tensor& weight, const at::Tensor& gram, std::optional<double> sparsity,
           const std::optional<PyNM>& nm, int64_t blocksize, double percdamp, const std::string& backend) {
          SparseGptOptions options;
          options.sparsity = sparsity;
          options.nm = to_nm(nm);
          options.blocksize = blocksize;
          options.percdamp = percdamp;
          if (backend == "rows") options.backend = SparseGptBackend::Rows;
          else if (backend == "columns") options.backend = SparseGptBackend::Columns;
          else if (backend != "auto") throw ValueError("backend must be 'auto', 'rows' or 'columns', got '" + backend + "'");
          py::gil_scoped_release release;
          return sparsegpt(weight, gram, options);
        },
        py::arg("weight"), py::arg("gram"), py::arg("sparsity") = py::none(), py::kw_only(), py::arg("nm") = py::none(),
        py::arg("blocksize") = 128, py::arg("percdamp") = 0.01, py::arg("backend") = "auto",
        "SparseGPT: the pruned weight with its kept weights updated (see symprune/reconstruct.h).");
  m.def("admm",
        [](const at::Tensor& weight, const at::Tensor& gram, const at::Tensor& initial_keep,
           std::optional<double> sparsity, const std::optional<PyNM>& nm, double percdamp, double rho0,
           double growth, int64_t max_iterations, int64_t patience) {
          AdmmOptions options;
          options.sparsity = sparsity;
          options.nm = to_nm(nm);
          options.percdamp = percdamp;
          options.rho0 = rho0;
          options.growth = growth;
          options.max_iterations = max_iterations;
          options.patience = patience;
          py::gil_scoped_release release;
          return admm(weight, gram, initial_keep, options);
        },
        py::arg("weight"), py::arg("gram"), py::arg("initial_keep"), py::arg("sparsity") = py::none(), py::kw_only(),
        py::arg("nm") = py::none(), py::arg("percdamp") = AdmmOptions{}.percdamp, py::arg("rho0") = AdmmOptions{}.rho0,
        py::arg("growth") = AdmmOptions{}.growth, py::arg("max_iterations") = AdmmOptions{}.max_iterations,
        py::arg("patience") = AdmmOptions{}.patience,
        "ADMM pruning from an initial support, finished by the refit (see symprune/reconstruct.h).");
  m.def("refit", &refit, py::arg("weight"), py::arg("keep"), py::arg("gram"), py::kw_only(),
        py::arg("percdamp") = 0.01, py::call_guard<py::gil_scoped_release>(),
        "The exact least-squares refit of the kept weights (keep: True = kept) given the Gram of the inputs.");
}

}  // namespace symprune::bindings
