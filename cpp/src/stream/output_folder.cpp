// The output folder of a streaming run: whether it may be written, the job file that lets an
// interrupted run resume, and the files copied beside the shards.

#include "stream/output_folder.h"

#include "stream/checksum.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <set>

namespace symprune {
namespace fs = std::filesystem;

namespace {

// `inner` is `outer` or lies below it (both absolute and canonical).
bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i)
    if (i == inner.end() || *i != *o) return false;
  return true;
}

}  // namespace

void check_output_location(const fs::path& input, const fs::path& output) {
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(output, ec)) && !fs::exists(output, ec))
    throw ValueError(output.string() + ": is a dangling symbolic link; remove it or choose another output");
  const auto in = fs::weakly_canonical(fs::absolute(input), ec);
  const auto out = fs::weakly_canonical(fs::absolute(output), ec);
  if (within(out, in))
    throw ValueError(output.string() + (out == in ? ": is the input " : ": lies inside the input ") + input.string() +
                     "; choose an output outside it");
  if (within(in, out))
    throw ValueError(output.string() + ": contains the input " + input.string() + "; choose an output outside it");
}

}  // namespace symprune

namespace symprune::detail {
namespace fs = std::filesystem;

namespace {

// Other weight formats would hold the unpruned model: never copied to the output.
const std::set<std::string> kSkippedExtensions{".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf",
                                               ".h5", ".msgpack", ".onnx", ".partial"};

// Identifies this boot of the machine: a run without fsync can only be resumed while the page
// cache that holds its shards survives, i.e. within the same boot.
std::string boot_id() {
  std::error_code ec;
  const fs::path path = "/proc/sys/kernel/random/boot_id";
  return fs::exists(path, ec) ? safetensors::read_small_file(path) : std::string();
}


void copy_file_atomically(const fs::path& from, const fs::path& to, bool durable) {
  const int fd = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(from.string() + ": cannot open");
  try {
    safetensors::AtomicFile out(to, durable);
    out.copy_at(0, fd, 0, fs::file_size(from), from);
    out.commit();
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

}  // namespace

FolderLock::FolderLock(const fs::path& dir) : fd_(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
  if (fd_ < 0) throw IoError(dir.string() + ": cannot open the output folder");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd_);
    throw IoError(dir.string() + ": another symprune run is writing this folder");
  }
}

FolderLock::~FolderLock() { ::close(fd_); }

std::string job_file_text(const std::string& job, bool durable) {
  nlohmann::json text{{"job", nlohmann::json::parse(job)}, {"durable", durable}, {"finished", nlohmann::json::object()}};
  if (!durable) text["boot_id"] = boot_id();
  return text.dump(2) + "\n";
}

namespace {

// Other ranks' job files are named "<kJobFile without .json>.rank-R.json".
const std::string kRankJobPrefix = fs::path(kJobFile).stem().string() + ".rank-";

// Job files of every rank.
bool is_job_file(const fs::path& path) {
  const std::string name = path.filename().string();
  return name == kJobFile || (name.starts_with(kRankJobPrefix) && name.ends_with(".json"));
}

}  // namespace

fs::path job_file_of(const fs::path& out_dir, int rank) {
  return out_dir / (rank == 0 ? std::string(kJobFile) : kRankJobPrefix + std::to_string(rank) + ".json");
}

namespace {

nlohmann::json read_json(const fs::path& path) {
  try {
    return nlohmann::json::parse(safetensors::read_small_file(path));
  } catch (const nlohmann::json::exception&) {
    throw FormatError(path.string() + ": unreadable; use --overwrite to start over");
  }
}

}  // namespace

FinishedShards::FinishedShards(const fs::path& out_dir, int rank, bool durable)
    : path_(job_file_of(out_dir, rank)), durable_(durable) {
  std::error_code ec;
  text_ = fs::exists(path_, ec) ? read_json(path_) : nlohmann::json::object();
}

std::multimap<std::string, std::string> FinishedShards::recorded(const fs::path& out_dir) {
  std::multimap<std::string, std::string> checksums;
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    if (!is_job_file(entry.path())) continue;
    const auto finished = read_json(entry.path()).value("finished", nlohmann::json::object());
    if (!finished.is_object()) throw FormatError(entry.path().string() + ": unreadable; use --overwrite to start over");
    for (const auto& [shard, checksum] : finished.items())
      if (checksum.is_string()) checksums.emplace(shard, checksum.get<std::string>());
  }
  return checksums;
}

void FinishedShards::add(const std::string& shard, const std::string& checksum) {
  const std::lock_guard lock(mutex_);
  text_["finished"][shard] = checksum;
  safetensors::write_file_atomically(path_, text_.dump(2) + "\n", durable_);
}

bool prepare_output(const fs::path& model_dir, const fs::path& out_dir, const StreamOptions& o,
                    const std::string& job) {
  std::error_code ec;
  check_output_location(model_dir, out_dir);
  if (fs::exists(out_dir, ec)) {
    if (!fs::is_directory(out_dir, ec)) throw IoError(out_dir.string() + ": exists and is not a folder");
  } else {
    fs::create_directories(out_dir, ec);
    if (ec) throw IoError(out_dir.string() + ": cannot create: " + ec.message());
  }
  const fs::path job_path = out_dir / kJobFile;
  if (o.resume && fs::exists(job_path, ec)) {
    const auto previous = read_json(job_path);
    if (!previous.contains("job") || previous["job"].dump() != nlohmann::json::parse(job).dump())
      throw ValueError(out_dir.string() + ": holds a run with other options, statistics or input; "
                                           "use --overwrite to start over");
    if (previous.value("durable", true) == false && previous.value("boot_id", "") != boot_id())
      throw ValueError(out_dir.string() + ": holds a run made without fsync before the machine restarted; "
                                           "its shards may be incomplete: use --overwrite to start over");
    return true;
  }
  bool empty = true;
  for (const auto& entry : fs::directory_iterator(out_dir))
    if (entry.path().extension() != ".partial") empty = false;
  if (empty) return false;
  if (!o.overwrite)
    throw ValueError(out_dir.string() + (o.resume ? ": has no interrupted run to resume (no " + std::string(kJobFile) + ")"
                                                   : ": is not empty") +
                      "; pass --overwrite to replace its contents");
  if (!fs::exists(job_path, ec) && !fs::exists(out_dir / kReportFile, ec))
    throw ValueError(out_dir.string() + ": is not empty and was not written by symprune (no " + kReportFile +
                     ", no " + kJobFile + "); --overwrite replaces only symprune's output folders");
  // Nothing of the previous model may survive beside the new one (a stale single-file
  // checkpoint next to new shards would be loaded instead of them).
  for (const auto& entry : fs::directory_iterator(out_dir)) fs::remove_all(entry.path());
  return false;
}

void remove_job_files(const fs::path& out_dir) {
  // Not synced: should a crash bring them back, a --resume finds every shard finished.
  for (const auto& entry : fs::directory_iterator(out_dir))
    if (is_job_file(entry.path())) fs::remove(entry.path());
}

void remove_partials(const fs::path& out_dir) {
  for (const auto& entry : fs::directory_iterator(out_dir))
    if (entry.path().extension() == ".partial") fs::remove(entry.path());
}

std::optional<std::string> finished_earlier(const fs::path& path,
                                            const std::multimap<std::string, std::string>& recorded) {
  std::error_code ec;
  const auto [first, last] = recorded.equal_range(path.filename().string());
  if (first == last || !fs::is_regular_file(path, ec)) return std::nullopt;
  std::string checksum = file_checksum(path);
  for (auto it = first; it != last; ++it)
    if (it->second == checksum) return checksum;
  return std::nullopt;
}

void copy_other_files(const fs::path& model_dir, const fs::path& out_dir, bool durable) {
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.starts_with(".") || name == safetensors::kIndexName ||
        kSkippedExtensions.count(entry.path().extension().string()))
      continue;
    copy_file_atomically(entry.path(), out_dir / name, durable);
  }
}

}  // namespace symprune::detail
