#pragma once
// The streaming engine: prunes a safetensors checkpoint shard by shard, one tensor at a time,
// so that memory stays at a few tensors whatever the size of the model.
//
// While one tensor is pruned, a reader thread pages in the next one and a writer thread writes
// the previous one (on a GPU, copies to and from the device overlap the pruning too); tensors that are not pruned are copied file to file in the kernel. Every
// output file appears under its final name only once complete, so an interrupted run can be
// resumed: finished shards are kept, the rest are redone, and the result is byte-identical.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "symprune/errors.h"
#include "symprune/export.h"
#include "symprune/recipe.h"
#include "symprune/safetensors.h"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace symprune {

// The job file an unfinished run keeps in its output folder (what --resume reads: the job, and
// a checksum of every finished shard); a finished run removes it.
inline constexpr const char* kApplyJobFile = ".symprune-apply.json";
// The report that `symprune prune` and `apply` write in a finished folder. With the job file, it
// marks a folder as symprune's: the only kind that --overwrite replaces.
inline constexpr const char* kReportFile = "symprune_report.json";

// Without statistics, data-free methods prune the 2-D weights of the decoder blocks.
inline constexpr const char* kDefaultInclude = R"((^|\.)(layers|h|blocks)\.[0-9]+\..*\.weight$)";

struct SYMPRUNE_API StreamProgress {
  std::string shard;
  std::string tensor;
  uint64_t bytes_done = 0;  // tensor data finished so far, over all shards
  uint64_t bytes_total = 0;
};

struct SYMPRUNE_API StreamOptions {
  // What every pruned weight goes through (symprune::prune); permute is not supported here.
  Recipe recipe;
  // Statistics written by `symprune calibrate`: tensors "<weight name>.in_norm" etc. When
  // given, the weights that have statistics are pruned (and match `include`, if given).
  std::filesystem::path stats;
  // Regular expression (ECMAScript, searched) over tensor names of the weights to prune; without
  // statistics it defaults to kDefaultInclude.
  std::optional<std::string> include;
  // Statistics calibrated through a pruned model record its recipe; by default they are refused
  // for another recipe (the weights would not be those `symprune prune` writes). true: use them.
  bool allow_other_recipe = false;
  bool resume = false;     // keep the finished shards of an interrupted run of the same job
  // Replace a non-empty output folder: only one that symprune wrote (its report or job file),
  // whose contents are removed, once everything is validated, before the first shard is written.
  bool overwrite = false;
  // fsync every output file before renaming it into place. false is faster where fsync is
  // slow; files still appear only when complete if the process dies, but not if the machine
  // does (power loss): after a machine crash, start over instead of resuming.
  bool durable = true;
  // Where weights are pruned: cpu or cuda[:N] (ValueError otherwise, or where torch has no
  // GPU). cuda: through pinned host buffers, with separate streams for the copies to and from
  // the GPU and for the pruning; the file I/O stays on the CPU. The device type is part of the
  // job: `resume` continues on the kind of device a run started on.
  c10::Device device = c10::kCPU;
  // On the CPU, a recipe whose rows are independent (Recipe::rows_independent: row-local scores
  // with per-row or N:M masks, DSnoT) prunes each weight a block of rows of about this many bytes
  // at a time, reading, pruning and writing it, so that memory does not grow with the weight.
  // Other recipes, and a GPU, take a weight whole.
  uint64_t row_block_bytes = uint64_t{8} << 20;
  std::function<void(const StreamProgress&)> on_progress;
};

struct SYMPRUNE_API StreamReport {
  int64_t shards = 0;
  int64_t shards_resumed = 0;   // kept from an interrupted run
  int64_t tensors_pruned = 0;
  int64_t tensors_copied = 0;
  uint64_t bytes = 0;           // tensor data in the shards this run (process) wrote or kept
  int64_t pruned_numel = 0;     // elements of the pruned weights (not counting resumed shards)
  int64_t pruned_zeros = 0;     // zeros among them after pruning
  double seconds = 0;
};

// The output policy of every command (prune, calibrate, apply): ValueError for an output that is
// the input folder, lies inside it or contains it (symlinks resolved), or is a dangling symlink.
// `output` may be a folder or a file and need not exist.
SYMPRUNE_API void check_output_location(const std::filesystem::path& input, const std::filesystem::path& output);

class SYMPRUNE_API StreamingPruner {
 public:
  // Validates the options; throws ValueError for bad ones.
  explicit StreamingPruner(StreamOptions options);

  // Prunes the checkpoint in `model_dir` into `out_dir` (which must differ): shards, index,
  // and every other file of the folder (config, tokenizer) except other weight formats.
  StreamReport run(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir) const;

  const StreamOptions& options() const { return options_; }

 private:
  StreamOptions options_;
};

// One streaming run in its steps, for callers that spread the shards over processes (symprune
// under torchrun). Every process constructs the job with its `rank` of `world`: the shards are
// split by bytes, and each process plans and validates its own (statistics, NaN/Inf) before any
// process writes. Then one process calls `prepare`, every process `write` (after prepare), and
// one process `finish` (after every write). Each process records the checksums of the shards it
// finished (rank 0 in the job file, rank R in .symprune-apply.rank-R.json), so a resumed run,
// whatever its world size, keeps exactly the shards whose bytes are those written.
class SYMPRUNE_API StreamJob {
 public:
  StreamJob(const StreamingPruner& pruner, const std::filesystem::path& model_dir,
            const std::filesystem::path& out_dir, int rank = 0, int world = 1);
  ~StreamJob();
  StreamJob(const StreamJob&) = delete;
  StreamJob& operator=(const StreamJob&) = delete;

  // The output policy, the lock on the folder (held until the job is destroyed) and the job
  // file. Returns whether an interrupted run is resumed.
  bool prepare();
  // Prunes this process's shards; with `resuming`, keeps those an earlier run finished.
  StreamReport write(bool resuming);
  // The index and the folder's other files; removes the job files.
  void finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace symprune
