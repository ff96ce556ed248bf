"""Slab arithmetic of context parallelism: who holds which tokens, who needs which keys.

Every rank holds a contiguous slab of the global token grid along one axis (the *shard axis*),
in rank order. All quantities here are computed identically on every rank from the slab sizes
and the window parameters, so no metadata has to travel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..window import axis_key_range, axis_window_bounds

Range = Tuple[int, int]  # [start, stop) on the shard axis


def _intersect(a: Range, b: Range) -> Range:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else (lo, lo)


@dataclass(frozen=True)
class ShardPlan:
    """The layout of one context-parallel neighborhood-attention call.

    Attributes:
        world_size (int): ranks in the process group.
        rank (int): this process' rank in the group.
        axis (int): the shard axis (0-based over the token grid).
        sizes (tuple): slab extent of every rank along the shard axis.
        global_shape (tuple): the full token grid.
        kernel_size, stride, dilation, is_causal (tuple): the validated window parameters.
    """

    world_size: int
    rank: int
    axis: int
    sizes: Tuple[int, ...]
    global_shape: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    is_causal: Tuple[bool, ...]

    @property
    def offsets(self) -> Tuple[int, ...]:
        out, acc = [], 0
        for s in self.sizes:
            out.append(acc)
            acc += s
        return tuple(out)

    def slab(self, r: Optional[int] = None) -> Range:
        """The shard-axis range ``[start, stop)`` rank ``r`` (default: this rank) holds."""
        r = self.rank if r is None else r
        return self.offsets[r], self.offsets[r] + self.sizes[r]

    def _bounds(self):
        a = self.axis
        return axis_window_bounds(
            self.global_shape[a], self.kernel_size[a], self.stride[a], self.dilation[a],
            self.is_causal[a],
        )

    def key_range(self, queries: Range) -> Range:
        """The smallest shard-axis key range holding every key the queries ``[start, stop)``
        attend (empty queries need no keys)."""
        if queries[0] >= queries[1]:
            return (queries[0], queries[0])
        a = self.axis
        return axis_key_range(
            self.global_shape[a], self.kernel_size[a], self.stride[a], self.dilation[a],
            self.is_causal[a], queries[0], queries[1],
        )

    def needs(self, r: Optional[int] = None) -> Range:
        """The key range rank ``r`` needs for all of its queries."""
        return self.key_range(self.slab(r))

    def sends(self) -> List[Tuple[int, Range]]:
        """``(peer, range)``: the pieces of this rank's slab that other ranks need, peers in rank
        order (ranges in global coordinates)."""
        mine = self.slab()
        out = []
        for r in range(self.world_size):
            if r != self.rank:
                piece = _intersect(mine, self.needs(r))
                if piece[0] < piece[1]:
                    out.append((r, piece))
        return out

    def receives(self) -> List[Tuple[int, Range]]:
        """``(peer, range)``: the pieces of other ranks' slabs this rank needs, in global order."""
        need = self.needs()
        out = []
        for r in range(self.world_size):
            if r != self.rank:
                piece = _intersect(self.slab(r), need)
                if piece[0] < piece[1]:
                    out.append((r, piece))
        return out

    def interior(self) -> Range:
        """The largest query range of this slab whose keys all lie inside the slab itself: it can
        be computed while the halo is in flight. Empty when every query needs remote keys."""
        lo, hi = self.slab()
        start, last = self._bounds()
        ok = (start[lo:hi] >= lo) & (last[lo:hi] < hi)
        if not bool(ok.any()):
            return (lo, lo)
        idx = torch.nonzero(ok).flatten()
        a, b = int(idx[0]), int(idx[-1]) + 1
        # Windows are monotone in the query within a dilation group, but dilation interleaves
        # groups: keep the range only if every query in it qualifies.
        if not bool(ok[a:b].all()):
            return (lo, lo)
        return lo + a, lo + b

    def attended_remote_keys(self) -> int:
        """Shard-axis positions of other ranks' slabs that at least one local query attends (the
        exact, possibly non-contiguous set: the halo's lower bound on that axis)."""
        lo, hi = self.slab()
        start, last = self._bounds()
        a = self.axis
        d = self.dilation[a]
        seen = torch.zeros(self.global_shape[a], dtype=torch.bool)
        for i in range(lo, hi):
            seen[int(start[i]) : int(last[i]) + 1 : d] = True
        seen[lo:hi] = False
        return int(seen.sum())


@dataclass(frozen=True)
class ExchangeStats:
    """Bytes one rank moves per call (forward; the backward sends the same amount back).

    Attributes:
        halo_bytes (int): keys/values received by the halo exchange.
        halo_lower_bound_bytes (int): keys/values of remote tokens some local query actually
            attends (no scheme that ships only needed keys/values can receive less).
        ulysses_bytes (int or None): bytes received by the head-parallel all-to-alls (queries,
            keys, values, outputs and logsumexps), None where heads do not divide evenly.
    """

    halo_bytes: int
    halo_lower_bound_bytes: int
    ulysses_bytes: Optional[int]


def exchange_stats(
    plan: ShardPlan, batch: int, heads: int, heads_kv: int, head_dim: int, head_dim_v: int,
    element_size: int,
) -> ExchangeStats:
    """What each strategy would move for this rank (see :class:`ExchangeStats`)."""
    a = plan.axis
    rest = math.prod(plan.global_shape[:a] + plan.global_shape[a + 1 :])
    per_token_kv = batch * rest * heads_kv * (head_dim + head_dim_v) * element_size
    received = sum(r[1] - r[0] for _, r in plan.receives())
    halo = received * per_token_kv
    lower = plan.attended_remote_keys() * per_token_kv
    P = plan.world_size
    ulysses = None
    if heads % P == 0 and heads_kv % P == 0:
        lo, hi = plan.slab()
        local = (hi - lo) * rest * batch
        others = (sum(plan.sizes) - (hi - lo)) * rest * batch
        # q, k, v arrive for every other rank's tokens (my heads); out and lse return for mine.
        in_bytes = others * (heads * head_dim + heads_kv * (head_dim + head_dim_v)) // P
        out_bytes = local * (P - 1) * (heads * head_dim_v) // P
        ulysses = (in_bytes + out_bytes) * element_size + local * (P - 1) * (heads // P) * 4
    return ExchangeStats(halo, lower, ulysses)


def split_sizes(total: int, parts: int) -> Tuple[int, ...]:
    """Near-even split of ``total`` tokens into ``parts`` slabs (the first ones one larger)."""
    base, extra = divmod(total, parts)
    return tuple(base + (1 if r < extra else 0) for r in range(parts))


def shard(t: torch.Tensor, axis: int, sizes: Sequence[int], rank: int) -> torch.Tensor:
    """This rank's slab of a full heads-last tensor ``[B, *grid, H, D]`` (a view)."""
    start = sum(sizes[:rank])
    return t.narrow(1 + axis, start, sizes[rank])
