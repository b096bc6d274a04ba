#pragma once
// Conversions from Python arguments to core options, shared by the binding files.
#include <torch/csrc/utils/pybind.h>

#include <c10/util/Exception.h>

#include "symprune/symprune.h"

#include <optional>
#include <string>
#include <tuple>

namespace symprune::bindings {

inline std::optional<NM> to_nm(const std::optional<std::tuple<int64_t, int64_t>>& nm) {
  if (!nm) return std::nullopt;
  return NM{std::get<0>(*nm), std::get<1>(*nm)};
}

inline MaskGroup parse_group(const std::string& group) {
  if (group == "row") return MaskGroup::Row;
  if (group == "layer") return MaskGroup::Layer;
  TORCH_CHECK_VALUE(false, "group must be 'row' or 'layer', got '", group, "'");
}

inline Relative parse_relative(const std::optional<std::string>& relative) {
  if (!relative) return Relative::None;
  if (*relative == "prune") return Relative::Prune;
  if (*relative == "grow") return Relative::Grow;
  TORCH_CHECK_VALUE(false, "relative must be None, 'prune' or 'grow', got '", *relative, "'");
}

inline DsnotBackend parse_backend(const std::string& backend) {
  if (backend == "auto") return DsnotBackend::Auto;
  if (backend == "rows") return DsnotBackend::Rows;
  if (backend == "batched") return DsnotBackend::Batched;
  TORCH_CHECK_VALUE(false, "backend must be 'auto', 'rows' or 'batched', got '", backend, "'");
}

// Registers the safetensors and streaming functions (io.cpp).
void bind_io(pybind11::module_& m);

}  // namespace symprune::bindings
