#pragma once
// The output folder of a streaming run: whether it may be written, the job file that lets an
// interrupted run resume, and the files copied beside the shards.

#include "symprune/safetensors.h"
#include "symprune/stream.h"

#include <filesystem>
#include <string>

namespace symprune::detail {

// Describes an unfinished run in the output folder: its job (options, statistics, input files)
// and whether it is durable. Removed once the run finishes.
inline constexpr const char* kJobFile = kApplyJobFile;
std::string job_file_text(const std::string& job, bool durable);

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
// A finished run's job file: removed so that it does not ship with the model.
void remove_job_file(const std::filesystem::path& out_dir);

// A shard left by an interrupted run is complete if it exists at all (files appear under
// their final name only once complete) and describes the same tensors as `input`.
bool finished_earlier(const std::filesystem::path& path, const safetensors::Reader& input);

// config.json, tokenizer files, chat templates...: every plain file but weights and state.
void copy_other_files(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir, bool durable);

}  // namespace symprune::detail
