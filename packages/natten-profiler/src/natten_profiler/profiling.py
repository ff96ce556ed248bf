"""Timing (CUDA events / wall clock) and kernel tables from ``torch.profiler``.

On CUDA the table lists the device kernels that ran (time on the GPU). On the CPU there are no
kernels: the table groups the ATen operators by name, with their *self* CPU time (so nested
operators are not counted twice) and the host overhead of the Python code around them.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Tuple

import torch

STEP_LABEL = "natten_profiler::step"


@dataclass
class KernelRow:
    framework: str
    category: str
    operation: str
    calls: int
    time_us: float

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Callable[[], None], device: torch.device, warmup: int, reps: int) -> List[float]:
    """Run ``warmup`` untimed steps, then ``reps`` timed ones; milliseconds per step."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times: List[float] = []
    if device.type == "cuda":
        for _ in range(reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            synchronize(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def median(xs: List[float]) -> float:
    return float(statistics.median(xs))


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------

_GEMM = {"bmm", "mm", "matmul", "addmm", "baddbmm", "addbmm", "einsum", "linear", "dot", "mv",
         "addmv", "tensordot"}
_REDUCTION = {"sum", "amax", "amin", "max", "min", "mean", "norm", "prod", "any", "all",
              "argmax", "argmin", "var", "std", "cumsum", "logsumexp"}
_ELEMENTWISE = {"add", "sub", "mul", "div", "exp", "log", "where", "masked_fill", "clamp",
                "clamp_min", "clamp_max", "neg", "rsub", "sqrt", "rsqrt", "pow", "maximum",
                "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
                "logical_not", "bitwise_and", "bitwise_or", "bitwise_not", "remainder",
                "floor_divide", "floor", "abs", "sigmoid", "tanh", "reciprocal", "exp2", "log2",
                "isfinite", "isinf", "isnan", "fmod", "sign", "lerp", "addcmul", "addcdiv"}
_MEMORY_PREFIXES = ("copy", "to", "clone", "contiguous", "cat", "stack", "index", "gather",
                    "scatter", "select", "slice", "narrow", "expand", "repeat", "permute",
                    "transpose", "reshape", "view", "flatten", "unflatten", "unsqueeze",
                    "squeeze", "as_strided", "empty", "zeros", "ones", "full", "fill", "zero",
                    "new_", "arange", "detach", "alias", "split", "unbind", "chunk", "resolve",
                    "t", "movedim", "lift", "set_", "resize", "masked_select", "take")
_ATTENTION_KEYS = ("scaled_dot_product", "flash_attention", "efficient_attention",
                   "cudnn_attention", "flex_attention", "fused_sdp", "sdpa", "attention")


def cpu_category(name: str) -> str:
    base = name.split("::", 1)[-1].strip().lower()
    b = base.strip("_")
    if any(k in b for k in _ATTENTION_KEYS):
        return "attention"
    if b in _GEMM:
        return "gemm"
    if "softmax" in b:
        return "softmax"
    if b in _REDUCTION:
        return "reduction"
    if b in _ELEMENTWISE:
        return "elementwise"
    if b == "t" or any(b.startswith(p) for p in _MEMORY_PREFIXES if p != "t"):
        return "memory"
    return "other"


def cpu_framework(name: str) -> Tuple[str, str]:
    """(framework, category) of a CPU profiler event."""
    if name == STEP_LABEL:
        return "Python", "host overhead"
    if name.startswith("aten::"):
        return "ATen", cpu_category(name)
    if name.startswith("autograd::") or name.endswith("Backward") or "Backward" in name:
        return "autograd", "autograd"
    if name.startswith("natten"):
        return "natten", "other"
    if name.startswith("_") or name[:1].isupper():
        return "autograd", "custom function"
    return "Python", "other"


_CUDA_FRAMEWORKS = (
    ("natten-kernels", ("natten",)),
    ("CUTLASS", ("cutlass", "cute::")),
    ("cuDNN", ("cudnn",)),
    ("FlashAttention", ("flash_fwd", "flash_bwd", "pytorch_flash")),
    ("Triton", ("triton",)),
    ("cuBLAS", ("cublas", "xmma", "gemm", "gemv", "sm90_", "sm80_", "ampere_", "hopper_")),
    ("CUDA", ("memcpy", "memset")),
    ("PyTorch", ("at::", "c10::", "aten", "pytorch")),
)
_CUDA_CATEGORIES = (
    ("attention", ("fmha", "flash", "attention", "fna", "sdpa", "attn", "tem_fused")),
    ("token permute", ("tokperm", "permute_tokens", "token_permute")),
    ("gemm", ("gemm", "xmma", "gemv", "wgmma", "tensorop")),
    ("softmax", ("softmax",)),
    ("reduction", ("reduce", "reduction")),
    ("memory", ("memcpy", "memset", "copy", "cat", "index", "gather", "scatter", "fill")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise", "poi_fused")),
)


def cuda_classify(name: str) -> Tuple[str, str]:
    low = name.lower()
    framework = next((fw for fw, keys in _CUDA_FRAMEWORKS if any(k in low for k in keys)), "-")
    category = next((c for c, keys in _CUDA_CATEGORIES if any(k in low for k in keys)), "other")
    return framework, category


def short_kernel_name(name: str, width: int = 70) -> str:
    """A kernel symbol without return type, template arguments or parameters."""
    s = name.strip()
    for prefix in ("void ", "(anonymous namespace)::"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    out, depth = [], 0
    for ch in s:  # drop <...> and (...) groups
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    s = re.sub(r"\s+", " ", "".join(out)).strip() or name
    s = s.replace("(anonymous namespace)::", "").replace("at::native::", "")
    return s if len(s) <= width else s[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Profiling
# ---------------------------------------------------------------------------------------------


_KINETO_NOISE = re.compile(r"^(USDT|INFO|WARNING):\S+ \S+ \d+:\d+ \S+\.(cpp|h):\d+\]")


@contextlib.contextmanager
def quiet_profiler_logs():
    """torch.profiler (kineto) prints "USDT: ... profiler_start" lines straight to file
    descriptor 2; catch what is written there meanwhile and pass on everything else."""
    fd = 2
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except Exception:
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines(True):
                if not _KINETO_NOISE.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def profile_step(step: Callable[[], None], device: torch.device, steps: int = 1) -> List[KernelRow]:
    """Run ``steps`` steps under torch.profiler; kernels (CUDA) or ATen operators (CPU) per step,
    slowest first."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    with quiet_profiler_logs():
        with profile(activities=activities) as prof:
            for _ in range(steps):
                with record_function(STEP_LABEL):
                    step()
            synchronize(device)

    agg: Dict[Tuple[str, str, str], List[float]] = {}
    if device.type == "cuda":
        for evt in prof.events():
            if getattr(evt, "device_type", None) != DeviceType.CUDA:
                continue
            if evt.name == STEP_LABEL:  # our own step annotation, mirrored on the GPU timeline
                continue
            t = float(getattr(evt, "device_time_total", 0.0) or getattr(evt, "cuda_time_total", 0.0))
            if t <= 0:
                continue
            fw, cat = cuda_classify(evt.name)
            key = (fw, cat, short_kernel_name(evt.name))
            acc = agg.setdefault(key, [0, 0.0])
            acc[0] += 1
            acc[1] += t
    else:
        for evt in prof.key_averages():
            t = float(evt.self_cpu_time_total)
            if t <= 0:
                continue
            fw, cat = cpu_framework(evt.key)
            key = (fw, cat, evt.key)
            acc = agg.setdefault(key, [0, 0.0])
            acc[0] += int(evt.count)
            acc[1] += t
    rows = [
        KernelRow(fw, cat, op, int(round(n / steps)), t / steps)
        for (fw, cat, op), (n, t) in agg.items()
    ]
    rows.sort(key=lambda r: -r.time_us)
    return rows


def format_time_us(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.3f} s"
    if us >= 1e3:
        return f"{us / 1e3:.3f} ms"
    return f"{us:.1f} us"
