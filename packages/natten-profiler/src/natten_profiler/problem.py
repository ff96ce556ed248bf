"""A neighborhood-attention use case: shapes, window parameters, work counts and tensors."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional, Tuple

import torch

from natten.window import WindowSpec

DTYPES: Dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class UseCase:
    """One problem. Heads-last tensors: ``q [batch, *input_size, heads, dim]`` (see SEMANTICS)."""

    input_size: Tuple[int, ...]
    window_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    causal: Tuple[bool, ...]
    batch: int = 1
    heads: int = 1
    heads_kv: int = 1
    dim: int = 64
    dim_value: int = 64
    dtype: str = "fp16"
    add_kv: int = 0

    @property
    def rank(self) -> int:
        return len(self.input_size)

    @property
    def tokens(self) -> int:
        return math.prod(self.input_size)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def spec(self) -> WindowSpec:
        return WindowSpec(
            self.input_size, self.window_size, self.stride, self.dilation, self.causal
        )

    def is_self_attention(self) -> bool:
        return self.spec().is_self_attention()

    def pairs(self) -> int:
        """Attended (query, key) pairs per (batch, head), additional keys included."""
        return self.spec().num_pairs() + self.tokens * self.add_kv

    def dense_pairs(self) -> int:
        return self.tokens * (self.tokens + self.add_kv)

    def flops(self, backprop: bool = False, dense: bool = False) -> float:
        """Useful FLOPs (SEMANTICS "Counting work"): forward ``2 * pairs * (D + Dv)`` per
        (batch, head); backward counts 2.5x the forward. ``dense``: of dense attention instead."""
        pairs = self.dense_pairs() if dense else self.pairs()
        fwd = 2.0 * pairs * (self.dim + self.dim_value) * self.batch * self.heads
        return fwd * 3.5 if backprop else fwd

    def with_dtype(self, dtype: str) -> "UseCase":
        return replace(self, dtype=dtype)

    def describe(self) -> str:
        x = lambda t: "x".join(str(int(v)) for v in t)  # noqa: E731
        parts = [
            f"{self.rank}-D {x(self.input_size)}",
            f"window {x(self.window_size)}",
            f"stride {x(self.stride)}",
            f"dilation {x(self.dilation)}",
            f"causal {x(self.causal)}",
        ]
        heads = f"H={self.heads}" + (f" H_kv={self.heads_kv}" if self.heads_kv != self.heads else "")
        dims = f"D={self.dim}" + (f" Dv={self.dim_value}" if self.dim_value != self.dim else "")
        extra = f" +{self.add_kv} additional KV" if self.add_kv else ""
        return ", ".join(parts) + f" | B={self.batch} {heads} {dims} {self.dtype}{extra}"

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        for k in ("input_size", "window_size", "stride", "dilation", "causal"):
            d[k] = list(d[k])
        return d

    # -- tensors ---------------------------------------------------------------------------

    def make_tensors(
        self, device: torch.device, requires_grad: bool = False, seed: int = 0
    ) -> Dict[str, Optional[torch.Tensor]]:
        """Random heads-last q, k, v, output gradient and additional keys/values."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        dt = self.torch_dtype

        def rnd(*shape: int, grad: bool = requires_grad) -> torch.Tensor:
            t = torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dt)
            return t.requires_grad_(grad)

        B, S = self.batch, self.input_size
        out: Dict[str, Optional[torch.Tensor]] = {
            "q": rnd(B, *S, self.heads, self.dim),
            "k": rnd(B, *S, self.heads_kv, self.dim),
            "v": rnd(B, *S, self.heads_kv, self.dim_value),
            "d_out": rnd(B, *S, self.heads, self.dim_value, grad=False) if requires_grad else None,
            "add_k": None,
            "add_v": None,
        }
        if self.add_kv:
            out["add_k"] = rnd(B, self.add_kv, self.heads_kv, self.dim)
            out["add_v"] = rnd(B, self.add_kv, self.heads_kv, self.dim_value)
        return out

    def empty_tensors(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uninitialised q, k, v (for capability checks: no memory is touched)."""
        dt = self.torch_dtype
        B, S = self.batch, self.input_size
        return (
            torch.empty(B, *S, self.heads, self.dim, dtype=dt, device=device),
            torch.empty(B, *S, self.heads_kv, self.dim, dtype=dt, device=device),
            torch.empty(B, *S, self.heads_kv, self.dim_value, dtype=dt, device=device),
        )
