// Scores a weight with Wanda, masks it 2:4 and refines the mask with DSnoT, the way an
// inference server linking symprune::core would. Prints what it did.
#include <ATen/ATen.h>

#include <symprune/symprune.h>

#include <iostream>

int main() {
  at::manual_seed(0);
  const int64_t out = 64, in = 128;
  const auto weight = at::randn({out, in});

  symprune::ActivationStats stats(in);
  for (int sequence = 0; sequence < 8; ++sequence) stats.update(at::randn({32, in}) + 0.5);

  symprune::ScoreOptions options;
  options.in_norm = stats.in_norm();
  const auto scores = symprune::score(weight, symprune::ScoreMethod::Wanda, options);
  const auto keep = symprune::nm_mask(scores, {2, 4});

  symprune::DsnotOptions refine;
  refine.nm = symprune::NM{2, 4};
  const auto refined = symprune::dsnot({weight, keep, stats.in_norm(), stats.in_mean(), stats.in_var(), std::nullopt}, refine);

  std::cout << "kept " << keep.sum().item<int64_t>() << " of " << keep.numel() << "; dsnot moved "
            << (refined != keep).sum().item<int64_t>() / 2 << " weights; kept after "
            << refined.sum().item<int64_t>() << "\n";
  return 0;
}
