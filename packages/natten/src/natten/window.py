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

    @property
    def rank(self) -> int:
        return len(self.shape)

    def is_self_attention(self) -> bool:
        """Kernel covers every axis and nothing is causal: plain full attention."""
        return all(k == n for k, n in zip(self.kernel_size, self.shape)) and not any(
            self.is_causal
        )

    def pairs_per_axis(self) -> Tuple[int, ...]:
        """Number of attended (query, key) pairs on each axis, summed over the axis' queries."""
        out = []
        for a in range(self.rank):
            start, last = axis_window_bounds(
                self.shape[a], self.kernel_size[a], self.stride[a], self.dilation[a],
                self.is_causal[a],
            )
            out.append(int(((last - start) // self.dilation[a] + 1).sum()))
        return tuple(out)

    def num_pairs(self) -> int:
        """Attended (query, key) pairs per (batch, head): separable, product over axes."""
        total = 1
        for p in self.pairs_per_axis():
            total *= p
        return total


def window_slots(spec: WindowSpec) -> Sequence[Tuple[Tensor, Optional[Tensor]]]:
    return [
        axis_window_slots(
            spec.shape[a], spec.kernel_size[a], spec.stride[a], spec.dilation[a],
            spec.is_causal[a],
        )
        for a in range(spec.rank)
    ]
