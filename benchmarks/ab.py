"""Same-process A/B of natten settings read per call (environment switches such as
NATTEN_HOPPER_KV64 or NATTEN_SM80_Q128, tile shapes, schedules) on the rows of benchmarks/run.py.

    python benchmarks/ab.py --variant kv128 NATTEN_HOPPER_KV64=0 --variant kv64 NATTEN_HOPPER_KV64=1 \
        [--rows hunyuan flux-4k] [--dtypes fp16] [--backend hopper-fna] [--backward] [--rounds 3] \
        [--cudnn] [--json out.json]

Each row's tensors are made once; then, for --rounds rounds, every variant is timed in turn
(CUDA-event medians, triton.testing.do_bench, at least --min-reps calls each), the order of the
variants rotating from round to round so that none always runs right after cuDNN or a warm-up.
With --cudnn, cuDNN SDPA on the same tensors joins the rotation and speedups are reported against
its median. Printed per row: the median over rounds of each variant, its spread (max/min - 1), and
its ratio to the first variant. Environment switches must be ones natten or natten-kernels read per
call; a variant's KEY=VALUE pairs are set before its timing and restored after it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as suite  # noqa: E402  (benchmarks/run.py: the rows, their problems and cuDNN timing)


def parse_variant(items: List[str]) -> Tuple[str, Dict[str, str]]:
    name, pairs = items[0], {}
    for it in items[1:]:
        if "=" not in it:
            raise SystemExit(f"--variant {name}: expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        pairs[k] = v
    return name, pairs


def timed(fn: Callable[[], object], rep_ms: int, min_reps: int) -> float:
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    rep = max(rep_ms, int(one * min_reps) + 1)
    return float(do_bench(fn, warmup=max(1, rep // 4), rep=rep, return_mode="median"))


def with_env(pairs: Dict[str, str], fn: Callable[[], float]) -> float:
    old = {k: os.environ.get(k) for k in pairs}
    os.environ.update(pairs)
    try:
        return fn()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    p.add_argument("--rows", nargs="+", default=[r.id for r in suite.ROWS if r.primary])
    p.add_argument("--dtypes", nargs="+", default=["fp16"], choices=sorted(suite.DTYPES))
    p.add_argument("--backend", default="hopper-fna")
    p.add_argument("--backward", action="store_true", help="time forward+backward instead of forward")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument("--min-reps", type=int, default=5, help="calls per timing at least (long rows)")
    p.add_argument("--cudnn", action="store_true", help="time cuDNN SDPA in the rotation too")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/ab.py needs a CUDA device")
    variants = [parse_variant(v) for v in a.variant]
    rows = {r.id: r for r in suite.ROWS}
    unknown = set(a.rows) - set(rows)
    if unknown:
        p.error(f"unknown --rows {sorted(unknown)}; known: {sorted(rows)}")
    results = []
    for rid in a.rows:
        row = rows[rid]
        for dt in a.dtypes:
            q, k, v, op, kw = suite.row_problem(row, a.backend, suite.DTYPES[dt])
            if a.backward:
                for t in (q, k, v):
                    t.requires_grad_(True)

                def call(op=op, kw=kw, q=q, k=k, v=v):
                    op(q, k, v, **kw).sum().backward()
            else:
                def call(op=op, kw=kw, q=q, k=k, v=v):
                    with torch.no_grad():
                        op(q, k, v, **kw)

            entries: List[Tuple[str, Callable[[], float]]] = [
                (name, (lambda pairs=pairs, call=call: with_env(pairs, lambda: timed(call, a.rep_ms, a.min_reps))))
                for name, pairs in variants]
            if a.cudnn:
                qd, kd, vd = q.detach(), k.detach(), v.detach()

                def cud(qd=qd, kd=kd, vd=vd, causal=row.dense and row.causal[0]):
                    return suite.cudnn_time(qd, kd, vd, a.backward, max(a.rep_ms, 1), causal=causal)
                entries.append(("cudnn", cud))
            times: Dict[str, List[float]] = {n: [] for n, _ in entries}
            for rnd in range(a.rounds):
                order = entries[rnd % len(entries):] + entries[:rnd % len(entries)]
                for name, fn in order:
                    times[name].append(fn())
            med = {n: statistics.median(ts) for n, ts in times.items()}
            base = variants[0][0]
            res = {"id": rid, "dtype": dt, "pass": "fwd+bwd" if a.backward else "fwd", "backend": a.backend,
                   "times_ms": times, "median_ms": med}
            line = [f"{rid:18s} {dt:5s} {res['pass']:7s}"]
            for n, _ in entries:
                spread = max(times[n]) / min(times[n]) - 1.0
                extra = f" x{med[base] / med[n]:.3f}" if n != base and n != "cudnn" else ""
                if a.cudnn and n != "cudnn":
                    extra += f" ({med['cudnn'] / med[n]:.2f}x cuDNN)"
                line.append(f"{n} {med[n]:.4f} ms ±{100 * spread:.1f}%{extra}")
            print(" | ".join(line), flush=True)
            results.append(res)
            del q, k, v
            torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "variants": variants, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
