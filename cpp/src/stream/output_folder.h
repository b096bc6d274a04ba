#pragma once
// The output folder of a streaming run: whether it may be written, the job file that lets an
// interrupted run resume, and the files copied beside the shards.

#include "symprune/safetensors.h"
#include "symprune/stream.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace symprune::detail {

// Describes an unfinished run in the output folder: its job (options, statistics, input files),
// whether it is durable, and the checksums of the shards rank 0 finished. Other ranks record
// theirs in job_file_of(rank). Removed once the run finishes.
inline constexpr const char* kJobFile = kApplyJobFile;
std::string job_file_text(const std::string& job, bool durable);
std::filesystem::path job_file_of(const std::filesystem::path& out_dir, int rank);

// Holds an exclusive lock on the output folder so that two runs never write it at once.
class FolderLock {
 public:
  explicit FolderLock(const std::filesystem::path& dir);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_;
};

// Decides whether `out_dir` may be written and whether this is a resume; creates it if needed.
bool prepare_output(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir,
                    const StreamOptions& o, const std::string& job);

// Removes the .partial files an interrupted run left.
void remove_partials(const std::filesystem::path& out_dir);
// A finished run's job files: removed so that they do not ship with the model.
void remove_job_files(const std::filesystem::path& out_dir);

// The shards one process finished, with their checksums, recorded in its job file as each one
// lands (after the shard's rename: a shard not recorded is redone).
class FinishedShards {
 public:
  FinishedShards(const std::filesystem::path& out_dir, int rank, bool durable);
  // The checksums that every process of this job recorded so far, by shard name.
  static std::multimap<std::string, std::string> recorded(const std::filesystem::path& out_dir);
  void add(const std::string& shard, const std::string& checksum);

 private:
  std::filesystem::path path_;
  bool durable_;
  nlohmann::json text_;  // the file as written (rank 0's keeps the job it was prepared with)
  std::mutex mutex_;     // shards are recorded by the thread that commits them
};

// A shard left by an interrupted run is kept if its checksum is one recorded for it: that checksum,
// or nullopt.
std::optional<std::string> finished_earlier(const std::filesystem::path& path,
                                            const std::multimap<std::string, std::string>& recorded);

// config.json, tokenizer files, chat templates...: every plain file but weights and state.
void copy_other_files(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir, bool durable);

}  // namespace symprune::detail
