// The Python face of the core: argument parsing and conversions only, no algorithms.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/ops/empty.h>

#include "symprune/symprune.h"

#include "convert.h"

#include <algorithm>

#include <cstring>
#include <optional>
#include <string>
#include <tuple>

namespace py = pybind11;
using namespace symprune;
using namespace symprune::bindings;

namespace {

// The pattern of a mask call, checked as a Recipe checks it.
Recipe pattern(std::optional<double> sparsity, const std::optional<PyNM>& nm, const std::string& group,
               bool permute) {
  Recipe recipe;
  recipe.sparsity = sparsity;
  recipe.nm = to_nm(nm);
  recipe.group = parse_group(group);
  recipe.permute = permute;
  recipe.validate();
  return recipe;
}

py::object mask(const at::Tensor& score, std::optional<double> sparsity, const std::optional<PyNM>& nm,
                const std::string& group, bool permute) {
  const auto p = pattern(sparsity, nm, group, permute);
  if (p.sparsity) return py::cast(unstructured_mask(score, *p.sparsity, p.group));
  if (p.permute) return py::cast(permuted_nm_mask(score, *p.nm));
  return py::cast(nm_mask(score, *p.nm));
}

at::Tensor magnitude_mask_binding(const at::Tensor& weight, std::optional<double> sparsity,
                                  const std::optional<PyNM>& nm, const std::string& group) {
  const auto p = pattern(sparsity, nm, group, false);
  if (p.sparsity) return magnitude_unstructured_mask(weight, *p.sparsity, p.group);
  return magnitude_nm_mask(weight, *p.nm);
}

at::Tensor magnitude_prune_binding(const at::Tensor& weight, double sparsity, const std::string& group) {
  return magnitude_prune(weight, sparsity, parse_group(group));
}

// The norms a score method reads must be given (the core checks); those it does not are refused.
void refuse_unread_norms(ScoreMethod method, const std::string& name, const std::optional<at::Tensor>& in_norm,
                         const std::optional<at::Tensor>& out_norm) {
  const auto info = method_info(method);
  refuse_unread("method '" + name + "'", {{"in_norm", in_norm.has_value(), info.needs_input_stats},
                                          {"out_norm", out_norm.has_value(), info.needs_output_stats}});
}

at::Tensor prune_row_local_binding(const at::Tensor& weight, const std::string& method, std::optional<double> sparsity,
                                   const std::optional<PyNM>& nm, std::optional<at::Tensor> in_norm,
                                   std::optional<at::Tensor> out_norm) {
  const auto p = pattern(sparsity, nm, "row", false);
  const auto score_method = parse_score_method(method);
  refuse_unread_norms(score_method, method, in_norm, out_norm);
  const ScoreOptions options{std::move(in_norm), std::move(out_norm)};
  auto out = at::empty(weight.sizes(), weight.options());
  if (p.sparsity) return prune_row_local_out(weight, score_method, options, *p.sparsity, out);
  return prune_row_local_nm_out(weight, score_method, options, *p.nm, out);
}

at::Tensor score_binding(const at::Tensor& weight, const std::string& method_name,
                         std::optional<at::Tensor> in_norm, std::optional<at::Tensor> out_norm, std::optional<double> a,
                         std::optional<double> p, std::optional<double> beta, std::optional<uint64_t> seed) {
  const auto method = parse_score_method(method_name);
  const auto read = score_options_read(method);
  refuse_unread_norms(method, method_name, in_norm, out_norm);
  ScoreOptions options{std::move(in_norm), std::move(out_norm)};
  // An option the method does not read is refused, not ignored.
  const auto take = [&](const char* key, const auto& given, auto& field) {
    if (!given) return;
    if (std::find(read.begin(), read.end(), key) == read.end())
      throw ValueError(std::string("score option '") + key + "' is not read by method '" + method_name + "'");
    field = *given;
  };
  take("a", a, options.a);
  take("p", p, options.p);
  take("beta", beta, options.beta);
  take("seed", seed, options.seed);
  return score(weight, method, options);
}

at::Tensor dsnot_binding(const at::Tensor& weight, const at::Tensor& keep_mask, const at::Tensor& in_norm,
                         const at::Tensor& in_mean, const at::Tensor& in_var,
                         const std::optional<PyNM>& nm, int64_t max_cycles,
                         double threshold, double var_power, std::optional<at::Tensor> initial_score,
                         const std::optional<std::string>& relative, double a, std::optional<double> gamma1,
                         std::optional<double> gamma2, double q, const std::string& backend) {
  DsnotInputs inputs{weight, keep_mask, in_norm, in_mean, in_var, std::move(initial_score)};
  DsnotOptions options;
  options.nm = to_nm(nm);
  options.max_cycles = max_cycles;
  options.threshold = threshold;
  options.var_power = var_power;
  options.relative = relative ? parse_relative(*relative) : Relative::None;
  options.a = a;
  options.gamma1 = gamma1;
  options.gamma2 = gamma2;
  options.q = q;
  options.backend = parse_backend(backend);
  return dsnot(inputs, options);
}

// Messages may quote bytes of a hostile file: never fail to decode them.
void set_error(PyObject* type, const char* message) {
  PyObject* text = PyUnicode_DecodeUTF8(message, Py_ssize_t(std::strlen(message)), "replace");
  PyErr_SetObject(type, text);
  Py_XDECREF(text);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "symprune's libtorch core";
  m.def("version", [] { return std::string(SYMPRUNE_VERSION); }, "The core's version (symprune/version.h).");
  bind_recipe(m);
  bind_reconstruct(m);
  bind_owl(m);
  bind_io(m);

  // The core's errors (symprune/errors.h) as ValueError / OSError; torch's own errors as torch
  // raises them (torch.OutOfMemoryError and so on).
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ValueError& e) {
      set_error(PyExc_ValueError, e.what());
    } catch (const IoError& e) {
      set_error(PyExc_OSError, e.what());
    } catch (const c10::Error&) {
      torch::translate_exception_to_python(std::current_exception());
    }
  });

  py::class_<ActivationStats>(m, "ActivationStats")
      .def(py::init<int64_t>(), py::arg("features"))
      .def("update", &ActivationStats::update, py::arg("x"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("features", &ActivationStats::features)
      .def_property_readonly("tokens", &ActivationStats::tokens)
      .def_property_readonly("sequences", &ActivationStats::sequences)
      .def_property_readonly("in_sq", &ActivationStats::in_sq)
      .def_property_readonly("in_norm", &ActivationStats::in_norm)
      .def_property_readonly("in_mean", &ActivationStats::in_mean)
      .def_property_readonly("in_var", &ActivationStats::in_var)
      .def("state", &ActivationStats::state,
           "The running sums as one fp64 vector; summed over processes that saw other windows, then given "
           "to load_state, they are the statistics of all the windows.")
      .def("load_state", &ActivationStats::load_state, py::arg("state"));

  m.def("score", &score_binding, py::arg("weight"), py::arg("method"), py::kw_only(),
        py::arg("in_norm") = py::none(), py::arg("out_norm") = py::none(), py::arg("a") = py::none(),
        py::arg("p") = py::none(), py::arg("beta") = py::none(), py::arg("seed") = py::none(),
        py::call_guard<py::gil_scoped_release>(),
        "The score of every weight (fp32). a and p (ria), a, beta and seed (stochria) default to 0.5, 1, 0.1 "
        "and 0; an option the method does not read is refused.");
  m.def("relative_importance", [](const at::Tensor& weight, double p) { return relative_importance(weight, p); },
        py::arg("weight"), py::kw_only(), py::arg("p") = 1.0, py::call_guard<py::gil_scoped_release>());
  m.def("mask", &mask, py::arg("score"), py::arg("sparsity") = py::none(), py::kw_only(),
        py::arg("nm") = py::none(), py::arg("group") = "row", py::arg("permute") = false);
  m.def("magnitude_mask", &magnitude_mask_binding, py::arg("weight"), py::arg("sparsity") = py::none(),
        py::kw_only(), py::arg("nm") = py::none(), py::arg("group") = "row",
        py::call_guard<py::gil_scoped_release>(),
        "mask(score(weight, 'magnitude'), ...) computed from the weight; fp16/bf16 skip the fp32 score.");
  m.def("magnitude_prune", &magnitude_prune_binding, py::arg("weight"), py::arg("sparsity"), py::kw_only(),
        py::arg("group") = "row", py::call_guard<py::gil_scoped_release>(),
        "apply_mask(weight, magnitude_mask(weight, sparsity)) in one pass for fp16/bf16 weights.");
  m.def("prune_row_local", &prune_row_local_binding, py::arg("weight"), py::arg("method"),
        py::arg("sparsity") = py::none(), py::kw_only(), py::arg("nm") = py::none(), py::arg("in_norm") = py::none(),
        py::arg("out_norm") = py::none(), py::call_guard<py::gil_scoped_release>(),
        "apply_mask(weight, mask(score(weight, method, ...), sparsity or nm)) for a row-local method "
        "(magnitude, wanda, symwanda, owanda), one row at a time with no score matrix; CPU weights.");
  m.def("apply_mask", &apply_mask, py::arg("weight"), py::arg("keep_mask"),
        py::call_guard<py::gil_scoped_release>(), "A copy of weight with the entries not kept set to +0.");
  m.def("channel_permutation", &channel_permutation, py::arg("score"), py::arg("m"),
        py::call_guard<py::gil_scoped_release>());
  m.def("dsnot", &dsnot_binding, py::arg("weight"), py::arg("keep_mask"), py::kw_only(), py::arg("in_norm"),
        py::arg("in_mean"), py::arg("in_var"), py::arg("nm") = py::none(), py::arg("max_cycles") = 50,
        py::arg("threshold") = 0.1, py::arg("var_power") = 1.0, py::arg("initial_score") = py::none(),
        py::arg("relative") = py::none(), py::arg("a") = 0.5, py::arg("gamma1") = py::none(),
        py::arg("gamma2") = py::none(), py::arg("q") = 1.0, py::arg("backend") = "auto",
        py::call_guard<py::gil_scoped_release>());
}
