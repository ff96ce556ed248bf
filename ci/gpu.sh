#!/usr/bin/env bash
# One call on a bare GPU machine: build the kernel library (sm_90a), run the GPU tests (poisoned
# outputs, fresh random problems, compute-sanitizer on a subset) and the benchmarks.
#
#   bash ci/gpu.sh OUTDIR [--quick]
#
# Env: CUTLASS_DIR (default .gpu/cutlass, a trimmed copy of the nvidia-cutlass headers carried to
# the machine), NATTEN_CUDA_ARCHS (default 90a), NATTEN_KERNELS_LIBRARY (skip the build and use
# this .so), GPU_STEPS (default "build tests sanitize bench"), GPU_TESTS (pytest paths),
# BENCH_ARGS (extra benchmark args).
#
# Time: on the H200 machines of 2026-11-29 the GPU test step alone ran past 8.5 minutes (308 tests
# done, ~85% of it, when a 530 s limit stopped it), so build + tests + sanitize + bench no longer fit
# one 10-minute device call. Split it, e.g. GPU_STEPS="build tests" with GPU_TESTS naming half of
# packages/natten/tests/gpu in one call, the other half with a prebuilt NATTEN_KERNELS_LIBRARY in the
# next, then GPU_STEPS="sanitize bench".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: ci/gpu.sh OUTDIR}
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT/packages/natten/src:$ROOT/packages/natten-kernels/python${PYTHONPATH:+:$PYTHONPATH}"
STEPS=${GPU_STEPS:-build tests sanitize bench}
status=0
summary=()
step() { echo; echo "=== $1 ($(date +%T)) ==="; }
has() { [[ " $STEPS " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"

if has build && [ -z "${NATTEN_KERNELS_LIBRARY:-}" ]; then
  step "build (sm_${NATTEN_CUDA_ARCHS:-90a})"
  t0=$(date +%s)
  cmake -S packages/natten-kernels -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DNATTEN_CUDA_ARCHS="${NATTEN_CUDA_ARCHS:-90a}" -DCUTLASS_DIR="${CUTLASS_DIR:-$ROOT/.gpu/cutlass}" \
    -DNATTEN_CUTLASS_DOWNLOAD=OFF > "$OUT/build.log" 2>&1 \
    && cmake --build build/gpu -j"$(nproc)" >> "$OUT/build.log" 2>&1
  rc=$?
  tail -5 "$OUT/build.log"
  # ptxas reports these as "info", not warnings, so -Werror would not catch them: C7518 = every
  # wgmma of a kernel serialized, C7510 = the same because the wgmma pipeline crosses a function
  # call, C7512 = the same for lack of registers, C7517 = a wait for a wgmma inserted by the
  # compiler. Each is a silent slowdown of a Hopper kernel (NOTES, 2026-11-27 and 2026-11-28); none
  # is expected in this tree, so any "C751x" fails the build step.
  if [ $rc -eq 0 ] && grep -qE "C751[0-9]" "$OUT/build.log"; then
    grep -E "C751[0-9]" "$OUT/build.log" | head -5
    echo "build: ptxas serialized or waited on wgmma (C751x) -- see above"
    rc=1
  fi
  summary+=("build: rc=$rc in $(( $(date +%s) - t0 ))s")
  if [ $rc -ne 0 ]; then tail -60 "$OUT/build.log"; echo "${summary[@]}"; exit 1; fi
  export NATTEN_KERNELS_LIBRARY=$(find "$ROOT/build/gpu" -name 'libnatten_kernels*.so' | head -1)
fi
echo "library: ${NATTEN_KERNELS_LIBRARY:-<natten_kernels package>}"
python3 -c "from natten import _libnatten as l; print(l.build_info())" || status=1

if has tests; then
  step "GPU tests"
  python3 -m pytest ${GPU_TESTS:-packages/natten/tests/gpu} -m gpu -q -rA -p no:cacheprovider \
    2>&1 | tee "$OUT/gpu-tests.log" | grep -v "^PASSED" | tail -40
  rc=${PIPESTATUS[0]}
  summary+=("tests: rc=$rc ($(grep -E '[0-9]+ (passed|failed)' "$OUT/gpu-tests.log" | tail -1))")
  [ $rc -eq 0 ] || status=1
fi

if has sanitize; then
  # A case that sets NATTEN_HOPPER_PERSISTENT itself (read once per process, hence its own
  # process): once with its check flag (no sanitizer), then under memcheck and racecheck.
  # Args: label, script, check flag, log tag.
  own_process_case() {
    step "$1 (the case the sanitizers run below, $3)"
    python3 "$2" "$3" 2>&1 | tee "$OUT/$4.log"
    rc=${PIPESTATUS[0]}
    summary+=("$1 (no sanitizer): rc=$rc")
    [ $rc -eq 0 ] || status=1
    for tool in memcheck racecheck; do
      step "compute-sanitizer $tool, $1 (own process)"
      compute-sanitizer --tool $tool --error-exitcode 9 python3 "$2" > "$OUT/sanitize-$4-$tool.log" 2>&1
      rc=$?
      tail -2 "$OUT/sanitize-$4-$tool.log"
      summary+=("sanitizer $tool, $1: rc=$rc")
      [ $rc -eq 0 ] || status=1
    done
  }
  # split tail on a rank-3 problem (22 CTAs; --check-split: the profiler must see the combine kernel)
  own_process_case "split tail, rank 3" ci/gpu_sanitize_split_rank3.py --check-split split-rank3
  # ordered dK / dV schedule (4 CTAs; --check-order: gradients bit-identical to the natural order)
  own_process_case "dK / dV work order" ci/gpu_sanitize_dkdv_order.py --check-order dkdv-order
  # forward cluster pairs, with and without a split tail (2 clusters; --check: the cluster kernel ran)
  own_process_case "cluster pairs" ci/gpu_sanitize_cluster.py --check cluster-pairs
  # ping-pong turns carried across work tiles, short walks (2 CTAs; --check: the Hopper forward ran)
  own_process_case "ping-pong turns" ci/gpu_sanitize_turns.py --check pingpong-turns
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    compute-sanitizer --tool $tool --error-exitcode 9 --target-processes all \
      python3 ci/gpu_sanitize_subset.py > "$OUT/sanitize-$tool.log" 2>&1
    rc=$?
    tail -4 "$OUT/sanitize-$tool.log"
    summary+=("sanitizer $tool: rc=$rc ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitize-$tool.log") clean summaries)")
    [ $rc -eq 0 ] || status=1
  done
fi

if has bench; then
  step "benchmarks"
  python3 benchmarks/host_overhead.py 2>&1 | tee "$OUT/host-overhead.txt"
  python3 benchmarks/run.py --out "$OUT/bench" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | grep -v '^{' 
  summary+=("bench: rc=${PIPESTATUS[0]}")
fi

echo; echo "=== summary ==="; printf '%s\n' "${summary[@]}"
exit $status
