"""Independent brute-force oracle for neighborhood attention.

Written directly from /work/shared/SEMANTICS.md.  It deliberately does NOT import natten.

* ``axis_mask`` builds the per-axis ``n x n`` boolean mask with explicit Python loops over
  (query i, key j), following the numbered rules of the spec literally.
* ``na_mask`` ANDs the per-axis masks into a dense ``[N, N]`` mask (row-major flattening).
* ``dense_attention`` is a plain float64 softmax attention with GQA head mapping, scale,
  optional mask and optional additional (always visible) keys/values.  It is differentiable
  through autograd, so the oracle gradients come from torch.autograd on it.
"""

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch


# ---------------------------------------------------------------------------------------------
# Per-axis rule
# ---------------------------------------------------------------------------------------------


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def axis_attends(n: int, K: int, s: int, d: int, causal: bool, i: int, j: int) -> bool:
    """Does query coordinate ``i`` attend key coordinate ``j`` on one axis of length ``n``?"""
    # 1. Dilation groups.
    g = i % d
    if j % d != g:
        return False
    ip = i // d
    jp = j // d
    n_g = _ceil_div(n - g, d)
    # 2. Extents.
    L = K // 2
    R = K // 2 + (K % 2) - 1
    if not causal:
        # 3. Non-causal: leader is the centre of the stride group (clamped in a partial group).
        leader = min(s * (ip // s) + s // 2, n_g - 1)
        c = min(max(leader, L), n_g - 1 - R)  # clamp(leader, L, n_g - 1 - R)
        return c - L <= jp <= c + R
    # 4. Causal: leader is the last query of the stride group.
    leader = min(s * (ip // s) + s - 1, n_g - 1)
    return jp <= ip and leader - jp < K


def axis_row(n: int, K: int, s: int, d: int, causal: bool, i: int) -> List[int]:
    """Keys attended by query ``i`` on one axis (sorted)."""
    return [j for j in range(n) if axis_attends(n, K, s, d, causal, i, j)]


@functools.lru_cache(maxsize=None)
def _axis_mask_cached(n: int, K: int, s: int, d: int, causal: bool) -> Tuple[Tuple[bool, ...], ...]:
    rows = []
    for i in range(n):
        rows.append(tuple(axis_attends(n, K, s, d, causal, i, j) for j in range(n)))
    return tuple(rows)


def axis_mask(n: int, K: int, s: int = 1, d: int = 1, causal: bool = False) -> torch.Tensor:
    """``[n, n]`` boolean mask, ``mask[i, j]`` is True iff query i attends key j on this axis."""
    return torch.tensor(_axis_mask_cached(int(n), int(K), int(s), int(d), bool(causal)), dtype=torch.bool)


def as_tuple(x, rank: int) -> tuple:
    if isinstance(x, (tuple, list)):
        assert len(x) == rank
        return tuple(x)
    return (x,) * rank


def na_mask(shape: Sequence[int], kernel_size, stride=1, dilation=1, is_causal=False) -> torch.Tensor:
    """Dense ``[N, N]`` mask over row-major flattened tokens (N = prod(shape))."""
    rank = len(shape)
    ks = as_tuple(kernel_size, rank)
    st = as_tuple(stride, rank)
    dl = as_tuple(dilation, rank)
    ca = as_tuple(is_causal, rank)
    full = None
    for ax in range(rank):
        m = axis_mask(shape[ax], ks[ax], st[ax], dl[ax], ca[ax])
        # query axis index lives at position ax, key axis index at position rank + ax
        view = [1] * (2 * rank)
        view[ax] = shape[ax]
        view[rank + ax] = shape[ax]
        m = m.reshape(view)
        full = m if full is None else (full & m)
    N = math.prod(shape)
    return full.expand(*shape, *shape).reshape(N, N)


# ---------------------------------------------------------------------------------------------
# Dense attention (float64 by convention of the callers)
# ---------------------------------------------------------------------------------------------


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    additional_keys: Optional[torch.Tensor] = None,
    additional_values: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """q [B, N, H, D], k [B, M, H_kv, D], v [B, M, H_kv, Dv]; mask [N, M] bool (True = attend).

    Returns out [B, N, H, Dv] and lse [B, N, H] (natural log-sum-exp of the scaled scores).
    Additional keys/values ([B, S, H_kv, D] / [B, S, H_kv, Dv]) are visible to every query.
    """
    B, N, H, D = q.shape
    H_kv = k.shape[2]
    assert H % H_kv == 0
    rep = H // H_kv
    if scale is None:
        scale = D ** -0.5
    if additional_keys is not None:
        k = torch.cat([k, additional_keys], dim=1)
        v = torch.cat([v, additional_values], dim=1)
        if mask is not None:
            extra = torch.ones(N, additional_keys.shape[1], dtype=torch.bool, device=mask.device)
            mask = torch.cat([mask, extra], dim=1)
    # query head h uses kv head h // rep
    kv_head = torch.tensor([h // rep for h in range(H)], device=k.device)
    k = k.index_select(2, kv_head)
    v = v.index_select(2, kv_head)
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask.to(scores.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, H, N]
    p = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.einsum("bhnm,bmhd->bnhd", p, v)
    return out, lse.permute(0, 2, 1)


def na_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    scale: Optional[float] = None,
    additional_keys: Optional[torch.Tensor] = None,
    additional_values: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention oracle.  q [B, *shape, H, D] etc.  Returns (out, lse) with the
    heads-last layout ([B, *shape, H, Dv], [B, *shape, H]) in the dtype of the inputs."""
    B = q.shape[0]
    shape = tuple(q.shape[1:-2])
    H, D = q.shape[-2:]
    H_kv = k.shape[-2]
    Dv = v.shape[-1]
    N = math.prod(shape)
    mask = na_mask(shape, kernel_size, stride, dilation, is_causal)
    out, lse = dense_attention(
        q.reshape(B, N, H, D),
        k.reshape(B, N, H_kv, D),
        v.reshape(B, N, H_kv, Dv),
        mask=mask,
        scale=scale,
        additional_keys=additional_keys,
        additional_values=additional_values,
    )
    return out.reshape(B, *shape, H, Dv), lse.reshape(B, *shape, H)


def causal_mask(N: int, M: int) -> torch.Tensor:
    """Top-left aligned causal mask: key j visible to query i iff j <= i."""
    m = torch.zeros(N, M, dtype=torch.bool)
    for i in range(N):
        for j in range(M):
            m[i, j] = j <= i
    return m


def attention_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: Optional[float] = None,
    seqlens_Q: Optional[Sequence[int]] = None,
    seqlens_KV: Optional[Sequence[int]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense / causal / varlen attention oracle.  q [B, N, H, D], k [B, M, H_kv, D].

    Varlen (seqlens given, B == 1): block-diagonal mask, each query attends only keys of its own
    sequence (causal applied within each sequence if requested)."""
    N = q.shape[1]
    M = k.shape[1]
    if seqlens_Q is None:
        mask = causal_mask(N, M) if is_causal else None
        return dense_attention(q, k, v, mask=mask, scale=scale)
    assert q.shape[0] == 1
    seqlens_Q = [int(x) for x in seqlens_Q]
    seqlens_KV = [int(x) for x in seqlens_KV]
    assert sum(seqlens_Q) == N and sum(seqlens_KV) == M
    mask = torch.zeros(N, M, dtype=torch.bool)
    oq = okv = 0
    for lq, lk in zip(seqlens_Q, seqlens_KV):
        for i in range(lq):
            for j in range(lk):
                if (not is_causal) or j <= i:
                    mask[oq + i, okv + j] = True
        oq += lq
        okv += lk
    return dense_attention(q, k, v, mask=mask, scale=scale)


# ---------------------------------------------------------------------------------------------
# Row-wise brute force (for large problems: only a few query rows / key columns)
# ---------------------------------------------------------------------------------------------


def attended_flat_keys(shape, kernel_size, stride, dilation, is_causal, flat_i: int) -> List[int]:
    """Row-major flat indices of the keys attended by flat query ``flat_i``."""
    rank = len(shape)
    ks = as_tuple(kernel_size, rank)
    st = as_tuple(stride, rank)
    dl = as_tuple(dilation, rank)
    ca = as_tuple(is_causal, rank)
    coord = []
    rem = flat_i
    for ax in reversed(range(rank)):
        coord.append(rem % shape[ax])
        rem //= shape[ax]
    coord = coord[::-1]
    per_axis = [axis_row(shape[ax], ks[ax], st[ax], dl[ax], ca[ax], coord[ax]) for ax in range(rank)]
    # row-major combination
    flat = [0]
    for ax in range(rank):
        flat = [f * shape[ax] + j for f in flat for j in per_axis[ax]]
    return flat


def na_region_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    global_shape: Sequence[int],
    q_origin: Sequence[int],
    kv_origin: Sequence[int],
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    scale: Optional[float] = None,
    additional_keys: Optional[torch.Tensor] = None,
    additional_values: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Oracle for slabs of a larger grid: ``q`` holds the slab of ``global_shape`` starting at
    ``q_origin``, ``k``/``v`` the slab starting at ``kv_origin``. The mask is the global mask's
    block (query-slab rows, key-slab columns); keys outside the key slab are simply absent, so a
    key slab that does not cover the windows gives a different answer than the global problem."""
    B = q.shape[0]
    qs, ks = tuple(q.shape[1:-2]), tuple(k.shape[1:-2])
    H, D = q.shape[-2:]
    H_kv, Dv = k.shape[-2], v.shape[-1]
    full = na_mask(global_shape, kernel_size, stride, dilation, is_causal)
    gflat = torch.arange(math.prod(global_shape)).reshape(tuple(global_shape))

    def flat(origin, shape):
        sl = tuple(slice(o, o + s) for o, s in zip(origin, shape))
        return gflat[sl].reshape(-1)

    mask = full[flat(q_origin, qs)][:, flat(kv_origin, ks)]
    out, lse = dense_attention(
        q.reshape(B, -1, H, D), k.reshape(B, -1, H_kv, D), v.reshape(B, -1, H_kv, Dv),
        mask=mask, scale=scale, additional_keys=additional_keys,
        additional_values=additional_values,
    )
    return out.reshape(B, *qs, H, Dv), lse.reshape(B, *qs, H)
