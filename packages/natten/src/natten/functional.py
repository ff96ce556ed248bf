"""Public operations: ``na1d``, ``na2d``, ``na3d``, ``attention`` and ``merge_attentions``.

Tensors are heads-last: ``[batch, *token_grid, heads, head_dim]``. The exact semantics of the
neighborhood (kernel size, stride, dilation, per-axis causal masking) are those of NATTEN 0.21 and
are written down in the project's SEMANTICS.md.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .context import _Context
from .backends import choose_fmha_backend, choose_fna_backend, FMHA_BACKENDS, FNA_BACKENDS, FNA_TO_FMHA
from .utils import checks
from .window import WindowSpec

BEST_CONFIGS_ENV = "NATTEN_BEST_CONFIGS"
IntOrTuple = Union[int, Tuple[int, ...]]
BoolOrTuple = Union[bool, Tuple[bool, ...]]


def _check_options(
    rank: int,
    q_tile_shape: Any,
    kv_tile_shape: Any,
    backward_q_tile_shape: Any,
    backward_kv_tile_shape: Any,
    backward_kv_splits: Any,
    flags: Dict[str, Any],
) -> Dict[str, Any]:
    options: Dict[str, Any] = {
        "q_tile_shape": checks.check_optional_tile("q_tile_shape", q_tile_shape, rank),
        "kv_tile_shape": checks.check_optional_tile("kv_tile_shape", kv_tile_shape, rank),
        "backward_q_tile_shape": checks.check_optional_tile(
            "backward_q_tile_shape", backward_q_tile_shape, rank
        ),
        "backward_kv_tile_shape": checks.check_optional_tile(
            "backward_kv_tile_shape", backward_kv_tile_shape, rank
        ),
        "backward_kv_splits": checks.check_optional_tile(
            "backward_kv_splits", backward_kv_splits, rank
        ),
    }
    for name, value in flags.items():
        if name == "kernel_schedule":
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"`kernel_schedule` must be a string or None, got {value!r} "
                    f"({type(value).__name__})."
                )
            options[name] = value
        else:
            options[name] = checks.check_flag(name, value)
    return options


# Validated call plans keyed by everything validation and dispatch depend on, so a repeated call
# (the common case in a model) skips straight to the backend: host overhead matters for small
# problems. Bounded; cleared when full.
_PLANS: Dict[tuple, tuple] = {}
_MAX_PLANS = 512


def _run_fna(mod: Any, spec: WindowSpec, scale: float, options: Dict[str, Any],
             q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    return mod.fna(q, k, v, spec, scale, **options)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _signature(query: Any, key: Any, value: Any, *params: Any) -> Optional[tuple]:
    """The plan-cache key of a call, or None when it cannot be formed (then: full validation)."""
    if not (type(query) is Tensor and type(key) is Tensor and type(value) is Tensor):
        return None
    grad = torch.is_grad_enabled() and (
        query.requires_grad or key.requires_grad or value.requires_grad
    )
    try:
        hash(params)
    except TypeError:  # e.g. lists as per-axis values
        params = tuple(tuple(p) if isinstance(p, list) else p for p in params)
        try:
            hash(params)
        except TypeError:
            return None
    return (
        query.shape, key.shape, value.shape, query.stride(), key.stride(), value.stride(),
        query.dtype, key.dtype, value.dtype, query.device, key.device, value.device,
        grad, _Context.version, params,
    )


_warned_no_profiler = False


def _tuned_config(
    q: Tensor, k: Tensor, v: Tensor, spec: WindowSpec, backend: Optional[str], torch_compile: bool
) -> Optional[Dict[str, Any]]:
    """The entry of ``$NATTEN_BEST_CONFIGS`` (written by ``natten-profiler --optimize --save-best``)
    for this problem, when no backend was asked for and the tuned backend can run here."""
    global _warned_no_profiler
    path = os.environ.get(BEST_CONFIGS_ENV)
    if not path or backend is not None:
        return None
    try:
        from natten_profiler import best_configs
    except ImportError:
        if not _warned_no_profiler:
            warnings.warn(
                f"{BEST_CONFIGS_ENV} is set but natten-profiler, which reads it, is not installed "
                "(pip install natten-profiler); using the default backend choice."
            )
            _warned_no_profiler = True
        return None
    sig = best_configs.signature_from_tensors(
        q, k, v, spec.kernel_size, spec.stride, spec.dilation, spec.is_causal
    )
    entry = best_configs.lookup(sig, path)
    if entry is None:
        return None
    mod = FNA_BACKENDS.get(entry.get("backend"))
    if mod is None or mod.can_run_fna(q, k, v, spec, torch_compile) is not None:
        return None
    return entry


def neighborhood_attention_generic(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: Optional[float] = None,
    additional_keys: Optional[Tensor] = None,
    additional_values: Optional[Tensor] = None,
    attention_kwargs: Optional[Dict[str, Any]] = None,
    backend: Optional[str] = None,
    q_tile_shape: Optional[IntOrTuple] = None,
    kv_tile_shape: Optional[IntOrTuple] = None,
    backward_q_tile_shape: Optional[IntOrTuple] = None,
    backward_kv_tile_shape: Optional[IntOrTuple] = None,
    backward_kv_splits: Optional[IntOrTuple] = None,
    backward_use_pt_reduction: bool = False,
    run_persistent_kernel: bool = True,
    kernel_schedule: Optional[str] = None,
    torch_compile: bool = False,
    try_fuse_additional_kv: bool = False,
    return_lse: bool = False,
    *,
    global_shape: Optional[IntOrTuple] = None,
    q_origin: Optional[IntOrTuple] = None,
    kv_origin: Optional[IntOrTuple] = None,
    rank: Optional[int] = None,
    op_name: str = "neighborhood_attention_generic",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Neighborhood attention on a token grid of any rank (1-3); see :func:`na2d`."""
    fast_key = None
    if additional_keys is None and additional_values is None and not _compiling():
        fast_key = _signature(
            query, key, value, kernel_size, stride, dilation, is_causal, scale, backend,
            q_tile_shape, kv_tile_shape, backward_q_tile_shape, backward_kv_tile_shape,
            backward_kv_splits, backward_use_pt_reduction, run_persistent_kernel,
            kernel_schedule, torch_compile, rank, return_lse, global_shape, q_origin, kv_origin,
        )
        run = _PLANS.get(fast_key) if fast_key is not None else None
        if run is not None:
            out, lse = run(query, key, value)
            return (out, lse) if return_lse else out
    if rank is None:
        if not isinstance(query, Tensor):
            raise TypeError(f"`query` must be a torch.Tensor, got {type(query).__name__}.")
        rank = query.dim() - 3
        if rank not in (1, 2, 3):
            raise ValueError(
                f"{op_name} expects `query` of shape [batch, *token_grid, heads, head_dim] with a "
                f"token grid of rank 1-3, got {query.dim()} dims."
            )
    sliced = global_shape is not None or q_origin is not None or kv_origin is not None
    q, k, v = checks.check_qkv(op_name, query, key, value, rank, same_grid=not sliced)
    shape = tuple(int(s) for s in q.shape[1:-2])
    grid = shape if global_shape is None else checks.as_int_tuple("global_shape", global_shape, rank)
    ks, st, dl, ca = checks.check_na_params(grid, kernel_size, stride, dilation, is_causal)
    region = None
    if sliced:
        region = checks.check_region(
            shape, tuple(int(s) for s in k.shape[1:-2]), grid, q_origin, kv_origin, ks, st, dl, ca
        )
    scale_f = checks.check_scale(scale, q.shape[-1])
    has_additional = checks.check_additional_kv(q, k, v, additional_keys, additional_values)
    if attention_kwargs is not None and not isinstance(attention_kwargs, dict):
        raise TypeError(
            f"`attention_kwargs` must be a dict or None, got {type(attention_kwargs).__name__}."
        )
    options = _check_options(
        rank,
        q_tile_shape,
        kv_tile_shape,
        backward_q_tile_shape,
        backward_kv_tile_shape,
        backward_kv_splits,
        {
            "backward_use_pt_reduction": backward_use_pt_reduction,
            "run_persistent_kernel": run_persistent_kernel,
            "kernel_schedule": kernel_schedule,
            "torch_compile": torch_compile,
            "try_fuse_additional_kv": try_fuse_additional_kv,
            "return_lse": return_lse,
        },
    )
    spec = WindowSpec(grid, ks, st, dl, ca, region)
    B, H, Hkv = q.shape[0], q.shape[-2], k.shape[-2]
    D, Dv = q.shape[-1], v.shape[-1]

    fmha_backend = None if backend is None else FNA_TO_FMHA.get(backend, backend)
    if region is None and spec.is_self_attention() and (
        fmha_backend is None
        or fmha_backend not in FMHA_BACKENDS
        or FMHA_BACKENDS[fmha_backend].can_run_fmha(q, k, v, False, False, torch_compile) is None
    ):
        # Every query sees every key: plain attention (additional keys simply join the key set).
        # (When the requested backend family has no dense kernel here, its NA kernel runs it.)
        q_flat = q.reshape(B, -1, H, D)
        k_flat = k.reshape(B, -1, Hkv, D)
        v_flat = v.reshape(B, -1, Hkv, Dv)
        if has_additional:
            k_flat = torch.cat([k_flat, additional_keys], dim=1)  # type: ignore[list-item]
            v_flat = torch.cat([v_flat, additional_values], dim=1)  # type: ignore[list-item]
        out, lse = attention(
            q_flat, k_flat, v_flat, scale=scale_f, backend=fmha_backend,
            torch_compile=torch_compile, return_lse=True,
        )
        out = out.reshape(B, *shape, H, Dv)
        lse = lse.reshape(B, *shape, H)
        return (out, lse) if return_lse else out

    tuned = None if region is not None else _tuned_config(q, k, v, spec, backend, torch_compile)
    if tuned is not None:
        backend = tuned["backend"]
        for name in ("q_tile_shape", "kv_tile_shape", "backward_q_tile_shape", "backward_kv_tile_shape"):
            if options[name] is None and tuned.get(name) is not None:
                options[name] = tuple(tuned[name])
    _, mod = choose_fna_backend(backend, q, k, v, spec, torch_compile)
    if fast_key is not None and not has_additional:
        prepare = getattr(mod, "prepare_fna", None)
        if prepare is not None:
            run = prepare(q, k, v, spec, scale_f, **options)
        else:
            run = functools.partial(_run_fna, mod, spec, scale_f, options)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[fast_key] = run
        out, lse = run(q, k, v)
    else:
        out, lse = mod.fna(q, k, v, spec, scale_f, **options)

    if has_additional:
        extra = dict(attention_kwargs or {})
        extra.setdefault("scale", scale_f)
        extra["return_lse"] = True
        out_add, lse_add = attention(
            q.reshape(B, -1, H, D), additional_keys, additional_values, **extra
        )
        out, lse = merge_attentions(
            [out, out_add.reshape(B, *shape, H, Dv)], [lse, lse_add.reshape(B, *shape, H)]
        )
    return (out, lse) if return_lse else out


_NA_DOC = """Neighborhood attention over a {rank}-D token grid.

    Each query attends the ``kernel_size`` keys around it on every axis (shifted inward at the
    borders, never truncated), optionally with ``stride`` (groups of queries sharing one window),
    ``dilation`` (every ``d``-th token) and per-axis causal masking.

    Args:
        query (Tensor): ``[batch, {grid}, heads, head_dim]``.
        key (Tensor): ``[batch, {grid}, heads_kv, head_dim]``; ``heads % heads_kv == 0`` (GQA/MQA).
            The key grid equals the query grid unless ``global_shape`` / ``q_origin`` /
            ``kv_origin`` place them as slabs of a larger grid.
        value (Tensor): ``[batch, {grid}, heads_kv, head_dim_v]``.
        kernel_size (int or tuple): window size per axis, ``2 <= kernel_size <= axis length``.
        stride (int or tuple): ``1 <= stride <= kernel_size``. Default: 1.
        dilation (int or tuple): ``kernel_size * dilation <= axis length``. Default: 1.
        is_causal (bool or tuple): causal masking per axis. Default: False.
        scale (float, optional): softmax scale. Default: ``head_dim ** -0.5``.
        additional_keys (Tensor, optional): ``[batch, seqlen, heads_kv, head_dim]`` keys every
            query attends in addition to its neighborhood (one softmax over both).
        additional_values (Tensor, optional): ``[batch, seqlen, heads_kv, head_dim_v]``.
        attention_kwargs (dict, optional): keyword arguments of the :func:`attention` call that
            handles the additional keys/values (e.g. ``backend``).
        backend (str, optional): ``"cutlass-fna"``, ``"hopper-fna"``, ``"blackwell-fna"``,
            ``"flex-fna"`` or ``"reference"``; None picks the best that can run the problem.
        q_tile_shape, kv_tile_shape, backward_q_tile_shape, backward_kv_tile_shape (tuple, optional):
            tile configuration of the fused kernels.
        backward_kv_splits (int or tuple, optional): KV parallelism of the ``cutlass-fna`` dK/dV
            kernel (natten-kernels >= 1.3): CTAs per axis that share its key tiles, each from 1 to
            the key tiles along that axis (default: one CTA per key tile). Gradients do not depend
            on it; a value past the key tiles raises when the backward runs.
        backward_use_pt_reduction (bool), run_persistent_kernel (bool), kernel_schedule (str):
            fused-kernel knobs, accepted for NATTEN compatibility.
        torch_compile (bool): require the flex backend to compile FlexAttention (it compiles on
            CUDA by default while ``natten.is_flex_compile_allowed()``). Default: False.
        try_fuse_additional_kv (bool): fuse additional keys/values into the kernel when the
            backend can. Default: False.
        return_lse (bool): also return the logsumexp. Default: False.
        global_shape (int or tuple, keyword-only, optional): the token grid the windows live on,
            when ``query``/``key``/``value`` hold only slabs of it (context parallelism, tiled
            inference of huge inputs). Windows are placed and clamped on this grid. Default: the
            query grid.
        q_origin (int or tuple, keyword-only, optional): global coordinates of ``query``'s first
            token. Default: 0.
        kv_origin (int or tuple, keyword-only, optional): global coordinates of ``key``/``value``'s
            first token; the key slab must hold every key the query slab attends (see
            :func:`natten.window.key_range`), otherwise a ``ValueError`` names the missing range.
            Default: 0.

    Returns:
        Tensor ``[batch, {grid}, heads, head_dim_v]``, and with ``return_lse=True`` also the
        logsumexp ``[batch, {grid}, heads]`` (float32, natural log of the scaled scores).
    """


def _make_na(rank: int, name: str):
    def op(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        scale: Optional[float] = None,
        additional_keys: Optional[Tensor] = None,
        additional_values: Optional[Tensor] = None,
        attention_kwargs: Optional[Dict[str, Any]] = None,
        backend: Optional[str] = None,
        q_tile_shape: Optional[IntOrTuple] = None,
        kv_tile_shape: Optional[IntOrTuple] = None,
        backward_q_tile_shape: Optional[IntOrTuple] = None,
        backward_kv_tile_shape: Optional[IntOrTuple] = None,
        backward_kv_splits: Optional[IntOrTuple] = None,
        backward_use_pt_reduction: bool = False,
        run_persistent_kernel: bool = True,
        kernel_schedule: Optional[str] = None,
        torch_compile: bool = False,
        try_fuse_additional_kv: bool = False,
        return_lse: bool = False,
        *,
        global_shape: Optional[IntOrTuple] = None,
        q_origin: Optional[IntOrTuple] = None,
        kv_origin: Optional[IntOrTuple] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        return neighborhood_attention_generic(
            query, key, value, kernel_size, stride, dilation, is_causal, scale,
            additional_keys, additional_values, attention_kwargs, backend,
            q_tile_shape, kv_tile_shape, backward_q_tile_shape, backward_kv_tile_shape,
            backward_kv_splits, backward_use_pt_reduction, run_persistent_kernel,
            kernel_schedule, torch_compile, try_fuse_additional_kv, return_lse,
            global_shape=global_shape, q_origin=q_origin, kv_origin=kv_origin,
            rank=rank, op_name=name,
        )

    op.__name__ = op.__qualname__ = name
    op.__doc__ = _NA_DOC.format(rank=rank, grid=", ".join("XYZ"[:rank]))
    return op


na1d = _make_na(1, "na1d")
na2d = _make_na(2, "na2d")
na3d = _make_na(3, "na3d")


def _check_seqlens(name: str, t: Any, device: torch.device) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"`{name}` must be an integer torch.Tensor, got {type(t).__name__}.")
    if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
        raise ValueError(
            f"`{name}` must be a 1-D int32/int64 tensor, got dtype {t.dtype} with shape "
            f"{tuple(t.shape)}."
        )
    if t.numel() == 0:
        raise ValueError(f"`{name}` is empty.")
    return t


def _varlen_offsets(
    total_q: int,
    total_kv: int,
    seqlens_Q: Any,
    seqlens_KV: Any,
    cumulative_seqlen_Q: Any,
    cumulative_seqlen_KV: Any,
    max_seqlen_Q: Any,
    max_seqlen_KV: Any,
    device: torch.device,
) -> Optional[Tuple[List[int], List[int]]]:
    """Validated cumulative offsets (host lists) of packed sequences, or None if not varlen."""
    given_lens = seqlens_Q is not None or seqlens_KV is not None
    given_cum = cumulative_seqlen_Q is not None or cumulative_seqlen_KV is not None
    if not given_lens and not given_cum:
        if max_seqlen_Q is not None or max_seqlen_KV is not None:
            raise ValueError(
                "`max_seqlen_Q`/`max_seqlen_KV` are only meaningful with "
                "`cumulative_seqlen_Q`/`cumulative_seqlen_KV`."
            )
        return None
    if given_lens and given_cum:
        raise ValueError(
            "give either `seqlens_Q`/`seqlens_KV` or `cumulative_seqlen_Q`/`cumulative_seqlen_KV`, "
            "not both."
        )
    if given_lens:
        if seqlens_Q is None or seqlens_KV is None:
            raise ValueError("`seqlens_Q` and `seqlens_KV` must be given together.")
        lq = _check_seqlens("seqlens_Q", seqlens_Q, device).tolist()
        lk = _check_seqlens("seqlens_KV", seqlens_KV, device).tolist()
        if len(lq) != len(lk):
            raise ValueError(
                f"`seqlens_Q` ({len(lq)} sequences) and `seqlens_KV` ({len(lk)} sequences) differ "
                "in length."
            )
        cq, ck = [0], [0]
        for a, b in zip(lq, lk):
            if a < 1 or b < 1:
                raise ValueError(f"sequence lengths must be positive, got Q {a}, KV {b}.")
            cq.append(cq[-1] + a)
            ck.append(ck[-1] + b)
    else:
        if cumulative_seqlen_Q is None or cumulative_seqlen_KV is None:
            raise ValueError(
                "`cumulative_seqlen_Q` and `cumulative_seqlen_KV` must be given together."
            )
        cq = _check_seqlens("cumulative_seqlen_Q", cumulative_seqlen_Q, device).tolist()
        ck = _check_seqlens("cumulative_seqlen_KV", cumulative_seqlen_KV, device).tolist()
        if len(cq) != len(ck) or len(cq) < 2:
            raise ValueError(
                "`cumulative_seqlen_Q` and `cumulative_seqlen_KV` must have the same length "
                f"(number of sequences + 1, at least 2), got {len(cq)} and {len(ck)}."
            )
        for name, c in (("cumulative_seqlen_Q", cq), ("cumulative_seqlen_KV", ck)):
            if c[0] != 0 or any(b <= a for a, b in zip(c, c[1:])):
                raise ValueError(
                    f"`{name}` must start at 0 and increase strictly, got {c}."
                )
        for name, lim, c in (("max_seqlen_Q", max_seqlen_Q, cq), ("max_seqlen_KV", max_seqlen_KV, ck)):
            longest = max(b - a for a, b in zip(c, c[1:]))
            if lim is not None:
                if not checks._is_int(lim):
                    raise TypeError(f"`{name}` must be an int, got {lim!r}.")
                if lim < longest:
                    raise ValueError(
                        f"`{name}` ({lim}) is smaller than the longest sequence ({longest})."
                    )
    if cq[-1] != total_q or ck[-1] != total_kv:
        raise ValueError(
            f"packed sequence lengths sum to {cq[-1]} queries and {ck[-1]} keys, but the tensors "
            f"hold {total_q} query and {total_kv} key tokens."
        )
    return cq, ck


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool = False,
    scale: Optional[float] = None,
    seqlens_Q: Optional[Tensor] = None,
    seqlens_KV: Optional[Tensor] = None,
    cumulative_seqlen_Q: Optional[Tensor] = None,
    cumulative_seqlen_KV: Optional[Tensor] = None,
    max_seqlen_Q: Optional[int] = None,
    max_seqlen_KV: Optional[int] = None,
    backend: Optional[str] = None,
    q_tile_size: Optional[int] = None,
    kv_tile_size: Optional[int] = None,
    backward_q_tile_size: Optional[int] = None,
    backward_kv_tile_size: Optional[int] = None,
    backward_kv_splits: Optional[int] = None,
    backward_use_pt_reduction: bool = False,
    run_persistent_kernel: bool = True,
    kernel_schedule: Optional[str] = None,
    torch_compile: bool = False,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Dense (optionally causal) multi-head attention, with packed variable-length sequences.

    Args:
        query (Tensor): ``[batch, seqlen_q, heads, head_dim]``.
        key (Tensor): ``[batch, seqlen_kv, heads_kv, head_dim]``; ``heads % heads_kv == 0``.
        value (Tensor): ``[batch, seqlen_kv, heads_kv, head_dim_v]``.
        is_causal (bool): query ``i`` attends keys ``j <= i`` (top-left aligned). Default: False.
        scale (float, optional): softmax scale. Default: ``head_dim ** -0.5``.
        seqlens_Q, seqlens_KV (Tensor, optional): per-sequence lengths of sequences packed along
            dim 1 (batch must be 1); each query attends only keys of its own sequence.
        cumulative_seqlen_Q, cumulative_seqlen_KV (Tensor, optional): the same as prefix sums
            (``[0, l0, l0 + l1, ...]``), with ``max_seqlen_Q`` / ``max_seqlen_KV``.
        backend (str, optional): ``"cutlass-fmha"``, ``"hopper-fmha"``, ``"blackwell-fmha"``,
            ``"flex-fmha"`` or ``"reference"``; None picks the best available.
        q_tile_size, kv_tile_size, backward_q_tile_size, backward_kv_tile_size, backward_kv_splits, backward_use_pt_reduction, run_persistent_kernel, kernel_schedule:
            fused-kernel knobs.
        torch_compile (bool): require the flex backend to compile FlexAttention (it compiles on
            CUDA by default while ``natten.is_flex_compile_allowed()``). Default: False.
        return_lse (bool): also return the logsumexp ``[batch, seqlen_q, heads]``.

    Returns:
        Tensor ``[batch, seqlen_q, heads, head_dim_v]`` (and the logsumexp with ``return_lse``).
    """
    q, k, v = checks.check_qkv("attention", query, key, value, None)
    scale_f = checks.check_scale(scale, q.shape[-1])
    causal = checks.check_flag("is_causal", is_causal)
    options = _check_options(
        1,
        q_tile_size,
        kv_tile_size,
        backward_q_tile_size,
        backward_kv_tile_size,
        backward_kv_splits,
        {
            "backward_use_pt_reduction": backward_use_pt_reduction,
            "run_persistent_kernel": run_persistent_kernel,
            "kernel_schedule": kernel_schedule,
            "torch_compile": torch_compile,
            "return_lse": return_lse,
        },
    )
    offsets = _varlen_offsets(
        q.shape[1], k.shape[1], seqlens_Q, seqlens_KV, cumulative_seqlen_Q,
        cumulative_seqlen_KV, max_seqlen_Q, max_seqlen_KV, q.device,
    )
    if offsets is not None and q.shape[0] != 1:
        raise ValueError(
            f"variable-length attention packs sequences along dim 1 and needs batch 1, got batch "
            f"{q.shape[0]}."
        )
    _, mod = choose_fmha_backend(
        backend, q, k, v, causal, offsets is not None, torch_compile
    )
    if offsets is None:
        out, lse = mod.fmha(q, k, v, causal, scale_f, **options)
    elif getattr(mod, "SUPPORTS_VARLEN", False):
        out, lse = mod.fmha(q, k, v, causal, scale_f, offsets=offsets, **options)
    else:
        # One call per run of consecutive sequences with the same (query, key) lengths: the run is
        # a batch, viewed in place (splitting the token dim needs no copy). (Compiled flex-fmha,
        # which would recompile per batch shape, refuses varlen and never gets here.)
        cq, ck = offsets
        parts = []
        for first, count, lq, lk in _varlen_runs(cq, ck):
            q0, k0 = cq[first], ck[first]
            parts.append(mod.fmha(
                q[0, q0 : q0 + count * lq].unflatten(0, (count, lq)),
                k[0, k0 : k0 + count * lk].unflatten(0, (count, lk)),
                v[0, k0 : k0 + count * lk].unflatten(0, (count, lk)),
                causal, scale_f, **options,
            ))
        out = torch.cat([p[0].flatten(0, 1) for p in parts], dim=0).unsqueeze(0)
        lse = torch.cat([p[1].flatten(0, 1) for p in parts], dim=0).unsqueeze(0)
    return (out, lse) if return_lse else out


def _varlen_runs(cq: List[int], ck: List[int]) -> List[Tuple[int, int, int, int]]:
    """Maximal runs of consecutive packed sequences with equal query and key lengths, as
    ``(first sequence, number of sequences, query length, key length)``."""
    runs: List[Tuple[int, int, int, int]] = []
    for i in range(len(cq) - 1):
        lq, lk = cq[i + 1] - cq[i], ck[i + 1] - ck[i]
        if runs and runs[-1][2:] == (lq, lk):
            first, count, _, _ = runs[-1]
            runs[-1] = (first, count + 1, lq, lk)
        else:
            runs.append((i, 1, lq, lk))
    return runs


def merge_attentions(
    outputs: Sequence[Tensor],
    lse_tensors: Sequence[Tensor],
    torch_compile: bool = True,
    use_autograd_fix: bool = True,
) -> Tuple[Tensor, Tensor]:
    """Merge attention outputs over disjoint key sets into one, through their logsumexps.

    The result equals a single softmax attention over the union of the key sets. Any number
    (>= 2) of inputs is accepted, and the merge is differentiable in every output and logsumexp.

    Args:
        outputs (sequence of Tensor): ``[batch, *, heads, head_dim]`` each, same shape and dtype.
        lse_tensors (sequence of Tensor): ``[batch, *, heads]`` each (floating point).
        torch_compile (bool): accepted for NATTEN compatibility (the merge is a handful of
            element-wise ops and runs eagerly).
        use_autograd_fix (bool): accepted for NATTEN compatibility; gradients are always exact.

    Returns:
        ``(output, lse)``: merged output (dtype of the inputs) and logsumexp (float32, or float64
        for float64 inputs).
    """
    if not isinstance(outputs, (list, tuple)) or not isinstance(lse_tensors, (list, tuple)):
        raise TypeError("`outputs` and `lse_tensors` must be lists or tuples of tensors.")
    if len(outputs) != len(lse_tensors):
        raise ValueError(
            f"merge_attentions got {len(outputs)} outputs but {len(lse_tensors)} lse tensors."
        )
    if len(outputs) < 2:
        raise ValueError(f"merge_attentions needs at least 2 inputs, got {len(outputs)}.")
    checks.check_flag("torch_compile", torch_compile)
    checks.check_flag("use_autograd_fix", use_autograd_fix)
    for i, (o, l) in enumerate(zip(outputs, lse_tensors)):
        checks.check_tensor(f"outputs[{i}]", o)
        checks.check_tensor(f"lse_tensors[{i}]", l)
        if o.shape != outputs[0].shape:
            raise ValueError(
                f"outputs[{i}] has shape {tuple(o.shape)} but outputs[0] has "
                f"{tuple(outputs[0].shape)}."
            )
        if o.dtype != outputs[0].dtype or o.device != outputs[0].device:
            raise ValueError(
                f"outputs[{i}] is {o.dtype} on {o.device} but outputs[0] is "
                f"{outputs[0].dtype} on {outputs[0].device}."
            )
        if o.dim() < 2 or l.shape != o.shape[:-1]:
            raise ValueError(
                f"lse_tensors[{i}] must have shape {tuple(o.shape[:-1])} (the output shape without "
                f"head_dim), got {tuple(l.shape)}."
            )
        if l.device != o.device:
            raise ValueError(f"lse_tensors[{i}] is on {l.device} but outputs[{i}] is on {o.device}.")
    cdt = torch.float64 if outputs[0].dtype == torch.float64 else torch.float32
    lse = torch.stack([l.to(cdt) for l in lse_tensors])
    # The shift cancels out of the result; detaching it keeps gradients exact everywhere.
    shift = lse.detach().amax(dim=0)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    weights = torch.exp(lse - shift)
    total = weights.sum(dim=0)
    merged_lse = shift + torch.log(total)
    scale = weights / total.clamp_min(torch.finfo(cdt).tiny)
    merged = sum(s.unsqueeze(-1) * o.to(cdt) for s, o in zip(scale.unbind(0), outputs))
    return merged.to(outputs[0].dtype), merged_lse  # type: ignore[union-attr]
