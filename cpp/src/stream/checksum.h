#pragma once
// A file's content checksum, recorded for every finished shard so that a resumed run keeps only
// shards whose bytes are exactly those it wrote.

#include <cstdint>
#include <filesystem>
#include <string>

namespace symprune::detail {

// 64-bit hash of the file's bytes, as 16 hex digits: four independent multiply-rotate lanes
// over 32-byte stripes (memory-bandwidth fast), folded with the length. Not cryptographic: it
// catches truncated, damaged or replaced files, not deliberate forgeries.
std::string file_checksum(const std::filesystem::path& path);

}  // namespace symprune::detail
