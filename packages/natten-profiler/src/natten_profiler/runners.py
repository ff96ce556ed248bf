"""What can be profiled: natten's backends and the dense / plain-mask baselines.

Each ``build_*`` function allocates the inputs once and returns a ``step()`` closure that runs one
forward (and backward with ``backprop``) pass; timing and profiling call it repeatedly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import natten
from natten.backends import fna_reasons
from natten.window import axis_window_bounds

from .problem import UseCase

Step = Callable[[], None]

# natten's neighborhood-attention backends (names as in natten.backends.FNA_BACKENDS).
NATTEN_BACKENDS: Tuple[str, ...] = (
    "reference", "cutlass-fna", "hopper-fna", "blackwell-fna", "flex-fna"
)
# Backends natten uses for the dense parts (additional keys/values, self-attention fast path).
FMHA_BACKENDS: Tuple[str, ...] = (
    "reference", "cutlass-fmha", "hopper-fmha", "blackwell-fmha", "flex-fmha"
)
# Dense SDPA baselines (torch.nn.attention.sdpa_kernel). They run full attention over all tokens
# (plus any additional keys) and ignore window, stride, dilation and causal masking.
SDPA_BASELINES: Tuple[str, ...] = ("cudnn", "flash", "mem-efficient", "math")
# Everything `--backend` accepts: natten backends, SDPA kernels and plain-mask FlexAttention.
ALL_BACKENDS: Tuple[str, ...] = NATTEN_BACKENDS + ("cudnn", "flash", "mem-efficient", "plain-flex", "math")
# Everything `--baseline` accepts ("reference" = natten's reference backend on the same problem).
BASELINES: Tuple[str, ...] = ("cudnn", "flash", "mem-efficient", "plain-flex", "reference", "math")

KERNEL_SCHEDULES = ("non", "coop", "pp")

BASELINE_DESCRIPTIONS: Dict[str, str] = {
    "cudnn": "dense SDPA, cuDNN kernel",
    "flash": "dense SDPA, FlashAttention kernel",
    "mem-efficient": "dense SDPA, memory-efficient kernel",
    "math": "dense SDPA, math (unfused) kernel",
    "plain-flex": "FlexAttention with a plain neighborhood mask (row-major blocks)",
    "reference": "natten reference backend (same neighborhood problem)",
}


@dataclass
class RunOptions:
    """Kernel options of one run (the profile command's options, or one optimizer trial)."""

    backprop: bool = False
    fmha_backend: Optional[str] = None
    q_tile: Optional[Tuple[int, ...]] = None
    kv_tile: Optional[Tuple[int, ...]] = None
    backward_q_tile: Optional[Tuple[int, ...]] = None
    backward_kv_tile: Optional[Tuple[int, ...]] = None
    backward_kv_splits: Optional[Tuple[int, ...]] = None
    schedule: Optional[str] = None
    persistent: bool = False
    compile: bool = False


def is_natten_backend(name: Optional[str]) -> bool:
    return name is None or name in NATTEN_BACKENDS


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "mem-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def _flex_import_error() -> Optional[str]:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except Exception as e:  # pragma: no cover - torch without FlexAttention
        return f"torch {torch.__version__} has no FlexAttention ({type(e).__name__}: {e})"
    return None


def natten_reasons(uc: UseCase, device: torch.device, torch_compile: bool = False) -> Dict[str, Optional[str]]:
    """natten backend -> None if it can run the use case here, else the reason why not."""
    q, k, v = uc.empty_tensors(device)
    return dict(fna_reasons(q, k, v, uc.spec(), torch_compile))


def natten_compatible(uc: UseCase, device: torch.device, torch_compile: bool = False) -> List[str]:
    """natten backends that can run this use case here, best first: natten's own list
    (``natten.get_compatible_backends``) narrowed by the use case's window parameters."""
    q, k, v = uc.empty_tensors(device)
    by_tensors = natten.get_compatible_backends(q, k, v, torch_compile=torch_compile)
    reasons = natten_reasons(uc, device, torch_compile)
    return [b for b in by_tensors if reasons.get(b) is None]


def baseline_reason(name: str, uc: UseCase, device: torch.device, backprop: bool = False) -> Optional[str]:
    """None if the baseline can run here, else why not."""
    if name in ("cudnn", "flash", "mem-efficient"):
        if device.type != "cuda":
            return f"the {name} SDPA kernel needs a CUDA device (running on {device.type})"
        return None
    if name == "plain-flex":
        if backprop and device.type != "cuda":
            return "FlexAttention has no backward on the CPU (use it without --backprop)"
        return _flex_import_error()
    if name in ("math", "reference"):
        return None
    return f"unknown baseline {name!r}"


def runnable_baselines(uc: UseCase, device: torch.device, backprop: bool = False) -> List[str]:
    return [b for b in BASELINES if baseline_reason(b, uc, device, backprop) is None]


def _grad_step(fn: Callable[[], torch.Tensor], inputs: Sequence[torch.Tensor],
               d_out: Optional[torch.Tensor], backprop: bool) -> Step:
    if not backprop:
        def step() -> None:
            with torch.no_grad():
                fn()
        return step

    def step_bwd() -> None:
        out = fn()
        torch.autograd.grad(out, list(inputs), d_out)

    return step_bwd


def build_natten_step(
    uc: UseCase, backend: Optional[str], device: torch.device, opts: RunOptions, seed: int = 0
) -> Step:
    """One natten call (``na1d/na2d/na3d``, or ``attention`` for the self-attention fast path
    when ``--fmha-backend`` is given), with the options of NATTEN's profiler."""
    t = uc.make_tensors(device, requires_grad=opts.backprop, seed=seed)
    q, k, v = t["q"], t["k"], t["v"]
    inputs = [q, k, v] + ([t["add_k"], t["add_v"]] if uc.add_kv else [])
    prod = lambda s: None if s is None else math.prod(s)  # noqa: E731
    fmha_kwargs = {
        "backend": opts.fmha_backend,
        "kernel_schedule": opts.schedule,
        "q_tile_size": prod(opts.q_tile),
        "kv_tile_size": prod(opts.kv_tile),
        "backward_q_tile_size": prod(opts.backward_q_tile),
        "backward_kv_tile_size": prod(opts.backward_kv_tile),
        "backward_kv_splits": prod(opts.backward_kv_splits),
        "torch_compile": opts.compile,
    }
    fmha_kwargs = {k_: v_ for k_, v_ in fmha_kwargs.items() if v_ is not None}

    if uc.is_self_attention() and opts.fmha_backend is not None and not uc.add_kv:
        B, H, Hkv = uc.batch, uc.heads, uc.heads_kv
        qf = q.detach().reshape(B, -1, H, uc.dim).requires_grad_(opts.backprop)
        kf = k.detach().reshape(B, -1, Hkv, uc.dim).requires_grad_(opts.backprop)
        vf = v.detach().reshape(B, -1, Hkv, uc.dim_value).requires_grad_(opts.backprop)
        do = None if t["d_out"] is None else t["d_out"].reshape(B, -1, H, uc.dim_value)
        return _grad_step(
            lambda: natten.attention(qf, kf, vf, **fmha_kwargs), [qf, kf, vf], do, opts.backprop
        )

    op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[uc.rank]
    kwargs = dict(
        kernel_size=uc.window_size,
        stride=uc.stride,
        dilation=uc.dilation,
        is_causal=uc.causal,
        additional_keys=t["add_k"],
        additional_values=t["add_v"],
        attention_kwargs=fmha_kwargs if uc.add_kv else None,
        backend=backend,
        q_tile_shape=opts.q_tile,
        kv_tile_shape=opts.kv_tile,
        backward_q_tile_shape=opts.backward_q_tile,
        backward_kv_tile_shape=opts.backward_kv_tile,
        backward_kv_splits=opts.backward_kv_splits,
        run_persistent_kernel=opts.persistent,
        kernel_schedule=opts.schedule,
        torch_compile=opts.compile,
    )
    return _grad_step(lambda: op(q, k, v, **kwargs), inputs, t["d_out"], opts.backprop)


def _heads_first(uc: UseCase, t: Dict[str, Optional[torch.Tensor]], expand_kv: bool):
    """[B, H, N, D] views for torch attention; additional keys appended after the grid."""
    B, H, Hkv, N = uc.batch, uc.heads, uc.heads_kv, uc.tokens
    q = t["q"].reshape(B, N, H, uc.dim).transpose(1, 2)
    k = t["k"].reshape(B, N, Hkv, uc.dim)
    v = t["v"].reshape(B, N, Hkv, uc.dim_value)
    if uc.add_kv:
        k = torch.cat([k, t["add_k"]], dim=1)
        v = torch.cat([v, t["add_v"]], dim=1)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    if expand_kv and Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    return q.contiguous(), k.contiguous(), v.contiguous()


def build_sdpa_step(uc: UseCase, name: str, device: torch.device, backprop: bool, seed: int = 0) -> Step:
    """Dense ``scaled_dot_product_attention`` restricted to one SDPA kernel (BENCHMARKS'
    baseline is the cuDNN one). GQA key/value heads are expanded once, outside the timing."""
    from torch.nn.attention import sdpa_kernel

    t = uc.make_tensors(device, requires_grad=False, seed=seed)
    q, k, v = (x.requires_grad_(backprop) for x in _heads_first(uc, t, expand_kv=True))
    do = None
    if backprop:
        do = torch.randn(q.shape[:-1] + (uc.dim_value,), device=device, dtype=q.dtype)
    backend = _sdpa_backend(name)

    def fn() -> torch.Tensor:
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)

    return _grad_step(fn, [q, k, v], do, backprop)


def plain_na_mask_mod(uc: UseCase, device: torch.device):
    """FlexAttention ``mask_mod`` of the neighborhood (SEMANTICS) on row-major flattened tokens;
    keys at index >= tokens are the additional keys, attended by every query."""
    N = uc.tokens
    shape = uc.input_size
    flat_stride = [1] * uc.rank
    for a in range(uc.rank - 2, -1, -1):
        flat_stride[a] = flat_stride[a + 1] * shape[a + 1]
    bounds = [
        tuple(x.to(device) for x in axis_window_bounds(
            shape[a], uc.window_size[a], uc.stride[a], uc.dilation[a], uc.causal[a]))
        for a in range(uc.rank)
    ]
    dil = list(uc.dilation)

    def mask_mod(b, h, q_idx, kv_idx):
        ok = kv_idx < N
        kv_in = torch.where(ok, kv_idx, 0)
        for a in range(len(shape)):
            qa = (q_idx // flat_stride[a]) % shape[a]
            ka = (kv_in // flat_stride[a]) % shape[a]
            start, last = bounds[a][0][qa], bounds[a][1][qa]
            ok = ok & (ka >= start) & (ka <= last) & ((ka - start) % dil[a] == 0)
        return ok | (kv_idx >= N)

    return mask_mod


def build_plain_flex_step(
    uc: UseCase, device: torch.device, backprop: bool, compile: bool = False, seed: int = 0
) -> Step:
    """FlexAttention with the plain neighborhood mask on row-major tokens (no token permutation):
    the baseline of PERF-NOTES ("row-major blocks of 128 tokens cut every window"). The block mask
    is built once, outside the timing. Without ``--compile`` FlexAttention runs eagerly (it then
    materialises the full score matrix: fine for small problems, slow for large ones)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    t = uc.make_tensors(device, requires_grad=False, seed=seed)
    q, k, v = (x.requires_grad_(backprop) for x in _heads_first(uc, t, expand_kv=False))
    do = None
    if backprop:
        do = torch.randn(q.shape[:-1] + (uc.dim_value,), device=device, dtype=q.dtype)
    mask_mod = plain_na_mask_mod(uc, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # On CUDA the mask is built compiled (block by block: never an N x N tensor, which would
        # not fit for the large use cases); on the CPU eagerly (no C++ compiler needed).
        kwargs = {"_compile": True} if device.type == "cuda" else {}
        try:
            block_mask = create_block_mask(
                mask_mod, None, None, uc.tokens, uc.tokens + uc.add_kv, device=device, **kwargs
            )
        except TypeError:  # a torch without the _compile switch
            block_mask = create_block_mask(
                mask_mod, None, None, uc.tokens, uc.tokens + uc.add_kv, device=device
            )
    attn = torch.compile(flex_attention, dynamic=False) if compile else flex_attention
    gqa = uc.heads != uc.heads_kv

    def fn() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return attn(q, k, v, block_mask=block_mask, enable_gqa=gqa)

    return _grad_step(fn, [q, k, v], do, backprop)


def build_step(
    uc: UseCase, backend: Optional[str], device: torch.device, opts: RunOptions, seed: int = 0
) -> Step:
    """Step closure for any name `--backend` / `--baseline` accepts (None: natten's choice)."""
    if is_natten_backend(backend):
        return build_natten_step(uc, backend, device, opts, seed)
    if backend in SDPA_BASELINES:
        return build_sdpa_step(uc, backend, device, opts.backprop, seed)
    if backend == "plain-flex":
        return build_plain_flex_step(uc, device, opts.backprop, opts.compile, seed)
    raise ValueError(f"unknown backend {backend!r}; choose one of {list(ALL_BACKENDS)}")


def build_baseline_step(uc: UseCase, name: str, device: torch.device, opts: RunOptions, seed: int = 0) -> Step:
    if name == "reference":
        return build_natten_step(uc, "reference", device, RunOptions(backprop=opts.backprop), seed)
    return build_step(uc, name, device, RunOptions(backprop=opts.backprop, compile=opts.compile), seed)


def resolve_natten_backend(uc: UseCase, backend: Optional[str], device: torch.device, torch_compile: bool) -> str:
    """The backend natten's dispatcher picks for ``backend=None`` (else ``backend`` itself)."""
    if backend is not None:
        return backend
    if uc.is_self_attention():
        return "natten attention (self-attention fast path)"
    from natten.backends import choose_fna_backend

    q, k, v = uc.empty_tensors(device)
    name, _ = choose_fna_backend(None, q, k, v, uc.spec(), torch_compile)
    return name
