#include "stream/plan.h"

#include "io/tensor_view.h"
#include "stream/finite_scan.h"

#include <nlohmann/json.hpp>

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>

#include <algorithm>
#include <array>
#include <map>
#include <regex>
#include <set>
#include <sys/stat.h>

namespace symprune::detail {
namespace fs = std::filesystem;
using safetensors::Dtype;
using safetensors::TensorInfo;

namespace {

[[noreturn]] void fail(const std::string& message) { throw FormatError(message); }

bool is_floating(Dtype dtype) {
  return dtype == Dtype::F16 || dtype == Dtype::BF16 || dtype == Dtype::F32 || dtype == Dtype::F64;
}

const std::array<std::string, 4> kStatNames{"in_norm", "in_mean", "in_var", "out_norm"};

at::Tensor& slot(LayerStats& stats, const std::string& stat) {
  if (stat == "in_norm") return stats.in_norm;
  if (stat == "in_mean") return stats.in_mean;
  if (stat == "in_var") return stats.in_var;
  return stats.out_norm;
}

// Statistics propagated through a pruned model were made for its recipe: refuse them for another.
void check_stats_recipe(const std::map<std::string, std::string>& metadata, const StreamOptions& options) {
  const auto recorded = metadata.find("recipe");
  if (recorded == metadata.end() || options.allow_other_recipe) return;
  if (nlohmann::json::parse(recorded->second, nullptr, false) == nlohmann::json::parse(options.recipe.to_json()))
    return;
  const auto propagation = metadata.find("propagation");
  fail(options.stats.string() + ": calibrated through another recipe (" +
       (propagation == metadata.end() ? recorded->second : propagation->second) + ") than '" +
       options.recipe.describe() + "'; calibrate again with this recipe, or pass --allow-other-recipe "
       "(StreamOptions::allow_other_recipe) to use them anyway");
}

// Statistics per weight name from the file written by `symprune calibrate` that `options` names,
// made for its recipe.
std::map<std::string, LayerStats> load_stats(const StreamOptions& options) {
  const fs::path& path = options.stats;
  const safetensors::Reader reader(path);
  const auto& header = reader.header();
  const auto format = header.metadata.find("format");
  if (format == header.metadata.end() || format->second != "symprune-stats")
    fail(path.string() + ": not a symprune statistics file (its metadata lacks format=symprune-stats)");
  check_stats_recipe(header.metadata, options);
  std::map<std::string, LayerStats> stats;
  for (const auto& info : header.tensors) {
    const auto dot = info.name.rfind('.');
    const std::string stat = dot == std::string::npos ? "" : info.name.substr(dot + 1);
    if (stat == "in_sq" || stat == "out_sq") continue;  // kept for reports; scores use the norms
    if (std::find(kStatNames.begin(), kStatNames.end(), stat) == kStatNames.end())
      fail(path.string() + ": unexpected tensor '" + info.name + "' (names end in .in_norm, .in_mean, ...)");
    if (!is_floating(info.dtype) || info.shape.size() != 1)
      fail(path.string() + ": '" + info.name + "' must be a 1-D floating-point tensor");
    slot(stats[info.name.substr(0, dot)], stat) = detail::tensor_view(reader, info).to(at::kFloat, false, true);
  }
  return stats;
}

void require(const at::Tensor& t, const std::string& weight, const char* stat, int64_t size,
             const fs::path& stats_path) {
  if (!t.defined())
    fail(stats_path.string() + ": lacks '" + weight + "." + stat + "', which this method needs");
  if (t.numel() != size)
    fail(stats_path.string() + ": '" + weight + "." + stat + "' has " + std::to_string(t.numel()) +
         " entries but the weight needs " + std::to_string(size) + " (statistics of another model?)");
  if (!at::isfinite(t).all().item<bool>())
    fail(stats_path.string() + ": '" + weight + "." + stat + "' holds NaN or Inf");
  if (std::string_view(stat) != "in_mean" && (t < 0).any().item<bool>())
    fail(stats_path.string() + ": '" + weight + "." + stat + "' has negative entries, which a " +
         (std::string_view(stat) == "in_var" ? "variance" : "norm") + " cannot have");
}

// Every weight to prune is finite, checked before anything is written: one read of the mapping, a
// block of rows at a time, each block's pages dropped once checked.
void check_weights_finite(const StreamPlan& plan, const fs::path& model_dir) {
  constexpr uint64_t kBlockBytes = uint64_t{8} << 20;
  for (const auto& shard : plan.shards) {
    const auto& tensors = shard.reader.header().tensors;
    for (const auto& job : shard.jobs) {
      if (!job.prune || !shard.mine) continue;
      const TensorInfo& info = tensors[job.tensor];
      bool finite = true;
      for (uint64_t offset = 0; finite && offset < info.nbytes(); offset += kBlockBytes) {
        const auto block = safetensors::Reader::part(info, offset, kBlockBytes);
        finite = all_finite(shard.reader.bytes(block), info.dtype);
        shard.reader.release(block);
      }
      if (!finite)
        throw ValueError((model_dir / shard.name).string() + ": tensor '" + info.name +
                         "': holds NaN or Inf; refused before anything was written");
    }
  }
}

// Checks that the index names every tensor of every shard, and nothing else.
void check_index(const std::string& text, const std::vector<ShardPlan>& shards, const fs::path& index) {
  const auto weight_map = nlohmann::json::parse(text)["weight_map"];
  std::size_t count = 0;
  for (const auto& shard : shards) {
    for (const auto& info : shard.reader.header().tensors) {
      const auto it = weight_map.find(info.name);
      if (it == weight_map.end() || *it != shard.name)
        fail(index.string() + ": does not place tensor '" + info.name + "' in " + shard.name);
      ++count;
    }
  }
  if (count != weight_map.size())
    fail(index.string() + ": names " + std::to_string(weight_map.size()) + " tensors but the shards hold " +
         std::to_string(count));
}

nlohmann::json file_identity(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw IoError(path.string() + ": cannot stat");
  return {{"name", path.filename().string()},
          {"size", uint64_t(st.st_size)},
          {"mtime_ns", int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec}};
}

std::string describe_job(const StreamOptions& o, const std::vector<ShardPlan>& shards) {
  // Version 2: the recipe as Recipe::to_json writes it. A job file of another version is
  // another job, so --resume refuses it.
  nlohmann::json job = {{"version", 2}, {"recipe", nlohmann::json::parse(o.recipe.to_json())}};
  if (o.stats.empty())
    job["include"] = o.include.value_or(kDefaultInclude);
  else
    job["stats"] = file_identity(o.stats);
  if (!o.stats.empty() && o.include) job["include"] = *o.include;
  // Scores with sums (RIA, symmetric) may round differently on a GPU: a resumed run stays on
  // the kind of device it started on.
  if (!o.device.is_cpu()) job["device"] = c10::DeviceTypeName(o.device.type(), /*lower_case=*/true);
  for (const auto& shard : shards) job["shards"].push_back(file_identity(shard.reader.path()));
  return job.dump();
}

// Largest shards first, each to the process with the fewest bytes so far (the lowest rank on
// ties): deterministic, so every process computes the same split.
void split_shards(std::vector<ShardPlan>& shards, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world)
    throw ValueError("rank " + std::to_string(rank) + " of " + std::to_string(world) + " processes is out of range");
  std::vector<uint64_t> bytes(shards.size());
  for (std::size_t i = 0; i < shards.size(); ++i) bytes[i] = shards[i].reader.file_size();
  std::vector<std::size_t> order(shards.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return bytes[a] > bytes[b]; });
  std::vector<uint64_t> load(world, 0);
  for (const std::size_t i : order) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    load[least] += bytes[i];
    shards[i].mine = least == rank;
  }
}

}  // namespace

StreamPlan plan_stream(const StreamOptions& options, const fs::path& model_dir, int rank, int world) {
  const auto checkpoint = safetensors::find_checkpoint(model_dir);
  StreamPlan plan;
  plan.index_json = checkpoint.index_json;
  for (const auto& name : checkpoint.shards)
    plan.shards.push_back({name, safetensors::Reader(model_dir / name), {}});
  if (plan.index_json) check_index(*plan.index_json, plan.shards, model_dir / safetensors::kIndexName);
  split_shards(plan.shards, rank, world);

  const Recipe& recipe = options.recipe;
  const bool needs_in = recipe.needs_input_stats();
  const bool needs_out = recipe.needs_output_stats();
  std::map<std::string, LayerStats> stats;
  if (!options.stats.empty()) {
    stats = load_stats(options);
  } else if (needs_in || needs_out) {
    throw ValueError("recipe '" + recipe.describe() +
                     "' needs activation statistics: run `symprune calibrate` and pass them with --stats");
  }
  const std::string include_text = options.include.value_or(kDefaultInclude);
  std::optional<std::regex> include;
  if (options.stats.empty() || options.include)
    include.emplace(include_text, std::regex::ECMAScript | std::regex::optimize);

  std::set<std::string> used;
  int64_t pruned = 0;
  for (auto& shard : plan.shards) {
    const auto& tensors = shard.reader.header().tensors;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const TensorInfo& info = tensors[i];
      if (shard.mine) plan.bytes_mine += info.nbytes();
      TensorJob job{i, false, {}};
      const bool matrix = info.shape.size() == 2 && is_floating(info.dtype);
      const bool included = include && std::regex_search(info.name, *include);
      if (options.stats.empty()) {
        job.prune = matrix && included;
      } else if (const auto it = stats.find(info.name); it != stats.end()) {
        if (!matrix)
          fail(options.stats.string() + ": has statistics for '" + info.name +
               "', which is not a 2-D floating-point weight in " + shard.name);
        job.prune = !include || included;
        job.stats = it->second;
        used.insert(info.name);
      }
      if (job.prune) {
        const int64_t rows = info.shape[0], cols = info.shape[1];
        const std::string where = (model_dir / shard.name).string() + ": tensor '" + info.name + "'";
        if (recipe.nm && cols % recipe.nm->m != 0)
          throw ValueError(where + " has " + std::to_string(cols) + " input columns, not divisible by M=" +
                           std::to_string(recipe.nm->m));
        if (recipe.needs_input_stats(recipe.refines(info.name)))
          require(job.stats.in_norm, info.name, "in_norm", cols, options.stats);
        if (recipe.refines(info.name)) {
          require(job.stats.in_mean, info.name, "in_mean", cols, options.stats);
          require(job.stats.in_var, info.name, "in_var", cols, options.stats);
        }
        if (needs_out) require(job.stats.out_norm, info.name, "out_norm", rows, options.stats);
        ++pruned;
        // A device takes blocks of rows too, but a per-layer mask's passes only on the CPU.
        if ((recipe.rows_independent() || (options.device.is_cpu() && recipe.layer_mask_in_passes())) && rows > 0) {
          const uint64_t row_bytes = info.nbytes() / uint64_t(rows);
          job.block_rows =
              std::clamp<int64_t>(int64_t(options.row_block_bytes / std::max<uint64_t>(row_bytes, 1)), 1, rows);
        }
        const uint64_t at_once = job.block_rows ? uint64_t(job.block_rows) * (info.nbytes() / uint64_t(rows))
                                                : info.nbytes();
        if (shard.mine) plan.buffer_bytes = std::max(plan.buffer_bytes, at_once);
      }
      shard.jobs.push_back(std::move(job));
    }
  }
  check_weights_finite(plan, model_dir);
  for (const auto& [name, s] : stats)
    if (!used.count(name))
      fail(options.stats.string() + ": has statistics for '" + name +
           "' but the checkpoint has no such tensor (statistics of another model?)");
  if (pruned == 0)
    fail(model_dir.string() + ": no tensor to prune (no name matches --include " + include_text + ")");
  plan.job = describe_job(options, plan.shards);
  return plan;
}

}  // namespace symprune::detail
