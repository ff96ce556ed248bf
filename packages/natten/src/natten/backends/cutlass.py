"""``cutlass-fna`` / ``cutlass-fmha``: fused kernels for SM80 and newer from natten-kernels."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

SUPPORTS_VARLEN = False


def can_run_fna(query: Tensor, key: Tensor, value: Tensor, spec: object, torch_compile: bool = False) -> Optional[str]:
    if not query.is_cuda:
        return f"it needs CUDA tensors, got tensors on {query.device}"
    return "the natten-kernels library is not wired in yet"


def can_run_fmha(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False,
                 is_varlen: bool = False, torch_compile: bool = False) -> Optional[str]:
    if not query.is_cuda:
        return f"it needs CUDA tensors, got tensors on {query.device}"
    return "the cutlass-fmha kernels are not part of this release yet"


def fna(*args, **kwargs):
    raise NotImplementedError("cutlass-fna is not wired in yet")


def fmha(*args, **kwargs):
    raise NotImplementedError("cutlass-fmha is not part of this release yet")
