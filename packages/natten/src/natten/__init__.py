"""natten: neighborhood attention for PyTorch, on any device.

The public API is that of NATTEN 0.21: ``na1d/na2d/na3d``, ``attention``, ``merge_attentions``,
the ``NeighborhoodAttention1D/2D/3D`` modules and the context switches.
"""

from . import backends
from .backends import get_compatible_backends, get_compatible_fmha_backends
from .backends.cutlass import (
    get_bwd_configs_for_cutlass_fmha,
    get_bwd_configs_for_cutlass_fna,
    get_configs_for_cutlass_fmha,
    get_configs_for_cutlass_fna,
)
from .backends.hopper import get_configs_for_cutlass_hopper_fmha, get_configs_for_cutlass_hopper_fna
from .context import (
    allow_flex_compile,
    allow_flex_compile_backprop,
    are_deterministic_algorithms_enabled,
    disable_flex_compile,
    disable_flex_compile_backprop,
    get_memory_usage_preference,
    is_flex_compile_allowed,
    is_flex_compile_backprop_allowed,
    is_kv_parallelism_in_fused_na_enabled,
    set_memory_usage_preference,
    use_deterministic_algorithms,
    use_kv_parallelism_in_fused_na,
)
from .functional import attention, merge_attentions, na1d, na2d, na3d
from .modules import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

from ._version import __version__

__all__ = [
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "allow_flex_compile",
    "allow_flex_compile_backprop",
    "are_deterministic_algorithms_enabled",
    "attention",
    "backends",
    "disable_flex_compile",
    "disable_flex_compile_backprop",
    "get_compatible_backends",
    "get_compatible_fmha_backends",
    "get_bwd_configs_for_cutlass_fmha",
    "get_bwd_configs_for_cutlass_fna",
    "get_configs_for_cutlass_fmha",
    "get_configs_for_cutlass_fna",
    "get_configs_for_cutlass_hopper_fmha",
    "get_configs_for_cutlass_hopper_fna",
    "get_memory_usage_preference",
    "is_flex_compile_allowed",
    "is_flex_compile_backprop_allowed",
    "is_kv_parallelism_in_fused_na_enabled",
    "merge_attentions",
    "na1d",
    "na2d",
    "na3d",
    "set_memory_usage_preference",
    "use_deterministic_algorithms",
    "use_kv_parallelism_in_fused_na",
]
