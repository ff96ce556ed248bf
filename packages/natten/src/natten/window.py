"""Window arithmetic of neighborhood attention, one axis at a time.

This mirrors the definition in SEMANTICS.md (and the kernels' ``window.cuh``): dilation groups,
left/right extents for odd and even kernels, stride groups that share their leader's window, and the
causal rule. A key is attended iff it is attended on every axis.

Every query attends at most ``kernel_size`` keys per axis. We describe a query's keys on one axis as
``kernel_size`` *slots*: slot ``t`` holds key coordinate ``first[i] + t * dilation`` and is valid iff
``valid[i, t]``. Non-causal windows always hold exactly ``kernel_size`` keys (every slot valid);
causal windows stop at the query itself. Invalid slots still carry an in-range coordinate so they
can be gathered safely and masked afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor


def axis_window_bounds(
    n: int, kernel_size: int, stride: int, dilation: int, is_causal: bool
) -> Tuple[Tensor, Tensor]:
    """Per-query window on one axis, in *original* coordinates.

    Returns ``(start, last)``: int64 tensors of length ``n`` such that query ``i`` attends keys
    ``j`` with ``j = start[i] + m * dilation`` for ``m = 0, 1, ...`` and ``j <= last[i]``.
    """
    i = torch.arange(n, dtype=torch.int64)
    d, s, K = dilation, stride, kernel_size
    g = i % d
    ip = i // d
    ng = (n - g + d - 1) // d  # tokens in the dilation group
    if is_causal:
        leader = torch.minimum(s * (ip // s) + s - 1, ng - 1)
        start_g = torch.clamp(leader - K + 1, min=0)
        last_g = ip
    else:
        left = K // 2
        right = K // 2 + K % 2 - 1
        leader = torch.minimum(s * (ip // s) + s // 2, ng - 1)
        centre = torch.maximum(torch.minimum(leader, ng - 1 - right), torch.full_like(leader, left))
        start_g = centre - left
        last_g = centre + right
    return start_g * d + g, last_g * d + g


def axis_window_slots(
    n: int, kernel_size: int, stride: int, dilation: int, is_causal: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """Key coordinates of every query's ``kernel_size`` slots on one axis.

    Returns ``(index [n, K] int64, valid [n, K] bool or None)``; ``valid`` is None when every
    slot is attended (non-causal).
    """
    start, last = axis_window_bounds(n, kernel_size, stride, dilation, is_causal)
    t = torch.arange(kernel_size, dtype=torch.int64)
    index = start[:, None] + t[None, :] * dilation
    if not is_causal:
        return index, None
    valid = index <= last[:, None]
    # Invalid slots lie past the query; clamp them onto the query itself (always in range).
    index = torch.minimum(index, last[:, None])
    return index, valid


@dataclass(frozen=True)
class WindowSpec:
    """Validated per-axis neighborhood parameters for a token grid."""

    shape: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    is_causal: Tuple[bool, ...]
    # Optional sub-region: the query tensor holds the slab of the global grid ``shape`` that starts
    # at ``q_origin`` (extent ``q_shape``); the key/value tensors hold the slab at ``kv_origin``
    # (extent ``kv_shape``), which covers every key those queries attend. Windows are placed on the
    # global grid (clamped at its borders, not the slab's). None: both are the whole grid.
    region: Optional["Region"] = None

    @property
    def is_partial(self) -> bool:
        """Whether the tensors hold slabs of a larger grid (a :class:`Region` is set)."""
        return self.region is not None

    @property
    def q_shape(self) -> Tuple[int, ...]:
        return self.shape if self.region is None else self.region.q_shape

    @property
    def kv_shape(self) -> Tuple[int, ...]:
        return self.shape if self.region is None else self.region.kv_shape

    @property
    def q_origin(self) -> Tuple[int, ...]:
        return (0,) * len(self.shape) if self.region is None else self.region.q_origin

    @property
    def kv_origin(self) -> Tuple[int, ...]:
        return (0,) * len(self.shape) if self.region is None else self.region.kv_origin

    @property
    def rank(self) -> int:
        return len(self.shape)

    def is_self_attention(self) -> bool:
        """Kernel covers every axis and nothing is causal: plain full attention."""
        return all(k == n for k, n in zip(self.kernel_size, self.shape)) and not any(
            self.is_causal
        )

    def pairs_per_axis(self) -> Tuple[int, ...]:
        """Number of attended (query, key) pairs on each axis, summed over the axis' queries
        (the queries of the slab when a region is set)."""
        out = []
        for a in range(self.rank):
            start, last = axis_window_bounds(
                self.shape[a], self.kernel_size[a], self.stride[a], self.dilation[a],
                self.is_causal[a],
            )
            q0 = self.q_origin[a]
            start, last = start[q0 : q0 + self.q_shape[a]], last[q0 : q0 + self.q_shape[a]]
            out.append(int(((last - start) // self.dilation[a] + 1).sum()))
        return tuple(out)

    def num_pairs(self) -> int:
        """Attended (query, key) pairs per (batch, head): separable, product over axes."""
        total = 1
        for p in self.pairs_per_axis():
            total *= p
        return total


@dataclass(frozen=True)
class Region:
    """Where the query and key/value tensors lie inside the global token grid.

    ``q_origin``/``kv_origin`` are the global coordinates of the slabs' first tokens and
    ``q_shape``/``kv_shape`` their extents (one entry per axis).
    """

    q_origin: Tuple[int, ...]
    q_shape: Tuple[int, ...]
    kv_origin: Tuple[int, ...]
    kv_shape: Tuple[int, ...]


def _axis_bounds_at(n: int, K: int, s: int, d: int, causal: bool, i: int) -> Tuple[int, int]:
    """``(start, last)`` of query ``i``'s window on one axis (plain ints; see axis_window_bounds)."""
    g, ip = i % d, i // d
    ng = (n - g + d - 1) // d
    if causal:
        leader = min(s * (ip // s) + s - 1, ng - 1)
        return max(leader - K + 1, 0) * d + g, ip * d + g
    left, right = K // 2, K // 2 + K % 2 - 1
    leader = min(s * (ip // s) + s // 2, ng - 1)
    centre = max(min(leader, ng - 1 - right), left)
    return (centre - left) * d + g, (centre + right) * d + g


def axis_key_range(
    n: int, kernel_size: int, stride: int, dilation: int, is_causal: bool, q_start: int,
    q_stop: int,
) -> Tuple[int, int]:
    """The smallest key range ``[lo, hi)`` on one axis holding every key that the queries
    ``q_start <= i < q_stop`` of an axis of length ``n`` attend.

    Plain integer arithmetic, O(dilation): window starts and ends are non-decreasing within a
    dilation group, so only each group's first and last query in the range matter. (No tensors:
    this also runs while torch.compile traces a call.)"""
    lo, hi = n, 0
    for g in range(dilation):
        first = q_start + (g - q_start) % dilation
        if first >= q_stop:
            continue
        last = first + (q_stop - 1 - first) // dilation * dilation
        lo = min(lo, _axis_bounds_at(n, kernel_size, stride, dilation, is_causal, first)[0])
        hi = max(hi, _axis_bounds_at(n, kernel_size, stride, dilation, is_causal, last)[1] + 1)
    return lo, hi


def key_range(spec: WindowSpec, q_origin: Sequence[int], q_shape: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    """Per axis, the key range ``[lo, hi)`` the query slab at ``q_origin`` (extent ``q_shape``)
    of the global grid ``spec.shape`` needs."""
    return tuple(
        axis_key_range(
            spec.shape[a], spec.kernel_size[a], spec.stride[a], spec.dilation[a],
            spec.is_causal[a], q_origin[a], q_origin[a] + q_shape[a],
        )
        for a in range(spec.rank)
    )


def window_slots(spec: WindowSpec) -> Sequence[Tuple[Tensor, Optional[Tensor]]]:
    """Per axis, the key slots of the slab's queries in slab-local key coordinates."""
    out = []
    for a in range(spec.rank):
        index, valid = axis_window_slots(
            spec.shape[a], spec.kernel_size[a], spec.stride[a], spec.dilation[a],
            spec.is_causal[a],
        )
        if spec.region is not None:
            q0, k0 = spec.q_origin[a], spec.kv_origin[a]
            index = index[q0 : q0 + spec.q_shape[a]] - k0
            valid = None if valid is None else valid[q0 : q0 + spec.q_shape[a]]
        out.append((index, valid))
    return out
