#include "stream/finite_scan.h"

#include <cstdint>
#include <cstring>

namespace symprune::detail {
namespace {

// A branch-free pass the compiler vectorises: OR of "exponent all ones" over every element.
template <typename Bits>
bool no_all_ones_exponent(std::span<const std::byte> bytes, Bits exponent) {
  const std::size_t count = bytes.size() / sizeof(Bits);
  const std::byte* data = bytes.data();
  bool special = false;
  for (std::size_t i = 0; i < count; ++i) {
    Bits bits;
    std::memcpy(&bits, data + i * sizeof(Bits), sizeof(Bits));  // the mapping need not be aligned
    special |= (bits & exponent) == exponent;
  }
  return !special;
}

}  // namespace

bool all_finite(std::span<const std::byte> bytes, safetensors::Dtype dtype) {
  using safetensors::Dtype;
  switch (dtype) {
    case Dtype::F16: return no_all_ones_exponent<uint16_t>(bytes, 0x7C00);
    case Dtype::BF16: return no_all_ones_exponent<uint16_t>(bytes, 0x7F80);
    case Dtype::F32: return no_all_ones_exponent<uint32_t>(bytes, 0x7F800000u);
    case Dtype::F64: return no_all_ones_exponent<uint64_t>(bytes, 0x7FF0000000000000ull);
    default: return true;
  }
}

}  // namespace symprune::detail
