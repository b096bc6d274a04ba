// Prunes one weight the way an inference server linking symprune::core would: activation
// statistics from a stream of inputs, a Recipe (Wanda, 2:4, DSnoT), then symprune::prune.
// Prints what it did.
#include <ATen/ATen.h>

#include <symprune/symprune.h>

#include <iostream>

int main() {
  at::manual_seed(0);
  const int64_t out = 64, in = 128;
  const auto weight = at::randn({out, in});

  symprune::ActivationStats stats(in);
  for (int sequence = 0; sequence < 8; ++sequence) stats.update(at::randn({32, in}) + 0.5);

  symprune::RecipeArgs args;
  args.method = "wanda";
  args.nm = symprune::parse_nm("2:4");
  args.refine = "dsnot";
  const auto recipe = symprune::make_recipe(args);
  const auto result = symprune::prune(weight, {stats.in_norm(), stats.in_mean(), stats.in_var(), {}}, recipe);

  std::cout << recipe.describe() << ": kept " << result.keep.sum().item<int64_t>() << " of "
            << result.keep.numel() << "; dsnot moved " << result.refined / 2 << " weights\n";
  return 0;
}
