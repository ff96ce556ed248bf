"""Global switches with NATTEN's names and defaults.

They are process-wide (not thread-local) and read by the dispatcher and the fused backends.
"""

from __future__ import annotations

import logging
import warnings
from enum import Enum

import torch

logger = logging.getLogger("natten")


class MemoryUsagePreference(Enum):
    Default = 0
    Strict = 1
    Unrestricted = 2


class _Context:
    # Bumped by every setter: cached call plans (functional._PLANS) include it in their key.
    version: int = 0
    deterministic: bool = False
    kv_parallelism: bool = True
    memory_preference: MemoryUsagePreference = MemoryUsagePreference.Default
    # The flex backends compile FlexAttention on CUDA by default (forward and backward): eager
    # FlexAttention materialises every score (O(N^2) memory and time), so compiling is what makes
    # the backend usable at all; compiled FlexAttention (forward and backward, logsumexp gradient
    # included) is the standard, supported way to run it in torch >= 2.5. CPU never compiles.
    flex_compile: bool = True
    flex_compile_backprop: bool = True


def _require_bool(name: str, mode: object) -> bool:
    _Context.version += 1
    if not isinstance(mode, bool):
        raise TypeError(f"`{name}` must be a bool, got {mode!r} ({type(mode).__name__}).")
    return mode


def use_kv_parallelism_in_fused_na(mode: bool = True) -> None:
    """Enable or disable KV parallelism in the fused backward (on by default).

    In ``cutlass-fna`` the dK / dV kernel runs one CTA per key tile (KV parallelism on). Turned
    off, one CTA per (batch, kv head, dilation group) walks all of its key tiles, as
    ``backward_kv_splits=(1,) * rank`` would (natten-kernels >= 1.3). natten's backward computes dQ
    in its own query-parallel kernel, so neither setting uses atomics or extra memory and the
    gradients are bit-identical either way; the switch only trades parallelism, and exists for
    code written for NATTEN. ``backward_kv_splits`` given to a call takes precedence.
    """
    _Context.kv_parallelism = _require_bool("mode", mode)
    if not mode:
        warnings.warn(
            "natten.use_kv_parallelism_in_fused_na(False): the cutlass-fna dK/dV kernel now runs "
            "one CTA per (batch, kv head, dilation group) over all of its key tiles, which slows "
            "the backward down; natten's KV parallelism needs no extra memory or atomics, so "
            "turning it off saves nothing. Use backward_kv_splits= on a call to cap the "
            "parallelism per axis instead.",
            stacklevel=2,
        )


def is_kv_parallelism_in_fused_na_enabled() -> bool:
    """Whether KV parallelism is enabled for the fused backward."""
    return _Context.kv_parallelism


def set_memory_usage_preference(pref: str = "default") -> None:
    """Set how much extra memory the fused backward may use: ``"default"``, ``"strict"`` or
    ``"unrestricted"``."""
    table = {
        "default": MemoryUsagePreference.Default,
        "strict": MemoryUsagePreference.Strict,
        "unrestricted": MemoryUsagePreference.Unrestricted,
    }
    if not isinstance(pref, str) or pref not in table:
        raise ValueError(
            "natten.set_memory_usage_preference accepts only 'default', 'strict' or "
            f"'unrestricted', got {pref!r}."
        )
    _Context.memory_preference = table[pref]
    _Context.version += 1


def get_memory_usage_preference() -> MemoryUsagePreference:
    """The current memory-usage preference."""
    return _Context.memory_preference


def is_memory_usage_default() -> bool:
    return _Context.memory_preference == MemoryUsagePreference.Default


def is_memory_usage_strict() -> bool:
    return _Context.memory_preference == MemoryUsagePreference.Strict


def is_memory_usage_unrestricted() -> bool:
    return _Context.memory_preference == MemoryUsagePreference.Unrestricted


def use_deterministic_algorithms(mode: bool = True) -> None:
    """Make every natten backward deterministic (bit-identical across runs).

    ``torch.use_deterministic_algorithms(True)`` has the same effect.
    """
    _Context.deterministic = _require_bool("mode", mode)


def are_deterministic_algorithms_enabled() -> bool:
    """True if natten's or PyTorch's deterministic mode is on."""
    return _Context.deterministic or torch.are_deterministic_algorithms_enabled()


def allow_flex_compile(mode: bool = True, backprop: bool = False) -> None:
    """Allow the flex backends to ``torch.compile`` FlexAttention (forward; and backward if
    ``backprop``). Both are allowed by default (on CUDA; CPU always runs FlexAttention eagerly)."""
    _Context.flex_compile = _require_bool("mode", mode)
    _Context.flex_compile_backprop = _require_bool("mode", mode) and _require_bool(
        "backprop", backprop
    )


def allow_flex_compile_backprop(mode: bool = True) -> None:
    """Allow compiled FlexAttention in training (forward and backward)."""
    _require_bool("mode", mode)
    if mode:
        _Context.flex_compile = True
    _Context.flex_compile_backprop = mode


def disable_flex_compile() -> None:
    """Disallow compiled FlexAttention altogether (the flex backends then run eagerly)."""
    _Context.version += 1
    _Context.flex_compile = False
    _Context.flex_compile_backprop = False


def disable_flex_compile_backprop() -> None:
    """Disallow compiled FlexAttention when gradients are needed."""
    _Context.version += 1
    _Context.flex_compile_backprop = False


def is_flex_compile_allowed() -> bool:
    return _Context.flex_compile


def is_flex_compile_backprop_allowed() -> bool:
    return _Context.flex_compile_backprop
