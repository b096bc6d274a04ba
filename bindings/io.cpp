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

std::map<std::string, at::Tensor> load(const std::string& path, const std::optional<std::vector<std::string>>& names) {
  const safetensors::Reader reader(path);
  std::map<std::string, at::Tensor> out;
  if (names) {
    for (const auto& name : *names) {
      const auto* info = reader.header().find(name);
      if (!info) throw FormatError(path + ": has no tensor '" + name + "'");
      out.emplace(name, tensor_view(reader, *info).clone());
    }
    return out;
  }
  for (const auto& info : reader.header().tensors) out.emplace(info.name, tensor_view(reader, info).clone());
  return out;
}

void save(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  std::vector<safetensors::TensorInfo> infos;
  std::vector<at::Tensor> data;
  for (const auto& [name, tensor] : tensors) {
    data.push_back(tensor.detach().to(at::kCPU).contiguous());
    infos.push_back({name, safetensors_dtype(tensor.scalar_type()), tensor.sizes().vec(), 0, 0});
  }
  safetensors::Writer writer(path, infos, metadata);
  for (std::size_t i = 0; i < data.size(); ++i)
    writer.write(i, {static_cast<const std::byte*>(data[i].const_data_ptr()), data[i].nbytes()});
  writer.commit();
}

DsnotOptions parse_refine(const py::dict& options) {
  DsnotOptions o;
  auto optional_double = [](const py::handle& v) {
    return v.is_none() ? std::nullopt : std::optional<double>(v.cast<double>());
  };
  for (const auto& [k, v] : options) {
    const auto key = k.cast<std::string>();
    if (key == "max_cycles") o.max_cycles = v.cast<int64_t>();
    else if (key == "threshold") o.threshold = v.cast<double>();
    else if (key == "var_power") o.var_power = v.cast<double>();
    else if (key == "relative")
      o.relative = parse_relative(v.is_none() ? std::nullopt : std::optional<std::string>(v.cast<std::string>()));
    else if (key == "a") o.a = v.cast<double>();
    else if (key == "gamma1") o.gamma1 = optional_double(v);
    else if (key == "gamma2") o.gamma2 = optional_double(v);
    else if (key == "q") o.q = v.cast<double>();
    else throw FormatError("unknown refine option '" + key + "'");
  }
  return o;
}

c10::Device parse_device(const std::string& name) {
  try {
    return c10::Device(name);
  } catch (const c10::Error&) {
    throw FormatError("device must be cpu or cuda (e.g. cuda:1), got '" + name + "'");
  }
}

py::dict stream_prune(const std::string& model_dir, const std::string& out_dir, const std::string& method,
                      std::optional<double> sparsity, const std::optional<std::tuple<int64_t, int64_t>>& nm,
                      const std::string& group, double a, double p, double beta, uint64_t seed,
                      const std::optional<py::dict>& refine, const std::optional<std::string>& stats,
                      const std::optional<std::string>& include, bool resume, bool overwrite,
                      bool durable, const std::string& device, const py::object& progress) {
  StreamOptions options;
  options.method = parse_score_method(method);
  options.sparsity = sparsity;
  options.nm = to_nm(nm);
  options.group = parse_group(group);
  options.score.a = a;
  options.score.p = p;
  options.score.beta = beta;
  options.score.seed = seed;
  if (refine) options.refine = parse_refine(*refine);
  if (stats) options.stats = *stats;
  if (include) options.include = *include;
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
  const StreamingPruner pruner(std::move(options));
  StreamReport report;
  {
    py::gil_scoped_release release;
    report = pruner.run(model_dir, out_dir);
  }
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
  m.def("load_safetensors", &load, py::arg("path"), py::arg("names") = py::none(),
        "Tensors of a safetensors file (all, or those named), copied out of the file.");
  m.def("save_safetensors", &save, py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::dict(),
        "Writes tensors to a safetensors file atomically (temporary name, fsync, rename).");
  m.def("stream_prune", &stream_prune, py::arg("model_dir"), py::arg("out_dir"), py::kw_only(), py::arg("method"),
        py::arg("sparsity") = py::none(), py::arg("nm") = py::none(), py::arg("group") = "row", py::arg("a") = 0.5,
        py::arg("p") = 1.0, py::arg("beta") = 0.1, py::arg("seed") = 0, py::arg("refine") = py::none(),
        py::arg("stats") = py::none(), py::arg("include") = py::none(), py::arg("resume") = false,
        py::arg("overwrite") = false, py::arg("durable") = true, py::arg("device") = "cpu",
        py::arg("progress") = py::none(),
        "Prunes a safetensors checkpoint folder tensor by tensor into out_dir (see symprune::StreamingPruner).");
}

}  // namespace symprune::bindings
