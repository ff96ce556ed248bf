"""Backends and the one dispatcher.

Each backend module exposes ``can_run_fna(...)`` / ``can_run_fmha(...)`` returning ``None`` when it
can run a problem or a string saying why not, and ``fna(...)`` / ``fmha(...)`` that run it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Dict, List, Optional, Tuple

from torch import Tensor

from ..window import WindowSpec
from . import blackwell, cutlass, flex, hopper, reference

# In order of preference for automatic selection.
FNA_BACKENDS: Dict[str, ModuleType] = {
    "blackwell-fna": blackwell,
    "hopper-fna": hopper,
    "cutlass-fna": cutlass,
    "flex-fna": flex,
    "reference": reference,
}
FMHA_BACKENDS: Dict[str, ModuleType] = {
    "blackwell-fmha": blackwell,
    "hopper-fmha": hopper,
    "cutlass-fmha": cutlass,
    "flex-fmha": flex,
    "reference": reference,
}
# An FNA backend name given to attention() (or an FMHA name to naXd) maps to its sibling.
FNA_TO_FMHA = {
    "blackwell-fna": "blackwell-fmha",
    "hopper-fna": "hopper-fmha",
    "cutlass-fna": "cutlass-fmha",
    "flex-fna": "flex-fmha",
    "reference": "reference",
}
FMHA_TO_FNA = {v: k for k, v in FNA_TO_FMHA.items()}


class BackendNotSupportedError(ValueError):
    """The requested backend cannot run this problem here; the message says why."""


def _device_order(names: List[str], query: Tensor) -> List[str]:
    """Automatic-selection order on this device: off CUDA the exact ``reference`` backend comes
    first (FlexAttention on CPU is an unfused eager path; it runs only when asked for by name)."""
    if query.is_cuda:
        return names
    return sorted(names, key=lambda n: n != "reference")


def fna_reasons(
    query: Tensor, key: Tensor, value: Tensor, spec: WindowSpec, torch_compile: bool = False
) -> List[Tuple[str, Optional[str]]]:
    return [
        (name, FNA_BACKENDS[name].can_run_fna(query, key, value, spec, torch_compile))
        for name in _device_order(list(FNA_BACKENDS), query)
    ]


def fmha_reasons(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool = False,
    is_varlen: bool = False,
    torch_compile: bool = False,
) -> List[Tuple[str, Optional[str]]]:
    return [
        (name, FMHA_BACKENDS[name].can_run_fmha(query, key, value, is_causal, is_varlen, torch_compile))
        for name in _fmha_order(_device_order(list(FMHA_BACKENDS), query), query, key, value)
    ]


def _fmha_order(names: List[str], query: Tensor, key: Tensor, value: Tensor) -> List[str]:
    """Dense attention: where FlexAttention compiles, ``flex-fmha`` comes before ``cutlass-fmha``.

    ``cutlass-fmha`` is the SM80-class neighborhood kernel with a window covering every key;
    measured on an H200 (2026-11-25, fp16, 2 x 16 heads x 8192 tokens, head dim 128) it ran dense
    attention at 0.29x of cuDNN (causal 0.31x) where compiled FlexAttention ran 0.76x (0.71x).
    Uncompiled (eager) FlexAttention is far slower, so without compilation the order stays."""
    if not query.is_cuda or "flex-fmha" not in names or "cutlass-fmha" not in names:
        return names
    if not flex._use_compile(query, flex._needs_grad(query, key, value)):
        return names
    names = [n for n in names if n != "flex-fmha"]
    names.insert(names.index("cutlass-fmha"), "flex-fmha")
    return names


def _spec_from_tensors(query: Tensor) -> WindowSpec:
    shape = tuple(int(s) for s in query.shape[1:-2])
    rank = len(shape)
    return WindowSpec(shape, (2,) * rank, (1,) * rank, (1,) * rank, (False,) * rank)


def get_compatible_backends(
    query: Tensor, key: Tensor, value: Tensor, torch_compile: bool = False
) -> List[str]:
    """Neighborhood-attention backends that can run these (heads-last) tensors here, best first."""
    return [n for n, r in fna_reasons(query, key, value, _spec_from_tensors(query), torch_compile) if r is None]


def get_compatible_fmha_backends(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool = False,
    is_varlen: bool = False,
    torch_compile: bool = False,
) -> List[str]:
    """Dense-attention backends that can run these ``[B, N, H, D]`` tensors here, best first."""
    return [
        n
        for n, r in fmha_reasons(query, key, value, is_causal, is_varlen, torch_compile)
        if r is None
    ]


def _unknown(backend: object, known: Dict[str, ModuleType]) -> ValueError:
    return ValueError(
        f"Unknown `backend` {backend!r}; choose one of {sorted(known)} or None (automatic)."
    )


def _choose(
    backend: Optional[str],
    table: Dict[str, ModuleType],
    aliases: Dict[str, str],
    reasons: Callable[[], List[Tuple[str, Optional[str]]]],
    reason_of: Callable[[ModuleType], Optional[str]],
    what: str,
    declines: Optional[Callable[[ModuleType], Optional[str]]] = None,
) -> Tuple[str, ModuleType]:
    """Resolve an explicit backend (checking it can run, else saying why and which can) or pick
    the first that can run and does not decline automatic selection (a module's optional
    ``auto_reason``: problems it runs, but slower than the next backend, measured)."""
    if backend is None:
        listed = reasons()
        for name, reason in listed:
            if reason is None and (declines is None or declines(table[name]) is None):
                return name, table[name]
        for name, reason in listed:
            if reason is None:
                return name, table[name]
        raise NotImplementedError(  # unreachable while the reference backend runs everything
            f"no backend can run this {what} problem: "
            + "; ".join(f"{n}: {r}" for n, r in listed)
        )
    if not isinstance(backend, str):
        raise _unknown(backend, table)
    backend = aliases.get(backend, backend) if backend not in table else backend
    if backend not in table:
        raise _unknown(backend, table)
    mod = table[backend]
    reason = reason_of(mod)
    if reason is not None:
        able = [n for n, r in reasons() if r is None]
        raise BackendNotSupportedError(
            f"backend {backend!r} cannot run this problem: {reason}. Backends that can: {able}."
        )
    return backend, mod


def choose_fna_backend(
    backend: Optional[str],
    query: Tensor,
    key: Tensor,
    value: Tensor,
    spec: WindowSpec,
    torch_compile: bool,
) -> Tuple[str, ModuleType]:
    """Resolve ``backend`` (None = best available) for a neighborhood-attention problem."""
    return _choose(
        backend, FNA_BACKENDS, FMHA_TO_FNA,
        lambda: fna_reasons(query, key, value, spec, torch_compile),
        lambda mod: mod.can_run_fna(query, key, value, spec, torch_compile),
        "neighborhood-attention",
        lambda mod: mod.auto_reason(query, key, value, spec) if hasattr(mod, "auto_reason") else None,
    )


def choose_fmha_backend(
    backend: Optional[str],
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool,
    is_varlen: bool,
    torch_compile: bool,
) -> Tuple[str, ModuleType]:
    """Resolve ``backend`` (None = best available) for a dense-attention problem."""
    return _choose(
        backend, FMHA_BACKENDS, FNA_TO_FMHA,
        lambda: fmha_reasons(query, key, value, is_causal, is_varlen, torch_compile),
        lambda mod: mod.can_run_fmha(query, key, value, is_causal, is_varlen, torch_compile),
        "attention",
    )


__all__ = [
    "BackendNotSupportedError",
    "FMHA_BACKENDS",
    "FNA_BACKENDS",
    "choose_fmha_backend",
    "choose_fna_backend",
    "get_compatible_backends",
    "get_compatible_fmha_backends",
]
