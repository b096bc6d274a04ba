// Safetensors dtypes <-> torch dtypes, and tensors over mapped bytes.

#include "symprune/stream.h"

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

at::Tensor tensor_view(const safetensors::Reader& reader, const safetensors::TensorInfo& tensor) {
  at::ScalarType type = at::kFloat;
  for (const auto& [d, s] : kScalarTypes)
    if (d == tensor.dtype) type = s;
  const auto bytes = reader.bytes(tensor);
  // from_blob needs a mutable pointer; the mapping is read-only and callers never write.
  return at::from_blob(const_cast<std::byte*>(bytes.data()), tensor.shape, at::TensorOptions().dtype(type));
}

}  // namespace symprune
