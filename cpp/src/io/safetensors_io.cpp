// Safetensors I/O: memory-mapped reading, crash-safe writing, checkpoint folders.

#include "symprune/safetensors.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

namespace symprune::safetensors {
namespace fs = std::filesystem;
namespace {

[[noreturn]] void io_fail(const fs::path& path, const std::string& what, int error = errno) {
  throw IoError(path.string() + ": " + what + ": " + std::strerror(error));
}

uint64_t page_size() {
  static const uint64_t size = uint64_t(sysconf(_SC_PAGESIZE));
  return size;
}

// The page-aligned range that covers [begin, end) of a map of `size` bytes.
std::pair<uint64_t, uint64_t> page_range(uint64_t begin, uint64_t end, uint64_t size) {
  const uint64_t first = begin / page_size() * page_size();
  const uint64_t last = std::min(size, (end + page_size() - 1) / page_size() * page_size());
  return {first, last > first ? last - first : 0};
}

void fsync_directory(const fs::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_fail(dir, "cannot open directory to sync it");
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) io_fail(dir, "fsync failed", error);
}

// A shard named by an index must be a plain file name: never a path out of the folder.
void check_shard_name(const std::string& name, const fs::path& index) {
  const bool plain = !name.empty() && name != "." && name != ".." &&
                     name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
  if (!plain) throw FormatError(index.string() + ": shard '" + name.substr(0, 80) + "' is not a plain file name");
}

}  // namespace

// ------------------------------------------------------------------------------ Reader

Reader::Reader(const fs::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) io_fail(path, "cannot open");
  try {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) io_fail(path, "cannot stat");
    if (!S_ISREG(st.st_mode)) throw FormatError(path.string() + ": not a regular file");
    size_ = uint64_t(st.st_size);
    if (size_ < 8)
      throw FormatError(path.string() + ": file is " + std::to_string(size_) +
                        " bytes, too short for a safetensors header");
    void* map = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
    if (map == MAP_FAILED) io_fail(path, "cannot map");
    map_ = static_cast<const std::byte*>(map);
    header_ = parse_header({map_, size_}, size_, path.string());
  } catch (...) {
    if (map_) ::munmap(const_cast<std::byte*>(map_), size_);
    ::close(fd_);
    throw;
  }
}

Reader::Reader(Reader&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)),
      map_(std::exchange(other.map_, nullptr)), size_(other.size_), header_(std::move(other.header_)) {}

Reader::~Reader() {
  if (map_) ::munmap(const_cast<std::byte*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

std::span<const std::byte> Reader::bytes(const TensorInfo& tensor) const {
  return {map_ + header_.data_start + tensor.begin, tensor.nbytes()};
}

void Reader::load(const TensorInfo& tensor) const {
  const uint64_t begin = header_.data_start + tensor.begin;
  const auto [first, length] = page_range(begin, begin + tensor.nbytes(), size_);
  if (length == 0) return;
  ::madvise(const_cast<std::byte*>(map_) + first, length, MADV_WILLNEED);
  volatile std::byte sink{};
  for (uint64_t offset = first; offset < first + length; offset += page_size()) sink = map_[offset];
  (void)sink;
}

TensorInfo Reader::part(const TensorInfo& tensor, uint64_t offset, uint64_t size) {
  TensorInfo piece = tensor;
  piece.begin = tensor.begin + std::min(offset, tensor.nbytes());
  piece.end = std::min(piece.begin + size, tensor.end);
  return piece;
}

void Reader::release(const TensorInfo& tensor) const {
  const uint64_t begin = header_.data_start + tensor.begin;
  const auto [first, length] = page_range(begin, begin + tensor.nbytes(), size_);
  if (length) ::madvise(const_cast<std::byte*>(map_) + first, length, MADV_DONTNEED);
}

// ------------------------------------------------------------------------------ AtomicFile

fs::path AtomicFile::partial_path(const fs::path& final_path) {
  return fs::path(final_path.string() + ".partial");
}

AtomicFile::AtomicFile(fs::path final_path, bool durable)
    : final_(std::move(final_path)), partial_(partial_path(final_)), durable_(durable) {
  fd_ = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) io_fail(partial_, "cannot create");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(partial_.c_str());
  }
}

void AtomicFile::write_at(uint64_t offset, const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd_, p, std::min<std::size_t>(size, 1 << 30), off_t(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      io_fail(partial_, "write failed");
    }
    p += n;
    offset += uint64_t(n);
    size -= std::size_t(n);
  }
}

void AtomicFile::copy_at(uint64_t offset, int source_fd, uint64_t source_offset, uint64_t size,
                         const fs::path& source_path) {
  loff_t in = loff_t(source_offset), out = loff_t(offset);
  while (size > 0) {
    const ssize_t n = ::copy_file_range(source_fd, &in, fd_, &out, std::min<uint64_t>(size, 1 << 30), 0);
    if (n > 0) {
      size -= uint64_t(n);
      continue;
    }
    if (n == 0) throw IoError(source_path.string() + ": file ended early (truncated while reading?)");
    if (errno == EINTR) continue;
    if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) io_fail(partial_, "copy failed");
    // No in-kernel copy between these files: go through a buffer.
    std::vector<char> buffer(std::min<uint64_t>(size, 8 << 20));
    while (size > 0) {
      const ssize_t r = ::pread(source_fd, buffer.data(), std::min<uint64_t>(size, buffer.size()), in);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) io_fail(source_path, "read failed");
      if (r == 0) throw IoError(source_path.string() + ": file ended early (truncated while reading?)");
      write_at(uint64_t(out), buffer.data(), std::size_t(r));
      in += r;
      out += r;
      size -= uint64_t(r);
    }
  }
}

void AtomicFile::start_writeback(uint64_t offset, uint64_t size) {
  // Advisory: errors surface at commit()'s fsync.
  if (durable_) (void)::sync_file_range(fd_, off_t(offset), off_t(size), SYNC_FILE_RANGE_WRITE);
}

void AtomicFile::commit() {
  if (durable_ && ::fsync(fd_) != 0) io_fail(partial_, "fsync failed");
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    const int error = errno;
    ::unlink(partial_.c_str());
    io_fail(partial_, "close failed", error);
  }
  if (::rename(partial_.c_str(), final_.c_str()) != 0) {
    const int error = errno;
    ::unlink(partial_.c_str());
    io_fail(final_, "cannot rename the finished file into place", error);
  }
  if (durable_) fsync_directory(final_.parent_path());
}

void write_file_atomically(const fs::path& path, std::string_view contents, bool durable) {
  AtomicFile file(path, durable);
  file.write_at(0, contents.data(), contents.size());
  file.commit();
}

// ------------------------------------------------------------------------------ Writer

Writer::Writer(const fs::path& path, std::vector<TensorInfo> tensors,
               const std::map<std::string, std::string>& metadata, bool durable)
    : file_(path, durable), tensors_(std::move(tensors)), written_(tensors_.size(), 0) {
  const std::string header = serialize_header(tensors_, metadata);
  data_start_ = header.size();
  file_.write_at(0, header.data(), header.size());
}

void Writer::mark_written(std::size_t index, uint64_t offset, uint64_t size) {
  if (index >= tensors_.size()) throw FormatError("tensor index out of range");
  const uint64_t nbytes = tensors_[index].nbytes();
  if (offset > nbytes || size > nbytes - offset || written_[index] + size > nbytes)
    throw FormatError("tensor '" + tensors_[index].name + "': bytes [" + std::to_string(offset) + ", " +
                      std::to_string(offset + size) + ") do not fit its " + std::to_string(nbytes) + " bytes");
  written_[index] += size;
}

void Writer::write(std::size_t index, std::span<const std::byte> data) {
  if (index < tensors_.size() && data.size() != tensors_[index].nbytes())
    throw FormatError("tensor '" + tensors_[index].name + "': got " + std::to_string(data.size()) +
                      " bytes, expected " + std::to_string(tensors_[index].nbytes()));
  write_part(index, 0, data);
}

void Writer::write_part(std::size_t index, uint64_t offset, std::span<const std::byte> data) {
  mark_written(index, offset, data.size());
  file_.write_at(data_start_ + tensors_[index].begin + offset, data.data(), data.size());
  file_.start_writeback(data_start_ + tensors_[index].begin + offset, data.size());
}

void Writer::copy(std::size_t index, const Reader& source, const TensorInfo& source_tensor) {
  if (index < tensors_.size() && source_tensor.nbytes() != tensors_[index].nbytes())
    throw FormatError("tensor '" + tensors_[index].name + "': got " + std::to_string(source_tensor.nbytes()) +
                      " bytes, expected " + std::to_string(tensors_[index].nbytes()));
  mark_written(index, 0, source_tensor.nbytes());
  file_.copy_at(data_start_ + tensors_[index].begin, source.fd(),
                source.header().data_start + source_tensor.begin, source_tensor.nbytes(), source.path());
  file_.start_writeback(data_start_ + tensors_[index].begin, source_tensor.nbytes());
}

void Writer::commit() {
  for (std::size_t i = 0; i < tensors_.size(); ++i)
    if (written_[i] != tensors_[i].nbytes())
      throw FormatError(file_.final_path().string() + ": tensor '" + tensors_[i].name + "' was never written" +
                        (written_[i] ? " whole" : ""));
  file_.commit();
}

// ------------------------------------------------------------------------------ checkpoints

std::string read_small_file(const fs::path& path, uint64_t limit) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) throw IoError(path.string() + ": " + ec.message());
  if (size > limit) throw FormatError(path.string() + ": larger than " + std::to_string(limit >> 20) + " MB");
  std::ifstream in(path, std::ios::binary);
  if (!in) io_fail(path, "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}


Checkpoint find_checkpoint(const fs::path& folder) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) throw IoError(folder.string() + ": not a directory");
  Checkpoint checkpoint;
  const fs::path index = folder / kIndexName;
  if (fs::exists(index, ec)) {
    checkpoint.index_json = read_small_file(index);
    nlohmann::json root;
    try {
      root = nlohmann::json::parse(*checkpoint.index_json);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(index.string() + ": not valid JSON: " + e.what());
    }
    if (!root.is_object() || !root.contains("weight_map") || !root["weight_map"].is_object())
      throw FormatError(index.string() + ": needs a \"weight_map\" object");
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : root["weight_map"].items()) {
      if (!shard.is_string()) throw FormatError(index.string() + ": weight_map values must be file names");
      check_shard_name(shard.get<std::string>(), index);
      shards.insert(shard.get<std::string>());
    }
    checkpoint.shards.assign(shards.begin(), shards.end());
    // A shard the index does not name (say, a single-file model left beside a sharded one)
    // would be loaded by other tools: refuse to guess which set is the model. Mistral's own
    // format (consolidated*.safetensors, beside the Hugging Face shards) is not a stray.
    for (const auto& entry : fs::directory_iterator(folder, ec)) {
      const auto name = entry.path().filename().string();
      if (entry.path().extension() == ".safetensors" && !shards.count(name) && !name.starts_with("consolidated"))
        throw FormatError(folder.string() + ": " + name + " is not named by " + kIndexName +
                          "; remove the stray file or fix the index");
    }
    if (ec) throw IoError(folder.string() + ": cannot list: " + ec.message());
  } else {
    for (const auto& entry : fs::directory_iterator(folder, ec)) {
      if (entry.is_regular_file() && entry.path().extension() == ".safetensors")
        checkpoint.shards.push_back(entry.path().filename().string());
    }
    if (ec) throw IoError(folder.string() + ": cannot list: " + ec.message());
    std::sort(checkpoint.shards.begin(), checkpoint.shards.end());
  }
  if (checkpoint.shards.empty()) throw FormatError(folder.string() + ": no .safetensors files");
  return checkpoint;
}

}  // namespace symprune::safetensors
