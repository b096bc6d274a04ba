#pragma once
// Torch tensors from and to safetensors files, through the validating reader and the atomic
// writer of safetensors.h.

#include <ATen/core/Tensor.h>

#include "symprune/errors.h"
#include "symprune/export.h"
#include "symprune/safetensors.h"

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace symprune {

// A copy of one tensor of the file, on the CPU, in its own dtype: it owns its memory and
// outlives the reader.
SYMPRUNE_API at::Tensor load_tensor(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor);

// The tensors of a safetensors file (all, or those named: FormatError for a missing name).
SYMPRUNE_API std::map<std::string, at::Tensor> load_tensors(const std::filesystem::path& path,
                                                            const std::optional<std::vector<std::string>>& names = {});

// Writes tensors (any device; copied to the CPU) to a safetensors file atomically: a
// temporary name, fsync, rename. FormatError for a dtype safetensors lacks.
SYMPRUNE_API void save_tensors(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

// The safetensors dtype of a torch dtype; FormatError for dtypes safetensors lacks.
SYMPRUNE_API safetensors::Dtype safetensors_dtype(at::ScalarType dtype);

}  // namespace symprune
