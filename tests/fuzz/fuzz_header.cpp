// libFuzzer target: the safetensors header parser on arbitrary bytes (see tests/fuzz/README.md).
//
// Besides "no crash, no sanitizer report", every accepted header must survive a round trip:
// re-serialised and parsed again with the same data section, it describes the same tensors.

#include "symprune/safetensors.h"

#include <cstdint>
#include <cstdlib>
#include <string>

using namespace symprune;
using namespace symprune::safetensors;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  Header header;
  try {
    header = parse_header({bytes, size}, size, "fuzz");
  } catch (const FormatError&) {
    return 0;
  }
  for (const auto& t : header.tensors)
    if (header.find(t.name) == nullptr) std::abort();
  auto tensors = header.tensors;
  const std::string rewritten =
      serialize_header(tensors, header.metadata) +
      std::string(reinterpret_cast<const char*>(data) + header.data_start, size - header.data_start);
  const Header again = parse_header({reinterpret_cast<const std::byte*>(rewritten.data()), rewritten.size()},
                                    rewritten.size(), "fuzz-roundtrip");
  if (again.tensors.size() != header.tensors.size() || again.metadata != header.metadata) std::abort();
  for (std::size_t i = 0; i < again.tensors.size(); ++i) {
    const auto &a = again.tensors[i], &b = header.tensors[i];
    if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape || a.begin != b.begin || a.end != b.end)
      std::abort();
  }
  return 0;
}
