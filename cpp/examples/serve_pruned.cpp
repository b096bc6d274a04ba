// The server pattern: load a weight from a safetensors checkpoint with the core's reader, prune
// it in memory by a Recipe, and run the layer with it. Needs LibTorch and symprune only.
//   serve_pruned MODEL_DIR [TENSOR] [RECIPE_METHOD PATTERN]   (default: the first 2-D weight,
//                                                              magnitude 2:4)
#include <ATen/ATen.h>

#include <symprune/symprune.h>

#include <iomanip>
#include <iostream>
#include <optional>
#include <string>

namespace {

bool is_float(symprune::safetensors::Dtype d) {
  using symprune::safetensors::Dtype;
  return d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F32 || d == Dtype::F64;
}

// The named tensor, or the checkpoint's first 2-D floating-point one, as an owning CPU tensor.
std::pair<std::string, at::Tensor> load_weight(const std::filesystem::path& folder, const std::string& wanted) {
  for (const auto& shard : symprune::safetensors::find_checkpoint(folder).shards) {
    const symprune::safetensors::Reader reader(folder / shard);
    for (const auto& info : reader.header().tensors) {
      const bool match = wanted.empty() ? info.shape.size() == 2 && is_float(info.dtype) : info.name == wanted;
      if (match) return {info.name, symprune::load_tensor(reader, info)};
    }
  }
  throw symprune::ValueError(folder.string() + ": no tensor " + (wanted.empty() ? "that is a 2-D weight" : wanted));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc == 4 || argc > 5) {
    std::cerr << "usage: serve_pruned MODEL_DIR [TENSOR] [METHOD PATTERN]\n";
    return 2;
  }
  try {
    const auto [name, weight] = load_weight(argv[1], argc > 2 ? argv[2] : "");
    symprune::RecipeArgs args;
    args.method = argc == 5 ? argv[3] : "magnitude";
    const std::string pattern = argc == 5 ? argv[4] : "2:4";
    if (pattern.find(':') != std::string::npos)
      args.nm = symprune::parse_nm(pattern);
    else
      args.sparsity = std::stod(pattern);
    const auto recipe = symprune::make_recipe(args);
    if (!recipe.data_free())
      throw symprune::ValueError("recipe '" + recipe.describe() + "' needs calibration statistics; "
                                 "this example serves data-free recipes");
    const auto pruned = symprune::prune(weight, {}, recipe, name).weight;

    at::manual_seed(0);
    const auto x = at::randn({4, weight.size(1)}, weight.options());
    const auto dense_y = at::matmul(x.to(at::kFloat), weight.to(at::kFloat).t());
    const auto y = at::matmul(x.to(at::kFloat), pruned.to(at::kFloat).t());
    const double zeros = (pruned == 0).sum().item<double>() / static_cast<double>(pruned.numel());
    std::cout << std::setprecision(12) << "symprune " << SYMPRUNE_VERSION << "; " << name << " "
              << weight.sizes() << " " << weight.scalar_type() << "; " << recipe.describe() << "; zeros "
              << zeros << "; abs sum " << pruned.to(at::kDouble).abs().sum().item<double>()
              << "; output relative error " << ((y - dense_y).norm() / dense_y.norm()).item<double>() << "\n";
    return 0;
  } catch (const std::exception& e) {  // symprune's errors (errors.h), or torch's
    std::cerr << "serve_pruned: error: " << e.what() << "\n";
    return 1;
  }
}
