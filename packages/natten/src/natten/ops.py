"""torch operators backed by the natten-kernels library.

Registered with ``torch.library.Library`` define/impl plus ``register_fake`` (no
``custom_op`` wrapper: it costs ~15 us more per call), so ``torch.compile(fullgraph=True)`` traces
through them and eager host overhead stays small. Autograd lives outside the operators
(see ``backends/cutlass.py``). All ctypes work happens in :mod:`natten._libnatten`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _libnatten

_LIB = torch.library.Library("natten", "DEF")
# global_shape / q_origin / kv_origin: slabs of a larger grid ([] = the tensors hold the whole
# grid). The output always has the query's token grid, so shapes depend on `query` alone.
_LIB.define(
    "fna_forward(Tensor query, Tensor key, Tensor value, int[] kernel_size, int[] stride, "
    "int[] dilation, bool[] is_causal, float scale, int[] q_tile, int[] kv_tile, "
    "int[] global_shape=[], int[] q_origin=[], int[] kv_origin=[], int backend=1, "
    "int kernel_schedule=0) -> (Tensor, Tensor)"
)
# backend: natten_backend of the C ABI (1 = cutlass-fna, the SM80 kernel; 2 = hopper-fna, the
# sm_90a kernel; 0 = let the library choose). backends/cutlass.py and backends/hopper.py share
# this operator and differ only in this argument. kernel_schedule: natten_kernel_schedule of the C
# ABI (0 = default, 1 = cooperative, 2 = pingpong; the Hopper kernel's consumer schedule).

# Test hook: fill outputs with NaN before every kernel launch so unwritten elements show.
_POISON_OUTPUTS = False


def set_poison_outputs(mode: bool) -> None:
    """Fill kernel outputs with NaN before each launch (for tests)."""
    global _POISON_OUTPUTS
    _POISON_OUTPUTS = bool(mode)


def _fna_out_shapes(query: Tensor, value: Tensor) -> Tuple[List[int], List[int]]:
    out_shape = [*query.shape[:-1], value.shape[-1]]
    return out_shape, list(query.shape[:-1])


def _fna_forward_cuda(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: List[int],
    stride: List[int],
    dilation: List[int],
    is_causal: List[bool],
    scale: float,
    q_tile: List[int],
    kv_tile: List[int],
    global_shape: Sequence[int] = (),
    q_origin: Sequence[int] = (),
    kv_origin: Sequence[int] = (),
    backend: int = _libnatten.BACKEND_CUTLASS_FNA_SM80,
    kernel_schedule: int = 0,
) -> Tuple[Tensor, Tensor]:
    query, key, value = kernel_ready(query), kernel_ready(key), kernel_ready(value)
    out, lse = new_outputs(query, value)
    _libnatten.fna_forward(
        query, key, value, out, lse, kernel_size, stride, dilation, is_causal, scale,
        q_tile=q_tile or None, kv_tile=kv_tile or None, backend=int(backend),
        global_shape=global_shape or None, q_origin=q_origin or None, kv_origin=kv_origin or None,
        kernel_schedule=_SCHEDULE_NAMES.get(int(kernel_schedule), int(kernel_schedule)) if kernel_schedule else None,
    )
    return out, lse


_SCHEDULE_NAMES = {i: name for name, i in _libnatten.KERNEL_SCHEDULES.items()}


def kernel_ready(t: Tensor) -> Tensor:
    """``t`` itself if the kernels can read it in place (dense head dim, 16-byte aligned rows, as
    they load 128-bit vectors), else a contiguous copy."""
    if is_kernel_ready(t):
        return t
    return t.contiguous()


def is_kernel_ready(t: Tensor) -> bool:
    vec = 16 // t.element_size()
    strides = t.stride()
    return (
        strides[-1] == 1
        and t.data_ptr() % 16 == 0
        and all(s % vec == 0 for s in strides[:-1])
    )


def new_outputs(query: Tensor, value: Tensor) -> Tuple[Tensor, Tensor]:
    """Output and logsumexp tensors of a forward (NaN-filled while poisoning is on)."""
    out_shape, lse_shape = _fna_out_shapes(query, value)
    if _POISON_OUTPUTS:
        return (
            torch.full(out_shape, float("nan"), dtype=query.dtype, device=query.device),
            torch.full(lse_shape, float("nan"), dtype=torch.float32, device=query.device),
        )
    return (
        torch.empty(out_shape, dtype=query.dtype, device=query.device),
        torch.empty(lse_shape, dtype=torch.float32, device=query.device),
    )


_LIB.impl("fna_forward", _fna_forward_cuda, "CUDA")


@torch.library.register_fake("natten::fna_forward")
def _fna_forward_fake(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: List[int],
    stride: List[int],
    dilation: List[int],
    is_causal: List[bool],
    scale: float,
    q_tile: List[int],
    kv_tile: List[int],
    global_shape: Sequence[int] = (),
    q_origin: Sequence[int] = (),
    kv_origin: Sequence[int] = (),
    backend: int = _libnatten.BACKEND_CUTLASS_FNA_SM80,
    kernel_schedule: int = 0,
) -> Tuple[Tensor, Tensor]:
    # Slabs or not, out is [B, *query grid, H, Dv] and lse [B, *query grid, H].
    out_shape, lse_shape = _fna_out_shapes(query, value)
    return (
        query.new_empty(out_shape, dtype=query.dtype),
        query.new_empty(lse_shape, dtype=torch.float32),
    )


fna_forward = torch.ops.natten.fna_forward
# The same computation without the dispatcher round trip, for eager calls (torch.compile traces
# `fna_forward`; eager callers save ~20-30 us per call by calling the implementation directly).
fna_forward_eager = _fna_forward_cuda


# ------------------------------------------------------------------------------------------------
# Backward (natten-kernels ABI >= 1.1; slabs need ABI >= 1.2)
# ------------------------------------------------------------------------------------------------

# global_shape / q_origin / kv_origin: the forward's slabs ([] = the whole grid). The gradients have
# the shapes of their inputs: d_q like query (the query slab's grid), d_k / d_v like key / value
# (the key slab's grid). kv_splits: KV parallelism of the dK / dV kernel ([] = one CTA per key tile).
# backend: natten_backend of the C ABI; 0 (AUTO) runs dQ on the Hopper kernel on SM 9.0 where it can
# (natten-kernels >= 1.3.1; the rest on the SM80 kernels), 1 keeps every kernel on SM80.
_LIB.define(
    "fna_backward(Tensor query, Tensor key, Tensor value, Tensor out, Tensor lse, Tensor d_out, "
    "Tensor? d_lse, int[] kernel_size, int[] stride, int[] dilation, bool[] is_causal, float scale, "
    "int[] q_tile, int[] kv_tile, bool deterministic, int[] global_shape=[], int[] q_origin=[], "
    "int[] kv_origin=[], int[] kv_splits=[], int backend=0) -> (Tensor, Tensor, Tensor)"
)


def new_grads(query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """dQ, dK, dV tensors (NaN-filled while poisoning is on)."""
    if _POISON_OUTPUTS:
        return tuple(torch.full(t.shape, float("nan"), dtype=t.dtype, device=t.device)  # type: ignore[return-value]
                     for t in (query, key, value))
    # empty_like parses fewer arguments than empty(shape, dtype=, device=): ~2x less host time
    # (benchmarks/NOTES.md, twenty-seventh session); the result is the same contiguous tensor.
    cf = torch.contiguous_format
    return (torch.empty_like(query, memory_format=cf), torch.empty_like(key, memory_format=cf),
            torch.empty_like(value, memory_format=cf))


def _fna_backward_cuda(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    lse: Tensor,
    d_out: Tensor,
    d_lse: Optional[Tensor],
    kernel_size: List[int],
    stride: List[int],
    dilation: List[int],
    is_causal: List[bool],
    scale: float,
    q_tile: List[int],
    kv_tile: List[int],
    deterministic: bool,
    global_shape: Sequence[int] = (),
    q_origin: Sequence[int] = (),
    kv_origin: Sequence[int] = (),
    kv_splits: Sequence[int] = (),
    backend: int = 0,
) -> Tuple[Tensor, Tensor, Tensor]:
    query, key, value = kernel_ready(query), kernel_ready(key), kernel_ready(value)
    out, d_out = kernel_ready(out), kernel_ready(d_out)
    if d_lse is not None and d_lse.dtype != torch.float32:
        d_lse = d_lse.float()
    d_q, d_k, d_v = new_grads(query, key, value)  # contiguous, like the fake
    _libnatten.fna_backward(
        query, key, value, out, lse, d_out, d_lse, d_q, d_k, d_v, kernel_size, stride, dilation,
        is_causal, scale, q_tile=q_tile or None, kv_tile=kv_tile or None, deterministic=deterministic,
        global_shape=global_shape or None, q_origin=q_origin or None, kv_origin=kv_origin or None,
        kv_splits=list(kv_splits) or None, backend=int(backend),
    )
    return d_q, d_k, d_v


_LIB.impl("fna_backward", _fna_backward_cuda, "CUDA")


@torch.library.register_fake("natten::fna_backward")
def _fna_backward_fake(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    lse: Tensor,
    d_out: Tensor,
    d_lse: Optional[Tensor],
    kernel_size: List[int],
    stride: List[int],
    dilation: List[int],
    is_causal: List[bool],
    scale: float,
    q_tile: List[int],
    kv_tile: List[int],
    deterministic: bool,
    global_shape: Sequence[int] = (),
    q_origin: Sequence[int] = (),
    kv_origin: Sequence[int] = (),
    kv_splits: Sequence[int] = (),
    backend: int = 0,
) -> Tuple[Tensor, Tensor, Tensor]:
    # Slabs or not: d_q like query, d_k / d_v like key / value (their own token grids).
    return (
        query.new_empty(query.shape),
        key.new_empty(key.shape),
        value.new_empty(value.shape),
    )


fna_backward = torch.ops.natten.fna_backward
fna_backward_eager = _fna_backward_cuda
