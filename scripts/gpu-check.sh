#!/usr/bin/env bash
# The checks that need a GPU, as one script for a machine with a CUDA build of torch and nvcc
# (the project's lent H200 has both, and no network):
#   1. builds symprune against that torch (build/gpu),
#   2. runs the CUDA tests (tests/test_cuda.py) and the CPU suites they lean on,
#   3. runs bench/bench_stream.py --device cuda on a 4-block (~1.8 GB) checkpoint,
#   4. times sparsegpt, refit and admm on a 4096 x 11008 layer on the GPU against the CPU
#      (bench/bench_reconstruct_device.py, 2:4; ADMM on the GPU only, its CPU side is long).
# Logs go to $OUT when set (the device tool brings that folder back), else to gpu-check/.
#
# The machine lacks nlohmann-json; copy it from this one first (into the ignored .devdeps/,
# which the device tool must carry):
#   bash scripts/gpu-check.sh --prepare
# then, with the project's device tool: run(command="bash scripts/gpu-check.sh",
# carry=[".devdeps"], timeout_s=600). The build takes a few minutes on 16 cores, the tests and
# the benchmark a few more.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .devdeps/include .devdeps/share/cmake
  cp -r /usr/include/nlohmann .devdeps/include/
  cp -r /usr/share/cmake/nlohmann_json .devdeps/share/cmake/
  exclude="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$exclude")"
  grep -qsx '/.devdeps/' "$exclude" || echo '/.devdeps/' >>"$exclude"
  echo "prepared .devdeps/ (carry it to the GPU machine)"
  exit 0
fi

LOG="${OUT:-$ROOT/gpu-check}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"

"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"

echo "==> build"
build_args=(-Cbuild-dir=build/gpu)
[[ -d .devdeps ]] && build_args+=("-Ccmake.define.nlohmann_json_DIR=$ROOT/.devdeps/share/cmake/nlohmann_json")
"$PY" -m pip install --no-build-isolation --no-deps -e . "${build_args[@]}" >"$LOG/build.log" 2>&1 ||
  { tail -40 "$LOG/build.log"; exit 1; }

echo "==> CUDA tests, then the mask and streaming suites"
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$LOG/pytest-cuda.log" || status=1
"$PY" -m pytest -q -p no:cacheprovider -x tests/test_masks.py tests/test_stream.py >"$LOG/pytest-cpu.log" 2>&1 ||
  status=1
tail -3 "$LOG/pytest-cpu.log"

echo "==> streaming benchmark on the GPU"
"$PY" bench/bench_stream.py --layers 4 --device cuda 2>&1 | tee "$LOG/bench_stream.log" || status=1

echo "==> reconstruction on the GPU against the CPU"
timeout 240 "$PY" bench/bench_reconstruct_device.py --cases 2:4 --cpu-methods sparsegpt,refit 2>&1 |
  tee "$LOG/bench_reconstruct_device.log" || status=1
exit $status
