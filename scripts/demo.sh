#!/usr/bin/env bash
# The main job on a fresh machine: set up, convert the real SmolLM2-135M once into
# .cache/, prune it with symprune's default recipe and print dense vs pruned perplexity.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
.venv/bin/symprune demo "$@"
