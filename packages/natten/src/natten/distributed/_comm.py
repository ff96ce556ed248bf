"""Communication as autograd functions: halo exchange, all-to-all, replicated-input gradients.

Everything goes through ``torch.distributed`` (NCCL on GPUs, gloo on CPU). The backward of each
exchange is the reverse exchange, so gradients of halo keys/values return to, and are summed on,
the rank that owns them.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ._plan import ShardPlan


def _p2p(sends: Sequence[Tuple[int, Tensor]], recvs: Sequence[Tuple[int, Tensor]], group: Any):
    """Post the sends and receives (peers are group ranks); return the pending works."""
    ops = []
    for peer, t in recvs:
        ops.append(dist.P2POp(dist.irecv, t, group=group, group_peer=peer) if _HAS_GROUP_PEER
                   else dist.P2POp(dist.irecv, t, _global(peer, group), group))
    for peer, t in sends:
        ops.append(dist.P2POp(dist.isend, t, group=group, group_peer=peer) if _HAS_GROUP_PEER
                   else dist.P2POp(dist.isend, t, _global(peer, group), group))
    if not ops:
        return []
    return dist.batch_isend_irecv(ops)


def _global(peer: int, group: Any) -> int:
    if group is None or group is dist.GroupMember.WORLD:
        return peer
    return dist.get_global_rank(group, peer)


def _has_group_peer() -> bool:
    import inspect

    try:
        return "group_peer" in inspect.signature(dist.P2POp.__init__).parameters
    except (TypeError, ValueError):
        return False


_HAS_GROUP_PEER = _has_group_peer()


def _piece(t: Tensor, axis: int, origin: int, rng: Tuple[int, int]) -> Tensor:
    return t.narrow(1 + axis, rng[0] - origin, rng[1] - rng[0])


def _empty_piece(t: Tensor, axis: int, length: int) -> Tensor:
    shape = list(t.shape)
    shape[1 + axis] = length
    return torch.empty(shape, dtype=t.dtype, device=t.device)


class _Pending:
    """Works of an exchange in flight (kept off the autograd graph)."""

    def __init__(self, works: List[Any]) -> None:
        self.works = works

    def wait(self) -> None:
        for w in self.works:
            w.wait()
        self.works = []


class HaloStart(torch.autograd.Function):
    """Post the halo exchange of ``k`` and ``v``.

    Returns ``(k, v, *replicated, *buffers)``: views of the inputs and the receive buffers (filled
    once :class:`HaloWait` has run), two per received piece (keys, values), in global order.
    ``replicated`` are inputs every rank holds the same copy of (additional keys/values); their
    gradients are all-reduced here, in this one node, so the collective order is the same on every
    rank whatever the rest of each rank's graph looks like.

    Backward: send each halo gradient back to its owner, add the gradients other ranks return for
    this rank's keys/values, then all-reduce the replicated inputs' gradients.
    """

    @staticmethod
    def forward(ctx, plan: ShardPlan, group: Any, pending: _Pending, k: Tensor, v: Tensor,  # type: ignore[override]
                *replicated: Tensor):
        ctx.plan, ctx.group, ctx.n_repl = plan, group, len(replicated)
        ctx.meta = [(t.shape, t.dtype, t.device) for t in (k, v, *replicated)]
        origin = plan.slab()[0]
        sends, recvs, bufs = [], [], []
        for peer, rng in plan.sends():
            for t in (k, v):
                sends.append((peer, _piece(t, plan.axis, origin, rng).contiguous()))
        for peer, rng in plan.receives():
            for t in (k, v):
                buf = _empty_piece(t, plan.axis, rng[1] - rng[0])
                recvs.append((peer, buf))
                bufs.append(buf)
        pending.works = _p2p(sends, recvs, group)
        pending.keep = sends  # the send buffers must live until the works complete
        views = tuple(t.view_as(t) for t in (k, v, *replicated))
        return (*views, *bufs)

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]):  # type: ignore[override]
        plan = ctx.plan
        origin = plan.slab()[0]
        n_in = 2 + ctx.n_repl
        own = [
            torch.zeros(*m[0], dtype=m[1], device=m[2]) if g is None else g.clone()
            for g, m in zip(grads[:n_in], ctx.meta)
        ]
        dk, dv = own[0], own[1]
        sends, recvs, placed = [], [], []
        g = iter(grads[n_in:])
        for peer, rng in plan.receives():
            for t in (dk, dv):
                gr = next(g)
                if gr is None:
                    gr = _empty_piece(t, plan.axis, rng[1] - rng[0]).zero_()
                sends.append((peer, gr.contiguous()))
        for peer, rng in plan.sends():
            for t in (dk, dv):
                buf = _empty_piece(t, plan.axis, rng[1] - rng[0])
                recvs.append((peer, buf))
                placed.append((t, rng, buf))
        for w in _p2p(sends, recvs, ctx.group):
            w.wait()
        for t, rng, buf in placed:
            _piece(t, plan.axis, origin, rng).add_(buf)
        for t in own[2:]:
            dist.all_reduce(t, group=ctx.group)
        return (None, None, None, *own)


class HaloWait(torch.autograd.Function):
    """Wait for the exchange posted by :class:`HaloStart`; identity on the buffers."""

    @staticmethod
    def forward(ctx, pending: _Pending, *bufs: Tensor):  # type: ignore[override]
        pending.wait()
        return tuple(b.view_as(b) for b in bufs)

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]):  # type: ignore[override]
        return (None, *grads)


class AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of a flat tensor with element splits; backward is the reverse."""

    @staticmethod
    def forward(ctx, x: Tensor, send: List[int], recv: List[int], group: Any):  # type: ignore[override]
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty(sum(recv))
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        out = grad.new_empty(sum(ctx.send))
        dist.all_to_all_single(out, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return out, None, None, None


class ReplicatedInput(torch.autograd.Function):
    """Identity for an input every rank holds the same copy of (global tokens, e.g. additional
    keys/values); the backward all-reduces the gradient so every rank gets the full gradient,
    equal to the single-device one."""

    @staticmethod
    def forward(ctx, x: Tensor, group: Any):  # type: ignore[override]
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None
