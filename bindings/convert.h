#pragma once
// Conversions from Python arguments to core types, shared by the binding files.
#include <torch/csrc/utils/pybind.h>

#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include "symprune/symprune.h"

#include <optional>
#include <string>
#include <tuple>
#include <variant>

namespace symprune::bindings {

// nm as Python gives it: "2:4" or (2, 4).
using PyNM = std::variant<std::string, std::tuple<int64_t, int64_t>>;

inline std::optional<NM> to_nm(const std::optional<PyNM>& nm) {
  if (!nm) return std::nullopt;
  if (const auto* text = std::get_if<std::string>(&*nm)) return parse_nm(*text);
  const auto& [n, m] = std::get<std::tuple<int64_t, int64_t>>(*nm);
  return NM{n, m};
}

inline DsnotBackend parse_backend(const std::string& backend) {
  if (backend == "auto") return DsnotBackend::Auto;
  if (backend == "rows") return DsnotBackend::Rows;
  if (backend == "batched") return DsnotBackend::Batched;
  throw ValueError("backend must be 'auto', 'rows' or 'batched', got '" + backend + "'");
}

// A statistic that the caller gives but `user` never reads is refused rather than ignored: it
// would suggest an effect it does not have. `given_needed`: (name, given, read).
inline void refuse_unread(const std::string& user,
                          std::initializer_list<std::tuple<const char*, bool, bool>> given_needed) {
  for (const auto& [name, given, read] : given_needed)
    if (given && !read) throw ValueError(std::string(name) + " given, but " + user + " does not read it");
}

// Registers the recipe and the composed pruning entry point (recipe.cpp).
void bind_recipe(pybind11::module_& m);
// Registers GramStats, CrossStats, residual_target, sparsegpt, admm and refit (recipe.cpp).
void bind_reconstruct(pybind11::module_& m);
void bind_owl(pybind11::module_& m);
// Registers the safetensors and streaming functions (io.cpp).
void bind_io(pybind11::module_& m);

}  // namespace symprune::bindings
