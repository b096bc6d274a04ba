// StreamingPruner: output folder handling, resume, and the three-stage pipeline per shard.

#include "symprune/stream.h"

#include "bounded_queue.h"
#include "stream_buffers.h"
#include "stream_device.h"
#include "stream_plan.h"
#include "stream_prune.h"

#include <ATen/core/CachingHostAllocator.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <memory>
#include <regex>
#include <set>
#include <thread>

namespace symprune {
namespace fs = std::filesystem;
using detail::HostBuffer;
using detail::HostBufferPool;
using detail::ShardPlan;
using detail::StreamPlan;

namespace {

constexpr const char* kJobFile = ".symprune-apply.json";
// Other weight formats would hold the unpruned model: never copied to the output.
const std::set<std::string> kSkippedExtensions{".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf",
                                               ".h5", ".msgpack", ".onnx", ".partial"};

// Runs a core call, prefixing its errors with `where`: c10::ValueError (bad input) becomes a
// FormatError; any other c10 error (out of GPU memory, say) a runtime_error.
template <typename F>
auto naming_errors(const std::string& where, F&& f) {
  try {
    return f();
  } catch (const c10::ValueError& e) {
    throw FormatError(where + e.what_without_backtrace());
  } catch (const c10::Error& e) {
    throw std::runtime_error(where + e.what_without_backtrace());
  }
}

// Identifies this boot of the machine: a run without fsync can only be resumed while the page
// cache that holds its shards survives, i.e. within the same boot.
std::string boot_id() {
  std::error_code ec;
  const fs::path path = "/proc/sys/kernel/random/boot_id";
  return fs::exists(path, ec) ? safetensors::read_small_file(path) : std::string();
}

std::string job_file_text(const std::string& job, bool complete, bool durable) {
  nlohmann::json text{{"job", nlohmann::json::parse(job)}, {"complete", complete}, {"durable", durable}};
  if (!durable) text["boot_id"] = boot_id();
  return text.dump(2) + "\n";
}

// Holds an exclusive lock on the output folder so that two runs never write it at once.
class FolderLock {
 public:
  explicit FolderLock(const fs::path& dir) : fd_(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
    if (fd_ < 0) throw IoError(dir.string() + ": cannot open the output folder");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      throw IoError(dir.string() + ": another symprune run is writing this folder");
    }
  }
  ~FolderLock() { ::close(fd_); }
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_;
};

// Decides whether `out_dir` may be written and whether this is a resume; creates it if needed.
bool prepare_output(const fs::path& model_dir, const fs::path& out_dir, const StreamOptions& o,
                    const std::string& job) {
  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    if (!fs::is_directory(out_dir, ec)) throw IoError(out_dir.string() + ": exists and is not a folder");
    if (fs::equivalent(model_dir, out_dir, ec))
      throw FormatError(out_dir.string() + ": the output folder is the input folder; choose another");
  } else {
    fs::create_directories(out_dir, ec);
    if (ec) throw IoError(out_dir.string() + ": cannot create: " + ec.message());
  }
  const fs::path job_path = out_dir / kJobFile;
  if (o.resume && fs::exists(job_path, ec)) {
    try {
      const auto previous = nlohmann::json::parse(safetensors::read_small_file(job_path));
      if (previous["job"].dump() != nlohmann::json::parse(job).dump())
        throw FormatError(out_dir.string() + ": holds a run with other options, statistics or input; "
                                             "use --overwrite to start over");
      if (previous.value("durable", true) == false && previous.value("boot_id", "") != boot_id())
        throw FormatError(out_dir.string() + ": holds a run made without fsync before the machine restarted; "
                                             "its shards may be incomplete: use --overwrite to start over");
    } catch (const nlohmann::json::exception&) {
      throw FormatError(job_path.string() + ": unreadable; use --overwrite to start over");
    }
    return true;
  }
  bool empty = true;
  for (const auto& entry : fs::directory_iterator(out_dir))
    if (entry.path().extension() != ".partial") empty = false;
  if (!empty && !o.overwrite)
    throw FormatError(out_dir.string() + (o.resume ? ": has no interrupted run to resume (no " + std::string(kJobFile) + ")"
                                                   : ": is not empty") +
                      "; pass --overwrite to replace its contents");
  return false;
}

void remove_partials(const fs::path& out_dir) {
  for (const auto& entry : fs::directory_iterator(out_dir))
    if (entry.path().extension() == ".partial") fs::remove(entry.path());
}

// A shard left by an interrupted run is complete if it exists at all (files appear under
// their final name only once complete) and describes the same tensors.
bool finished_earlier(const fs::path& path, const safetensors::Reader& input) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return false;
  try {
    const safetensors::Reader done(path);
    const auto& a = done.header().tensors;
    const auto& b = input.header().tensors;
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].shape != b[i].shape) return false;
    return true;
  } catch (const std::exception&) {
    return false;
  }
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

// config.json, tokenizer files, chat templates...: every plain file but weights and state.
void copy_other_files(const fs::path& model_dir, const fs::path& out_dir, bool durable) {
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.starts_with(".") || name == safetensors::kIndexName ||
        kSkippedExtensions.count(entry.path().extension().string()))
      continue;
    copy_file_atomically(entry.path(), out_dir / name, durable);
  }
}

// Where pruned weights are computed, and the host buffers that carry them between stages.
class Compute {
 public:
  Compute(const StreamOptions& o, uint64_t largest_pruned_bytes) : device_type_(o.device.type()) {
    const bool on_device = !o.device.is_cpu();
    // Pinned memory belongs to the current device's context: make it the run's device (not
    // GPU 0, which would get a context of its own).
    const c10::OptionalDeviceGuard current(on_device ? std::optional<c10::Device>(o.device) : std::nullopt);
    if (on_device) device.emplace(o.device);
    outputs.emplace(2, largest_pruned_bytes, /*pinned=*/on_device);
    if (on_device) inputs.emplace(2, largest_pruned_bytes, /*pinned=*/true);
  }
  ~Compute() {
    device.reset();  // waits for the device: no copy uses a host buffer after this
    inputs.reset();
    outputs.reset();
    // The caching host allocator would keep the freed buffers page-locked for the process's life.
    try {
      if (device_type_ != c10::DeviceType::CPU) at::getHostAllocator(device_type_)->empty_cache();
    } catch (...) {  // a failed device: the run reports the first error
    }
  }
  Compute(const Compute&) = delete;
  Compute& operator=(const Compute&) = delete;

  void close() {
    outputs->close();
    if (inputs) inputs->close();
  }

  std::optional<HostBufferPool> outputs;  // pruned weights on their way to the writer
  std::optional<HostBufferPool> inputs;   // pinned copies of the weights, for a device
  std::optional<detail::DevicePruner> device;

 private:
  c10::DeviceType device_type_;
};

struct Loaded {
  std::size_t job;
  std::optional<detail::DeviceWeight> uploaded;  // for a device
};

struct Written {
  std::size_t job;
  std::optional<HostBuffer> buffer;  // holds the pruned weight; none for a copied tensor
  at::Tensor pruned;                 // the pruned weight, a view of `buffer`
  // Zeros, counted by the compute thread on the CPU path so that the writer, which a durable run
  // waits on, stays free; a device's result is counted by the writer once it is in.
  std::optional<int64_t> zeros;
};

class ShardStreamer {
 public:
  ShardStreamer(const StreamOptions& options, ShardPlan& shard, const fs::path& out_path, Compute& compute,
                StreamReport& report, StreamProgress& progress)
      : o_(options), shard_(shard), out_path_(out_path), compute_(compute), report_(report), progress_(progress) {}

  // Streams the shard into its .partial file; the caller commits the returned writer.
  std::unique_ptr<safetensors::Writer> run() {
    const auto& header = shard_.reader.header();
    auto writer = std::make_unique<safetensors::Writer>(out_path_, header.tensors, header.metadata, o_.durable);
    std::thread loader([&] { guarded([&] { load_ahead(); }); });
    std::thread writer_thread([&] { guarded([&] { write_all(*writer); }); });
    guarded([&] { compute_all(); });
    written_.close();
    loader.join();
    writer_thread.join();
    if (error_) std::rethrow_exception(error_);
    return writer;
  }

 private:
  const safetensors::TensorInfo& info(std::size_t job) const {
    return shard_.reader.header().tensors[shard_.jobs[job].tensor];
  }
  std::string where(std::size_t job) const {
    return shard_.reader.path().string() + ": tensor '" + info(job).name + "': ";
  }

  template <typename F>
  void guarded(F&& f) {
    try {
      f();
    } catch (...) {
      std::lock_guard lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
      loaded_.close();
      written_.close();
      compute_.close();
    }
  }

  // Stage 1: page in the next weight to prune while the current one is computed; for a
  // device, copy it into a pinned buffer whose previous upload is done and upload it.
  void load_ahead() {
    for (std::size_t j = 0; j < shard_.jobs.size(); ++j) {
      if (!shard_.jobs[j].prune) continue;
      Loaded item{j, {}};
      if (compute_.device) {
        auto staged = compute_.inputs->acquire();
        if (!staged) return;
        staged->wait();
        const auto weight = tensor_view(shard_.reader, info(j));
        staged->shaped_like(weight).copy_(weight);
        shard_.reader.release(info(j));
        const auto& stats = shard_.jobs[j].stats;
        item.uploaded = naming_errors(where(j), [&] { return compute_.device->upload(*staged, weight, stats); });
        compute_.inputs->give_back(std::move(*staged));
      } else {
        shard_.reader.load(info(j));
      }
      if (!loaded_.push(std::move(item))) return;
    }
    loaded_.close();
  }

  // Stage 2 (the calling thread): prune into an output buffer and report progress.
  void compute_all() {
    for (std::size_t j = 0; j < shard_.jobs.size(); ++j) {
      const auto& job = shard_.jobs[j];
      Written item{j, {}, {}, {}};
      if (job.prune) {
        auto loaded = loaded_.pop();
        if (!loaded) return;
        item.buffer = compute_.outputs->acquire();
        if (!item.buffer) return;
        const auto weight = tensor_view(shard_.reader, info(j));
        item.pruned = item.buffer->shaped_like(weight);
        naming_errors(where(j), [&] {
          if (compute_.device) {
            compute_.device->prune(std::move(*loaded->uploaded), *item.buffer, o_);
          } else {
            detail::prune_weight_into(weight, o_, job.stats, item.pruned);
            shard_.reader.release(info(j));  // the writer only needs the pruned copy
            item.zeros = detail::count_zeros(item.pruned);
          }
          return 0;
        });
        report_.tensors_pruned += 1;
      } else {
        report_.tensors_copied += 1;
      }
      if (!written_.push(std::move(item))) return;
      progress_.tensor = info(j).name;
      progress_.bytes_done += info(j).nbytes();
      if (o_.on_progress) o_.on_progress(progress_);
    }
  }

  // Stage 3: write pruned weights once they are in (counting a device's zeros); copy the rest
  // in the kernel.
  void write_all(safetensors::Writer& writer) {
    while (auto item = written_.pop()) {
      const auto& tensor = info(item->job);
      const std::size_t index = shard_.jobs[item->job].tensor;
      if (item->buffer) {
        item->buffer->wait();  // a device's result is in
        report_.pruned_numel += item->pruned.numel();
        report_.pruned_zeros += item->zeros ? *item->zeros : detail::count_zeros(item->pruned);
        writer.write(index, {static_cast<const std::byte*>(item->pruned.const_data_ptr()), tensor.nbytes()});
        compute_.outputs->give_back(std::move(*item->buffer));
      } else {
        writer.copy(index, shard_.reader, tensor);
      }
    }
  }

  const StreamOptions& o_;
  ShardPlan& shard_;
  fs::path out_path_;
  Compute& compute_;
  StreamReport& report_;
  StreamProgress& progress_;
  detail::BoundedQueue<Loaded> loaded_{1};
  detail::BoundedQueue<Written> written_{1};
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace

StreamingPruner::StreamingPruner(StreamOptions options) : options_(std::move(options)) {
  options_.device = detail::resolve_stream_device(options_.device);
  const auto& o = options_;
  if (o.sparsity.has_value() == o.nm.has_value())
    throw FormatError("give exactly one of sparsity (e.g. 0.5) and nm (e.g. 2:4)");
  naming_errors("", [&] {
    if (o.sparsity) check_sparsity(*o.sparsity);
    if (o.nm) check_nm(*o.nm, o.nm->m);
    return 0;
  });
  if (o.nm && o.group != MaskGroup::Row) throw FormatError("group applies to unstructured sparsity only");
  if (o.stats.empty()) {
    try {
      std::regex(o.include, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw FormatError("include pattern '" + o.include + "' is not a valid regular expression: " + e.what());
    }
  }
}

StreamReport StreamingPruner::run(const fs::path& model_dir, const fs::path& out_dir) const {
  const auto start = std::chrono::steady_clock::now();
  StreamPlan plan = detail::plan_stream(options_, model_dir);
  const bool resuming = prepare_output(model_dir, out_dir, options_, plan.job);
  const FolderLock lock(out_dir);
  remove_partials(out_dir);
  safetensors::write_file_atomically(out_dir / kJobFile, job_file_text(plan.job, false, options_.durable), options_.durable);
  Compute compute(options_, plan.largest_pruned_bytes);

  StreamReport report;
  StreamProgress progress;
  progress.bytes_total = plan.bytes_total;
  // A finished shard's fsync and rename run while the next shard is pruned.
  std::future<void> committing;
  try {
    for (auto& shard : plan.shards) {
      ++report.shards;
      progress.shard = shard.name;
      const fs::path out_path = out_dir / shard.name;
      if (resuming && finished_earlier(out_path, shard.reader)) {
        ++report.shards_resumed;
        for (const auto& t : shard.reader.header().tensors) progress.bytes_done += t.nbytes();
        if (options_.on_progress) options_.on_progress(progress);
        continue;
      }
      auto writer = ShardStreamer(options_, shard, out_path, compute, report, progress).run();
      if (committing.valid()) committing.get();
      committing = std::async(std::launch::async, [w = std::move(writer)] { w->commit(); });
    }
    if (committing.valid()) committing.get();
  } catch (...) {
    if (committing.valid()) committing.wait();  // a complete shard still lands: resume keeps it
    throw;
  }
  report.bytes = plan.bytes_total;
  if (plan.index_json)
    safetensors::write_file_atomically(out_dir / safetensors::kIndexName, *plan.index_json, options_.durable);
  copy_other_files(model_dir, out_dir, options_.durable);
  safetensors::write_file_atomically(out_dir / kJobFile, job_file_text(plan.job, true, options_.durable), options_.durable);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace symprune
