// Safetensors files and the streaming pruner for Python.
#include "convert.h"

#include <algorithm>
#include <map>
#include <vector>

namespace py = pybind11;

namespace symprune::bindings {
namespace {

py::dict read_header(const std::string& path) {
  const safetensors::Reader reader(path);
  py::dict tensors;
  for (const auto& t : reader.header().tensors) {
    py::dict entry;
    entry["dtype"] = std::string(safetensors::dtype_name(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = py::make_tuple(t.begin, t.end);
    tensors[py::str(t.name)] = entry;
  }
  py::dict out;
  out["tensors"] = tensors;
  out["metadata"] = reader.header().metadata;
  return out;
}

c10::Device parse_device(const std::string& name) {
  try {
    return c10::Device(name);
  } catch (const c10::Error&) {
    throw ValueError("device must be cpu or cuda (e.g. cuda:1), got '" + name + "'");
  }
}

StreamOptions stream_options(const Recipe& recipe, const std::optional<std::string>& stats,
                             const std::optional<std::string>& include, bool resume, bool overwrite, bool durable,
                             const std::string& device, const py::object& progress, bool allow_other_recipe,
                             uint64_t row_block_bytes) {
  StreamOptions options;
  options.row_block_bytes = row_block_bytes;
  options.allow_other_recipe = allow_other_recipe;
  options.recipe = recipe;
  if (stats) options.stats = *stats;
  options.include = include;
  options.resume = resume;
  options.overwrite = overwrite;
  options.durable = durable;
  options.device = parse_device(device);
  if (!progress.is_none()) {
    options.on_progress = [progress](const StreamProgress& state) {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // Ctrl-C stops the run cleanly
      progress(state.shard, state.tensor, state.bytes_done, state.bytes_total);
    };
  }
  return options;
}

py::dict as_dict(const StreamReport& report) {
  py::dict out;
  out["shards"] = report.shards;
  out["shards_resumed"] = report.shards_resumed;
  out["tensors_pruned"] = report.tensors_pruned;
  out["tensors_copied"] = report.tensors_copied;
  out["bytes"] = report.bytes;
  out["pruned_numel"] = report.pruned_numel;
  out["pruned_zeros"] = report.pruned_zeros;
  out["seconds"] = report.seconds;
  return out;
}

}  // namespace

void bind_io(py::module_& m) {
  m.def("safetensors_header", &read_header, py::arg("path"),
        "Validated header of a safetensors file: {'tensors': {name: {dtype, shape, data_offsets}}, 'metadata'}.");
  m.def("load_safetensors", &load_tensors, py::arg("path"), py::arg("names") = py::none(),
        "Tensors of a safetensors file (all, or those named), copied out of the file.");
  m.def("save_safetensors", &save_tensors, py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::dict(),
        "Writes tensors to a safetensors file atomically (temporary name, fsync, rename).");
  m.attr("APPLY_JOB_FILE") = kApplyJobFile;
  m.def("check_output_location",
        [](const std::string& input, const std::string& output) { check_output_location(input, output); },
        py::arg("input"), py::arg("output"),
        "ValueError for an output that is the input, lies inside it or contains it (symlinks resolved), or "
        "is a dangling symlink.");
  m.def("find_checkpoint", [](const std::string& folder) { return safetensors::find_checkpoint(folder).shards; },
        py::arg("folder"),
        "The shard file names of a checkpoint folder: those its index names (a .safetensors file the index does "
        "not name is refused), else its .safetensors files, sorted.");
  m.attr("REPORT_FILE") = kReportFile;
  py::class_<StreamJob>(m, "StreamJob",
                        "A streaming run in its steps (see symprune::StreamJob): construct (plans and validates this "
                        "process's shards), prepare() on one process, write(resuming) on every process, finish() on one.")
      .def(py::init([](const std::string& model_dir, const std::string& out_dir, const Recipe& recipe,
                       const std::optional<std::string>& stats, const std::optional<std::string>& include, bool resume,
                       bool overwrite, bool durable, const std::string& device, const py::object& progress,
                       bool allow_other_recipe, int rank, int world, uint64_t row_block_bytes) {
             const StreamingPruner pruner(stream_options(recipe, stats, include, resume, overwrite, durable, device,
                                                         progress, allow_other_recipe, row_block_bytes));
             py::gil_scoped_release release;  // planning reads every weight to prune once
             return std::make_unique<StreamJob>(pruner, model_dir, out_dir, rank, world);
           }),
           py::arg("model_dir"), py::arg("out_dir"), py::kw_only(), py::arg("recipe"), py::arg("stats") = py::none(),
           py::arg("include") = py::none(), py::arg("resume") = false, py::arg("overwrite") = false,
           py::arg("durable") = true, py::arg("device") = "cpu", py::arg("progress") = py::none(),
           py::arg("allow_other_recipe") = false, py::arg("rank") = 0, py::arg("world") = 1,
           py::arg("row_block_bytes") = StreamOptions{}.row_block_bytes)
      .def("prepare", &StreamJob::prepare, py::call_guard<py::gil_scoped_release>(),
           "Output policy, folder lock and job file; returns whether an interrupted run is resumed.")
      .def("write", [](StreamJob& job, bool resuming) {
             StreamReport report;
             {
               py::gil_scoped_release release;
               report = job.write(resuming);
             }
             return as_dict(report);
           }, py::arg("resuming"), "Prunes this process's shards; returns the engine's counts.")
      .def("finish", &StreamJob::finish, py::call_guard<py::gil_scoped_release>(),
           "Writes the index and the folder's other files, removes the job files.");
}

}  // namespace symprune::bindings
