"""natten.distributed on CPU with gloo: 2 and 4 spawned processes. Forward, logsumexp and
gradients of every rank's slab equal the single-process result (float64, 1e-10) for random
rank-1/2/3 problems with stride, dilation, causal masking on the sharded axis, uneven slabs,
GQA, D_v != D and additional keys/values, under both strategies."""

import os
import random
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import natten
import natten.distributed as nd
from natten.distributed._plan import ShardPlan

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo unavailable"
)

OPS = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}
DOPS = {1: nd.na1d, 2: nd.na2d, 3: nd.na3d}
TOL = 1e-10


def random_case(rng: random.Random, world: int):
    rank = rng.choice([1, 2, 3])
    axis = rng.randrange(rank)
    while True:
        shape = [rng.randint(3, 9 if rank == 3 else 14) for _ in range(rank)]
        shape[axis] = rng.randint(world, 24 if rank < 3 else 12)
        ks, st, dl, ca = [], [], [], []
        for n in shape:
            k = rng.randint(2, min(n, 7))
            d = rng.randint(1, max(1, n // k))
            ks.append(k)
            dl.append(d)
            st.append(rng.randint(1, k))
            ca.append(rng.random() < 0.35)
        break
    # uneven slabs, every rank at least one token
    cuts = sorted(rng.sample(range(1, shape[axis]), world - 1))
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [shape[axis]])]
    Hkv = rng.choice([1, 2])
    H = Hkv * rng.choice([1, 2])
    if rng.random() < 0.5:  # heads divisible by the world size: ulysses possible
        Hkv, H = world, world * rng.choice([1, 2])
    return dict(
        shape=tuple(shape), axis=axis, sizes=tuple(sizes), ks=tuple(ks), st=tuple(st),
        dl=tuple(dl), ca=tuple(ca), H=H, Hkv=Hkv, D=rng.choice([4, 8]), Dv=rng.choice([4, 6]),
        B=rng.choice([1, 2]), additional=rng.random() < 0.3,
    )


def check_case(case, seed: int, strategy: str, rank: int, world: int, device="cpu") -> None:
    g = torch.Generator().manual_seed(seed)
    B, shape, H, Hkv, D, Dv = case["B"], case["shape"], case["H"], case["Hkv"], case["D"], case["Dv"]
    dt = torch.float64
    q = torch.randn(B, *shape, H, D, generator=g, dtype=dt)
    k = torch.randn(B, *shape, Hkv, D, generator=g, dtype=dt)
    v = torch.randn(B, *shape, Hkv, Dv, generator=g, dtype=dt)
    dout = torch.randn(B, *shape, H, Dv, generator=g, dtype=dt)
    dlse = torch.randn(B, *shape, H, generator=g, dtype=dt)
    ak = av = None
    if case["additional"]:
        ak = torch.randn(B, 5, Hkv, D, generator=g, dtype=dt).to(device)
        av = torch.randn(B, 5, Hkv, Dv, generator=g, dtype=dt).to(device)
    q, k, v, dout, dlse = (t.to(device) for t in (q, k, v, dout, dlse))
    kw = dict(kernel_size=case["ks"], stride=case["st"], dilation=case["dl"], is_causal=case["ca"])
    r = len(shape)

    full = [t.clone().requires_grad_() for t in (q, k, v)]
    fadd = [t.clone().requires_grad_() for t in (ak, av)] if ak is not None else [None, None]
    out, lse = OPS[r](*full, **kw, backend="reference", return_lse=True,
                      additional_keys=fadd[0], additional_values=fadd[1])
    torch.autograd.backward([out, lse], [dout, dlse.to(lse.dtype)])

    ax, sizes = case["axis"], case["sizes"]
    local = [nd.shard(t, ax, sizes, rank).clone().requires_grad_() for t in (q, k, v)]
    ladd = [t.clone().requires_grad_() for t in (ak, av)] if ak is not None else [None, None]
    o, l = DOPS[r](*local, **kw, return_lse=True, shard_axis=ax, strategy=strategy,
                   backend="reference", additional_keys=ladd[0], additional_values=ladd[1],
                   shard_sizes=sizes if seed % 2 else None)
    torch.autograd.backward(
        [o, l], [nd.shard(dout, ax, sizes, rank), nd.shard(dlse, ax, sizes, rank).to(l.dtype)]
    )
    what = f"rank {rank}/{world} seed {seed} {strategy} {case}"
    pairs = [("out", o, nd.shard(out, ax, sizes, rank)), ("lse", l, nd.shard(lse, ax, sizes, rank))]
    for name, mine, ref in zip(("dq", "dk", "dv"), local, full):
        pairs.append((name, mine.grad, nd.shard(ref.grad, ax, sizes, rank)))
    if ak is not None:
        pairs += [("d_add_k", ladd[0].grad, fadd[0].grad), ("d_add_v", ladd[1].grad, fadd[1].grad)]
    for name, got, ref in pairs:
        assert got is not None, f"{what}: {name} is None"
        err = (got.detach() - ref.detach()).abs().max().item()
        assert err <= TOL, f"{what}: {name} differs by {err:.3e}"


def _worker(rank: int, world: int, init_file: str, seeds, strategies) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for seed in seeds:
            case = random_case(random.Random(seed), world)
            for strategy in strategies:
                if strategy == "ulysses" and (case["H"] % world or case["Hkv"] % world):
                    continue
                check_case(case, seed, strategy, rank, world)
        # A layer: the context-parallel module equals the single-device one.
        torch.manual_seed(0)
        layer = natten.NeighborhoodAttention2D(16, 2, (3, 5), dilation=(1, 2), is_causal=(True, False))
        dlayer = nd.NeighborhoodAttention2D(16, 2, (3, 5), dilation=(1, 2), is_causal=(True, False))
        dlayer.load_state_dict(layer.state_dict())
        layer, dlayer = layer.double(), dlayer.double()
        x = torch.randn(1, 4 * world + 1, 11, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        sizes = nd.split_sizes(x.shape[1], world)
        ref = layer(x)
        got = dlayer(nd.shard(x.unsqueeze(-2), 0, sizes, rank).squeeze(-2))
        err = (got - nd.shard(ref.unsqueeze(-2), 0, sizes, rank).squeeze(-2)).abs().max().item()
        assert err <= TOL, f"module differs by {err:.3e}"
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(world: int, seeds, strategies) -> None:
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(world, os.path.join(d, "init"), list(seeds), strategies),
                 nprocs=world, join=True)


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_matches_single_process(world):
    _spawn(world, range(100 * world, 100 * world + (16 if world == 2 else 10)), ("halo", "ulysses", "auto"))


def test_plan_pieces_and_interior_against_brute_force():
    rng = random.Random(5)
    for _ in range(300):
        world = rng.randint(2, 5)
        n = rng.randint(world, 30)
        k = rng.randint(2, n)
        d = rng.randint(1, max(1, n // k))
        s = rng.randint(1, k)
        c = rng.random() < 0.4
        cuts = sorted(rng.sample(range(1, n), world - 1))
        sizes = tuple(b - a for a, b in zip([0] + cuts, cuts + [n]))
        for r in range(world):
            plan = ShardPlan(world, r, 0, sizes, (n,), (k,), (s,), (d,), (c,))
            lo, hi = plan.slab()
            start, last = natten.window.axis_window_bounds(n, k, s, d, c)
            keys = set()
            for i in range(lo, hi):
                keys.update(range(int(start[i]), int(last[i]) + 1, d))
            need = plan.needs()
            assert min(keys) == need[0] and max(keys) + 1 == need[1]
            remote = {j for j in keys if not lo <= j < hi}
            assert plan.attended_remote_keys() == len(remote)
            received = set()
            for _, (a, b) in plan.receives():
                received.update(range(a, b))
            assert remote <= received and received.isdisjoint(range(lo, hi))
            a, b = plan.interior()
            for i in range(a, b):
                assert lo <= start[i] and last[i] < hi


def test_errors_name_the_problem():
    q = torch.randn(1, 8, 2, 4)
    with pytest.raises(RuntimeError, match="initialized torch.distributed process group"):
        nd.na1d(q, q, q, 3)
    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", init_method=f"file://{d}/init", rank=0, world_size=1)
        try:
            with pytest.raises(ValueError, match=r"`shard_axis` must be an int in \[0, 1\)"):
                nd.na1d(q, q, q, 3, shard_axis=1)
            with pytest.raises(ValueError, match=r"`shard_sizes\[0\]` \(7\) is not this rank's slab"):
                nd.na1d(q, q, q, 3, shard_sizes=(7,))
            with pytest.raises(ValueError, match="`strategy` must be one of"):
                nd.na1d(q, q, q, 3, strategy="ring")
            with pytest.raises(ValueError, match=r"`kernel_size` \(9\) is larger than the input size \(8\)"):
                nd.na1d(q, q, q, 9)
            with pytest.raises(ValueError, match="expects `query` of shape"):
                nd.na2d(q, q, q, 3)
            # world size 1: the plain single-device result
            out = nd.na1d(q, q, q, 3, dilation=2, backend="reference")
            assert torch.equal(out, natten.na1d(q, q, q, 3, dilation=2, backend="reference"))
        finally:
            dist.destroy_process_group()
