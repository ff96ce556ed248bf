"""``hopper-fna``: the sm_90a fused neighborhood-attention forward of natten-kernels (TMA + wgmma,
warp-specialized, 128-token query tiles; 128-token key tiles, 64 at head dim 256), trained through
the SM90 backward kernels (below). ``hopper-fmha``: dense attention on the same forward kernel, as a
1-D window that covers every key (training as ``hopper-fna``).

Training: the forward runs on the sm_90a kernel, through ``cutlass-fna``'s autograd function; the
backward asks natten-kernels to choose (``NATTEN_BACKEND_AUTO``): with natten-kernels >= 1.3.1 on
SM 9.0, dQ and dK/dV run on the sm_90a backward kernels (TMA + wgmma; head dims up to 128; a
``backward_kv_splits`` keeps dK/dV on SM80); older libraries run it all on SM80 (deterministic either way; the backward takes any forward's output and
logsumexp). ``backward_q_tile_shape`` / ``backward_kv_tile_shape`` / ``backward_kv_splits`` are
the SM80 backward's (default: the library's choice; the forward's 128-token tiles are not SM80
tiles). Needs a natten-kernels that trains (ABI >= 1.1; slabs >= 1.2). Supported: H100 / H200 (compute capability 9.0) with a
natten-kernels build that contains sm_90a; float16 / bfloat16; head_dim and head_dim_v any multiples
of 8 up to 256, equal or not (the kernels exist for 32, 64, 128 and 256; smaller head dims run on
the next one up, zero-filled inside the kernel by TMA: no copy, exact results; natten-kernels >= 1.3.1,
older builds take 32, 64 and 128 with head_dim == head_dim_v only);
rank 1-3; any kernel size, stride, per-axis causal, GQA/MQA; dilation where every dilated axis
is a multiple of its dilation (the dilation groups are folded into the batch: one permutation copy
each way, one launch); query/key slabs of a larger grid (``global_shape``, ``q_origin``,
``kv_origin``: context parallelism, tiled inference) without dilation. It shares the
``natten::fna_forward`` operator with ``cutlass-fna`` (``backend=2``).

``kernel_schedule``: the consumer schedule, ``"pingpong"`` (the default: the two consumer
warpgroups take turns issuing their GEMMs so one's softmax overlaps the other's tensor-core work,
FA3-style) or ``"cooperative"`` (both run independently); None = the library's default. NATTEN's
names work too: ``"pp"``, ``"coop"``, and ``"non"`` (NATTEN's non-persistent kernel: here the
default schedule runs; persistence is not a schedule: the kernel runs one CTA per SM unless the
environment variable ``NATTEN_HOPPER_PERSISTENT=0`` asks for one CTA per work tile). Any other name
raises ``ValueError``. Needs natten-kernels ABI >= 1.2.

Automatic selection passes over ``hopper-fna`` where it measured slower than ``cutlass-fna``
(:func:`auto_reason`: head dims up to 32, dilation).
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _libnatten
from ..window import WindowSpec
from .cutlass import (  # shared with the SM80 backend
    _DTYPES, _deterministic, _fmha_on_fna, _fmha_parts_reason, _FnaFunction, _kv_splits, _library_reason,
    _needs_grad, _prepare_training, _prepared_runner, _region_args, _training_reason,
)
from .flex import _TileLayout  # the wide-element permutation copies (dilation groups)

SUPPORTS_VARLEN = False

_HEAD_DIMS = (32, 64, 128, 256)  # the kernels; other multiples of 8 run on the next one up
_NAME = "hopper-fna"
_KERNEL_REASONS: Dict[tuple, Optional[str]] = {}


@torch.compiler.assume_constant_result
def _kernel_reason(dtype: torch.dtype, rank: int, head_dim: int, head_dim_v: int, device: int) -> Optional[str]:
    key = (dtype, rank, head_dim, head_dim_v, device)
    if key not in _KERNEL_REASONS:
        _KERNEL_REASONS[key] = _libnatten.fna_supports(
            dtype, rank, head_dim, head_dim_v, device=device, backend=_NAME
        )
    return _KERNEL_REASONS[key]


def can_run_fna(
    query: Tensor, key: Tensor, value: Tensor, spec: object, torch_compile: bool = False
) -> Optional[str]:
    """None if ``hopper-fna`` can run this problem here, else the reason."""
    if query.device.type != "cuda":
        return f"it needs CUDA tensors, got tensors on {query.device}"
    reason = _library_reason()
    if reason is not None:
        return reason
    if _needs_grad(query, key, value):
        reason = _training_reason(spec)
        if reason is not None:
            return f"it trains through cutlass-fna's backward kernels, which cannot run here: {reason}"
    if query.dtype not in _DTYPES:
        return f"it supports float16 and bfloat16, got {query.dtype}"
    d, dv = int(query.shape[-1]), int(value.shape[-1])
    if any(x < 8 or x > 256 or x % 8 for x in (d, dv)):
        return (f"it supports head_dim and head_dim_v that are multiples of 8 up to 256, got head_dim {d}, "
                f"head_dim_v {dv}")
    reason = _dilation_reason(spec)
    if reason is not None:
        return reason
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    return _kernel_reason(query.dtype, query.dim() - 3, d, dv, index)


def auto_reason(query: Tensor, key: Tensor, value: Tensor, spec: object) -> Optional[str]:
    """Why automatic selection passes over ``hopper-fna`` for a problem it can run (None: it
    does not). Head dim 32: measured slower than ``cutlass-fna`` on nat-small (H100, 2026-11-26:
    0.59 vs 0.39 ms; 128-token tiles visit far more pairs than 64-token ones on small windows), and
    not measured elsewhere yet. Dilation > 1: measured slower on the suite's dilated row (B 16,
    64 x 64, 8 heads, D 64, 13 x 13, dilation 2; H100, 2026-11-26: 0.62 vs 0.50 ms forward, the
    folding copies and 32 x 32 group grids); ``backend="hopper-fna"`` still runs both."""
    if kernel_head_dim(int(query.shape[-1]), int(value.shape[-1])) == 32:
        return "head dim <= 32: cutlass-fna measured faster (nat-small, H100)"
    if any(int(d) > 1 for d in getattr(spec, "dilation", ()) or ()):
        return "dilation: cutlass-fna measured faster (the dilated benchmark row, H100)"
    return None


def kernel_head_dim(head_dim: int, head_dim_v: int) -> int:
    """The head dim of the kernel that runs ``(head_dim, head_dim_v)``: the smallest of 32, 64,
    128, 256 that holds both (the columns past each tensor's own head dim are zero-filled by TMA
    inside the kernel)."""
    d = max(int(head_dim), int(head_dim_v))
    return next(k for k in _HEAD_DIMS if d <= k) if d <= _HEAD_DIMS[-1] else 0


def can_run_fmha(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool = False,
    is_varlen: bool = False,
    torch_compile: bool = False,
) -> Optional[str]:
    """None if ``hopper-fmha`` can run this dense-attention problem here, else the reason.

    Dense attention runs on the ``hopper-fna`` kernel as 1-D windows covering every key (see
    :func:`fmha`); it has the kernel's limits (fp16/bf16, head dims multiples of 8 up to 256) and
    trains as ``hopper-fna`` does (the backward natten-kernels chooses; query slabs, i.e. a number
    of queries that is not a multiple of the keys, need a backward that takes slabs)."""
    if query.device.type != "cuda":
        return f"it needs CUDA tensors, got tensors on {query.device}"
    if query.dim() != 4:
        return f"it takes [batch, seqlen, heads, head_dim] tensors, got {query.dim()} dims"
    # Variable-length packs: natten.attention calls fmha once per run of consecutive sequences with
    # equal (query, key) lengths, each run a batch viewed in place (SUPPORTS_VARLEN is False).
    # Inputs that require grad train as hopper-fna does (can_run_fna checks its backward per part).
    return _fmha_parts_reason(can_run_fna, query, key, value, is_causal, torch_compile)


def _dilation_reason(spec: object) -> Optional[str]:
    """Dilation runs as dilation-1 problems on the dilation groups folded into the batch (one
    launch), which needs every dilated axis to split into groups of equal length, and the whole
    grid (no slabs)."""
    dilation = tuple(int(x) for x in getattr(spec, "dilation", ()) or ())
    if getattr(spec, "is_partial", False) and any(d > 1 for d in dilation):
        return "it does not take slabs of a larger grid together with dilation; cutlass-fna does"
    for a, d in enumerate(dilation):
        n = int(spec.shape[a])  # type: ignore[attr-defined]
        if d > 1 and n % d:
            return (f"with dilation it needs each dilated axis to be a multiple of its dilation "
                    f"(axis {a}: {n} tokens, dilation {d}); cutlass-fna runs it")
    return None


@functools.lru_cache(maxsize=64)  # per problem: the layout's views and permutations, built once
def _dilation_groups(spec) -> Optional[Tuple[object, object]]:
    """``(layout, group_spec)`` for a dilated problem (None without dilation): ``layout`` moves
    ``[B, *grid, ...]`` to ``[B * prod(d), *grid / d, ...]`` (group ``g`` holds the tokens
    ``x = x' * d + g``, SEMANTICS.md's dilation groups) and back; ``group_spec`` is the same
    window on one group's grid with dilation 1. Every group of a dilated problem is exactly that
    problem (windows, strides and causality live in group-local coordinates)."""
    dilation = tuple(int(x) for x in spec.dilation)
    if all(d == 1 for d in dilation):
        return None
    shape = tuple(int(n) for n in spec.shape)
    ext = tuple(n // d for n, d in zip(shape, dilation))
    layout = _TileLayout(shape, (1,) * len(shape), ext, dilation)
    group_spec = WindowSpec(ext, tuple(spec.kernel_size), tuple(spec.stride), (1,) * len(shape),
                            tuple(spec.is_causal))
    return layout, group_spec


def _foldable(t: Tensor) -> Tensor:
    """Rank 3: the kernel folds batch into X in its TMA descriptors, which needs
    batch stride == X * x stride; other layouts are copied (a contiguous tensor qualifies)."""
    if t.dim() == 6 and t.shape[0] > 1 and t.stride(0) != t.shape[1] * t.stride(1):
        return t.contiguous()
    return t


def fna(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    spec,
    scale: float,
    q_tile_shape: Optional[Tuple[int, ...]] = None,
    kv_tile_shape: Optional[Tuple[int, ...]] = None,
    **options,
) -> Tuple[Tensor, Tensor]:
    """Fused forward; returns ``(out, lse)``. Differentiable when the inputs require grad: the
    backward is natten-kernels' choice (the SM90 dQ and dK/dV kernels where they run; see the
    module docstring)."""
    if _needs_grad(query, key, value):
        reason = _training_reason(spec)
        if reason is not None:
            raise NotImplementedError(f"hopper-fna cannot train here (its backward is natten-kernels' fused one): {reason}")
        bq, bkv = options.get("backward_q_tile_shape"), options.get("backward_kv_tile_shape")
        if (bq is None) != (bkv is None):
            raise ValueError(
                "`backward_q_tile_shape` and `backward_kv_tile_shape` must be given together (got "
                f"{bq} and {bkv}); hopper-fna's backward runs on cutlass-fna: see "
                "natten.get_bwd_configs_for_cutlass_fna."
            )
    if (q_tile_shape is None) != (kv_tile_shape is None):
        raise ValueError(
            "`q_tile_shape` and `kv_tile_shape` must be given together for hopper-fna "
            f"(got {q_tile_shape} and {kv_tile_shape}); see natten.get_configs_for_cutlass_hopper_fna."
        )
    groups = _dilation_groups(spec)
    if groups is not None:
        reason = _dilation_reason(spec)
        if reason is not None:
            raise NotImplementedError(f"hopper-fna cannot run this problem: {reason}")
        layout, group_spec = groups
        B = int(query.shape[0])
        ext = group_spec.shape

        def fold(t: Tensor) -> Tensor:
            t = layout.to_tiles(t)  # [B * G, N, *tail]
            return t.reshape(t.shape[0], *ext, *t.shape[2:])

        out, lse = _fna_kernel(fold(query), fold(key), fold(value), group_spec, scale,
                               q_tile_shape, kv_tile_shape, options)
        out = layout.from_tiles(out.reshape(out.shape[0], -1, *out.shape[-2:]), B)
        if lse is not None:
            lse = layout.from_tiles(lse.reshape(lse.shape[0], -1, lse.shape[-1]), B)
        return out, lse
    return _fna_kernel(query, key, value, spec, scale, q_tile_shape, kv_tile_shape, options)


def _fna_kernel(query: Tensor, key: Tensor, value: Tensor, spec, scale: float,
                q_tile_shape: Optional[Tuple[int, ...]], kv_tile_shape: Optional[Tuple[int, ...]],
                options: Dict) -> Tuple[Tensor, Tensor]:
    """One launch of the kernel (dilation 1: the caller folds dilation groups into the batch)."""
    from .. import ops

    schedule = _libnatten.schedule_id(options.get("kernel_schedule"))
    query, key, value = _foldable(query), _foldable(key), _foldable(value)
    if _needs_grad(query, key, value):
        bq, bkv = options.get("backward_q_tile_shape"), options.get("backward_kv_tile_shape")
        kv_splits = _kv_splits(options.get("backward_kv_splits"), query.dim() - 3)
        return _FnaFunction.apply(
            query, key, value, list(spec.kernel_size), list(spec.stride), list(spec.dilation),
            list(spec.is_causal), float(scale), list(q_tile_shape or ()), list(kv_tile_shape or ()),
            list(bq or ()), list(bkv or ()), _deterministic(), *_region_args(spec), kv_splits,
            _libnatten.BACKEND_HOPPER_FNA, schedule,
        )
    args = (
        list(spec.kernel_size), list(spec.stride), list(spec.dilation), list(spec.is_causal),
        float(scale), list(q_tile_shape or ()), list(kv_tile_shape or ()), *_region_args(spec),
        _libnatten.BACKEND_HOPPER_FNA, schedule,
    )
    if torch.compiler.is_compiling():
        return ops.fna_forward(query, key, value, *args)
    return ops.fna_forward_eager(query, key, value, *args)


def prepare_fna(query: Tensor, key: Tensor, value: Tensor, spec, scale: float,
                q_tile_shape: Optional[Tuple[int, ...]] = None,
                kv_tile_shape: Optional[Tuple[int, ...]] = None, **options) -> Callable:
    """A fast launcher for repeated calls with tensors of these shapes, strides, dtypes and
    device (natten's call-plan cache guarantees that): validated and marshalled once
    (:class:`natten._libnatten.PreparedFnaForward`, backend 2), then each call only allocates the
    outputs and launches. Inputs that require grad get the prepared training path
    (``cutlass._PreparedTraining``: the same kernels, the forward through a marshalled struct and
    the backward's arguments ready-made). Falls back to :func:`fna` per call where the prepared
    path does not apply (inputs needing a copy, dilation, poisoned outputs in tests, misaligned
    pointers)."""
    from .. import ops

    schedule = options.get("kernel_schedule")
    _libnatten.schedule_id(schedule)  # unknown names fail here, at planning time

    def slow(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        return fna(q, k, v, spec, scale, q_tile_shape, kv_tile_shape, **options)

    if (
        _needs_grad(query, key, value)
        and all(int(x) == 1 for x in spec.dilation)
        and all(_foldable(t) is t for t in (query, key, value))
    ):
        return _prepare_training(query, key, value, spec, scale, q_tile_shape, kv_tile_shape, options,
                                 _libnatten.BACKEND_HOPPER_FNA, slow)
    if (
        _needs_grad(query, key, value)
        or any(int(x) != 1 for x in spec.dilation)
        or (q_tile_shape is None) != (kv_tile_shape is None)
        or not (ops.is_kernel_ready(query) and ops.is_kernel_ready(key) and ops.is_kernel_ready(value))
        or any(_foldable(t) is not t for t in (query, key, value))
    ):
        return slow
    out, lse = ops.new_outputs(query, value)  # the query slab's grid
    global_shape, q_origin, kv_origin = _region_args(spec)
    prepared = _libnatten.PreparedFnaForward(
        query, key, value, out, lse, list(spec.kernel_size), list(spec.stride),
        list(spec.dilation), list(spec.is_causal), float(scale),
        q_tile=q_tile_shape, kv_tile=kv_tile_shape, global_shape=global_shape or None,
        q_origin=q_origin or None, kv_origin=kv_origin or None, backend=_NAME, kernel_schedule=schedule,
    )
    return _prepared_runner(prepared, query, out, lse, options.get("return_lse", True), slow)


def fmha(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool,
    scale: float,
    q_tile_shape: Optional[Tuple[int, ...]] = None,
    kv_tile_shape: Optional[Tuple[int, ...]] = None,
    **options,
) -> Tuple[Tensor, Tensor]:
    """Dense (optionally causal, top-left aligned) attention on ``[B, N, H, D]`` tensors on the
    ``hopper-fna`` kernel; returns ``(out, lse)``. Differentiable when the inputs require grad
    (:func:`fna`'s training path: the SM90 backward kernels where they run; the ``backward_*``
    options as there).

    A window of ``N_kv`` tokens on a grid of ``N_kv`` keys covers every key, so every key tile is
    "full" (no mask) except the last partial one; causal is the causal window of that size, whose
    tiles above the diagonal are never visited. Queries run in slices of ``N_kv`` (the ones after
    the first see every key, non-causal); a last, shorter slice (and ``N_q < N_kv``) is a query
    slab of that grid."""
    if options.get("offsets") is not None:  # natten.attention splits packs into runs (SUPPORTS_VARLEN)
        raise NotImplementedError(
            "hopper-fmha takes no packed offsets: natten.attention runs variable-length packs on it as one "
            "batched call per run of equal-length sequences"
        )
    reason = can_run_fmha(query, key, value, bool(is_causal))
    if reason is not None:
        if _needs_grad(query, key, value):
            raise NotImplementedError(f"hopper-fmha cannot run this problem: {reason}")
        raise ValueError(f"hopper-fmha cannot run this problem: {reason}")
    passed = ("kernel_schedule", "backward_q_tile_shape", "backward_kv_tile_shape", "backward_kv_splits")
    fwd = {k: options[k] for k in passed if options.get(k) is not None}
    return _fmha_on_fna(fna, query, key, value, is_causal, scale, q_tile_shape, kv_tile_shape, **fwd)


def get_configs_for_cutlass_hopper_fna(
    query: Tensor, key: Tensor, value: Tensor
) -> List[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """Valid ``(q_tile_shape, kv_tile_shape)`` pairs of ``hopper-fna`` for these tensors here:
    every pair of a power-of-two box of 128 query tokens and one of 128 key tokens (64 when the
    head dims run on the 256 kernel) over the token axes.

    Raises:
        ValueError: ``hopper-fna`` cannot run these tensors here (the message says why; inputs
            that require grad are not refused here, only by the forward).
    """
    with torch.no_grad():
        reason = can_run_fna(query, key, value, None)
    if reason is not None:
        raise ValueError(f"hopper-fna cannot run these tensors: {reason}")
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    configs = _libnatten.query_configs(
        query.dtype, query.dim() - 3, int(query.shape[-1]), int(value.shape[-1]), device=index, backend=_NAME
    )
    return [(c["q_tile"], c["kv_tile"]) for c in configs]


def get_configs_for_cutlass_hopper_fmha(query: Tensor, key: Tensor, value: Tensor) -> List[Tuple[int, int]]:
    """Valid ``(q_tile_size, kv_tile_size)`` of ``hopper-fmha`` (:func:`natten.attention` on the
    ``hopper-fna`` kernel, a 1-D problem) for these ``[batch, seqlen, heads, head_dim]`` tensors.

    Raises:
        ValueError: ``hopper-fmha`` cannot run these tensors here (the message says why).
    """
    with torch.no_grad():
        reason = can_run_fmha(query, key, value)
    if reason is not None:
        raise ValueError(f"hopper-fmha cannot run these tensors: {reason}")
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    configs = _libnatten.query_configs(
        query.dtype, 1, int(query.shape[-1]), int(value.shape[-1]), device=index, backend=_NAME
    )
    return [(int(c["q_tile"][0]), int(c["kv_tile"][0])) for c in configs]
