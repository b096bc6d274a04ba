#pragma once
// What a streaming run will do, decided and validated before a byte is written: the shards,
// which tensors are pruned and the statistics each needs.

#include "symprune/prune.h"
#include "symprune/safetensors.h"
#include "symprune/stream.h"

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace symprune::detail {

struct TensorJob {
  std::size_t tensor;  // index into the shard header's tensors
  bool prune = false;
  LayerStats stats;  // undefined tensors where the file has none
  // Rows per block when pruned a block of rows at a time (StreamOptions::row_block_bytes); 0: the
  // whole weight at once.
  int64_t block_rows = 0;
};

struct ShardPlan {
  std::string name;
  safetensors::Reader reader;
  std::vector<TensorJob> jobs;  // in data order
  bool mine = true;             // written by this process (of a run split over processes)
};

struct StreamPlan {
  std::vector<ShardPlan> shards;
  std::optional<std::string> index_json;
  uint64_t bytes_mine = 0;            // tensor data in the shards this process writes
  uint64_t buffer_bytes = 0;          // an output buffer: the largest block or whole weight pruned at once
  std::string job;  // JSON describing the job, to recognise its own output when resuming
};

// Throws ValueError (bad option), FormatError (bad file or statistics) or IoError naming what
// is wrong. The shards are split by bytes between `world` processes; the weights of process
// `rank`'s shards are checked for NaN/Inf.
StreamPlan plan_stream(const StreamOptions& options, const std::filesystem::path& model_dir, int rank = 0,
                       int world = 1);

}  // namespace symprune::detail
