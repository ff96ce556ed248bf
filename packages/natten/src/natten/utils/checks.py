"""Input validation shared by every public op.

Every check raises a ``ValueError`` / ``TypeError`` / ``NotImplementedError`` whose message names
the argument, the axis (where there is one) and the offending values. Nothing here asserts.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]

_AXIS_NAMES = ("X", "Y", "Z")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool,)) or (
        isinstance(value, Tensor) and value.dtype == torch.bool and value.numel() == 1
    )


def axis_name(rank: int, axis: int) -> str:
    """Human-readable name of a token-grid axis ("axis 0 (X)")."""
    return f"axis {axis} ({_AXIS_NAMES[axis]})" if rank > 1 else "axis 0"


def as_int_tuple(name: str, value: Any, rank: int) -> Tuple[int, ...]:
    """Broadcast an int or a per-axis sequence of ints to a tuple of length ``rank``."""
    if _is_int(value):
        return (int(value),) * rank
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) != rank:
            raise ValueError(
                f"`{name}` must be an int or a tuple of {rank} ints (one per axis), "
                f"got a sequence of length {len(value)}: {tuple(value)!r}."
            )
        for i, v in enumerate(value):
            if not _is_int(v):
                raise TypeError(
                    f"`{name}` must contain ints, got {v!r} ({type(v).__name__}) on "
                    f"{axis_name(rank, i)}."
                )
        return tuple(int(v) for v in value)
    raise TypeError(
        f"`{name}` must be an int or a tuple of {rank} ints, got {value!r} "
        f"({type(value).__name__})."
    )


def as_bool_tuple(name: str, value: Any, rank: int) -> Tuple[bool, ...]:
    """Broadcast a bool or a per-axis sequence of bools to a tuple of length ``rank``."""
    if isinstance(value, bool):
        return (value,) * rank
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(
                f"`{name}` must be a bool or a tuple of {rank} bools (one per axis), "
                f"got a sequence of length {len(value)}: {tuple(value)!r}."
            )
        for i, v in enumerate(value):
            if not isinstance(v, bool):
                raise TypeError(
                    f"`{name}` must contain bools, got {v!r} ({type(v).__name__}) on "
                    f"{axis_name(rank, i)}."
                )
        return tuple(bool(v) for v in value)
    raise TypeError(
        f"`{name}` must be a bool or a tuple of {rank} bools, got {value!r} "
        f"({type(value).__name__})."
    )


def check_tensor(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(
            f"`{name}` must have a floating-point dtype (float16, bfloat16, float32, float64), "
            f"got {value.dtype}."
        )
    return value


def check_same_dtype_device(named: Sequence[Tuple[str, Tensor]]) -> None:
    ref_name, ref = named[0]
    for name, t in named[1:]:
        if t.dtype != ref.dtype:
            raise TypeError(
                f"dtype mismatch: `{ref_name}` is {ref.dtype} but `{name}` is {t.dtype}; "
                "all inputs must share one dtype."
            )
        if t.device != ref.device:
            raise ValueError(
                f"device mismatch: `{ref_name}` is on {ref.device} but `{name}` is on {t.device}; "
                "all inputs must be on one device."
            )


def check_scale(scale: Any, head_dim: int) -> float:
    """Return the softmax scale: ``head_dim ** -0.5`` when ``scale`` is None."""
    if scale is None:
        return float(head_dim) ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        if isinstance(scale, Tensor) and scale.numel() == 1 and not scale.dtype == torch.bool:
            return float(scale.item())
        raise TypeError(f"`scale` must be a real number or None, got {scale!r} ({type(scale).__name__}).")
    scale_f = float(scale)
    if scale_f != scale_f or scale_f in (float("inf"), float("-inf")):
        raise ValueError(f"`scale` must be finite, got {scale!r}.")
    return scale_f


def check_qkv(
    op: str,
    query: Any,
    key: Any,
    value: Any,
    rank: Optional[int],
    same_grid: bool = True,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Validate heads-last q/k/v for a rank-``rank`` token grid (``rank=None``: attention()).

    Layout: ``q [B, *shape, H, D]``, ``k [B, *shape_kv, H_kv, D]``, ``v [B, *shape_kv, H_kv, Dv]``.
    For neighborhood attention the key grid must equal the query grid unless ``same_grid`` is
    False (slabs of a larger grid); key and value grids always agree.
    """
    q = check_tensor("query", query)
    k = check_tensor("key", key)
    v = check_tensor("value", value)
    check_same_dtype_device([("query", q), ("key", k), ("value", v)])
    nd = (rank if rank is not None else 1) + 3
    layout = (
        "[batch, seqlen, heads, head_dim]"
        if rank is None
        else "[batch, " + ", ".join(_AXIS_NAMES[:rank]) + ", heads, head_dim]"
    )
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dim() != nd:
            raise ValueError(
                f"{op} expects `{name}` of shape {layout} ({nd} dims), got {t.dim()} dims "
                f"with shape {tuple(t.shape)}."
            )
    if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
        raise ValueError(
            f"{op}: batch sizes differ: query {q.shape[0]}, key {k.shape[0]}, value {v.shape[0]}."
        )
    if rank is not None and not same_grid and v.shape[1:-2] != k.shape[1:-2]:
        raise ValueError(
            f"{op}: key and value token grids differ: key {tuple(k.shape[1:-2])}, value "
            f"{tuple(v.shape[1:-2])}."
        )
    if rank is not None and same_grid and (
        k.shape[1:-2] != q.shape[1:-2] or v.shape[1:-2] != q.shape[1:-2]
    ):
        raise ValueError(
            f"{op}: token grids differ: query {tuple(q.shape[1:-2])}, key {tuple(k.shape[1:-2])}, "
            f"value {tuple(v.shape[1:-2])}."
        )
    if rank is None and v.shape[1] != k.shape[1]:
        raise ValueError(
            f"{op}: key and value sequence lengths differ: key {k.shape[1]}, value {v.shape[1]}."
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"{op}: key and value must have the same number of heads, got key heads "
            f"{k.shape[-2]} and value heads {v.shape[-2]}."
        )
    heads, heads_kv = q.shape[-2], k.shape[-2]
    if heads_kv < 1 or heads % heads_kv != 0:
        raise ValueError(
            f"{op}: query heads ({heads}) must be divisible by key/value heads ({heads_kv}) "
            "(GQA/MQA)."
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"{op}: query and key head_dim differ: query {q.shape[-1]}, key {k.shape[-1]}."
        )
    for name, t in (("query", q), ("key", k), ("value", v)):
        if any(s == 0 for s in t.shape):
            raise ValueError(f"{op}: `{name}` has an empty dimension: shape {tuple(t.shape)}.")
    return q, k, v


def check_na_params(
    shape: Sequence[int],
    kernel_size: Any,
    stride: Any,
    dilation: Any,
    is_causal: Any,
) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...], Tuple[bool, ...]]:
    """Broadcast and validate the per-axis window parameters against the token grid ``shape``."""
    rank = len(shape)
    ks = as_int_tuple("kernel_size", kernel_size, rank)
    st = as_int_tuple("stride", stride, rank)
    dl = as_int_tuple("dilation", dilation, rank)
    ca = as_bool_tuple("is_causal", is_causal, rank)
    for a in range(rank):
        ax = axis_name(rank, a)
        n = int(shape[a])
        if ks[a] < 2:
            raise ValueError(f"`kernel_size` must be >= 2 on every axis, got {ks[a]} on {ax}.")
        if ks[a] > n:
            raise ValueError(
                f"`kernel_size` ({ks[a]}) is larger than the input size ({n}) on {ax}."
            )
        if st[a] < 1 or st[a] > ks[a]:
            raise ValueError(
                f"`stride` must satisfy 1 <= stride <= kernel_size on every axis, got stride "
                f"{st[a]} with kernel_size {ks[a]} on {ax}."
            )
        if dl[a] < 1:
            raise ValueError(f"`dilation` must be >= 1 on every axis, got {dl[a]} on {ax}.")
        if ks[a] * dl[a] > n:
            raise ValueError(
                f"`kernel_size` x `dilation` ({ks[a]} x {dl[a]} = {ks[a] * dl[a]}) exceeds the "
                f"input size ({n}) on {ax}."
            )
    return ks, st, dl, ca


def check_region(
    q_shape: Sequence[int],
    kv_shape: Sequence[int],
    global_shape: Any,
    q_origin: Any,
    kv_origin: Any,
    kernel_size: Tuple[int, ...],
    stride: Tuple[int, ...],
    dilation: Tuple[int, ...],
    is_causal: Tuple[bool, ...],
):
    """Validate where the query and key/value slabs lie in the global grid.

    Returns a :class:`natten.window.Region`, or None when both tensors hold the whole grid. The
    window parameters must already be validated against ``global_shape``. The key slab must hold
    every key the query slab attends; otherwise a ``ValueError`` names the axis and both ranges.
    """
    from ..window import Region, axis_key_range

    rank = len(q_shape)
    g = tuple(q_shape) if global_shape is None else as_int_tuple("global_shape", global_shape, rank)
    qo = (0,) * rank if q_origin is None else as_int_tuple("q_origin", q_origin, rank)
    ko = (0,) * rank if kv_origin is None else as_int_tuple("kv_origin", kv_origin, rank)
    for a in range(rank):
        ax = axis_name(rank, a)
        for name, origin, extent, what in (
            ("q_origin", qo[a], q_shape[a], "query"), ("kv_origin", ko[a], kv_shape[a], "key"),
        ):
            if origin < 0 or origin + extent > g[a]:
                raise ValueError(
                    f"the {what} slab [{origin}, {origin + extent}) (`{name}` {origin}, extent "
                    f"{extent}) does not lie inside `global_shape` ({g[a]}) on {ax}."
                )
        lo, hi = axis_key_range(
            g[a], kernel_size[a], stride[a], dilation[a], is_causal[a], qo[a], qo[a] + q_shape[a]
        )
        if lo < ko[a] or hi > ko[a] + kv_shape[a]:
            raise ValueError(
                f"the key slab [{ko[a]}, {ko[a] + kv_shape[a]}) on {ax} does not cover the keys "
                f"[{lo}, {hi}) that the query slab [{qo[a]}, {qo[a] + q_shape[a]}) attends "
                f"(global_shape {g[a]}, kernel_size {kernel_size[a]}, stride {stride[a]}, "
                f"dilation {dilation[a]}, is_causal {is_causal[a]})."
            )
    if tuple(q_shape) == g and tuple(kv_shape) == g:
        return None  # origins are then necessarily 0: the whole grid
    return Region(qo, tuple(int(x) for x in q_shape), ko, tuple(int(x) for x in kv_shape))


def check_additional_kv(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    additional_keys: Any,
    additional_values: Any,
) -> bool:
    """Validate the optional additional keys/values; return whether they are present."""
    if additional_keys is None and additional_values is None:
        return False
    if additional_keys is None or additional_values is None:
        missing = "additional_values" if additional_values is None else "additional_keys"
        raise ValueError(
            f"`additional_keys` and `additional_values` must be given together; `{missing}` is None."
        )
    ak = check_tensor("additional_keys", additional_keys)
    av = check_tensor("additional_values", additional_values)
    check_same_dtype_device(
        [("query", query), ("additional_keys", ak), ("additional_values", av)]
    )
    for name, t in (("additional_keys", ak), ("additional_values", av)):
        if t.dim() != 4:
            raise ValueError(
                f"`{name}` must have shape [batch, seqlen, heads_kv, head_dim] (4 dims), got "
                f"{t.dim()} dims with shape {tuple(t.shape)}."
            )
        if any(s == 0 for s in t.shape):
            raise ValueError(f"`{name}` has an empty dimension: shape {tuple(t.shape)}.")
    if ak.shape[0] != query.shape[0] or av.shape[0] != query.shape[0]:
        raise ValueError(
            f"additional keys/values batch ({ak.shape[0]}, {av.shape[0]}) must equal the query "
            f"batch ({query.shape[0]})."
        )
    if ak.shape[1] != av.shape[1]:
        raise ValueError(
            f"`additional_keys` ({ak.shape[1]} tokens) and `additional_values` ({av.shape[1]} "
            "tokens) must have the same sequence length."
        )
    if ak.shape[2] != key.shape[-2] or av.shape[2] != key.shape[-2]:
        raise ValueError(
            f"additional keys/values heads ({ak.shape[2]}, {av.shape[2]}) must equal the key/value "
            f"heads ({key.shape[-2]})."
        )
    if ak.shape[3] != key.shape[-1]:
        raise ValueError(
            f"`additional_keys` head_dim ({ak.shape[3]}) must equal the key head_dim "
            f"({key.shape[-1]})."
        )
    if av.shape[3] != value.shape[-1]:
        raise ValueError(
            f"`additional_values` head_dim ({av.shape[3]}) must equal the value head_dim "
            f"({value.shape[-1]})."
        )
    return True


def check_optional_tile(name: str, value: Any, rank: int) -> Optional[Tuple[int, ...]]:
    """Validate an optional per-axis tile shape (positive ints, one per axis)."""
    if value is None:
        return None
    t = as_int_tuple(name, value, rank)
    for a, v in enumerate(t):
        if v < 1:
            raise ValueError(f"`{name}` must be positive, got {v} on {axis_name(rank, a)}.")
    return t


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r} ({type(value).__name__}).")
    return value
