#pragma once
// Everything the symprune core offers.

#include "symprune/dsnot.h"
#include "symprune/errors.h"
#include "symprune/mask.h"
#include "symprune/owl.h"
#include "symprune/prune.h"
#include "symprune/recipe.h"
#include "symprune/reconstruct.h"
#include "symprune/safetensors.h"
#include "symprune/score.h"
#include "symprune/stats.h"
#include "symprune/stream.h"
#include "symprune/tensors.h"
#include "symprune/version.h"
