#!/usr/bin/env bash
# One call on a bare GPU machine: build the kernel library (sm_90a), run the GPU tests (poisoned
# outputs, fresh random problems, compute-sanitizer on a subset) and the benchmarks.
#
#   bash ci/gpu.sh OUTDIR
#
# Env: CUTLASS_DIR (default .gpu/cutlass, a trimmed copy of the nvidia-cutlass headers carried to
# the machine), NATTEN_CUDA_ARCHS (default 90a), NATTEN_KERNELS_LIBRARY (skip the build and use
# this .so), GPU_STEPS (default "build tests sanitize bench"), GPU_TESTS (pytest test files and
# options; default every file of packages/natten/tests/gpu), GPU_TEST_JOBS (pytest processes run
# side by side on the one GPU, one test file or shard each at a time; default 6), GPU_TEST_SHARDS
# (long files split into shards run as processes of their own, "file.py:n ..."; default
# "test_flex_gpu.py:3 test_hopper_fna_gpu.py:3 test_cutlass_fna_backward_gpu.py:2", empty = none),
# GPU_SANITIZE_ALONGSIDE (default 1: the sanitize step's three lanes, the own-process cases and the
# forward and backward halves of the memcheck / racecheck subset, run in the background while the
# GPU tests run; 0 = one after another),
# BENCH_ARGS (extra benchmark args).
#
# Time: on the H200 machines of 2026-11-29 the GPU test step in one pytest process ran past 8.5
# minutes (the torch.compile work of the flex and training tests is CPU-bound) and the sanitize step
# takes ~10 (the subset's racecheck ~6-7 of them), so build + tests + sanitize + bench no longer fit one
# 10-minute device call one after another. Hence the parallel processes, each with its own log
# (OUTDIR/gpu-tests-<file>[-<i>of<n>].log, OUTDIR/<lane>.out). Measured: 6 processes, one per file,
# ran every GPU test file in 401 s (the flex file the longest, the Hopper file 268 s) while the whole
# subset's racecheck ran alongside (2026-11-29, H200). The shards and the subset's halves came after
# that run and are not timed yet. If a call still runs out of time, use GPU_STEPS="build tests" in
# one call and GPU_STEPS="sanitize bench" with the prebuilt NATTEN_KERNELS_LIBRARY in the next.
# OUTDIR holds ~40 files; where only a few files come back from a device call (the device tool of
# 2026-11-29 returned 8), write OUTDIR outside the returned folder and return it as one archive, with
# a time limit of the script's own so that the archive is made even when the script runs too long
# (timeout stops the whole process group: the test processes and the sanitize lanes too), e.g.
#   timeout -k 10 540 bash ci/gpu.sh /tmp/g > $OUT/gpu.log 2>&1; tar czf $OUT/g.tgz -C /tmp g
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
# Settings checked before anything starts (the sanitize lanes run in the background).
jobs_max=${GPU_TEST_JOBS:-6}
[[ $jobs_max =~ ^[1-9][0-9]*$ ]] || { echo "GPU_TEST_JOBS must be an integer >= 1, got '$jobs_max'"; exit 2; }
test_shards=${GPU_TEST_SHARDS-test_flex_gpu.py:3 test_hopper_fna_gpu.py:3 test_cutlass_fna_backward_gpu.py:2}
for spec in $test_shards; do
  [[ $spec =~ ^[^:/]+\.py:[1-9][0-9]*$ ]] || { echo "GPU_TEST_SHARDS: '$spec' is not file.py:n with n >= 1"; exit 2; }
done

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

# The sanitize step in three lanes that can run in the background (each lane's own output file and
# summary file, its status as its exit code).
# A case that sets NATTEN_HOPPER_PERSISTENT itself (read once per process, hence its own process):
# once with its check flag (no sanitizer), then under memcheck and racecheck.
# Args: label, script, check flag, log tag.
own_process_case() {
  step "$1 (the case the sanitizers run below, $3)"
  python3 "$2" "$3" 2>&1 | tee "$OUT/$4.log"
  local rc=${PIPESTATUS[0]}
  lane_note "$1 (no sanitizer): rc=$rc"
  [ $rc -eq 0 ] || lane_bad=1
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool, $1 (own process)"
    compute-sanitizer --tool $tool --error-exitcode 9 python3 "$2" > "$OUT/sanitize-$4-$tool.log" 2>&1
    rc=$?
    tail -2 "$OUT/sanitize-$4-$tool.log"
    lane_note "sanitizer $tool, $1: rc=$rc"
    [ $rc -eq 0 ] || lane_bad=1
  done
}
lane_note() { echo "$1" >> "$OUT/summary-$lane.txt"; }
sanitize_cases_lane() {
  lane=sanitize-cases; lane_bad=0; : > "$OUT/summary-$lane.txt"
  # split tail on a rank-3 problem (22 CTAs; --check-split: the profiler must see the combine kernel)
  own_process_case "split tail, rank 3" ci/gpu_sanitize_split_rank3.py --check-split split-rank3
  # ordered dK / dV schedule (4 CTAs; --check-order: gradients bit-identical to the natural order)
  own_process_case "dK / dV work order" ci/gpu_sanitize_dkdv_order.py --check-order dkdv-order
  # forward cluster pairs, with and without a split tail (2 clusters; --check: the cluster kernel ran)
  own_process_case "cluster pairs" ci/gpu_sanitize_cluster.py --check cluster-pairs
  # ping-pong turns carried across work tiles, short walks (2 CTAs; --check: the Hopper forward ran)
  own_process_case "ping-pong turns" ci/gpu_sanitize_turns.py --check pingpong-turns
  return $lane_bad
}
# Args: forward | backward (the half of ci/gpu_sanitize_subset.py), memcheck then racecheck.
sanitize_subset_lane() {
  lane=sanitize-subset-$1; lane_bad=0; : > "$OUT/summary-$lane.txt"
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool, subset ($1 half)"
    compute-sanitizer --tool $tool --error-exitcode 9 --target-processes all \
      python3 ci/gpu_sanitize_subset.py "$1" > "$OUT/sanitize-$tool-$1.log" 2>&1
    local rc=$?
    tail -4 "$OUT/sanitize-$tool-$1.log"
    lane_note "sanitizer $tool, subset ($1 half): rc=$rc ($(grep -c ' ok$' "$OUT/sanitize-$tool-$1.log") cases ok, $(grep -c 'FAIL$' "$OUT/sanitize-$tool-$1.log") failed)"
    [ $rc -eq 0 ] || lane_bad=1
  done
  return $lane_bad
}
lanes=(sanitize-cases sanitize-subset-forward sanitize-subset-backward)
lane_pids=()
if has sanitize && [ "${GPU_SANITIZE_ALONGSIDE:-1}" != 0 ] && has tests; then
  step "sanitize lanes started in the background (output: OUTDIR/<lane>.out, printed after the tests)"
  sanitize_cases_lane > "$OUT/sanitize-cases.out" 2>&1 & lane_pids+=($!)
  sanitize_subset_lane forward > "$OUT/sanitize-subset-forward.out" 2>&1 & lane_pids+=($!)
  sanitize_subset_lane backward > "$OUT/sanitize-subset-backward.out" 2>&1 & lane_pids+=($!)
fi

if has tests; then
  step "GPU tests ($jobs_max processes at once)"
  # Default: every GPU test file, the longest first (2026-11-29, one process per file: flex 401 s,
  # Hopper 268 s, cutlass-fna backward 97 s, cutlass-fna 77 s, training curve 69 s) so that the
  # processes end together.
  G=packages/natten/tests/gpu
  default_tests="$G/test_hopper_fna_gpu.py $G/test_flex_gpu.py $G/test_cutlass_fna_backward_gpu.py"
  default_tests+=" $G/test_cutlass_fna_gpu.py $G/test_training_curve_gpu.py"
  for f in "$G"/test_*.py; do [[ " $default_tests " == *" $f "* ]] || default_tests+=" $f"; done
  # GPU_TESTS: a word naming a file, a directory (its test_*.py files) or a node id (file::test) is a
  # test target run as a process of its own; every other word is a pytest option given to every
  # process ("-k expr", "--durations=10"). No target at all: every default file.
  files=(); opts=()
  read -ra words <<< "${GPU_TESTS:-}"  # no glob expansion of [...] in node ids or * in -k
  for a in "${words[@]}"; do
    if [ -d "$a" ]; then for f in "$a"/test_*.py; do files+=("$f"); done
    elif [ -f "${a%%::*}" ]; then files+=("$a")
    else opts+=("$a"); fi
  done
  [ ${#files[@]} -gt 0 ] || read -ra files <<< "$default_tests"
  # One pytest process per test file, or per shard of a long file (GPU_TEST_SHARDS, "file.py:n ...":
  # NATTEN_TEST_SHARD=i/n, tests/conftest.py), at most GPU_TEST_JOBS at once; one log per process.
  shards_of() {
    local spec n=1
    for spec in $test_shards; do
      [[ $1 != *::* ]] && [ "${spec%%:*}" == "$(basename "$1")" ] && n=${spec##*:}
    done
    echo "$n"
  }
  logs=()
  rm -f "$OUT"/gpu-tests-*.log "$OUT/gpu-tests.log"  # an earlier run's logs in a reused OUTDIR
  # Args: target, shard i, shard count n, process name (the log's). n = 1: NATTEN_TEST_SHARD=0/1
  # keeps every test.
  run_file() {
    local log="$OUT/gpu-tests-$4.log" t0=$(date +%s)
    NATTEN_TEST_SHARD="$2/$3" python3 -m pytest "$1" "${opts[@]}" -m gpu -q -rA -p no:cacheprovider > "$log" 2>&1
    local rc=$?
    # pytest's 5 (no test selected: a shard of a short file, a -k that matches nothing here) is not
    # a failure of this process; the step fails below if no test ran at all
    [ $rc -eq 5 ] && rc=0
    echo "$4: rc=$rc in $(( $(date +%s) - t0 ))s ($(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected)' "$log" | tail -1))"
    return $rc
  }
  running() { local n=0 p; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo $n; }
  pids=(); rc=0
  for f in "${files[@]}"; do
    n=$(shards_of "$f")
    for ((i = 0; i < n; i++)); do
      name=$(basename "${f%%::*}"); name=${name%.py}
      [[ $f == *::* ]] && name+="-$(printf '%s' "${f#*::}" | tr -c 'A-Za-z0-9_.-' '_' | cut -c1-60)"
      [ "$n" -gt 1 ] && name+="-$((i + 1))of$n"
      while [[ " ${logs[*]} " == *" $OUT/gpu-tests-$name.log "* ]]; do name+="+"; done  # a name twice
      logs+=("$OUT/gpu-tests-$name.log")
      while [ "$(running)" -ge "$jobs_max" ]; do sleep 1; done
      run_file "$f" "$i" "$n" "$name" & pids+=($!)
    done
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  cat "${logs[@]}" > "$OUT/gpu-tests.log"
  grep -hE "^(FAILED|ERROR)" "${logs[@]}" | head -40
  npass=$(grep -hoE "[0-9]+ passed" "${logs[@]}" | awk '{s+=$1} END {print s+0}')
  nfail=$(grep -hoE "[0-9]+ (failed|errors?)" "${logs[@]}" | awk '{s+=$1} END {print s+0}')
  if [ $((npass + nfail)) -eq 0 ]; then echo "GPU tests: no test ran"; rc=1; fi
  summary+=("tests: rc=$rc ($npass passed, $nfail failed or errors, ${#files[@]} targets, ${#logs[@]} processes)")
  [ $rc -eq 0 ] || status=1
fi

if has sanitize; then
  if [ ${#lane_pids[@]} -gt 0 ]; then
    for n in "${!lanes[@]}"; do
      wait "${lane_pids[$n]}" || status=1
      step "${lanes[$n]} (ran alongside the tests)"
      cat "$OUT/${lanes[$n]}.out"
    done
  else
    sanitize_cases_lane || status=1
    sanitize_subset_lane forward || status=1
    sanitize_subset_lane backward || status=1
  fi
  for l in "${lanes[@]}"; do mapfile -t -O ${#summary[@]} summary < "$OUT/summary-$l.txt"; done
fi

if has bench; then
  step "benchmarks"
  python3 benchmarks/host_overhead.py 2>&1 | tee "$OUT/host-overhead.txt"
  python3 benchmarks/run.py --out "$OUT/bench" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | grep -v '^{' 
  summary+=("bench: rc=${PIPESTATUS[0]}")
fi

echo; echo "=== summary ==="; printf '%s\n' "${summary[@]}"
exit $status
