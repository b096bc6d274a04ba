// StreamingPruner: the three-stage pipeline (load, prune, write) of every shard.

#include "symprune/stream.h"

#include "core/layer_passes.h"
#include "io/tensor_view.h"
#include "stream/bounded_queue.h"
#include "stream/buffers.h"
#include "stream/checksum.h"
#include "stream/count_zeros.h"
#include "stream/device.h"
#include "stream/output_folder.h"
#include "stream/plan.h"

#include <ATen/core/CachingHostAllocator.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <future>
#include <memory>
#include <optional>
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

// Runs a core call, naming the tensor in its errors: bad input stays a ValueError (a
// FormatError stays one); a failure of torch itself keeps its type (out of GPU memory stays
// c10::OutOfMemoryError) with the tensor added as context.
template <typename F>
auto naming_errors(const std::string& where, F&& f) {
  try {
    return f();
  } catch (const FormatError& e) {
    throw FormatError(where + e.what());
  } catch (const ValueError& e) {
    throw ValueError(where + e.what());
  } catch (c10::Error& e) {
    e.add_context(where);
    throw;
  }
}

// Where pruned weights are computed, and the host buffers that carry them between stages.
class Compute {
 public:
  Compute(const StreamOptions& o, uint64_t buffer_bytes) : device_type_(o.device.type()) {
    const bool on_device = !o.device.is_cpu();
    // Pinned memory belongs to the current device's context: make it the run's device (not
    // GPU 0, which would get a context of its own).
    const c10::OptionalDeviceGuard current(on_device ? std::optional<c10::Device>(o.device) : std::nullopt);
    if (on_device) device.emplace(o.device);
    outputs.emplace(2, buffer_bytes, /*pinned=*/on_device);
    if (on_device) inputs.emplace(2, buffer_bytes, /*pinned=*/true);
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
  std::optional<HostBuffer> buffer;  // holds the pruned weight (or rows); none for a copied tensor
  at::Tensor pruned;                 // the pruned weight or block of rows, a view of `buffer`
  uint64_t offset = 0;               // of the block of rows in the tensor's bytes
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
  uint64_t row_bytes(std::size_t job) const {
    const auto& t = info(job);
    return t.shape.empty() || t.shape[0] == 0 ? 0 : t.nbytes() / uint64_t(t.shape[0]);
  }
  // What is pruned first: the whole weight, or its first block of rows.
  safetensors::TensorInfo first_block(std::size_t job) const {
    const auto rows = shard_.jobs[job].block_rows;
    return rows ? safetensors::Reader::part(info(job), 0, uint64_t(rows) * row_bytes(job)) : info(job);
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
  // device, copy it (or each block of its rows) into a pinned buffer whose previous upload is
  // done and upload it.
  void load_ahead() {
    for (std::size_t j = 0; j < shard_.jobs.size(); ++j) {
      const auto& job = shard_.jobs[j];
      if (!job.prune) continue;
      if (!compute_.device) {
        shard_.reader.load(first_block(j));
        if (!loaded_.push(Loaded{j, {}})) return;
      } else if (!(job.block_rows ? upload_row_blocks(j) : upload(j, 0, info(j).shape[0], job.stats))) {
        return;
      }
    }
    loaded_.close();
  }

  // Loader thread, a device and a recipe whose rows are independent: the whole weight's column
  // norms first if the recipe reads them (a pass over the mapping, as on the CPU, so the bits
  // agree), then each block of rows uploaded on its own.
  bool upload_row_blocks(std::size_t j) {
    const auto& job = shard_.jobs[j];
    const LayerStats whole = with_column_norms(j);
    const int64_t rows = info(j).shape[0];
    for (int64_t begin = 0; begin < rows; begin += job.block_rows) {
      const int64_t end = std::min(rows, begin + job.block_rows);
      if (!upload(j, begin, end, block_stats(whole, begin, end))) return false;
    }
    return true;
  }

  // Loader thread: rows [begin, end) of weight j staged in a pinned buffer, their pages dropped,
  // and uploaded with `stats`; false once the run has stopped.
  bool upload(std::size_t j, int64_t begin, int64_t end, const LayerStats& stats) {
    auto staged = compute_.inputs->acquire();
    if (!staged) return false;
    staged->wait();
    const auto block = detail::tensor_view(shard_.reader, info(j)).slice(0, begin, end);
    staged->shaped_like(block).copy_(block);
    release_rows(j, begin, end);
    Loaded item{j, naming_errors(where(j), [&] { return compute_.device->upload(*staged, block, stats); })};
    compute_.inputs->give_back(std::move(*staged));
    return loaded_.push(std::move(item));
  }

  // Weight j's statistics, with the whole weight's column norms where the recipe reads them: a
  // first pass over the mapping, dropping each block's pages once read.
  LayerStats with_column_norms(std::size_t j) {
    LayerStats whole = shard_.jobs[j].stats;
    if (const auto order = o_.recipe.column_norm_order()) {
      const auto weight = detail::tensor_view(shard_.reader, info(j));
      whole.column_norms = naming_errors(where(j), [&] {
        return column_norms(weight, *order, [&](int64_t begin, int64_t end) { release_rows(j, begin, end); });
      });
    }
    return whole;
  }

  // The statistics of rows [begin, end): the per-output ones sliced, the rest whole.
  static LayerStats block_stats(const LayerStats& whole, int64_t begin, int64_t end) {
    LayerStats part = whole;
    if (part.out_norm.defined()) part.out_norm = part.out_norm.slice(0, begin, end);
    return part;
  }

  // Stage 2 (the calling thread), CPU, a recipe whose rows are independent: prune a block of
  // rows at a time into an output buffer, dropping the input rows' pages once pruned, so that
  // neither the input nor the output of a weight is ever resident whole. A score that reads the
  // whole weight's column norms (ria, symmetric) gets them from a first pass over the mapping; a
  // per-layer mask finds its threshold in two more (detail::LayerPasses).
  bool compute_row_blocks(std::size_t j) {
    const auto& job = shard_.jobs[j];
    const auto weight = detail::tensor_view(shard_.reader, info(j));
    const int64_t rows = weight.size(0);
    const LayerStats whole = with_column_norms(j);
    std::optional<detail::LayerPasses> layer;  // a per-layer mask: its threshold first
    if (o_.recipe.layer_mask_in_passes()) {
      layer.emplace(o_.recipe, whole, rows, weight.size(1), o_.recipe.refines(info(j).name));
      naming_errors(where(j), [&] {
        for (; layer->counting(); layer->end_pass()) {
          for (int64_t begin = 0; begin < rows; begin += job.block_rows) {
            const int64_t end = std::min(rows, begin + job.block_rows);
            layer->count(weight.slice(0, begin, end), begin);
            release_rows(j, begin, end);
          }
        }
        return 0;
      });
    }
    for (int64_t begin = 0; begin < rows; begin += job.block_rows) {
      const int64_t count = std::min(job.block_rows, rows - begin);
      Written item{j, compute_.outputs->acquire(), {}, uint64_t(begin) * row_bytes(j), {}};
      if (!item.buffer) return false;
      const auto input = weight.slice(0, begin, begin + count);
      item.pruned = item.buffer->shaped_like(input);
      naming_errors(where(j), [&] {
        if (layer)
          layer->prune_into(input, begin, item.pruned);
        else
          prune_into(input, block_stats(whole, begin, begin + count), o_.recipe, item.pruned, info(j).name);
        return 0;
      });
      release_rows(j, begin, begin + count);
      item.zeros = detail::count_zeros(item.pruned);
      if (!written_.push(std::move(item))) return false;
    }
    return true;
  }

  // Drop the mapped pages of rows [begin, end) of weight j.
  void release_rows(std::size_t j, int64_t begin, int64_t end) {
    shard_.reader.release(
        safetensors::Reader::part(info(j), uint64_t(begin) * row_bytes(j), uint64_t(end - begin) * row_bytes(j)));
  }

  // Stage 2 (the calling thread), CPU, a weight taken whole: prune it into an output buffer.
  bool compute_whole(std::size_t j) {
    if (!loaded_.pop()) return false;
    Written item{j, compute_.outputs->acquire(), {}, 0, {}};
    if (!item.buffer) return false;
    const auto weight = detail::tensor_view(shard_.reader, info(j));
    item.pruned = item.buffer->shaped_like(weight);
    naming_errors(where(j), [&] {
      prune_into(weight, shard_.jobs[j].stats, o_.recipe, item.pruned, info(j).name);
      return 0;
    });
    shard_.reader.release(info(j));  // the writer only needs the pruned copy
    item.zeros = detail::count_zeros(item.pruned);
    return written_.push(std::move(item));
  }

  // Stage 2 (the calling thread), a device: queue the pruning of each uploaded weight, or block
  // of its rows, and its download into an output buffer; the writer counts its zeros once in.
  bool compute_on_device(std::size_t j) {
    const auto weight = detail::tensor_view(shard_.reader, info(j));
    const int64_t rows = weight.size(0);
    const int64_t step = shard_.jobs[j].block_rows ? shard_.jobs[j].block_rows : std::max<int64_t>(rows, 1);
    for (int64_t begin = 0; begin == 0 || begin < rows; begin += step) {  // one upload for a weight of 0 rows
      auto loaded = loaded_.pop();
      if (!loaded) return false;
      Written item{j, compute_.outputs->acquire(), {}, uint64_t(begin) * row_bytes(j), {}};
      if (!item.buffer) return false;
      item.pruned = item.buffer->shaped_like(weight.slice(0, begin, std::min(rows, begin + step)));
      naming_errors(where(j), [&] {
        compute_.device->prune(std::move(*loaded->uploaded), *item.buffer, o_.recipe, info(j).name);
        return 0;
      });
      if (!written_.push(std::move(item))) return false;
    }
    return true;
  }

  // Stage 2 (the calling thread): prune each weight (in row blocks or whole), hand copied
  // tensors to the writer, and report progress.
  void compute_all() {
    for (std::size_t j = 0; j < shard_.jobs.size(); ++j) {
      const auto& job = shard_.jobs[j];
      if (!job.prune) {
        if (!written_.push(Written{j, {}, {}, 0, {}})) return;
        report_.tensors_copied += 1;
      } else {
        const bool pruned = compute_.device ? compute_on_device(j)
                            : job.block_rows ? loaded_.pop() && compute_row_blocks(j)
                                             : compute_whole(j);
        if (!pruned) return;
        report_.tensors_pruned += 1;
      }
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
        writer.write_part(index, item->offset,
                          {static_cast<const std::byte*>(item->pruned.const_data_ptr()), item->pruned.nbytes()});
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
  o.recipe.validate();
  if (o.recipe.needs_gram())
    throw ValueError("recipe '" + o.recipe.describe() + "' needs the Gram of each layer's inputs, which a "
                     "statistics file does not hold: prune the model with `symprune prune --low-memory` (one "
                     "block in memory at a time) instead");
  if (o.recipe.owl)
    throw ValueError("OWL is not supported when streaming: its block sparsities come from a dense pass over "
                     "every block; prune the model with `symprune prune` instead");
  if (o.recipe.permute)
    throw ValueError("permute is not supported when streaming: the permutation would have to be applied to "
                     "the layer's inputs too");
  if (o.include) {
    try {
      std::regex(*o.include, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw ValueError("include pattern '" + *o.include + "' is not a valid regular expression: " + e.what());
    }
  }
}

struct StreamJob::State {
  StreamOptions options;
  fs::path model_dir, out_dir;
  int rank;
  StreamPlan plan;
  std::optional<detail::FolderLock> lock;  // held by the process that prepared the folder
};

StreamJob::StreamJob(const StreamingPruner& pruner, const fs::path& model_dir, const fs::path& out_dir, int rank,
                     int world) {
  check_output_location(model_dir, out_dir);
  state_.reset(new State{pruner.options(), model_dir, out_dir, rank,
                         detail::plan_stream(pruner.options(), model_dir, rank, world), {}});
}

StreamJob::~StreamJob() = default;


bool StreamJob::prepare() {
  auto& s = *state_;
  const bool resuming = detail::prepare_output(s.model_dir, s.out_dir, s.options, s.plan.job);
  s.lock.emplace(s.out_dir);
  detail::remove_partials(s.out_dir);
  if (!resuming)
    safetensors::write_file_atomically(s.out_dir / detail::kJobFile,
                                       detail::job_file_text(s.plan.job, s.options.durable), s.options.durable);
  return resuming;
}

StreamReport StreamJob::write(bool resuming) {
  const auto start = std::chrono::steady_clock::now();
  auto& s = *state_;
  const auto& options = s.options;
  Compute compute(options, s.plan.buffer_bytes);
  std::multimap<std::string, std::string> recorded;
  if (resuming) recorded = detail::FinishedShards::recorded(s.out_dir);
  detail::FinishedShards finished(s.out_dir, s.rank, options.durable);

  StreamReport report;
  StreamProgress progress;
  progress.bytes_total = s.plan.bytes_mine;
  // A finished shard's fsync, rename and checksum run while the next shard is pruned.
  std::future<void> committing;
  try {
    for (auto& shard : s.plan.shards) {
      if (!shard.mine) continue;
      ++report.shards;
      progress.shard = shard.name;
      const fs::path out_path = s.out_dir / shard.name;
      if (const auto checksum = resuming ? detail::finished_earlier(out_path, recorded) : std::nullopt) {
        ++report.shards_resumed;
        finished.add(shard.name, *checksum);  // this process's record, for a later resume
        for (const auto& t : shard.reader.header().tensors) progress.bytes_done += t.nbytes();
        if (options.on_progress) options.on_progress(progress);
        continue;
      }
      auto writer = ShardStreamer(options, shard, out_path, compute, report, progress).run();
      if (committing.valid()) committing.get();
      committing = std::async(std::launch::async, [w = std::move(writer), &finished, out_path] {
        w->commit();
        finished.add(out_path.filename().string(), detail::file_checksum(out_path));
      });
    }
    if (committing.valid()) committing.get();
  } catch (...) {
    if (committing.valid()) committing.wait();  // a complete shard still lands: resume keeps it
    throw;
  }
  report.bytes = s.plan.bytes_mine;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

void StreamJob::finish() {
  auto& s = *state_;
  if (s.plan.index_json)
    safetensors::write_file_atomically(s.out_dir / safetensors::kIndexName, *s.plan.index_json, s.options.durable);
  detail::copy_other_files(s.model_dir, s.out_dir, s.options.durable);
  // Finished: the job files (there only to resume) would otherwise ship with the model.
  detail::remove_job_files(s.out_dir);
}

StreamReport StreamingPruner::run(const fs::path& model_dir, const fs::path& out_dir) const {
  const auto start = std::chrono::steady_clock::now();
  StreamJob job(*this, model_dir, out_dir);
  StreamReport report = job.write(job.prepare());
  job.finish();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace symprune
