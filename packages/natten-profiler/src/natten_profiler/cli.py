"""The command line: ``natten-profiler [options]`` profiles a use case (also ``--dry-run`` and
``--optimize``); ``natten-profiler sim [options]`` simulates tile-visit bounds."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .usecases import USE_CASES

PROG = "natten-profiler"
AXES = ("X", "Y", "Z")

_EPILOG_PROFILE = """\
examples:
  natten-profiler                                   # small default 2-D use case, any device
  natten-profiler -i 64 64 -w 13 13 -n 4 -d 64 --backprop
  natten-profiler --use-case hunyuan-gna --backend hopper-fna --q-tile 2 8 8 --kv-tile 2 8 8
  natten-profiler -i 32 32 -w 7 7 --dry-run
  natten-profiler -i 32 32 -w 7 7 --optimize --save-best best.json
  natten-profiler -i 128 -w 31 --json --output result.json
  natten-profiler sim --use-case hunyuan          # tile-visit bounds, no GPU needed

The dense baselines (cudnn, flash, mem-efficient, math) run full attention over every token and
ignore window, stride, dilation and causal masking; speedups are relative to them (BENCHMARKS.md).
"""

_EPILOG_SIM = """\
The tile-visit bound (PERF-NOTES.md): per axis and per query tile, count the key tiles that
intersect the box [earliest window start, latest window end] of the tile's queries; the visited
work is the product over axes of sum(Tq x keyTilesInBox x Tk). Tiles are counted whole (padding
included) and live in dilation-group coordinates. tile bound = dense pairs / visited pairs;
FLOP bound = dense pairs / attended pairs; block-sparse = every visited tile pair is fully inside
the windows of all its queries (then tile bound = FLOP bound).

examples:
  natten-profiler sim                                       # default 2-D use case, candidate tiles
  natten-profiler sim --use-case hunyuan --q-tile 2 8 8 --kv-tile 2 8 8
  natten-profiler sim -i 30 48 80 -w 18 24 24 -s 16 8 8 --q-tile 2 8 8
  natten-profiler sim --use-case flux-4k --sweep --strides 1x1 16x16 --top 5
  natten-profiler sim --use-case hunyuan --sweep --plot bounds.png
"""


# ---------------------------------------------------------------------------------------------
# Argument types and shared options
# ---------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _bool_arg(s: str) -> bool:
    v = s.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {s!r} (use 1/0 or true/false)")


def _shape_arg(s: str) -> Tuple[int, ...]:
    """'2x8x8' (or '2,8,8') -> (2, 8, 8)."""
    parts = s.replace(",", "x").split("x")
    try:
        vals = tuple(int(p) for p in parts if p != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid shape {s!r} (use e.g. 2x8x8)") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"invalid shape {s!r} (use e.g. 2x8x8)")
    return vals


def _v(values: Sequence[Any]) -> str:
    return " ".join(str(int(x)) if isinstance(x, bool) else str(x) for x in values)


def _axis(rank: int, a: int) -> str:
    return f"axis {a} ({AXES[a]})" if rank > 1 else "axis 0"


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("use case (NATTEN profiler options)")
    g.add_argument("--use-case", choices=sorted(USE_CASES), default=None,
                   help="start from a named use case (BENCHMARKS.md); options given override it. "
                        "Without --use-case and -i: the 'default' use case (56x56, window 7x7, "
                        "4 heads, head dim 32).")
    g.add_argument("-i", "--input-size", type=int, nargs="+", metavar="N", default=None,
                   help="token layout shape: 1-3 ints (sequence length; height width; depth "
                        "height width).")
    g.add_argument("-w", "--window-size", type=int, nargs="+", metavar="K", default=None,
                   help="neighborhood window (kernel) size per axis (one value: every axis). "
                        "Defaults to --input-size (self attention), as in NATTEN.")
    g.add_argument("-s", "--stride", type=int, nargs="+", metavar="S", default=None,
                   help="stride per axis, 1 <= stride <= window size. Default: 1.")
    g.add_argument("--dilation", type=int, nargs="+", metavar="D", default=None,
                   help="dilation per axis; window x dilation <= input size. Default: 1.")
    g.add_argument("-c", "--causal", type=_bool_arg, nargs="*", metavar="0|1", default=None,
                   help="causal masking per axis as 0/1 (or true/false), e.g. '-c 1 0'; one value "
                        "applies to every axis; '-c' alone: causal on every axis. Default: 0.")


def _resolve_window(p: argparse.ArgumentParser, a: argparse.Namespace) -> Dict[str, Any]:
    """input size, window, stride, dilation, causal from the options (+ use case), validated with
    errors that name the option, the axis and the values."""
    if a.use_case:
        base = dict(USE_CASES[a.use_case])
    elif a.input_size is None:
        base = dict(USE_CASES["default"])
    else:
        base = {}
    if a.input_size is not None:
        shape = tuple(a.input_size)
    else:
        shape = tuple(base["input_size"])
    rank = len(shape)
    if rank not in (1, 2, 3):
        p.error(f"argument -i/--input-size: expected 1, 2 or 3 values (one per axis), got "
                f"{rank}: {_v(shape)}")
    for ax, n in enumerate(shape):
        if n < 1:
            p.error(f"argument -i/--input-size: sizes must be positive, got {n} on "
                    f"{_axis(rank, ax)} (-i {_v(shape)})")

    def per_axis(opt: str, given: Optional[Sequence[Any]], default: Sequence[Any]) -> Tuple[Any, ...]:
        values = given if given is not None else default
        source = "" if given is not None else f" (from --use-case {a.use_case}; give {opt.split('/')[-1]})"
        if len(values) == 1 and rank > 1:
            return tuple(values) * rank
        if len(values) != rank:
            p.error(f"argument {opt}: expected {rank} value{'s' if rank > 1 else ''} (one per axis "
                    f"of -i/--input-size {_v(shape)}) or 1 for every axis, got {len(values)}: "
                    f"{_v(values)}{source}")
        return tuple(values)

    window = per_axis("-w/--window-size", a.window_size, base.get("window_size", shape))
    stride = per_axis("-s/--stride", a.stride, base.get("stride", (1,)))
    dilation = per_axis("--dilation", a.dilation, base.get("dilation", (1,)))
    if a.causal is not None and len(a.causal) == 0:
        causal = (True,) * rank
    else:
        causal = per_axis("-c/--causal", a.causal, base.get("causal", (False,)))
    causal = tuple(bool(c) for c in causal)

    for ax in range(rank):
        n, w, s, d = shape[ax], window[ax], stride[ax], dilation[ax]
        where = _axis(rank, ax)
        if w < 2:
            p.error(f"argument -w/--window-size: window size must be >= 2, got {w} on {where} "
                    f"(-w {_v(window)})")
        if w > n:
            p.error(f"argument -w/--window-size: window size {w} is larger than the input size "
                    f"{n} on {where} (-i {_v(shape)}, -w {_v(window)})")
        if s < 1 or s > w:
            p.error(f"argument -s/--stride: stride must satisfy 1 <= stride <= window size, got "
                    f"stride {s} with window size {w} on {where} (-s {_v(stride)}, -w {_v(window)})")
        if d < 1:
            p.error(f"argument --dilation: dilation must be >= 1, got {d} on {where} "
                    f"(--dilation {_v(dilation)})")
        if w * d > n:
            p.error(f"argument --dilation: window size x dilation ({w} x {d} = {w * d}) exceeds "
                    f"the input size ({n}) on {where} (-i {_v(shape)}, -w {_v(window)}, "
                    f"--dilation {_v(dilation)})")
    return dict(input_size=shape, window_size=window, stride=stride, dilation=dilation,
                causal=causal, base=base)


def _resolve_tile(p: argparse.ArgumentParser, opt: str, values: Optional[Sequence[int]],
                  rank: int) -> Optional[Tuple[int, ...]]:
    if values is None:
        return None
    if len(values) != rank:
        p.error(f"argument {opt}: expected {rank} value{'s' if rank > 1 else ''} (one per axis of "
                f"the {rank}-D input), got {len(values)}: {_v(values)}")
    for ax, t in enumerate(values):
        if t < 1:
            p.error(f"argument {opt}: values must be positive, got {t} on {_axis(rank, ax)}")
    return tuple(values)


# ---------------------------------------------------------------------------------------------
# Profile command
# ---------------------------------------------------------------------------------------------


def build_profile_parser() -> argparse.ArgumentParser:
    from .runners import ALL_BACKENDS, BASELINES, FMHA_BACKENDS, KERNEL_SCHEDULES

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Profile neighborhood attention (natten) on a use case: the kernels that ran, "
                    "effective TFLOP/s and the speedup over a dense baseline measured in the same "
                    "run; list (--dry-run) or time (--optimize) every backend and tile "
                    "configuration. Subcommand: 'natten-profiler sim --help' (tile-visit "
                    "simulator, no GPU needed).",
        epilog=_EPILOG_PROFILE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_problem_args(p)
    g = p.add_argument_group("tensors")
    g.add_argument("-b", "--batch-size", type=int, default=None, help="batch size. Default: 1.")
    g.add_argument("-n", "--heads", type=int, default=None, help="query heads. Default: 1.")
    g.add_argument("--heads-kv", type=int, default=None,
                   help="key/value heads (GQA/MQA; must divide --heads). Default: --heads.")
    g.add_argument("-d", "--dim", type=int, default=None, help="Q/K head dim. Default: 64.")
    g.add_argument("--dim-value", type=int, default=None, help="V head dim. Default: --dim.")
    g.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="element type. Default: fp16 on CUDA, fp32 on the CPU.")
    g.add_argument("--backprop", action="store_true", help="profile forward and backward.")
    g.add_argument("--add-kv", type=int, default=0, metavar="N",
                   help="number of additional key/value tokens every query attends. Default: 0.")

    g = p.add_argument_group("backend and kernel options")
    g.add_argument("--backend", choices=ALL_BACKENDS, default=None,
                   help="what to run: natten backends (reference, cutlass-fna, hopper-fna, "
                        "blackwell-fna, flex-fna; default: natten's choice), dense SDPA kernels "
                        "(cudnn, flash, mem-efficient, math) or plain-mask FlexAttention "
                        "(plain-flex).")
    g.add_argument("--fmha-backend", choices=FMHA_BACKENDS, default=None,
                   help="natten backend for the dense parts (additional KV, self attention).")
    g.add_argument("--q-tile", type=int, nargs="+", default=None, metavar="T",
                   help="forward query tile shape (one per axis); with --kv-tile.")
    g.add_argument("--kv-tile", type=int, nargs="+", default=None, metavar="T",
                   help="forward key/value tile shape (one per axis); with --q-tile.")
    g.add_argument("--backward-q-tile", type=int, nargs="+", default=None, metavar="T",
                   help="backward query tile shape; with --backward-kv-tile.")
    g.add_argument("--backward-kv-tile", type=int, nargs="+", default=None, metavar="T",
                   help="backward key/value tile shape; with --backward-q-tile.")
    g.add_argument("--backward-kv-splits", type=int, nargs="+", default=None, metavar="S",
                   help="KV parallelism of the cutlass-fna backward: CTAs per axis sharing the key "
                        "tiles of the dK/dV kernel (1 to the key tiles of that axis; default: one "
                        "CTA per key tile; natten-kernels >= 1.3).")
    g.add_argument("--schedule", choices=KERNEL_SCHEDULES, default=None,
                   help="kernel schedule (hopper): non(-persistent), coop(erative), pp (ping-pong).")
    g.add_argument("--persistent", action="store_true", help="persistent kernel (blackwell).")
    g.add_argument("--compile", action="store_true",
                   help="compile FlexAttention (flex-fna, plain-flex).")

    g = p.add_argument_group("measurement")
    g.add_argument("--warmup-steps", type=int, default=None,
                   help="warm-up steps. Default: 10 on CUDA (as NATTEN), 3 on the CPU.")
    g.add_argument("--reps", type=int, default=5,
                   help="timed steps; the median is reported (CUDA events on GPU, wall clock on "
                        "CPU). Default: 5.")
    g.add_argument("--profile-steps", type=int, default=1,
                   help="steps run under torch.profiler for the kernel table. Default: 1.")
    g.add_argument("--baseline", choices=BASELINES + ("none",), default=None,
                   help="measure this baseline in the same run and report the speedup over it. "
                        "Default: cudnn on CUDA, math (dense SDPA) on the CPU.")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="Default: cuda if available, else cpu.")
    g.add_argument("--seed", type=int, default=0, help="random seed of the inputs.")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (torch.set_num_threads). Default: torch's.")

    g = p.add_argument_group("configurations")
    g.add_argument("--dry-run", action="store_true",
                   help="list the backends that can run the use case and their tile "
                        "configurations, then exit.")
    g.add_argument("--max-configs", type=int, default=10,
                   help="configurations shown per backend by --dry-run and timed by --optimize "
                        "(0: all). Default: 10.")
    g.add_argument("--optimize", action="store_true",
                   help="time every compatible backend and configuration, report the best one and "
                        "profile it.")
    g.add_argument("--optimize-warmup-steps", type=int, default=5,
                   help="warm-up steps per configuration in --optimize. Default: 5.")
    g.add_argument("--save-best", metavar="FILE.json", default=None,
                   help="with --optimize: add the best configuration to this file (read by natten "
                        "through NATTEN_BEST_CONFIGS).")
    g.add_argument("--no-progress", action="store_true", help="no progress bar in --optimize.")

    g = p.add_argument_group("output")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of tables.")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of tables.")
    g.add_argument("--output", metavar="FILE", default=None, help="write the output to FILE.")
    return p


def _positive(p: argparse.ArgumentParser, opt: str, v: Optional[int], minimum: int = 1) -> None:
    if v is not None and v < minimum:
        p.error(f"argument {opt}: must be >= {minimum}, got {v}")


def _resolve_device(p: argparse.ArgumentParser, name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda requested but torch sees no CUDA device "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu")
    return torch.device(name)


def parse_profile_args(argv: Sequence[str]):
    """Parse and validate; returns (parser, namespace, use case, device, run options)."""
    from .problem import UseCase
    from .runners import RunOptions

    p = build_profile_parser()
    a = p.parse_args(list(argv))
    win = _resolve_window(p, a)
    base = win.pop("base")
    rank = len(win["input_size"])
    defaults = {} if (a.input_size is not None and not a.use_case) else base

    batch = a.batch_size if a.batch_size is not None else int(defaults.get("batch", 1))
    heads = a.heads if a.heads is not None else int(defaults.get("heads", 1))
    heads_kv = a.heads_kv if a.heads_kv is not None else int(defaults.get("heads_kv", heads))
    dim = a.dim if a.dim is not None else int(defaults.get("dim", 64))
    dim_value = a.dim_value if a.dim_value is not None else dim
    _positive(p, "-b/--batch-size", batch)
    _positive(p, "-n/--heads", heads)
    _positive(p, "--heads-kv", heads_kv)
    _positive(p, "-d/--dim", dim)
    _positive(p, "--dim-value", dim_value)
    _positive(p, "--add-kv", a.add_kv, 0)
    _positive(p, "--warmup-steps", a.warmup_steps, 0)
    _positive(p, "--optimize-warmup-steps", a.optimize_warmup_steps, 0)
    _positive(p, "--reps", a.reps)
    _positive(p, "--profile-steps", a.profile_steps)
    _positive(p, "--max-configs", a.max_configs, 0)
    if heads % heads_kv != 0:
        src = "" if a.heads_kv is not None else f", from --use-case {a.use_case}"
        p.error(f"argument --heads-kv: the number of heads (-n/--heads {heads}) must be divisible "
                f"by --heads-kv ({heads_kv}{src}) (GQA/MQA)")
    if a.dry_run and a.optimize:
        p.error("argument --dry-run: not allowed with --optimize (choose one)")
    if a.save_best and not a.optimize:
        p.error("argument --save-best: only meaningful with --optimize")
    if (a.q_tile is None) != (a.kv_tile is None):
        p.error(f"argument --q-tile/--kv-tile: give both or neither (got --q-tile "
                f"{_v(a.q_tile) if a.q_tile else '-'}, --kv-tile {_v(a.kv_tile) if a.kv_tile else '-'})")
    if (a.backward_q_tile is None) != (a.backward_kv_tile is None):
        p.error("argument --backward-q-tile/--backward-kv-tile: give both or neither")
    q_tile = _resolve_tile(p, "--q-tile", a.q_tile, rank)
    kv_tile = _resolve_tile(p, "--kv-tile", a.kv_tile, rank)
    bq_tile = _resolve_tile(p, "--backward-q-tile", a.backward_q_tile, rank)
    bkv_tile = _resolve_tile(p, "--backward-kv-tile", a.backward_kv_tile, rank)
    kv_splits = _resolve_tile(p, "--backward-kv-splits", a.backward_kv_splits, rank)
    if kv_splits is not None and not a.backprop:
        p.error("argument --backward-kv-splits: only meaningful with --backprop (it sets the backward kernel)")

    _positive(p, "--threads", a.threads)
    device = _resolve_device(p, a.device)
    if a.warmup_steps is None:
        a.warmup_steps = 10 if device.type == "cuda" else 3
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    dtype = a.dtype or ("fp16" if device.type == "cuda" else "fp32")
    uc = UseCase(batch=batch, heads=heads, heads_kv=heads_kv, dim=dim, dim_value=dim_value,
                 dtype=dtype, add_kv=a.add_kv, **win)
    opts = RunOptions(
        backprop=a.backprop, fmha_backend=a.fmha_backend, q_tile=q_tile, kv_tile=kv_tile,
        backward_q_tile=bq_tile, backward_kv_tile=bkv_tile, backward_kv_splits=kv_splits,
        schedule=a.schedule, persistent=a.persistent, compile=a.compile,
    )
    _check_backends(p, a, uc, device)
    return p, a, uc, device, opts


def _check_backends(p: argparse.ArgumentParser, a: argparse.Namespace, uc, device) -> None:
    from .runners import (
        baseline_reason, is_natten_backend, natten_compatible, natten_reasons, runnable_baselines,
    )

    able = natten_compatible(uc, device, a.compile)
    baselines_here = runnable_baselines(uc, device, a.backprop)
    if (a.dry_run or a.optimize) and not is_natten_backend(a.backend):
        p.error(f"argument --backend: --dry-run and --optimize work on natten backends "
                f"(reference, cutlass-fna, hopper-fna, blackwell-fna, flex-fna), got {a.backend!r}")
    if a.backend is not None and not a.dry_run:
        if is_natten_backend(a.backend):
            reason = natten_reasons(uc, device, a.compile).get(a.backend)
        else:
            reason = baseline_reason(a.backend, uc, device, a.backprop)
        if reason is not None:
            p.error(f"argument --backend: {a.backend!r} cannot run this use case on {device.type}: "
                    f"{reason}. natten backends that can (natten.get_compatible_backends): "
                    f"{', '.join(able) or 'none'}; baselines that can: {', '.join(baselines_here)}")
    if a.fmha_backend is not None and a.fmha_backend != "reference" and device.type != "cuda":
        from natten.backends import fmha_reasons

        q, k, v = uc.empty_tensors(device)
        flat = [t.reshape(t.shape[0], -1, *t.shape[-2:]) for t in (q, k, v)]
        reasons = dict(fmha_reasons(*flat))
        if reasons.get(a.fmha_backend) is not None:
            ok = [n for n, r in reasons.items() if r is None]
            p.error(f"argument --fmha-backend: {a.fmha_backend!r} cannot run here: "
                    f"{reasons[a.fmha_backend]}. FMHA backends that can: {', '.join(ok)}")
    if a.baseline not in (None, "none"):
        reason = baseline_reason(a.baseline, uc, device, a.backprop)
        if reason is not None:
            p.error(f"argument --baseline: {a.baseline!r} cannot run here: {reason}. Baselines "
                    f"that can: {', '.join(baselines_here)}")


def _default_baselines(uc, device) -> List[str]:
    """Baselines to try, in order, when --baseline is not given: the BENCHMARKS reference
    (cuDNN SDPA) first on CUDA, falling back to the other SDPA kernels when it cannot run the
    problem (e.g. fp32, an unsupported head dim); the math SDPA kernel on the CPU."""
    from .runners import baseline_reason

    order = ("cudnn", "flash", "mem-efficient", "math") if device.type == "cuda" else ("math",)
    return [n for n in order if baseline_reason(n, uc, device) is None]


def device_info(device) -> Dict[str, Any]:
    import torch

    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        cap = torch.cuda.get_device_capability(idx)
        return {"type": "cuda", "name": torch.cuda.get_device_name(idx),
                "capability": f"{cap[0]}.{cap[1]}", "cuda": torch.version.cuda}
    return {"type": "cpu", "name": platform.processor() or platform.machine() or "cpu",
            "threads": torch.get_num_threads()}


def _header(device) -> Dict[str, Any]:
    import torch
    import natten

    return {
        "tool": PROG,
        "version": __version__,
        "torch": torch.__version__,
        "natten": getattr(natten, "__version__", "?"),
        "device": device_info(device),
    }


def _device_line(h: Dict[str, Any]) -> str:
    d = h["device"]
    dev = (f"cuda ({d['name']}, sm {d['capability']})" if d["type"] == "cuda"
           else f"cpu ({d['name']}, {d['threads']} threads)")
    return f"{PROG} {h['version']} | torch {h['torch']} | natten {h['natten']} | device {dev}"


def measure(uc, backend: Optional[str], device, opts, a, with_table: bool = True) -> Dict[str, Any]:
    """Time (and profile) one backend on the use case."""
    from .profiling import median, profile_step, time_step
    from .runners import SDPA_BASELINES, build_step, resolve_natten_backend, is_natten_backend

    step = build_step(uc, backend, device, opts, a.seed)
    times = time_step(step, device, a.warmup_steps, a.reps)
    rows = profile_step(step, device, a.profile_steps) if with_table else []
    runtime = median(times)
    dense = backend in SDPA_BASELINES
    flops = uc.flops(opts.backprop, dense=dense)
    name = resolve_natten_backend(uc, backend, device, opts.compile) if is_natten_backend(backend) else backend
    return {
        "backend": name,
        "requested_backend": backend,
        "runtime_ms": runtime,
        "runtimes_ms": times,
        "flops": flops,
        "flops_kind": "dense" if dense else "useful",
        "tflops": flops / (runtime * 1e-3) / 1e12 if runtime > 0 else None,
        "kernels": [r.to_dict() for r in rows],
        "kernel_total_us": sum(r.time_us for r in rows),
    }


def run_profile(uc, device, backend: Optional[str], opts, a) -> Dict[str, Any]:
    from .output import warn
    from .runners import BASELINE_DESCRIPTIONS, build_baseline_step
    from .profiling import median, time_step

    res = dict(_header(device))
    res["use_case"] = uc.to_dict()
    res["backprop"] = opts.backprop
    res["options"] = {
        "q_tile": opts.q_tile, "kv_tile": opts.kv_tile, "backward_q_tile": opts.backward_q_tile,
        "backward_kv_tile": opts.backward_kv_tile, "backward_kv_splits": opts.backward_kv_splits,
        "schedule": opts.schedule,
        "persistent": opts.persistent, "compile": opts.compile, "fmha_backend": opts.fmha_backend,
        "warmup_steps": a.warmup_steps, "reps": a.reps, "profile_steps": a.profile_steps,
    }
    res.update(measure(uc, backend, device, opts, a))
    if a.baseline is None:
        candidates = _default_baselines(uc, device)
    else:
        candidates = [] if a.baseline == "none" else [a.baseline]
    res["baseline"] = None
    res["speedup"] = None
    tried = []
    for i, baseline in enumerate(candidates):
        b: Dict[str, Any] = {"name": baseline, "description": BASELINE_DESCRIPTIONS[baseline]}
        try:
            step = build_baseline_step(uc, baseline, device, opts, a.seed)
            t = median(time_step(step, device, a.warmup_steps, a.reps))
        except Exception as e:
            b.update(runtime_ms=None, error=f"{type(e).__name__}: {e}")
            tried.append(b)
            more = i + 1 < len(candidates)
            warn(f"baseline {baseline} failed: {b['error']}" + ("; trying the next one" if more else ""))
            res["baseline"] = b
            continue
        dense = baseline not in ("plain-flex", "reference")
        fl = uc.flops(opts.backprop, dense=dense)
        b.update(runtime_ms=t, flops=fl, flops_kind="dense" if dense else "useful",
                 tflops=fl / (t * 1e-3) / 1e12 if t > 0 else None, error=None)
        if tried:
            b["failed_before"] = tried
        res["baseline"] = b
        if res["runtime_ms"] > 0:
            res["speedup"] = t / res["runtime_ms"]
        break
    return res


def _fmt_tflops(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _fmt_rate(tflops: Optional[float], effective: bool) -> str:
    """'612.3 effective TFLOP/s', or GFLOP/s for the small numbers of a CPU."""
    eff = "effective " if effective else ""
    if tflops is None:
        return f"- {eff}TFLOP/s"
    if tflops < 0.1:
        return f"{tflops * 1e3:.3g} {eff}GFLOP/s"
    return f"{_fmt_tflops(tflops)} {eff}TFLOP/s"


MAX_TEXT_ROWS = 20


def format_profile_text(res: Dict[str, Any]) -> str:
    from .output import fmt_flops, render_table
    from .problem import UseCase
    from .profiling import format_time_us

    uc = UseCase(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in res["use_case"].items()})
    mode = "forward + backward" if res["backprop"] else "forward"
    out = [_device_line(res), f"Use case: {uc.describe()} | {mode}", f"Backend: {res['backend']}"]
    opts = res["options"]
    extra = []
    for k in ("q_tile", "kv_tile", "backward_q_tile", "backward_kv_tile", "backward_kv_splits"):
        if opts.get(k):
            extra.append(f"{k.replace('_', '-')} {'x'.join(map(str, opts[k]))}")
    for k in ("schedule", "fmha_backend"):
        if opts.get(k):
            extra.append(f"{k.replace('_', '-')} {opts[k]}")
    if opts.get("persistent"):
        extra.append("persistent")
    if opts.get("compile"):
        extra.append("compile")
    if extra:
        out.append("Options: " + ", ".join(extra))
    cpu = res["device"]["type"] == "cpu"
    what = ("ATen operators by self CPU time, plus host overhead" if cpu
            else "device kernels by GPU time")
    kernels = res["kernels"]
    rows = [[k["framework"], k["category"], k["operation"], k["calls"], format_time_us(k["time_us"])]
            for k in kernels[:MAX_TEXT_ROWS]]
    if len(kernels) > MAX_TEXT_ROWS:
        rest = kernels[MAX_TEXT_ROWS:]
        rows.append(["", "", f"({len(rest)} more; --json/--csv list all)",
                     sum(k["calls"] for k in rest), format_time_us(sum(k["time_us"] for k in rest))])
    out.append("")
    out.append(render_table(
        ["Framework", "Category", "Operation", "Calls", "Time"], rows,
        footer=["", "", "Total", sum(k["calls"] for k in res["kernels"]),
                format_time_us(res["kernel_total_us"])],
        title=f"Kernels (torch.profiler, per step; {what})",
        align="lllrr",
    ))
    out.append("")
    out.append(f"Runtime: {res['runtime_ms']:.4g} ms (median of {opts['reps']} timed steps after "
               f"{opts['warmup_steps']} warm-up; {'wall clock' if cpu else 'CUDA events'})")
    kind = "useful" if res["flops_kind"] == "useful" else "dense"
    out.append(f"FLOPs: {fmt_flops(res['flops'])} ({kind}) -> "
               f"{_fmt_rate(res['tflops'], kind == 'useful')}")
    b = res.get("baseline")
    if b:
        if b.get("runtime_ms") is not None:
            out.append(f"Baseline {b['name']} ({b['description']}): {b['runtime_ms']:.4g} ms, "
                       f"{_fmt_rate(b['tflops'], b['flops_kind'] == 'useful')} ({b['flops_kind']} "
                       f"FLOPs) -> speedup {res['speedup']:.2f}x")
        else:
            out.append(f"Baseline {b['name']}: failed ({b['error']})")
    return "\n".join(out)


CSV_HEADERS = ["kind", "framework", "category", "operation", "calls", "time_us", "value"]


def profile_csv_rows(res: Dict[str, Any]) -> List[List[Any]]:
    rows: List[List[Any]] = []
    for k in res["kernels"]:
        rows.append(["kernel", k["framework"], k["category"], k["operation"], k["calls"],
                     f"{k['time_us']:.3f}", ""])
    rows.append(["total", "", "", "Total", sum(k["calls"] for k in res["kernels"]),
                 f"{res['kernel_total_us']:.3f}", ""])
    rows.append(["metric", "", "", "backend", "", "", res["backend"]])
    rows.append(["metric", "", "", "runtime_ms", "", "", f"{res['runtime_ms']:.6g}"])
    rows.append(["metric", "", "", "flops", "", "", f"{res['flops']:.6g}"])
    rows.append(["metric", "", "", "tflops", "", "",
                 "" if res["tflops"] is None else f"{res['tflops']:.6g}"])
    b = res.get("baseline")
    if b and b.get("runtime_ms") is not None:
        rows.append(["metric", "", "", "baseline", "", "", b["name"]])
        rows.append(["metric", "", "", "baseline_runtime_ms", "", "", f"{b['runtime_ms']:.6g}"])
        rows.append(["metric", "", "", "speedup", "", "", f"{res['speedup']:.6g}"])
    return rows


def _emit_profile(res: Dict[str, Any], a: argparse.Namespace) -> None:
    from .output import emit, to_csv, to_json

    if a.json:
        emit(to_json(res), a.output)
    elif a.csv:
        emit(to_csv(CSV_HEADERS, profile_csv_rows(res)), a.output)
    else:
        emit(format_profile_text(res), a.output)


def _dry_run(a, uc, device) -> int:
    from .configs import list_backend_configs
    from .output import emit, fmt_shape, render_table, to_csv, to_json

    backends = [a.backend] if a.backend else None
    listing = list_backend_configs(uc, device, backends, a.compile)
    limit = a.max_configs
    if a.json:
        data = dict(_header(device), use_case=uc.to_dict(),
                    backends=[b.to_dict() for b in listing],
                    compatible=[b.backend for b in listing if b.available])
        if limit:
            for b in data["backends"]:
                b["configs"] = b["configs"][:limit]
        emit(to_json(data), a.output)
        return 0
    if a.csv:
        rows = []
        for b in listing:
            if not b.available:
                rows.append([b.backend, "no", b.reason, "", "", ""])
                continue
            for c in (b.configs[:limit] if limit else b.configs):
                rows.append([b.backend, "yes", "", fmt_shape(c.q_tile_shape),
                             fmt_shape(c.kv_tile_shape),
                             "" if c.tile_bound is None else f"{c.tile_bound:.4f}"])
        emit(to_csv(["backend", "available", "reason", "q_tile", "kv_tile", "tile_bound"], rows),
             a.output)
        return 0
    out = [_device_line(_header(device)), f"Use case: {uc.describe()}", ""]
    for b in listing:
        if not b.available:
            out.append(f"Backend {b.backend}: not available: {b.reason}")
            continue
        n = len(b.configs)
        shown = b.configs[:limit] if limit else b.configs
        out.append(f"Backend {b.backend}: compatible; {n} configuration{'s' if n != 1 else ''} "
                   f"({b.source})" + (f"; {b.note}" if b.note else ""))
        dflt = "-" if b.backend == "reference" else "default"
        rows = [[i + 1, fmt_shape(c.q_tile_shape) if c.q_tile_shape else dflt,
                 fmt_shape(c.kv_tile_shape) if c.kv_tile_shape else dflt,
                 "-" if c.tile_bound is None else f"{c.tile_bound:.2f}x"]
                for i, c in enumerate(shown)]
        table = render_table(["#", "q_tile_shape", "kv_tile_shape", "tile bound"], rows,
                             align="rllr")
        out.append("\n".join("  " + line for line in table.splitlines()))
        if len(shown) < n:
            out.append(f"  ... {n - len(shown)} more (--max-configs 0 shows all)")
    able = [b.backend for b in listing if b.available]
    out.append("")
    out.append(f"Compatible backends: {', '.join(able) if able else 'none'}")
    emit("\n".join(out), a.output)
    return 0


def _optimize(a, uc, device, opts) -> int:
    import dataclasses

    from .best_configs import save_entry
    from .configs import Config, list_backend_configs
    from .optimize import best_entry, optimize
    from .output import emit, fmt_shape, render_table, to_csv, to_json

    backends = [a.backend] if a.backend else None
    listing = list_backend_configs(uc, device, backends, a.compile)
    if a.q_tile is not None:  # user-given tiles override the listing (as in NATTEN)
        listing = [
            dataclasses.replace(b, configs=[Config(b.backend, opts.q_tile, opts.kv_tile)])
            if b.available and b.backend != "reference" else b
            for b in listing
        ]
    result = optimize(uc, device, listing, dataclasses.replace(opts, q_tile=None, kv_tile=None),
                      a.optimize_warmup_steps, a.reps, a.max_configs,
                      show_progress=not a.no_progress, seed=a.seed)
    best = result.best
    if best is None:
        why = "; ".join(f"{b.backend}: {b.reason}" for b in result.skipped if b.reason)
        errs = "; ".join(f"{t.config.label()}: {t.error}" for t in result.trials if t.error)
        sys.stderr.write(f"{PROG}: error: --optimize found no configuration that runs"
                         f"{' (' + why + ')' if why else ''}{' (' + errs + ')' if errs else ''}\n")
        return 1
    saved = None
    if a.save_best:
        entry = best_entry(uc, device, opts.backprop, best)
        save_entry(a.save_best, entry)
        saved = a.save_best
    best_opts = dataclasses.replace(
        opts, q_tile=best.config.q_tile_shape, kv_tile=best.config.kv_tile_shape,
        backward_q_tile=best.config.backward_q_tile_shape or opts.backward_q_tile,
        backward_kv_tile=best.config.backward_kv_tile_shape or opts.backward_kv_tile,
        schedule=best.config.kernel_schedule or opts.schedule,
    )
    prof = run_profile(uc, device, best.config.backend, best_opts, a)
    if a.json:
        emit(to_json({
            **_header(device), "use_case": uc.to_dict(), "backprop": opts.backprop,
            "trials": [t.to_dict() for t in result.ranked()],
            "skipped": [{"backend": b.backend, "reason": b.reason} for b in result.skipped],
            "best": best.to_dict(), "saved_to": saved, "profile": prof,
        }), a.output)
        return 0
    if a.csv:
        rows = [[i + 1, t.config.backend, fmt_shape(t.config.q_tile_shape),
                 fmt_shape(t.config.kv_tile_shape),
                 "" if t.runtime_ms is None else f"{t.runtime_ms:.6g}",
                 "" if t.tflops is None else f"{t.tflops:.6g}",
                 "" if t.config.tile_bound is None else f"{t.config.tile_bound:.4f}",
                 t.error or "ok"] for i, t in enumerate(result.ranked())]
        emit(to_csv(["rank", "backend", "q_tile", "kv_tile", "runtime_ms", "tflops",
                     "tile_bound", "status"], rows), a.output)
        return 0
    rows = []
    for i, t in enumerate(result.ranked()):
        dflt = "-" if t.config.backend == "reference" else "default"
        rows.append([i + 1, t.config.backend,
                     fmt_shape(t.config.q_tile_shape) if t.config.q_tile_shape else dflt,
                     fmt_shape(t.config.kv_tile_shape) if t.config.kv_tile_shape else dflt,
                     "-" if t.runtime_ms is None else f"{t.runtime_ms:.4g} ms",
                     _fmt_tflops(t.tflops),
                     "-" if t.config.tile_bound is None else f"{t.config.tile_bound:.2f}x",
                     "ok" if t.error is None else f"failed: {t.error}"])
    out = [_device_line(_header(device)), f"Use case: {uc.describe()}", "",
           render_table(["#", "Backend", "q_tile_shape", "kv_tile_shape", "Runtime",
                         "eff. TFLOP/s", "tile bound", "Status"], rows,
                        title=f"Optimize: {len(result.trials)} configuration(s) timed "
                              f"(median of {a.reps} after {a.optimize_warmup_steps} warm-up)",
                        align="rlllrrrl")]
    for b in result.skipped:
        out.append(f"Skipped {b.backend}: not available: {b.reason}")
    out.append("")
    out.append(f"Best: {best.config.label()}: {best.runtime_ms:.4g} ms")
    if saved:
        out.append(f"Saved the best configuration to {saved} (use it with "
                   f"NATTEN_BEST_CONFIGS={saved})")
    out.append("")
    out.append(format_profile_text(prof))
    emit("\n".join(out), a.output)
    return 0


def profile_main(argv: Sequence[str]) -> int:
    p, a, uc, device, opts = parse_profile_args(argv)
    if a.dry_run:
        return _dry_run(a, uc, device)
    if a.optimize:
        return _optimize(a, uc, device, opts)
    res = run_profile(uc, device, a.backend, opts, a)
    _emit_profile(res, a)
    return 0


# ---------------------------------------------------------------------------------------------
# sim
# ---------------------------------------------------------------------------------------------


def build_sim_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} sim",
        description="Simulate, without a GPU, how many (query tile, key tile) pairs a tiled kernel "
                    "visits for a use case: the upper bound on its speedup over dense attention "
                    "for each tile configuration, the FLOP bound, and which strides make the mask "
                    "fully block-sparse.",
        epilog=_EPILOG_SIM,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_problem_args(p)
    # Accepted (and ignored) so that a profile command line can be turned into a sim one.
    for flags, kw in ((("-b", "--batch-size"), {"type": int}), (("-n", "--heads"), {"type": int}),
                      (("--heads-kv",), {"type": int}), (("-d", "--dim"), {"type": int}),
                      (("--dim-value",), {"type": int}), (("--dtype",), {"type": str}),
                      (("--backend",), {"type": str})):
        p.add_argument(*flags, default=None, help=argparse.SUPPRESS, **kw)
    g = p.add_argument_group("tiles")
    g.add_argument("--q-tile", type=int, nargs="+", default=None, metavar="T",
                   help="query tile shape (one per axis). Without it: candidate shapes.")
    g.add_argument("--kv-tile", type=int, nargs="+", default=None, metavar="T",
                   help="key/value tile shape (one per axis). Default: the query tile shape.")
    g.add_argument("--tile-sizes", type=int, nargs="+", default=[64, 128], metavar="P",
                   help="tokens per candidate tile (power-of-two shapes of this volume that fit "
                        "the problem). Default: 64 128.")
    g.add_argument("--independent-kv", action="store_true",
                   help="pair every candidate query tile with every candidate key tile (default "
                        "with --sweep; otherwise key tile = query tile).")
    g = p.add_argument_group("sweep")
    g.add_argument("--sweep", action="store_true",
                   help="sweep windows (--windows), strides (--strides) and tile shapes.")
    g.add_argument("--windows", type=_shape_arg, nargs="+", default=None, metavar="AxB",
                   help="windows to sweep, e.g. 18x24x24 9x12x12. Default: -w.")
    g.add_argument("--strides", type=_shape_arg, nargs="+", default=None, metavar="AxB",
                   help="strides to sweep, e.g. 1x1x1 16x8x8. Default: -s.")
    g.add_argument("--top", type=int, default=15,
                   help="rows shown per (window, stride) (0: all). Default: 15.")
    g.add_argument("--stride-scan", choices=("auto", "on", "off"), default="auto",
                   help="list the strides that make each axis fully block-sparse (auto: when every "
                        "window is <= 512 tokens per axis, the scan costs one simulation per "
                        "stride). Default: auto.")
    g = p.add_argument_group("output")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON.")
    fmt.add_argument("--csv", action="store_true", help="print CSV.")
    g.add_argument("--output", metavar="FILE", default=None, help="write the output to FILE.")
    g.add_argument("--plot", metavar="OUT.png", default=None,
                   help="draw the tile bound of each configuration (needs matplotlib).")
    return p


def _matplotlib_missing() -> Optional[str]:
    try:
        import matplotlib  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def sim_main(argv: Sequence[str]) -> int:
    from . import simulator
    from .output import emit, fmt_count, render_table, to_csv, to_json

    p = build_sim_parser()
    a = p.parse_args(list(argv))
    win = _resolve_window(p, a)
    shape, rank = win["input_size"], len(win["input_size"])
    _positive(p, "--top", a.top, 0)
    for ts in a.tile_sizes:
        if ts < 1:
            p.error(f"argument --tile-sizes: must be positive, got {ts}")
    if a.kv_tile is not None and a.q_tile is None:
        p.error("argument --kv-tile: needs --q-tile")
    q_tile = _resolve_tile(p, "--q-tile", a.q_tile, rank)
    kv_tile = _resolve_tile(p, "--kv-tile", a.kv_tile, rank) or q_tile
    if a.plot and _matplotlib_missing():
        p.error(f"argument --plot: matplotlib is not installed ({_matplotlib_missing()}); "
                f"pip install matplotlib (or pip install 'natten-profiler[plot]')")
    if not a.sweep and (a.windows or a.strides):
        p.error("argument --windows/--strides: only with --sweep")

    windows = [win["window_size"]]
    strides = [win["stride"]]
    if a.sweep:
        if a.windows:
            windows = [tuple(w) * rank if len(w) == 1 else tuple(w) for w in a.windows]
        if a.strides:
            strides = [tuple(s) * rank if len(s) == 1 else tuple(s) for s in a.strides]
        for opt, lst in (("--windows", windows), ("--strides", strides)):
            for t in lst:
                if len(t) != rank:
                    p.error(f"argument {opt}: {'x'.join(map(str, t))} has {len(t)} values, the "
                            f"input has {rank} axes (-i {_v(shape)})")
    cases = []
    for w in windows:
        for s in strides:
            for ax in range(rank):
                n, d = shape[ax], win["dilation"][ax]
                if w[ax] < 2 or w[ax] * d > n:
                    p.error(f"argument --windows: window {'x'.join(map(str, w))} does not fit "
                            f"the input {'x'.join(map(str, shape))} on {_axis(rank, ax)} "
                            f"(needs 2 <= window and window x dilation <= input size)")
                if s[ax] < 1 or s[ax] > w[ax]:
                    p.error(f"argument --strides: stride {'x'.join(map(str, s))} is not within "
                            f"1..window ({'x'.join(map(str, w))}) on {_axis(rank, ax)}")
            cases.append((w, s))

    independent = a.independent_kv or a.sweep
    groups = []
    for w, s in cases:
        if q_tile is not None:
            results = [simulator.simulate(shape, w, s, win["dilation"], win["causal"], q_tile, kv_tile)]
        else:
            results = simulator.rank_tilings(
                shape, w, s, win["dilation"], win["causal"], same_shape=not independent,
                products=tuple(a.tile_sizes),
            )
        if not results:
            p.error(f"argument --tile-sizes: no power-of-two tile of {_v(a.tile_sizes)} tokens fits "
                    f"the input {'x'.join(map(str, shape))}; give --q-tile/--kv-tile or other "
                    "--tile-sizes")
        shown = results if a.top == 0 else results[: a.top]
        fb = simulator.flop_bound(shape, w, s, win["dilation"], win["causal"])
        groups.append((w, s, fb, shown, len(results)))

    scan = a.stride_scan == "on" or (
        a.stride_scan == "auto" and all(max(w) <= 512 for w, _ in cases))

    def strides_of(r) -> Optional[List[List[int]]]:
        if not scan:
            return None
        return [simulator.block_sparse_strides(r.shape[ax], r.kernel_size[ax], r.dilation[ax],
                                               r.is_causal[ax], r.q_tile[ax], r.kv_tile[ax])
                for ax in range(rank)]

    x = lambda t: "x".join(str(int(v)) for v in t)  # noqa: E731
    problem = {"input_size": list(shape), "dilation": list(win["dilation"]),
               "causal": list(win["causal"])}

    if a.plot:
        from .plot import plot_bounds

        plot_bounds(a.plot, groups, shape)

    if a.json:
        data = {"tool": f"{PROG} sim", "version": __version__, "problem": problem,
                "convention": "whole tiles (padding counted), dense = unpadded N^2, tiles in "
                              "dilation-group coordinates",
                "cases": []}
        for w, s, fb, shown, total in groups:
            rows = []
            for r in shown:
                d = r.to_dict()
                d["block_sparse_strides"] = strides_of(r)
                rows.append(d)
            data["cases"].append({"window_size": list(w), "stride": list(s), "flop_bound": fb,
                                  "num_configs": total, "configs": rows})
        emit(to_json(data), a.output)
        return 0
    if a.csv:
        rows = []
        for w, s, fb, shown, total in groups:
            for r in shown:
                bs = strides_of(r)
                rows.append([x(w), x(s), x(win["dilation"]), x(win["causal"]), x(r.q_tile),
                             x(r.kv_tile), r.visited_tiles, r.full_tiles, r.masked_tiles,
                             r.visited_pairs, r.attended_pairs, r.dense_pairs,
                             f"{r.tile_bound:.6g}", f"{r.tile_bound_real:.6g}", f"{fb:.6g}",
                             int(r.block_sparse),
                             "" if bs is None else "|".join(",".join(map(str, b)) for b in bs)])
        emit(to_csv(["window", "stride", "dilation", "causal", "q_tile", "kv_tile",
                     "visited_tiles", "full_tiles", "masked_tiles", "visited_pairs",
                     "attended_pairs", "dense_pairs", "tile_bound", "tile_bound_real",
                     "flop_bound", "block_sparse", "block_sparse_strides"], rows), a.output)
        return 0

    out = []
    for w, s, fb, shown, total in groups:
        r0 = shown[0]
        out.append(f"Use case: {rank}-D {x(shape)}, window {x(w)}, stride {x(s)}, dilation "
                   f"{x(win['dilation'])}, causal {x(win['causal'])}")
        out.append(f"dense pairs {fmt_count(r0.dense_pairs)} | attended pairs "
                   f"{fmt_count(r0.attended_pairs)} | FLOP bound {fb:.2f}x")
        rows = []
        for r in shown:
            bs = strides_of(r)
            rows.append([x(r.q_tile), x(r.kv_tile), fmt_count(r.visited_tiles),
                         fmt_count(r.masked_tiles), f"{r.tile_bound:.2f}x",
                         f"{100 * r.efficiency:.1f}%", "yes" if r.block_sparse else "no",
                         "skipped (--stride-scan on)" if bs is None else
                         " | ".join(",".join(map(str, b)) if b else "none" for b in bs)])
        more = f" (best {len(shown)} of {total}; --top 0 shows all)" if len(shown) < total else ""
        out.append(render_table(
            ["Q tile", "KV tile", "visited tiles", "masked tiles", "tile bound", "of FLOP bound",
             "block-sparse", "block-sparse strides per axis"], rows,
            title=f"Tile-visit bound (box rule, whole tiles){more}", align="llrrrrll"))
        out.append("")
    out.append("tile bound = dense pairs / visited pairs (upper bound on the speedup over dense "
               "attention); masked tiles = visited tile pairs that cut a window border.")
    if a.plot:
        out.append(f"Plot written to {a.plot}")
    emit("\n".join(out), a.output)
    return 0


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "sim":
        return sim_main(args[1:])
    if args and args[0] == "profile":
        args = args[1:]
    return profile_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
