// Prunes a safetensors checkpoint folder with the streaming engine, as a C++ service would:
//   stream_prune MODEL_DIR OUT_DIR METHOD (SPARSITY | N:M) [--stats FILE] [--resume] [--device DEVICE]
// e.g. stream_prune llama/ llama-2of4/ magnitude 2:4 --device cuda
#include <symprune/symprune.h>

#include <cstdlib>
#include <iostream>
#include <string>

namespace {

int usage() {
  std::cerr << "usage: stream_prune MODEL_DIR OUT_DIR METHOD (SPARSITY | N:M) [--stats FILE] [--resume] "
               "[--device DEVICE]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return usage();
  try {
    symprune::RecipeArgs recipe;
    recipe.method = argv[3];
    const std::string pattern = argv[4];
    if (pattern.find(':') != std::string::npos)
      recipe.nm = symprune::parse_nm(pattern);
    else
      recipe.sparsity = std::stod(pattern);
    symprune::StreamOptions options;
    options.recipe = symprune::make_recipe(recipe);
    for (int i = 5; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--resume") options.resume = true;
      else if (arg == "--stats" && i + 1 < argc) options.stats = argv[++i];
      else if (arg == "--device" && i + 1 < argc) options.device = c10::Device(argv[++i]);
      else return usage();
    }
    int last_percent = -1;
    options.on_progress = [&](const symprune::StreamProgress& p) {
      const int percent = p.bytes_total ? int(100 * p.bytes_done / p.bytes_total) : 100;
      if (percent / 10 != last_percent / 10) std::cerr << percent << "% " << p.shard << "\n";
      last_percent = percent;
    };
    const auto report = symprune::StreamingPruner(options).run(argv[1], argv[2]);
    std::cout << "pruned " << report.tensors_pruned << " tensors (" << report.pruned_zeros << " zeros of "
              << report.pruned_numel << "), copied " << report.tensors_copied << ", " << report.shards
              << " shards (" << report.shards_resumed << " resumed)\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "stream_prune: error: " << e.what() << "\n";
    return 1;
  }
}
