// Safetensors dtypes <-> torch dtypes; tensors read from and written to files.

#include "symprune/tensors.h"

#include "io/tensor_view.h"

#include <ATen/ops/from_blob.h>

#include <array>
#include <utility>

namespace symprune {
namespace {

using safetensors::Dtype;

constexpr std::array<std::pair<Dtype, at::ScalarType>, 15> kScalarTypes{{
    {Dtype::BOOL, at::kBool},        {Dtype::U8, at::kByte},
    {Dtype::I8, at::kChar},          {Dtype::F8_E5M2, at::kFloat8_e5m2},
    {Dtype::F8_E4M3, at::kFloat8_e4m3fn}, {Dtype::I16, at::kShort},
    {Dtype::U16, at::kUInt16},       {Dtype::F16, at::kHalf},
    {Dtype::BF16, at::kBFloat16},    {Dtype::I32, at::kInt},
    {Dtype::U32, at::kUInt32},       {Dtype::F32, at::kFloat},
    {Dtype::I64, at::kLong},         {Dtype::U64, at::kUInt64},
    {Dtype::F64, at::kDouble},
}};

}  // namespace

safetensors::Dtype safetensors_dtype(at::ScalarType dtype) {
  for (const auto& [d, s] : kScalarTypes)
    if (s == dtype) return d;
  throw FormatError(std::string("safetensors has no dtype for ") + c10::toString(dtype));
}

at::Tensor detail::tensor_view(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor) {
  at::ScalarType type = at::kFloat;
  for (const auto& [d, s] : kScalarTypes)
    if (d == tensor.dtype) type = s;
  const auto bytes = reader.bytes(tensor);
  // from_blob needs a mutable pointer; the mapping is read-only and callers never write.
  return at::from_blob(const_cast<std::byte*>(bytes.data()), tensor.shape, at::TensorOptions().dtype(type));
}

at::Tensor load_tensor(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor) {
  return detail::tensor_view(reader, tensor).clone();
}

std::map<std::string, at::Tensor> load_tensors(const std::filesystem::path& path,
                                               const std::optional<std::vector<std::string>>& names) {
  const safetensors::Reader reader(path);
  std::map<std::string, at::Tensor> out;
  if (!names) {
    for (const auto& info : reader.header().tensors) out.emplace(info.name, load_tensor(reader, info));
    return out;
  }
  for (const auto& name : *names) {
    const auto* info = reader.header().find(name);
    if (!info) throw FormatError(path.string() + ": has no tensor '" + name + "'");
    out.emplace(name, load_tensor(reader, *info));
  }
  return out;
}

void save_tensors(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
                  const std::map<std::string, std::string>& metadata) {
  std::vector<safetensors::TensorInfo> infos;
  std::vector<at::Tensor> data;
  for (const auto& [name, tensor] : tensors) {
    data.push_back(tensor.detach().to(at::kCPU).contiguous());
    infos.push_back({name, safetensors_dtype(tensor.scalar_type()), tensor.sizes().vec(), 0, 0});
  }
  safetensors::Writer writer(path, infos, metadata);
  for (std::size_t i = 0; i < data.size(); ++i)
    writer.write(i, {static_cast<const std::byte*>(data[i].const_data_ptr()), data[i].nbytes()});
  writer.commit();
}

}  // namespace symprune
