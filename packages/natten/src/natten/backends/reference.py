"""The reference backend: exact neighborhood attention in plain PyTorch, on any device.

Queries are processed in blocks. Each block gathers only the keys its queries can see (at most
``prod(kernel_size)`` per query), so memory is ``O(N x window)``, never ``O(N^2)``; the dense
``attention`` path blocks queries the same way against the whole key range. The forward saves only
``q, k, v, out, lse``; the hand-written backward recomputes each block's probabilities, so training
memory stays bounded by the block budget as well.

Computation happens in float32 for half/bfloat16/float32 inputs and in float64 for float64 inputs.
The logsumexp is returned in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..window import Region, WindowSpec, window_slots

NAME_FNA = "reference"
NAME_FMHA = "reference"

# Upper bound on the elements of one gathered K (or V) block; ~64 MiB in float32.
_BLOCK_ELEMENTS = 1 << 24

Block = Tuple[int, int, Optional[Tensor], int, int, Optional[Tensor]]
# (q_start, q_end, key_index [Q, S] or None, k_start, k_end, mask [Q, S] or None)


SUPPORTS_VARLEN = False


def can_run_fna(query: Tensor, key: Tensor, value: Tensor, spec: object, torch_compile: bool = False) -> Optional[str]:
    """The reference backend runs every valid problem (slabs of a larger grid included) on every
    device and dtype."""
    return None


def can_run_fmha(
    query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False, is_varlen: bool = False,
    torch_compile: bool = False,
) -> Optional[str]:
    """The reference backend runs every valid problem on every device and dtype."""
    return None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_per_block(per_row_elements: int, limit: int) -> int:
    return max(1, min(limit, _BLOCK_ELEMENTS // max(1, per_row_elements)))


def _na_blocks(spec: WindowSpec, per_key_elements: int, device: torch.device) -> Iterator[Block]:
    """Blocks of whole query rows along axis 0, each with the flat key indices of its windows
    (indices into the key slab when the spec has a region)."""
    rank = spec.rank
    q_shape, kv_shape, kernel_size = spec.q_shape, spec.kv_shape, spec.kernel_size
    slots = [(i.to(device), None if m is None else m.to(device)) for i, m in window_slots(spec)]
    key_stride = [math.prod(kv_shape[a + 1 :]) for a in range(rank)]
    rest = math.prod(q_shape[1:])
    window = math.prod(kernel_size)
    rows = _rows_per_block(rest * window * per_key_elements, q_shape[0])

    def expand(t: Tensor, a: int) -> Tensor:
        view = [1] * (2 * rank)
        view[a] = t.shape[0]
        view[rank + a] = t.shape[1]
        return t.reshape(view)

    for r0 in range(0, q_shape[0], rows):
        r1 = min(q_shape[0], r0 + rows)
        index: Optional[Tensor] = None
        mask: Optional[Tensor] = None
        for a in range(rank):
            idx, valid = slots[a]
            if a == 0:
                idx = idx[r0:r1]
                valid = None if valid is None else valid[r0:r1]
            term = expand(idx * key_stride[a], a)
            index = term if index is None else index + term
            if valid is not None:
                vm = expand(valid, a)
                mask = vm if mask is None else mask & vm
        q_count = (r1 - r0) * rest
        assert index is not None
        index = index.expand(*[r1 - r0, *q_shape[1:]], *kernel_size).reshape(q_count, window)
        if mask is not None:
            mask = mask.expand(*[r1 - r0, *q_shape[1:]], *kernel_size).reshape(q_count, window)
        yield (r0 * rest, r1 * rest, index, 0, 0, mask)


def _dense_blocks(
    num_q: int, num_kv: int, is_causal: bool, per_key_elements: int, device: torch.device
) -> Iterator[Block]:
    """Blocks of queries against the whole key range (or its causal prefix, top-left aligned)."""
    rows = _rows_per_block(num_kv * per_key_elements, num_q)
    for q0 in range(0, num_q, rows):
        q1 = min(num_q, q0 + rows)
        if not is_causal:
            yield (q0, q1, None, 0, num_kv, None)
            continue
        k1 = min(num_kv, q1)
        qi = torch.arange(q0, q1, device=device)
        kj = torch.arange(0, k1, device=device)
        yield (q0, q1, None, 0, k1, kj[None, :] <= qi[:, None])


def _gather(t: Tensor, block: Block, cdt: torch.dtype) -> Tensor:
    """K or V rows for a block: [B, Q, S, Hkv, D] (gathered) or [B, S, Hkv, D] (range)."""
    _, _, index, k0, k1, _ = block
    if index is None:
        return t[:, k0:k1].to(cdt)
    return t[:, index].to(cdt)


def _block_scores(qb: Tensor, kb: Tensor, gathered: bool) -> Tensor:
    # qb [B, Q, Hkv, G, D]; kb [B, Q, S, Hkv, D] or [B, S, Hkv, D] -> [B, Q, Hkv, G, S]
    if gathered:
        return torch.einsum("bqhgd,bqshd->bqhgs", qb, kb)
    return torch.einsum("bqhgd,bshd->bqhgs", qb, kb)


def _block_pv(p: Tensor, vb: Tensor, gathered: bool) -> Tensor:
    # p [B, Q, Hkv, G, S]; vb [B, Q, S, Hkv, Dv] or [B, S, Hkv, Dv] -> [B, Q, Hkv, G, Dv]
    if gathered:
        return torch.einsum("bqhgs,bqshd->bqhgd", p, vb)
    return torch.einsum("bqhgs,bshd->bqhgd", p, vb)


def _apply_mask(s: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is None:
        return s
    return s.masked_fill(~mask[None, :, None, None, :], float("-inf"))


def _forward(
    q: Tensor, k: Tensor, v: Tensor, scale: float, blocks: Sequence[Block]
) -> Tuple[Tensor, Tensor]:
    B, Nq, H, D = q.shape
    Hkv, Dv = k.shape[2], v.shape[3]
    G = H // Hkv
    cdt = _compute_dtype(q.dtype)
    out = torch.empty(B, Nq, H, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Nq, H, dtype=cdt, device=q.device)
    for block in blocks:
        q0, q1, index, _, _, mask = block
        gathered = index is not None
        qb = q[:, q0:q1].to(cdt).reshape(B, q1 - q0, Hkv, G, D)
        s = _block_scores(qb, _gather(k, block, cdt), gathered) * scale
        s = _apply_mask(s, mask)
        m = s.amax(dim=-1, keepdim=True)
        p = torch.exp(s - m)
        denom = p.sum(dim=-1, keepdim=True)
        o = _block_pv(p, _gather(v, block, cdt), gathered) / denom
        out[:, q0:q1] = o.reshape(B, q1 - q0, H, Dv).to(q.dtype)
        lse[:, q0:q1] = (m + torch.log(denom)).reshape(B, q1 - q0, H)
    return out, lse


def _backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Optional[Tensor],
    grad_lse: Optional[Tensor],
    scale: float,
    blocks: Sequence[Block],
) -> Tuple[Tensor, Tensor, Tensor]:
    B, Nq, H, D = q.shape
    Nk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = H // Hkv
    cdt = _compute_dtype(q.dtype)
    dq = torch.zeros(B, Nq, H, D, dtype=cdt, device=q.device)
    dk = torch.zeros(B, Nk, Hkv, D, dtype=cdt, device=q.device)
    dv = torch.zeros(B, Nk, Hkv, Dv, dtype=cdt, device=q.device)
    for block in blocks:
        q0, q1, index, k0, k1, mask = block
        Q = q1 - q0
        gathered = index is not None
        qb = q[:, q0:q1].to(cdt).reshape(B, Q, Hkv, G, D)
        kb = _gather(k, block, cdt)
        vb = _gather(v, block, cdt)
        s = _apply_mask(_block_scores(qb, kb, gathered) * scale, mask)
        lse_b = lse[:, q0:q1].to(cdt).reshape(B, Q, Hkv, G, 1)
        p = torch.exp(s - lse_b)  # masked entries: exp(-inf) = 0
        # dL/ds = p * (dO.v - rowsum(dO * O) + dlse)
        ds = torch.zeros_like(p)
        if grad_out is not None:
            go = grad_out[:, q0:q1].to(cdt).reshape(B, Q, Hkv, G, Dv)
            ob = out[:, q0:q1].to(cdt).reshape(B, Q, Hkv, G, Dv)
            if gathered:
                dp = torch.einsum("bqhgd,bqshd->bqhgs", go, vb)
                dvb = torch.einsum("bqhgs,bqhgd->bqshd", p, go)
            else:
                dp = torch.einsum("bqhgd,bshd->bqhgs", go, vb)
                dvb = torch.einsum("bqhgs,bqhgd->bshd", p, go)
            delta = (go * ob).sum(dim=-1, keepdim=True)
            ds = p * (dp - delta)
            if gathered:
                dv.index_add_(1, index.reshape(-1), dvb.reshape(B, Q * index.shape[1], Hkv, Dv))
            else:
                dv[:, k0:k1] += dvb
        if grad_lse is not None:
            ds = ds + p * grad_lse[:, q0:q1].to(cdt).reshape(B, Q, Hkv, G, 1)
        ds = ds * scale
        if gathered:
            dq[:, q0:q1] = torch.einsum("bqhgs,bqshd->bqhgd", ds, kb).reshape(B, Q, H, D)
            dkb = torch.einsum("bqhgs,bqhgd->bqshd", ds, qb)
            dk.index_add_(1, index.reshape(-1), dkb.reshape(B, Q * index.shape[1], Hkv, D))
        else:
            dq[:, q0:q1] = torch.einsum("bqhgs,bshd->bqhgd", ds, kb).reshape(B, Q, H, D)
            dk[:, k0:k1] += torch.einsum("bqhgs,bqhgd->bshd", ds, qb)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _make_blocks(q: Tensor, k: Tensor, v: Tensor, problem: tuple) -> List[Block]:
    per_key = k.shape[0] * k.shape[2] * max(k.shape[3], v.shape[3], q.shape[2] // k.shape[2])
    if problem[0] == "na":
        return list(_na_blocks(problem[1], per_key, q.device))
    _, is_causal = problem
    return list(_dense_blocks(q.shape[1], k.shape[1], is_causal, per_key, q.device))


class _ReferenceAttention(torch.autograd.Function):
    """Blocked exact attention over a fixed key set per query, differentiable in out and lse."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, problem: tuple):  # type: ignore[override]
        blocks = _make_blocks(q, k, v, problem)
        out, lse = _forward(q, k, v, scale, blocks)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        ctx.problem = problem
        return out, lse

    @staticmethod
    def backward(ctx, grad_out: Optional[Tensor], grad_lse: Optional[Tensor]):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        blocks = _make_blocks(q, k, v, ctx.problem)
        dq, dk, dv = _backward(q, k, v, out, lse, grad_out, grad_lse, ctx.scale, blocks)
        return dq, dk, dv, None, None


def reference_fna(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: Tuple[int, ...],
    stride: Tuple[int, ...],
    dilation: Tuple[int, ...],
    is_causal: Tuple[bool, ...],
    scale: float,
    global_shape: Optional[Tuple[int, ...]] = None,
    q_origin: Optional[Tuple[int, ...]] = None,
    kv_origin: Optional[Tuple[int, ...]] = None,
) -> Tuple[Tensor, Tensor]:
    """Neighborhood attention on validated heads-last inputs; returns ``(out, lse)``.

    Shapes: ``query [B, *shape, H, D]``, ``key [B, *shape_kv, H_kv, D]``,
    ``value [B, *shape_kv, H_kv, Dv]`` → ``out [B, *shape, H, Dv]``, ``lse [B, *shape, H]``.
    Without a region the key grid equals the query grid. With ``global_shape`` (and origins,
    default 0) the tensors are slabs of that grid; the key slab must cover the queries' windows.
    """
    B, H, D = query.shape[0], query.shape[-2], query.shape[-1]
    shape = tuple(int(s) for s in query.shape[1:-2])
    kv_shape = tuple(int(s) for s in key.shape[1:-2])
    Hkv, Dv = key.shape[-2], value.shape[-1]
    q = query.reshape(B, -1, H, D)
    k = key.reshape(B, -1, Hkv, D)
    v = value.reshape(B, -1, Hkv, Dv)
    region = None
    if global_shape is not None or q_origin is not None or kv_origin is not None:
        zeros = (0,) * len(shape)
        region = Region(tuple(q_origin or zeros), shape, tuple(kv_origin or zeros), kv_shape)
    spec = WindowSpec(
        tuple(global_shape or shape), tuple(kernel_size), tuple(stride), tuple(dilation),
        tuple(is_causal), region,
    )
    out, lse = _ReferenceAttention.apply(q, k, v, float(scale), ("na", spec))
    return out.reshape(B, *shape, H, Dv), lse.reshape(B, *shape, H)


def reference_fmha(
    query: Tensor, key: Tensor, value: Tensor, is_causal: bool, scale: float
) -> Tuple[Tensor, Tensor]:
    """Dense attention (optionally causal, top-left aligned) on ``[B, N, H, D]`` inputs."""
    out, lse = _ReferenceAttention.apply(query, key, value, float(scale), ("dense", bool(is_causal)))
    return out, lse


def fna(query: Tensor, key: Tensor, value: Tensor, spec, scale: float, **options) -> Tuple[Tensor, Tensor]:
    """Backend entry point; tile/schedule options do not apply to the reference and are ignored."""
    B, H, D = query.shape[0], query.shape[-2], query.shape[-1]
    Hkv, Dv = key.shape[-2], value.shape[-1]
    out, lse = _ReferenceAttention.apply(
        query.reshape(B, -1, H, D), key.reshape(B, -1, Hkv, D), value.reshape(B, -1, Hkv, Dv),
        float(scale), ("na", spec),
    )
    return out.reshape(B, *spec.q_shape, H, Dv), lse.reshape(B, *spec.q_shape, H)


def fmha(query: Tensor, key: Tensor, value: Tensor, is_causal: bool, scale: float, **options) -> Tuple[Tensor, Tensor]:
    """Backend entry point; tile/schedule options do not apply to the reference and are ignored."""
    return reference_fmha(query, key, value, is_causal, scale)
