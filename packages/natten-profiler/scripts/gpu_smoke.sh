#!/usr/bin/env bash
# GPU smoke test of natten-profiler: a few profiler commands on CUDA, including the cuDNN baseline.
#
#   bash packages/natten-profiler/scripts/gpu_smoke.sh [OUT_DIR]
#
# Needs a CUDA torch; nothing is installed: natten and natten_profiler are taken from this
# monorepo through PYTHONPATH (set NATTEN_KERNELS_LIBRARY to use a natten-kernels library you
# built). Every command's stdout/stderr is kept in OUT_DIR (default: $OUT, else
# /tmp/natten-profiler-smoke); a summary table of the benchmark rows is printed last. Exit status:
# the number of failed commands (0 = all ran). Runs in a few minutes on an H100.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
OUT_DIR="${1:-${OUT:-/tmp/natten-profiler-smoke}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$ROOT/packages/natten/src:$ROOT/packages/natten-profiler/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

"$PY" - <<'EOF' || { echo "gpu_smoke: no CUDA device visible to torch" >&2; exit 100; }
import torch, natten
assert torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name()}, "
      f"natten {natten.__version__} from {natten.__file__}")
try:
    from natten import _libnatten
    print("natten-kernels:", _libnatten.unavailable_reason() or _libnatten.build_info())
except Exception as e:  # pragma: no cover
    print("natten-kernels: not importable:", e)
EOF

failed=0
run() {  # run NAME ARGS... : one profiler command, output kept in $OUT_DIR/NAME.{out,err}
  local name="$1"; shift
  echo
  echo "=== $name: natten-profiler $*"
  local t0=$SECONDS
  if "$PY" -m natten_profiler "$@" >"$OUT_DIR/$name.out" 2>"$OUT_DIR/$name.err"; then
    tail -n 30 "$OUT_DIR/$name.out"
    echo "--- ok ($((SECONDS - t0)) s)"
  else
    local rc=$?
    tail -n 30 "$OUT_DIR/$name.out"
    tail -n 30 "$OUT_DIR/$name.err"
    echo "--- FAILED (exit $rc, $((SECONDS - t0)) s)"
    failed=$((failed + 1))
  fi
}

FAST=(--warmup-steps 3 --reps 5)
SMALL=(-i 64 64 -w 13 13 -n 8 -d 64)

# The main job: the default use case on the GPU (fp16, cuDNN baseline by default).
run default
run default-json --json --output "$OUT_DIR/default.json"

# Benchmark problems (BENCHMARKS.md) against the cuDNN baseline, natten's backend choice.
for uc in 1d-32k 1d-32k-s256 flux-4k flux-4k-gna hunyuan hunyuan-gna; do
  run "bench-$uc" --use-case "$uc" --baseline cudnn "${FAST[@]}" --json --output "$OUT_DIR/bench-$uc.json"
done
# flex-fna with the tiles the simulator says are fully block-sparse (tile bound = FLOP bound).
run hunyuan-gna-flex-2x8x8 --use-case hunyuan-gna --backend flex-fna --q-tile 2 8 8 --kv-tile 2 8 8 \
  --baseline cudnn "${FAST[@]}"
# The dense baselines themselves, and plain-mask FlexAttention (compiled).
run flux-cudnn --use-case flux-4k --backend cudnn --baseline cudnn "${FAST[@]}"
run small-flash "${SMALL[@]}" --baseline flash "${FAST[@]}"
run small-mem-efficient "${SMALL[@]}" --baseline mem-efficient "${FAST[@]}"
run small-plain-flex "${SMALL[@]}" --backend plain-flex --compile --baseline cudnn "${FAST[@]}"
run small-math "${SMALL[@]}" --backend math --baseline cudnn "${FAST[@]}"
# Training, GQA, additional KV, bf16.
run small-backprop "${SMALL[@]}" --backprop --baseline cudnn "${FAST[@]}"
run gqa-addkv-bf16 -i 32 32 -w 9 -n 8 --heads-kv 2 -d 64 --add-kv 16 --dtype bf16 --baseline cudnn "${FAST[@]}"
# Configurations: the kernel library's tile lists, and timing them all.
run dry-run-hunyuan --use-case hunyuan --dry-run --max-configs 6
run dry-run-json --use-case hunyuan --dry-run --json --output "$OUT_DIR/dry-run-hunyuan.json"
run optimize-small "${SMALL[@]}" --optimize --max-configs 4 --save-best "$OUT_DIR/best-configs.json" "${FAST[@]}"
# The simulator (no GPU needed; matplotlib is there).
run sim-hunyuan sim --use-case hunyuan --sweep --top 5 --plot "$OUT_DIR/sim-hunyuan.png"

echo
echo "=== summary (speedup over cuDNN SDPA, same process; PERF-NOTES tile-visit bounds for reference)"
"$PY" - "$OUT_DIR" <<'EOF' || failed=$((failed + 1))
import json, os, sys
from natten_profiler import simulator
out = sys.argv[1]
print(f"{'use case':<14} {'backend':<12} {'ms':>10} {'eff TFLOP/s':>12} {'cuDNN ms':>10} {'speedup':>8} {'FLOP bound':>10}")
for uc in ["1d-32k", "1d-32k-s256", "flux-4k", "flux-4k-gna", "hunyuan", "hunyuan-gna"]:
    p = os.path.join(out, f"bench-{uc}.json")
    if not os.path.exists(p):
        print(f"{uc:<14} (no result)")
        continue
    r = json.load(open(p))
    u = r["use_case"]
    fb = simulator.flop_bound(u["input_size"], u["window_size"], u["stride"], u["dilation"], u["causal"])
    b = r.get("baseline") or {}
    sp = r.get("speedup")
    print(f"{uc:<14} {r['backend']:<12} {r['runtime_ms']:>10.3f} {r['tflops'] or 0:>12.1f} "
          f"{b.get('runtime_ms') or float('nan'):>10.3f} {sp if sp else float('nan'):>7.2f}x {fb:>9.1f}x")
EOF

echo
echo "gpu_smoke: $failed command(s) failed; outputs in $OUT_DIR"
exit "$failed"
