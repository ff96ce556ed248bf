"""Context-parallel neighborhood attention: ``na1d/na2d/na3d`` over a process group.

Each rank passes its slab of the token grid (contiguous along ``shard_axis``, in rank order) and
gets the output (and logsumexp) of its own queries, equal to the single-device result.

Two strategies:

* ``"halo"``: every rank receives the keys/values of its neighbours that its queries' windows
  reach (point-to-point), computes its queries against its slab plus the halo with windows placed
  on the global grid (``global_shape``/``q_origin``/``kv_origin`` of :func:`natten.na2d`), and in
  the backward returns the halo gradients to their owners. Queries whose windows stay inside the
  slab are computed while the halo is in flight.
* ``"ulysses"``: head parallelism. All-to-alls turn token slabs with all heads into the whole grid
  with ``heads / world_size`` heads; each rank runs ordinary neighborhood attention; the output
  returns the same way. Needs heads and key/value heads divisible by the world size.

``"auto"`` takes Ulysses where heads divide and it moves at most ``ULYSSES_BYTES_FACTOR`` (8)
times the halo's bytes (:func:`plan_exchange`): measured faster on H100s even when it moves more,
because each rank's attention stays the whole, perfectly tiled problem.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor

from .. import functional as F
from ..utils import checks
from ._comm import AllToAll, HaloStart, HaloWait, ReplicatedInput, _Pending
from ._plan import ExchangeStats, ShardPlan, exchange_stats

IntOrTuple = Union[int, Tuple[int, ...]]
BoolOrTuple = Union[bool, Tuple[bool, ...]]
STRATEGIES = ("auto", "halo", "ulysses")
ULYSSES_BYTES_FACTOR = 8


def _group_info(group: Any) -> Tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "natten.distributed needs an initialized torch.distributed process group "
            "(torch.distributed.init_process_group)."
        )
    return dist.get_world_size(group), dist.get_rank(group)


def _gather_sizes(local: int, device: torch.device, group: Any, world: int) -> Tuple[int, ...]:
    t = torch.tensor([local], dtype=torch.int64, device=device)
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    return tuple(int(x.item()) for x in out)


def make_plan(
    query: Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    shard_axis: int = 0,
    shard_sizes: Optional[Sequence[int]] = None,
    group: Any = None,
) -> ShardPlan:
    """The :class:`ShardPlan` of a call (collective: gathers the slab sizes unless
    ``shard_sizes`` is given). Raises the same ``ValueError`` on every rank for bad parameters."""
    world, rank = _group_info(group)
    if not isinstance(query, Tensor) or query.dim() not in (4, 5, 6):
        raise ValueError(
            "natten.distributed expects `query` of shape [batch, *token_grid, heads, head_dim] "
            f"with a token grid of rank 1-3, got {getattr(query, 'shape', type(query).__name__)}."
        )
    grid_rank = query.dim() - 3
    if not checks._is_int(shard_axis) or not 0 <= shard_axis < grid_rank:
        raise ValueError(
            f"`shard_axis` must be an int in [0, {grid_rank}) for a rank-{grid_rank} token grid, "
            f"got {shard_axis!r}."
        )
    local = tuple(int(s) for s in query.shape[1:-2])
    if shard_sizes is None:
        sizes = _gather_sizes(local[shard_axis], query.device, group, world)
    else:
        sizes = checks.as_int_tuple("shard_sizes", tuple(shard_sizes), world)
        if sizes[rank] != local[shard_axis]:
            raise ValueError(
                f"`shard_sizes[{rank}]` ({sizes[rank]}) is not this rank's slab extent along "
                f"shard_axis {shard_axis} ({local[shard_axis]})."
            )
    if any(s < 1 for s in sizes):
        raise ValueError(f"every rank must hold at least one token along the shard axis, got {sizes}.")
    global_shape = local[:shard_axis] + (sum(sizes),) + local[shard_axis + 1 :]
    ks, st, dl, ca = checks.check_na_params(global_shape, kernel_size, stride, dilation, is_causal)
    return ShardPlan(world, rank, shard_axis, sizes, global_shape, ks, st, dl, ca)


def plan_exchange(
    plan: ShardPlan, query: Tensor, key: Tensor, value: Tensor
) -> ExchangeStats:
    """Bytes each strategy would receive on this rank for these tensors, and the halo lower
    bound (see :class:`natten.distributed.ExchangeStats`)."""
    return exchange_stats(
        plan, query.shape[0], query.shape[-2], key.shape[-2], query.shape[-1], value.shape[-1],
        query.element_size(),
    )


def _choose(strategy: str, plan: ShardPlan, q: Tensor, k: Tensor, v: Tensor) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {strategy!r}.")
    P = plan.world_size
    divisible = q.shape[-2] % P == 0 and k.shape[-2] % P == 0
    if strategy == "ulysses" and not divisible:
        raise ValueError(
            f"strategy 'ulysses' needs heads ({q.shape[-2]}) and key/value heads "
            f"({k.shape[-2]}) divisible by the world size ({P}); use strategy='halo'."
        )
    if strategy != "auto":
        return strategy
    if P == 1 or not divisible:
        return "halo"
    # Decided on totals over all ranks (computable on each rank from the plan alone), so every rank
    # takes the same strategy. Head parallelism keeps each rank's attention the whole, perfectly
    # tiled problem, while halo slabs cut tiles at slab borders: on 2 H100s (NVLink, flex-fna,
    # bf16 forward+backward) Ulysses ran hunyuan 1.91x and hunyuan-gna 1.72x faster than one GPU,
    # the halo exchange 1.43x and 1.63x, although Ulysses moved 1.9x and 5x the bytes. So Ulysses
    # is taken unless it moves more than ULYSSES_BYTES_FACTOR times the halo's bytes.
    halo = ulysses = 0
    for r in range(P):
        stats = plan_exchange(dataclasses.replace(plan, rank=r), q, k, v)
        halo += stats.halo_bytes
        ulysses += stats.ulysses_bytes or 0
    return "ulysses" if ulysses <= ULYSSES_BYTES_FACTOR * halo else "halo"


def _narrow(t: Tensor, axis: int, rng: Tuple[int, int], origin: int) -> Tensor:
    return t.narrow(1 + axis, rng[0] - origin, rng[1] - rng[0])


def _halo(
    plan: ShardPlan, group: Any, q: Tensor, k: Tensor, v: Tensor,
    extra: Optional[Tuple[Tensor, Tensor]], na_kwargs: Dict[str, Any],
) -> Tuple[Tensor, Tensor]:
    axis = plan.axis
    lo, hi = plan.slab()
    pending = _Pending([])
    repl = extra if extra is not None else ()
    outs = HaloStart.apply(plan, group, pending, k, v, *repl)
    k_own, v_own = outs[0], outs[1]
    add = outs[2:2 + len(repl)]
    bufs = outs[2 + len(repl):]
    add_kw = {}
    if add:
        add_kw = dict(additional_keys=add[0], additional_values=add[1])

    def compute(queries: Tuple[int, int], kk: Tensor, vv: Tensor, kv_lo: int) -> Tuple[Tensor, Tensor]:
        need = plan.key_range(queries)
        q_part = _narrow(q, axis, queries, lo)
        k_part = _narrow(kk, axis, need, kv_lo)
        v_part = _narrow(vv, axis, need, kv_lo)
        origin_q = [0] * len(plan.global_shape)
        origin_k = [0] * len(plan.global_shape)
        origin_q[axis], origin_k[axis] = queries[0], need[0]
        out, lse = F.neighborhood_attention_generic(
            q_part, k_part, v_part, plan.kernel_size, plan.stride, plan.dilation,
            plan.is_causal, return_lse=True, global_shape=plan.global_shape,
            q_origin=tuple(origin_q), kv_origin=tuple(origin_k), **add_kw, **na_kwargs,
        )
        return out, lse

    parts: List[Tuple[int, Tuple[Tensor, Tensor]]] = []
    inner = plan.interior() if bufs else (lo, hi)
    if inner[0] < inner[1]:
        parts.append((inner[0], compute(inner, k_own, v_own, lo)))  # overlaps the exchange
    if bufs:
        bufs = HaloWait.apply(pending, *bufs)
        recv = plan.receives()
        left = [i for i, (_, r) in enumerate(recv) if r[1] <= lo]
        right = [i for i, (_, r) in enumerate(recv) if r[0] >= hi]
        k_ext = torch.cat([bufs[2 * i] for i in left] + [k_own] + [bufs[2 * i] for i in right], 1 + axis)
        v_ext = torch.cat([bufs[2 * i + 1] for i in left] + [v_own] + [bufs[2 * i + 1] for i in right], 1 + axis)
        kv_lo = plan.needs()[0]
        for rng in ((lo, inner[0]), (inner[1], hi)) if inner[0] < inner[1] else ((lo, hi),):
            if rng[0] < rng[1]:
                parts.append((rng[0], compute(rng, k_ext, v_ext, kv_lo)))
    else:
        pending.wait()  # sends only: keep their buffers alive until they complete
    parts.sort(key=lambda p: p[0])
    if len(parts) == 1:
        return parts[0][1]
    out = torch.cat([p[1][0] for p in parts], 1 + axis)
    lse = torch.cat([p[1][1] for p in parts], 1 + axis)
    return out, lse


def _tokens_to_heads(x: Tensor, plan: ShardPlan, group: Any) -> Tensor:
    """``[B, *slab, H, D]`` on every rank → ``[B, *global, H / P, D]`` (this rank's heads)."""
    P, axis = plan.world_size, plan.axis
    B, H, D = x.shape[0], x.shape[-2], x.shape[-1]
    grid = x.shape[1:-2]
    chunks = x.reshape(B, *grid, P, H // P, D).movedim(-3, 0).contiguous().reshape(-1)
    per_token = B * math.prod(grid) // grid[axis] * (H // P) * D
    send = [chunks.numel() // P] * P
    recv = [s * per_token for s in plan.sizes]
    flat = AllToAll.apply(chunks, send, recv, group)
    pieces = []
    for piece, s in zip(flat.split(recv), plan.sizes):
        shape = list(grid)
        shape[axis] = s
        pieces.append(piece.reshape(B, *shape, H // P, D))
    return torch.cat(pieces, 1 + axis)


def _heads_to_tokens(x: Tensor, plan: ShardPlan, group: Any) -> Tensor:
    """``[B, *global, H / P, D]`` → ``[B, *slab, H, D]``: inverse of :func:`_tokens_to_heads`."""
    P, axis = plan.world_size, plan.axis
    B, Hp, D = x.shape[0], x.shape[-2], x.shape[-1]
    pieces = [p.contiguous().reshape(-1) for p in x.split(list(plan.sizes), 1 + axis)]
    send = [p.numel() for p in pieces]
    mine = send[plan.rank]
    flat = AllToAll.apply(torch.cat(pieces), send, [mine] * P, group)
    grid = list(x.shape[1:-2])
    grid[axis] = plan.sizes[plan.rank]
    return flat.reshape(P, B, *grid, Hp, D).movedim(0, -3).reshape(B, *grid, P * Hp, D)


def _ulysses(
    plan: ShardPlan, group: Any, q: Tensor, k: Tensor, v: Tensor,
    extra: Optional[Tuple[Tensor, Tensor]], na_kwargs: Dict[str, Any],
) -> Tuple[Tensor, Tensor]:
    P, r = plan.world_size, plan.rank
    qg, kg, vg = (_tokens_to_heads(t, plan, group) for t in (q, k, v))
    add_kw = {}
    if extra is not None:
        hk = extra[0].shape[2] // P
        ak, av = (ReplicatedInput.apply(t, group)[:, :, r * hk : (r + 1) * hk] for t in extra)
        add_kw = dict(additional_keys=ak, additional_values=av)
    out, lse = F.neighborhood_attention_generic(
        qg, kg, vg, plan.kernel_size, plan.stride, plan.dilation, plan.is_causal,
        return_lse=True, **add_kw, **na_kwargs,
    )
    out = _heads_to_tokens(out, plan, group)
    lse = _heads_to_tokens(lse.unsqueeze(-1), plan, group).squeeze(-1)
    return out, lse


def neighborhood_attention_distributed(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: Optional[float] = None,
    additional_keys: Optional[Tensor] = None,
    additional_values: Optional[Tensor] = None,
    return_lse: bool = False,
    *,
    shard_axis: int = 0,
    shard_sizes: Optional[Sequence[int]] = None,
    group: Any = None,
    strategy: str = "auto",
    backend: Optional[str] = None,
    **na_kwargs: Any,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Context-parallel neighborhood attention over ``group``; see :func:`na2d`."""
    plan = make_plan(query, kernel_size, stride, dilation, is_causal, shard_axis, shard_sizes, group)
    q, k, v = checks.check_qkv("natten.distributed", query, key, value, len(plan.global_shape))
    if (additional_keys is None) != (additional_values is None):
        raise ValueError("`additional_keys` and `additional_values` must be given together.")
    extra = None
    if additional_keys is not None:
        checks.check_additional_kv(q, k, v, additional_keys, additional_values)
        extra = (additional_keys, additional_values)
    kw = dict(na_kwargs)
    kw["scale"] = checks.check_scale(scale, q.shape[-1])
    kw["backend"] = backend
    chosen = _choose(strategy, plan, q, k, v)
    if chosen == "ulysses":
        out, lse = _ulysses(plan, group, q, k, v, extra, kw)
    else:
        out, lse = _halo(plan, group, q, k, v, extra, kw)
    return (out, lse) if return_lse else out


_DOC = """Context-parallel neighborhood attention over a {rank}-D token grid.

    Every rank of ``group`` calls this with its slab of the token grid: ``query``, ``key`` and
    ``value`` hold the tokens ``[offset_r, offset_r + n_r)`` along ``shard_axis`` (slabs in rank
    order, uneven extents allowed) and the whole extent of the other axes. The result on each rank
    is its queries' output (and logsumexp), equal to :func:`natten.{name}` on the whole grid; the
    backward returns gradients of each rank's own ``query``/``key``/``value``.

    Args:
        query, key, value (Tensor): this rank's slabs, ``[batch, {grid}, heads, head_dim]`` (key
            and value with ``heads_kv`` heads, value with ``head_dim_v``).
        kernel_size, stride, dilation, is_causal: as in :func:`natten.{name}`, for the global grid.
        scale (float, optional): softmax scale. Default: ``head_dim ** -0.5``.
        additional_keys, additional_values (Tensor, optional): global tokens every query attends,
            ``[batch, seqlen, heads_kv, head_dim(_v)]``, the same on every rank; their gradient is
            summed over ranks, so each rank gets the single-device gradient.
        return_lse (bool): also return the logsumexp. Default: False.
        shard_axis (int, keyword-only): the axis the grid is split along. Default: 0.
        shard_sizes (sequence of int, keyword-only, optional): every rank's slab extent; None
            gathers them (one small all-gather per call).
        group (ProcessGroup, keyword-only, optional): default: the world.
        strategy (str, keyword-only): ``"halo"``, ``"ulysses"`` (heads and kv heads divisible by
            the world size) or ``"auto"`` (Ulysses where heads divide, unless it moves more than
            8x the halo's bytes). Default: ``"auto"``.
        backend (str, keyword-only, optional): the single-device backend each rank runs; it must
            take slabs of a larger grid for ``"halo"`` (see :func:`natten.get_compatible_backends`).
        **na_kwargs: further keyword arguments of :func:`natten.{name}` (tile shapes, ...).

    Returns:
        Tensor ``[batch, {grid}, heads, head_dim_v]`` for this rank's slab (and the logsumexp
        ``[batch, {grid}, heads]`` with ``return_lse=True``).
    """


def _make(rank: int, name: str):
    def op(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntOrTuple, *args: Any, **kwargs: Any):
        if isinstance(query, Tensor) and query.dim() != rank + 3:
            raise ValueError(
                f"natten.distributed.{name} expects `query` of shape [batch, "
                f"{', '.join('XYZ'[:rank])}, heads, head_dim] ({rank + 3} dims), got "
                f"{query.dim()} dims."
            )
        return neighborhood_attention_distributed(query, key, value, kernel_size, *args, **kwargs)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = _DOC.format(rank=rank, name=name, grid=", ".join("XYZ"[:rank]))
    return op


na1d = _make(1, "na1d")
na2d = _make(2, "na2d")
na3d = _make(3, "na3d")
