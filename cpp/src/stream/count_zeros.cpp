#include "stream/count_zeros.h"

#include <ATen/ops/count_nonzero.h>

namespace symprune::detail {
namespace {

// Zeros from the bits: one vectorised pass, where count_nonzero of a bf16 tensor converts
// every element.
template <typename Bits>
int64_t count_zero_bits(const at::Tensor& t) {
  constexpr Bits kMagnitude = static_cast<Bits>(~Bits{0}) >> 1;
  const Bits* bits = static_cast<const Bits*>(t.const_data_ptr());
  int64_t zeros = 0;
  for (int64_t i = 0, n = t.numel(); i < n; ++i) zeros += (bits[i] & kMagnitude) == 0;
  return zeros;
}

}  // namespace

int64_t count_zeros(const at::Tensor& t) {
  switch (t.element_size()) {
    case 2: return count_zero_bits<uint16_t>(t);
    case 4: return count_zero_bits<uint32_t>(t);
    case 8: return count_zero_bits<uint64_t>(t);
    default: return t.numel() - at::count_nonzero(t).item<int64_t>();
  }
}

}  // namespace symprune::detail
