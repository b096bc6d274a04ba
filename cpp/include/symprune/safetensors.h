#pragma once
// Safetensors files: strict header validation, memory-mapped reads and crash-safe writes.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
// to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data that
// follows the header) plus an optional "__metadata__" object of strings, then the data.
//
// Nothing here depends on torch, so the parser can be fuzzed and sanitised on its own.
// Every problem with a file's contents throws FormatError and every failed system call
// throws IoError; both messages start with the file's path.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "symprune/errors.h"
#include "symprune/export.h"

namespace symprune {

namespace safetensors {

enum class Dtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

SYMPRUNE_API std::optional<Dtype> parse_dtype(std::string_view name);
SYMPRUNE_API std::string_view dtype_name(Dtype dtype);
SYMPRUNE_API std::size_t dtype_size(Dtype dtype);

struct SYMPRUNE_API TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte range [begin, end) inside the data section
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  uint64_t numel() const;
};

struct SYMPRUNE_API Header {
  std::vector<TensorInfo> tensors;  // in data order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // file offset of the data section: 8 + header length

  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;

 private:
  friend Header parse_header(std::span<const std::byte>, uint64_t, const std::string&);
  std::unordered_map<std::string, std::size_t> by_name_;
};

// Headers larger than this are refused before any JSON is parsed.
inline constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

// Validates the header at the start of `prefix` (at least the first 8 + N bytes of a file of
// `file_size` bytes): JSON syntax and UTF-8, no duplicate names or keys, known dtypes,
// non-negative dims whose product does not overflow, dtype size x element count equal to the
// byte range, and ranges that tile the data section exactly (no gap, overlap or overrun).
SYMPRUNE_API Header parse_header(std::span<const std::byte> prefix, uint64_t file_size, const std::string& label);

// Renders a header for `tensors` laid out contiguously in the given order; their begin/end
// are set. The JSON is padded with spaces so that the data starts 8-byte aligned.
SYMPRUNE_API std::string serialize_header(std::vector<TensorInfo>& tensors,
                             const std::map<std::string, std::string>& metadata);

// A read-only memory map of a whole safetensors file with its validated header.
class SYMPRUNE_API Reader {
 public:
  explicit Reader(const std::filesystem::path& path);
  ~Reader();
  Reader(Reader&& other) noexcept;
  Reader& operator=(Reader&&) = delete;
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const Header& header() const { return header_; }
  uint64_t file_size() const { return size_; }
  int fd() const { return fd_; }

  // The tensor's bytes inside the map; valid while the reader lives.
  std::span<const std::byte> bytes(const TensorInfo& tensor) const;
  // Asks the kernel to read the tensor ahead, and faults its pages in.
  void load(const TensorInfo& tensor) const;
  // Drops the tensor's pages from this process (they stay in the page cache), so that
  // streaming a file keeps the resident set at the size of the tensors in flight.
  void release(const TensorInfo& tensor) const;
  // Bytes [offset, offset + size) of a tensor, as a TensorInfo for load and release.
  static TensorInfo part(const TensorInfo& tensor, uint64_t offset, uint64_t size);

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  const std::byte* map_ = nullptr;
  uint64_t size_ = 0;
  Header header_;
};

// A file that appears under its final name only when complete: data goes to
// `<name>.partial`, and commit() fsyncs it, renames it over the final name and fsyncs the
// directory. Destroying an uncommitted file removes the partial one.
//
// `durable = false` skips every fsync and early writeback: the rename still keeps a crash of
// the process from leaving a partial file under the final name, but after a crash of the
// machine (power loss) a renamed file may be incomplete.
class SYMPRUNE_API AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path final_path, bool durable = true);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  static std::filesystem::path partial_path(const std::filesystem::path& final_path);

  void write_at(uint64_t offset, const void* data, std::size_t size);
  // Copies `size` bytes of `source` at `source_offset` without passing through user space.
  void copy_at(uint64_t offset, int source_fd, uint64_t source_offset, uint64_t size,
               const std::filesystem::path& source_path);
  // Starts writing a range back to disk now, so that commit()'s fsync has little left to do.
  void start_writeback(uint64_t offset, uint64_t size);
  void commit();
  const std::filesystem::path& final_path() const { return final_; }

 private:
  std::filesystem::path final_;
  std::filesystem::path partial_;
  int fd_ = -1;
  bool durable_;
};

// Writes a safetensors file through an AtomicFile: the header first, then every tensor's
// bytes at its offset, in any order; commit() checks that all tensors were written.
class SYMPRUNE_API Writer {
 public:
  Writer(const std::filesystem::path& path, std::vector<TensorInfo> tensors,
         const std::map<std::string, std::string>& metadata, bool durable = true);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  void write(std::size_t index, std::span<const std::byte> data);
  // Bytes [offset, offset + size) of the tensor, for tensors written in pieces (each byte once).
  void write_part(std::size_t index, uint64_t offset, std::span<const std::byte> data);
  void copy(std::size_t index, const Reader& source, const TensorInfo& source_tensor);
  void commit();

 private:
  void mark_written(std::size_t index, uint64_t offset, uint64_t size);

  AtomicFile file_;
  std::vector<TensorInfo> tensors_;
  std::vector<uint64_t> written_;  // bytes of each tensor written so far
  uint64_t data_start_ = 0;
};

// The whole of a small text file (index, job file); FormatError above `limit` bytes.
SYMPRUNE_API std::string read_small_file(const std::filesystem::path& path, uint64_t limit = kMaxHeaderBytes);

// Writes `contents` to `path` atomically (temporary file, fsync unless !durable, rename).
SYMPRUNE_API void write_file_atomically(const std::filesystem::path& path, std::string_view contents, bool durable = true);

// The shards of a checkpoint folder: those named by model.safetensors.index.json (plain file
// names inside the folder; FormatError for a *.safetensors file the index does not name), else
// the folder's *.safetensors files, sorted. Every front end (Python, streaming) follows it.
struct SYMPRUNE_API Checkpoint {
  std::vector<std::string> shards;                    // file names inside the folder
  std::optional<std::string> index_json;              // the index file's text, if any
};
SYMPRUNE_API Checkpoint find_checkpoint(const std::filesystem::path& folder);

inline constexpr const char* kIndexName = "model.safetensors.index.json";

}  // namespace safetensors
}  // namespace symprune
