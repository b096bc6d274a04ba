#include "stream/checksum.h"

#include "symprune/errors.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <vector>

namespace symprune::detail {
namespace {

// Odd 64-bit constants with well-spread bits (from the golden ratio and other irrationals).
constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ULL;

constexpr uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Mixes every input bit into every output bit.
constexpr uint64_t avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= kPrime2;
  h ^= h >> 29;
  h *= kPrime3;
  h ^= h >> 32;
  return h;
}

class Hasher {
 public:
  // `data` holds whole stripes only, except in the last call.
  void update(const unsigned char* data, std::size_t size) {
    std::size_t i = 0;
    for (; i + 32 <= size; i += 32)
      for (int lane = 0; lane < 4; ++lane) {
        uint64_t word;
        std::memcpy(&word, data + i + 8 * lane, 8);
        lanes_[lane] = rotl(lanes_[lane] + word * kPrime2, 31) * kPrime1;
      }
    for (; i < size; ++i) tail_ = rotl(tail_ ^ (data[i] * kPrime3), 11) * kPrime1;
    length_ += size;
  }

  uint64_t digest() const {
    uint64_t h = length_ * kPrime3;
    for (int lane = 0; lane < 4; ++lane) h = rotl(h ^ avalanche(lanes_[lane]), 27) * kPrime1 + kPrime3;
    return avalanche(h ^ avalanche(tail_));
  }

 private:
  std::array<uint64_t, 4> lanes_{kPrime1 + kPrime2, kPrime2, 0, 0 - kPrime1};
  uint64_t tail_ = kPrime3;
  uint64_t length_ = 0;
};

}  // namespace

std::string file_checksum(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(path.string() + ": cannot open");
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::vector<unsigned char> buffer(std::size_t{4} << 20);  // a multiple of the stripe
  Hasher hasher;
  std::size_t filled = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data() + filled, buffer.size() - filled);
    if (n < 0) {
      ::close(fd);
      throw IoError(path.string() + ": read failed");
    }
    filled += static_cast<std::size_t>(n);
    if (n == 0 || filled == buffer.size()) {
      hasher.update(buffer.data(), filled);
      if (n == 0) break;
      filled = 0;
    }
  }
  ::close(fd);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hasher.digest()));
  return hex;
}

}  // namespace symprune::detail
