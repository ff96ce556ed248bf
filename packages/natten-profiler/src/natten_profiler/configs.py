"""Which backends can run a use case here and with which tile configurations (``--dry-run``).

A thin layer over what natten and the kernel library report:

* every backend's availability and reason come from ``natten.backends.fna_reasons``;
* ``reference``: one configuration (it has no tiles);
* ``flex-fna``: candidate tile shapes (power-of-two, 64 or 128 tokens, fitting the problem; see
  :func:`natten_profiler.simulator.candidate_tile_shapes`), best simulated tile bound first;
* the fused backends (``cutlass-fna``, ``hopper-fna``, ``blackwell-fna``): the configurations the
  kernel library reports through ``natten._libnatten.query_configs`` (a ctypes wrapper of
  ``natten_fna_query_configs``), when that API is present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .problem import UseCase
from .runners import NATTEN_BACKENDS, natten_reasons
from . import simulator

Tile = Optional[Tuple[int, ...]]

# Dry-run order: natten's preference order for automatic selection, reference last.
BACKEND_ORDER = ("blackwell-fna", "hopper-fna", "cutlass-fna", "flex-fna", "reference")


@dataclass
class Config:
    backend: str
    q_tile_shape: Tile = None
    kv_tile_shape: Tile = None
    backward_q_tile_shape: Tile = None
    backward_kv_tile_shape: Tile = None
    kernel_schedule: Optional[str] = None
    tile_bound: Optional[float] = None  # simulated upper bound on the speedup over dense

    def label(self) -> str:
        if self.q_tile_shape is None and self.kv_tile_shape is None:
            return f"{self.backend} (no tiles)" if self.backend == "reference" else f"{self.backend} (default tiles)"
        x = lambda t: "-" if t is None else "x".join(map(str, t))  # noqa: E731
        s = f"{self.backend} q {x(self.q_tile_shape)} kv {x(self.kv_tile_shape)}"
        if self.kernel_schedule:
            s += f" {self.kernel_schedule}"
        return s

    def to_dict(self) -> Dict[str, Any]:
        lst = lambda t: None if t is None else list(t)  # noqa: E731
        return {
            "backend": self.backend,
            "q_tile_shape": lst(self.q_tile_shape),
            "kv_tile_shape": lst(self.kv_tile_shape),
            "backward_q_tile_shape": lst(self.backward_q_tile_shape),
            "backward_kv_tile_shape": lst(self.backward_kv_tile_shape),
            "kernel_schedule": self.kernel_schedule,
            "tile_bound": self.tile_bound,
        }


@dataclass
class BackendConfigs:
    backend: str
    available: bool
    reason: Optional[str] = None
    configs: List[Config] = field(default_factory=list)
    source: str = ""
    note: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "backend": self.backend,
            "available": self.available,
            "reason": self.reason,
            "source": self.source,
            "note": self.note,
            "num_configs": len(self.configs),
            "configs": [c.to_dict() for c in self.configs],
        }


def _tile_bound(uc: UseCase, q: Sequence[int], kv: Sequence[int]) -> Optional[float]:
    try:
        return simulator.simulate(
            uc.input_size, uc.window_size, uc.stride, uc.dilation, uc.causal, q, kv
        ).tile_bound
    except Exception:
        return None


def flex_configs(uc: UseCase, products: Sequence[int] = (64, 128)) -> List[Config]:
    """Candidate tile shapes for flex-fna (same shape for queries and keys), best bound first."""
    ranked = simulator.rank_tilings(
        uc.input_size, uc.window_size, uc.stride, uc.dilation, uc.causal, products=products
    )
    return [Config("flex-fna", r.q_tile, r.kv_tile, tile_bound=r.tile_bound) for r in ranked]


def rank_library_configs(uc: UseCase, backend: str, configs: Sequence[Config]) -> List[Config]:
    """natten's own choice first (what a user gets without tile options), then the library's tile
    pairs by simulated tile bound, highest first (fewest visited pairs; ties keep the library's
    order, pairs the simulator cannot rate go last). The library lists its pairs per (rank, head
    dim, dtype), not per problem (``natten_fna_query_configs`` has no shape to rank them by), so
    without this ``--max-configs N`` would time the first N of an enumeration order: on a rank-3
    problem with 128-token tiles, N of 1296 pairs that mostly put the whole query tile on one axis."""
    for c in configs:
        if c.q_tile_shape and c.kv_tile_shape:
            c.tile_bound = _tile_bound(uc, c.q_tile_shape, c.kv_tile_shape)
    # sorted() is stable: equal bounds keep the library's order
    ranked = sorted(configs, key=lambda c: (c.tile_bound is None, -(c.tile_bound or 0.0)))
    return [Config(backend)] + ranked


# ---------------------------------------------------------------------------------------------
# The kernel library's query API
# ---------------------------------------------------------------------------------------------

def _normalize_tile(t: Any, rank: int) -> Tile:
    if t is None:
        return None
    vals = [int(x) for x in t][:rank]
    return tuple(vals) if vals else None


def _normalize_lib_config(item: Any, backend: str, rank: int) -> Optional[Config]:
    """One entry of ``query_configs``: ``{"backend", "q_tile", "kv_tile", ...}`` (also accepts
    ``(q_tile, kv_tile)`` pairs). Entries of another backend are dropped."""
    if isinstance(item, dict):
        if item.get("backend") not in (None, backend):
            return None
        q = item.get("q_tile_shape", item.get("q_tile"))
        kv = item.get("kv_tile_shape", item.get("kv_tile"))
        sched = item.get("kernel_schedule", item.get("schedule"))
        return Config(
            backend, _normalize_tile(q, rank), _normalize_tile(kv, rank),
            _normalize_tile(item.get("backward_q_tile_shape"), rank),
            _normalize_tile(item.get("backward_kv_tile_shape"), rank),
            sched if isinstance(sched, str) else None,
        )
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return Config(backend, _normalize_tile(item[0], rank), _normalize_tile(item[1], rank))
    return None


def query_library_configs(
    backend: str, uc: UseCase, device: torch.device
) -> Tuple[Optional[List[Config]], Optional[str]]:
    """(configs, None) from the kernel library (``natten._libnatten.query_configs``, i.e.
    ``natten_fna_query_configs``) for this device, or (None, the reason there are none)."""
    try:
        from natten import _libnatten  # type: ignore[attr-defined]
    except Exception as e:
        return None, (
            "the kernel library's configuration query (natten._libnatten) is not available: "
            f"{type(e).__name__}: {e}"
        )
    fn = getattr(_libnatten, "query_configs", None)
    if fn is None:
        return None, "natten._libnatten has no query_configs()"
    why = getattr(_libnatten, "unavailable_reason", lambda: None)()
    if why:
        return None, f"the kernel library is not available: {why}"
    try:
        result = fn(
            dtype=uc.torch_dtype, rank=uc.rank, head_dim=uc.dim, head_dim_v=uc.dim_value,
            arch=None, device=device.index if device.type == "cuda" else None, backend=backend,
        )
    except Exception as e:
        return None, f"natten._libnatten.query_configs failed: {type(e).__name__}: {e}"
    configs = [c for c in (_normalize_lib_config(x, backend, uc.rank) for x in (result or [])) if c]
    if not configs:
        return None, "the kernel library reports no tile configuration for this problem"
    return configs, None


# ---------------------------------------------------------------------------------------------


def list_backend_configs(
    uc: UseCase,
    device: torch.device,
    backends: Optional[Sequence[str]] = None,
    torch_compile: bool = False,
) -> List[BackendConfigs]:
    """Every requested natten backend (default: all) with its availability and configurations."""
    reasons = natten_reasons(uc, device, torch_compile)
    names = list(backends) if backends else list(BACKEND_ORDER)
    out: List[BackendConfigs] = []
    for name in names:
        if name not in NATTEN_BACKENDS:
            out.append(BackendConfigs(name, False, f"{name!r} is not a natten backend"))
            continue
        reason = reasons.get(name, f"natten does not know backend {name!r}")
        if reason is not None:
            out.append(BackendConfigs(name, False, reason))
            continue
        if name == "reference":
            out.append(BackendConfigs(name, True, None, [Config("reference")], "no tiles"))
        elif name == "flex-fna":
            # natten's own choice first (what a user gets without tile options), then candidates.
            cfgs = [Config("flex-fna")] + flex_configs(uc)
            note = None
            if len(cfgs) == 1:
                note = "no power-of-two tile of 64 or 128 tokens fits this problem"
            out.append(BackendConfigs(name, True, None, cfgs, "simulator candidates", note))
        else:
            cfgs, why = query_library_configs(name, uc, device)
            if cfgs is None:
                out.append(BackendConfigs(
                    name, True, None, [Config(name)], "natten default",
                    note=f"tile list unavailable ({why}); the kernel library picks the tiles",
                ))
            else:
                out.append(BackendConfigs(name, True, None, rank_library_configs(uc, name, cfgs),
                                          "natten default, then natten._libnatten's by tile bound"))
    return out
