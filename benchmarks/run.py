"""The benchmark suite of BENCHMARKS.md: natten backends against cuDNN SDPA in the same process.

    python benchmarks/run.py --out DIR [--backends cutlass-fna hopper-fna] [--dtypes fp16 bf16]
                             [--rows 1d-32k flux-4k ...] [--backward [--bwd-mode grad sum]]

Times are CUDA-event medians (triton.testing.do_bench) after warm-up and include every cost the
user pays (the natten call does its own layout work); natten and cuDNN are each timed --rounds times
(default 3), alternating which goes first, and the medians are compared. Speedup = cuDNN time / natten time on the
same tensors. Effective TFLOP/s counts useful FLOPs only (SEMANTICS.md "Counting work").
Writes DIR/results.json and DIR/results.md, and prints the markdown table last.

Forward+backward (--backward) is timed as a training step sees the attention op: the forward and
``torch.autograd.grad(out, (q, k, v), d_out)`` with a fixed random d_out of the output's shape
(mode "grad", the default; FlashAttention's benchmarks time the backward the same way). Mode "sum"
times ``op(q, k, v).sum().backward()`` instead, which adds the harness's own work to both sides:
the reduction, its expanded all-ones gradient (which natten copies to a contiguous tensor) and
three full-size accumulations into the leaf tensors' ``.grad``; it is what the suites up to
2026-11-28 measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

import natten
from natten.window import WindowSpec


@dataclass
class Row:
    id: str
    batch: int
    shape: Tuple[int, ...]
    heads: int
    dim: int
    window: Tuple[int, ...]
    stride: Tuple[int, ...] = ()
    dilation: Tuple[int, ...] = ()
    causal: Tuple[bool, ...] = ()
    heads_kv: int = 0
    primary: bool = True
    dense: bool = False  # natten.attention (dense / causal) on the *-fmha backend; window = shape

    def __post_init__(self) -> None:
        r = len(self.shape)
        self.stride = self.stride or (1,) * r
        self.dilation = self.dilation or (1,) * r
        self.causal = self.causal or (False,) * r
        self.heads_kv = self.heads_kv or self.heads

    def spec(self) -> WindowSpec:
        return WindowSpec(self.shape, self.window, self.stride, self.dilation, self.causal)


ROWS = [
    Row("1d-32k", 1, (32768,), 1, 128, (2048,)),
    Row("1d-32k-s256", 1, (32768,), 1, 128, (2048,), (256,)),
    Row("flux-4k", 1, (256, 256), 24, 128, (80, 80)),
    Row("flux-4k-gna", 1, (256, 256), 24, 128, (80, 80), (16, 16)),
    Row("hunyuan", 1, (30, 48, 80), 24, 128, (18, 24, 24)),
    Row("hunyuan-gna", 1, (30, 48, 80), 24, 128, (18, 24, 24), (16, 8, 8)),
    Row("nat-small", 64, (56, 56), 4, 32, (7, 7), primary=False),
    Row("dilated", 16, (64, 64), 8, 64, (13, 13), (1, 1), (2, 2), primary=False),
    Row("causal-video", 1, (16, 44, 80), 32, 128, (8, 16, 16), causal=(True, False, False),
        primary=False),
    Row("gqa", 1, (256, 256), 24, 128, (80, 80), heads_kv=4, primary=False),
    Row("dense-fmha", 4, (8192,), 16, 128, (8192,), primary=False, dense=True),
    Row("dense-fmha-causal", 4, (8192,), 16, 128, (8192,), causal=(True,), primary=False, dense=True),
]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OPS = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}


def bench(fn, reps: int) -> float:
    """Median milliseconds of ``fn`` with CUDA events."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=max(1, reps // 4), rep=reps, return_mode="median"))


BWD_MODES = ("grad", "sum")
BWD_TIMING = {  # the results' description of each mode
    "grad": "forward + torch.autograd.grad(out, (q, k, v), d_out), fixed random d_out",
    "sum": "'(sum)': forward + .sum().backward() (adds the reduction, a copy of its expanded gradient and "
           "accumulation into leaf .grad, both sides)",
}


def backward_step(fwd, inputs, mode: str):
    """The forward+backward callable timed for ``mode`` (module docstring): ``fwd()`` returns the
    attention output computed from ``inputs`` (which require grad)."""
    if mode == "sum":
        return lambda: fwd().sum().backward()
    if mode != "grad":
        raise ValueError(f"bwd mode must be one of {BWD_MODES}, got {mode!r}")
    d_out = torch.randn_like(fwd().detach())
    return lambda: torch.autograd.grad(fwd(), inputs, d_out)


def cudnn_time(q, k, v, backward: bool, reps_ms: int, causal: bool = False, mode: str = "grad") -> float:
    from torch.nn.attention import sdpa_kernel, SDPBackend
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
    # cuDNN wants [B, H, N, D]; the transposed views are what a user would pass.
    qt = q.reshape(B, -1, H, D).transpose(1, 2)
    kt = k.reshape(B, -1, k.shape[-2], D).transpose(1, 2)
    vt = v.reshape(B, -1, v.shape[-2], v.shape[-1]).transpose(1, 2)
    gqa = kt.shape[1] != H

    def fwd():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return sdpa(qt, kt, vt, enable_gqa=gqa, is_causal=causal)

    if not backward:
        return bench(fwd, reps_ms)
    for t in (qt, kt, vt):
        t.requires_grad_(True)

    return bench(backward_step(fwd, (qt, kt, vt), mode), reps_ms)


def row_problem(row: Row, backend: str, dtype: torch.dtype, kernel_schedule: Optional[str] = None,
                device: str = "cuda"):
    """The row's q, k, v (seed 0) and the natten call that runs it: (q, k, v, op, kwargs)."""
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(row.batch, *row.shape, row.heads, row.dim, device=device, dtype=dtype, generator=g)
    k = torch.randn(row.batch, *row.shape, row.heads_kv, row.dim, device=device, dtype=dtype, generator=g)
    v = torch.randn_like(k)
    op = OPS[len(row.shape)]
    kw = dict(kernel_size=row.window, stride=row.stride, dilation=row.dilation,
              is_causal=row.causal, backend=backend)
    if kernel_schedule is not None:
        kw["kernel_schedule"] = kernel_schedule
    if row.dense:  # natten.attention on the matching *-fmha backend
        op = natten.attention
        kw = dict(is_causal=row.causal[0], backend=backend.replace("-fna", "-fmha"))
    return q, k, v, op, kw


def run_row(row: Row, backend: str, dtype: torch.dtype, backward: bool, reps_ms: int,
            kernel_schedule: Optional[str] = None, rounds: int = 1, caller_thread: bool = False,
            bwd_mode: str = "grad") -> Dict:
    """Times one row. ``bwd_mode``: how forward+backward is timed (module docstring).
    ``caller_thread``: run both sides' backward with autograd's multithreading
    off (``torch.autograd.set_multithreading_enabled(False)``: the engine runs CUDA nodes on the
    calling thread instead of handing each ``.backward()`` to its device thread); a supplementary
    measurement, labelled in the results, never the headline one."""
    q, k, v, op, kw = row_problem(row, backend, dtype, kernel_schedule)
    result: Dict = {"id": row.id, "backend": backend + (f" ({kernel_schedule})" if kernel_schedule else ""),
                    "dtype": str(dtype).split(".")[-1],
                    "pass": ("fwd+bwd" + (" (sum)" if bwd_mode == "sum" else "") +
                             (" (caller thread)" if caller_thread else "")) if backward else "fwd"}
    if backward:
        for t in (q, k, v):
            t.requires_grad_(True)

    def ours() -> float:
        if backward:
            return bench(backward_step(lambda: op(q, k, v, **kw), (q, k, v), bwd_mode), reps_ms)
        with torch.no_grad():
            return bench(lambda: op(q, k, v, **kw), reps_ms)

    def dense() -> float:
        # Dense rows compare with cuDNN on the same (causal) problem; NA rows with dense cuDNN.
        return cudnn_time(q.detach(), k.detach(), v.detach(), backward, reps_ms, causal=row.dense and row.causal[0],
                          mode=bwd_mode)

    # Rounds alternate the order (natten, cuDNN, then cuDNN, natten, ...) so neither side is always
    # timed right after the other's heavy run (the card's clocks follow its power draw); each side's
    # time is the median over rounds.
    times: Dict[str, List[float]] = {"ours": [], "dense": []}
    engine = torch.autograd.set_multithreading_enabled(not (backward and caller_thread))
    try:
        with engine:
            for r in range(max(1, rounds)):
                for side in (("ours", "dense") if r % 2 == 0 else ("dense", "ours")):
                    times[side].append(ours() if side == "ours" else dense())
    except (NotImplementedError, ValueError, RuntimeError) as e:
        result["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        return result
    t_ours, t_dense = statistics.median(times["ours"]), statistics.median(times["dense"])
    if rounds > 1:
        result["rounds_ms"] = times
    pairs = row.spec().num_pairs()
    flops = 2.0 * pairs * (row.dim + row.dim) * row.batch * row.heads
    if backward:
        flops *= 3.5  # forward + backward (~2.5x forward)
    result.update(ms=t_ours, cudnn_ms=t_dense, speedup=t_dense / t_ours,
                  tflops=flops / t_ours / 1e9,
                  flop_bound=1.0 if row.dense else math.prod(n * n for n in row.shape) / pairs)
    return result


def markdown(results: List[Dict], meta: Dict) -> str:
    lines = [f"Measured {meta['date']} on {meta['device']} (torch {meta['torch']}, CUDA "
             f"{meta['cuda']}, natten-kernels {meta['kernels']}).", "",
             *([f"fwd+bwd: {meta['bwd_timing']}", ""] if meta.get("bwd_timing") else []),
             "| id | backend | dtype | pass | natten ms | cuDNN ms | speedup | eff. TFLOP/s | FLOP bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['id']} | {r['backend']} | {r['dtype']} | {r['pass']} | — | — | — | — | "
                         f"{r['error'][:80]} |")
        else:
            lines.append(f"| {r['id']} | {r['backend']} | {r['dtype']} | {r['pass']} | {r['ms']:.3f} | "
                         f"{r['cudnn_ms']:.3f} | {r['speedup']:.2f}x | {r['tflops']:.0f} | "
                         f"{r['flop_bound']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    # hopper-fna: SM 9.0 (elsewhere its rows report the reason).
    p.add_argument("--backends", nargs="+", default=["cutlass-fna", "hopper-fna"])
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--rows", nargs="+", default=[r.id for r in ROWS])
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--bwd-mode", nargs="+", default=["grad"], choices=BWD_MODES,
                   help="how forward+backward is timed (see above); several modes are timed one after the other")
    p.add_argument("--caller-thread", action="store_true",
                   help="with --backward, also time forward+backward with autograd's multithreading off (the "
                        "backward on the calling thread, no hand-off to the engine's device thread; both sides)")
    p.add_argument("--kernel-schedules", nargs="+", default=[None],
                   help="kernel_schedule values to time (hopper-fna: cooperative, pingpong)")
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3,
                   help="time natten and cuDNN this many times each, alternating their order; report medians")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/run.py needs a CUDA device")
    unknown = set(a.rows) - {r.id for r in ROWS}
    if unknown:
        p.error(f"unknown --rows {sorted(unknown)}; known: {[r.id for r in ROWS]}")
    os.makedirs(a.out, exist_ok=True)
    try:
        from natten import _libnatten
        kernels = _libnatten.build_info() if _libnatten.is_available() else "not loaded"
    except Exception as e:  # noqa: BLE001
        kernels = f"not loaded ({e})"
    meta = {"date": datetime.date.today().isoformat(),
            "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M"),  # orders same-day runs
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "kernels": kernels}
    if a.backward:
        meta["bwd_timing"] = "; ".join(BWD_TIMING[m] for m in BWD_MODES if m in a.bwd_mode)
    results = []
    for row in [r for r in ROWS if r.id in a.rows]:
        for dt in a.dtypes:
            for backend, sched in [(b, s) for b in a.backends
                                   for s in (a.kernel_schedules if b == "hopper-fna" else [None])]:
                # hopper-fna (and hopper-fmha, the dense rows) train with the Hopper forward and the
                # backward natten-kernels chooses (the SM90 dQ and dK / dV kernels where they run).
                passes = [(False, False, "grad")] + \
                    ([(True, False, m) for m in a.bwd_mode] if a.backward else []) + \
                    ([(True, True, m) for m in a.bwd_mode] if a.backward and a.caller_thread else [])
                for backward, caller, mode in passes:
                    t0 = time.time()
                    r = run_row(row, backend, DTYPES[dt], backward, a.rep_ms, sched, a.rounds, caller, mode)
                    print(json.dumps(r), f"({time.time() - t0:.1f}s)", flush=True)
                    results.append(r)
                    torch.cuda.empty_cache()
                    # after every measurement, so a run cut short keeps what it measured
                    with open(os.path.join(a.out, "results.json"), "w") as f:
                        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    md = markdown(results, meta)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
