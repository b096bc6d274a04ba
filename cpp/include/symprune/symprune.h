#pragma once
// Everything the symprune core offers.

#include "symprune/dsnot.h"
#include "symprune/mask.h"
#include "symprune/prune.h"
#include "symprune/safetensors.h"
#include "symprune/score.h"
#include "symprune/stats.h"
#include "symprune/stream.h"
