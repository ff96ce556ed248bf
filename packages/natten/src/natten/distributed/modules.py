"""Context-parallel ``NeighborhoodAttention1D/2D/3D``: the layers of :mod:`natten.modules` whose
attention runs over a process group (each rank holds a slab of the token grid)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import Tensor

from .. import modules as _m
from ..utils import checks
from .functional import neighborhood_attention_distributed


class _DistributedNA(_m._NeighborhoodAttentionND):
    def __init__(self, *args: Any, shard_axis: int = 0, group: Any = None,
                 strategy: str = "auto", shard_sizes: Optional[Sequence[int]] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shard_axis = shard_axis
        self.group = group
        self.strategy = strategy
        self.shard_sizes = shard_sizes

    def forward(self, x: Tensor) -> Tensor:
        """``x``: this rank's slab ``[batch, *token_grid_slab, embed_dim]`` → same shape."""
        if not isinstance(x, Tensor) or x.dim() != self.rank + 2:
            got = x.dim() if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects input of shape [batch, "
                f"{', '.join('XYZ'[:self.rank])}, embed_dim] ({self.rank + 2} dims), got {got}."
            )
        grid = x.shape[1:-1]
        qkv = self.qkv(x).reshape(x.shape[0], *grid, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=-3)
        out = neighborhood_attention_distributed(
            q, k, v, self.kernel_size, self.stride, self.dilation, self.is_causal,
            scale=self.scale, shard_axis=self.shard_axis, shard_sizes=self.shard_sizes,
            group=self.group, strategy=self.strategy,
        )
        out = out.reshape(*x.shape[:-1], self.embed_dim)  # type: ignore[union-attr]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shard_axis={self.shard_axis}, strategy={self.strategy!r}"


class NeighborhoodAttention1D(_DistributedNA):
    """Context-parallel :class:`natten.NeighborhoodAttention1D` (input: this rank's slab)."""

    rank = 1


class NeighborhoodAttention2D(_DistributedNA):
    """Context-parallel :class:`natten.NeighborhoodAttention2D` (input: this rank's slab)."""

    rank = 2


class NeighborhoodAttention3D(_DistributedNA):
    """Context-parallel :class:`natten.NeighborhoodAttention3D` (input: this rank's slab)."""

    rank = 3
