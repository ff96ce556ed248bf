"""``NeighborhoodAttention1D/2D/3D``: multi-head neighborhood-attention layers (channels last)."""

from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn, Tensor

from .functional import neighborhood_attention_generic
from .utils import checks


class _NeighborhoodAttentionND(nn.Module):
    rank: int = 0

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kernel_size: Union[int, Tuple[int, ...]],
        stride: Union[int, Tuple[int, ...]] = 1,
        dilation: Union[int, Tuple[int, ...]] = 1,
        is_causal: Union[bool, Tuple[bool, ...]] = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        for name, val in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not checks._is_int(val) or val < 1:
                raise ValueError(f"`{name}` must be a positive int, got {val!r}.")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"`embed_dim` ({embed_dim}) must be divisible by `num_heads` ({num_heads})."
            )
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = checks.check_scale(qk_scale, self.head_dim)
        self.kernel_size = checks.as_int_tuple("kernel_size", kernel_size, self.rank)
        self.stride = checks.as_int_tuple("stride", stride, self.rank)
        self.dilation = checks.as_int_tuple("dilation", dilation, self.rank)
        self.is_causal = checks.as_bool_tuple("is_causal", is_causal, self.rank)
        for name, vals, lo in (("kernel_size", self.kernel_size, 2), ("stride", self.stride, 1),
                               ("dilation", self.dilation, 1)):
            if any(x < lo for x in vals):
                raise ValueError(f"`{name}` must be >= {lo} on every axis, got {vals}.")
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=checks.check_flag("qkv_bias", qkv_bias))
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[batch, *token_grid, embed_dim]`` → same shape."""
        if not isinstance(x, Tensor) or x.dim() != self.rank + 2:
            got = x.dim() if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects input of shape [batch, {', '.join('XYZ'[:self.rank])}, "
                f"embed_dim] ({self.rank + 2} dims), got {got}."
            )
        if x.shape[-1] != self.embed_dim:
            raise ValueError(
                f"{type(self).__name__}: input has {x.shape[-1]} channels, expected embed_dim "
                f"{self.embed_dim}."
            )
        grid = x.shape[1:-1]
        qkv = self.qkv(x).reshape(x.shape[0], *grid, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=-3)
        out = neighborhood_attention_generic(
            q, k, v, self.kernel_size, self.stride, self.dilation, self.is_causal,
            scale=self.scale, rank=self.rank, op_name=type(self).__name__,
        )
        out = out.reshape(*x.shape[:-1], self.embed_dim)  # type: ignore[union-attr]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, "
            f"is_causal={self.is_causal}"
        )


class NeighborhoodAttention1D(_NeighborhoodAttentionND):
    """Multi-head neighborhood attention over sequences ``[batch, X, embed_dim]``."""

    rank = 1


class NeighborhoodAttention2D(_NeighborhoodAttentionND):
    """Multi-head neighborhood attention over images ``[batch, X, Y, embed_dim]``."""

    rank = 2


class NeighborhoodAttention3D(_NeighborhoodAttentionND):
    """Multi-head neighborhood attention over volumes/videos ``[batch, X, Y, Z, embed_dim]``."""

    rank = 3
