"""``cutlass-fna`` / ``cutlass-fmha``: fused kernels for SM80 and newer from natten-kernels.

This release has the fused neighborhood-attention *forward* (with logsumexp). Training through
this backend (the fused backward) and ``cutlass-fmha`` are not in it yet: ``can_run_*`` says so,
so automatic selection falls back to another backend and an explicit request explains why.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _libnatten

SUPPORTS_VARLEN = False

_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=256)
def _kernel_reason(dtype: torch.dtype, rank: int, head_dim: int, head_dim_v: int, device: int) -> Optional[str]:
    return _libnatten.fna_supports(dtype, rank, head_dim, head_dim_v, device=device)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def can_run_fna(
    query: Tensor, key: Tensor, value: Tensor, spec: object, torch_compile: bool = False
) -> Optional[str]:
    """None if ``cutlass-fna`` can run this problem here, else the reason."""
    if query.device.type != "cuda":
        return f"it needs CUDA tensors, got tensors on {query.device}"
    reason = _libnatten.unavailable_reason()
    if reason is not None:
        return reason
    if query.dtype not in _DTYPES:
        return f"it supports float16 and bfloat16, got {query.dtype}"
    if _needs_grad(query, key, value):
        return (
            "its fused backward is not in this release yet (inputs require grad); use "
            "backend='reference' for training"
        )
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    return _kernel_reason(
        query.dtype, query.dim() - 3, int(query.shape[-1]), int(value.shape[-1]), index
    )


def can_run_fmha(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool = False,
    is_varlen: bool = False,
    torch_compile: bool = False,
) -> Optional[str]:
    if query.device.type != "cuda":
        return f"it needs CUDA tensors, got tensors on {query.device}"
    return "the cutlass-fmha (dense attention) kernels are not in this release yet"


def _kernel_ready(t: Tensor) -> Tensor:
    """Dense head dim and 16-byte aligned rows, as the kernels load 128-bit vectors."""
    vec = 16 // t.element_size()
    aligned = t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(
        s % vec == 0 for s in t.stride()[:-1]
    )
    return t if aligned else t.contiguous()


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
    """Fused forward; returns ``(out, lse)``."""
    from .. import ops

    if _needs_grad(query, key, value):
        raise NotImplementedError(
            "cutlass-fna has no fused backward in this release; use backend='reference' for "
            "training"
        )
    if (q_tile_shape is None) != (kv_tile_shape is None):
        raise ValueError(
            "`q_tile_shape` and `kv_tile_shape` must be given together for cutlass-fna "
            f"(got {q_tile_shape} and {kv_tile_shape}); see natten.get_configs_for_cutlass_fna."
        )
    out, lse = ops.fna_forward(
        _kernel_ready(query), _kernel_ready(key), _kernel_ready(value),
        list(spec.kernel_size), list(spec.stride), list(spec.dilation), list(spec.is_causal),
        float(scale), list(q_tile_shape or ()), list(kv_tile_shape or ()),
    )
    return out, lse


def fmha(*args, **kwargs):
    raise NotImplementedError("the cutlass-fmha (dense attention) kernels are not in this release yet")


def get_configs_for_cutlass_fna(query: Tensor, key: Tensor, value: Tensor) -> List[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """Valid ``(q_tile_shape, kv_tile_shape)`` pairs of ``cutlass-fna`` for these tensors here."""
    reason = can_run_fna(query, key, value, None)
    if reason is not None and not _needs_grad(query, key, value):
        raise ValueError(f"cutlass-fna cannot run these tensors: {reason}")
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    configs = _libnatten.query_configs(
        query.dtype, query.dim() - 3, int(query.shape[-1]), int(value.shape[-1]), device=index
    )
    return [(c["q_tile"], c["kv_tile"]) for c in configs]
