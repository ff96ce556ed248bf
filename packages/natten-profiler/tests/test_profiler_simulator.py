"""The tile-visit simulator against brute force and the PERF-NOTES sanity targets."""

import itertools
import math
import random

import pytest
import torch

from natten.window import WindowSpec, axis_window_bounds
from natten_profiler import simulator


# ---------------------------------------------------------------------------------------------
# An independent, scalar implementation of SEMANTICS.md (one axis), used as the oracle.
# ---------------------------------------------------------------------------------------------


def attends(n, K, s, d, causal, i, j):
    """SEMANTICS.md, literally: is key j attended by query i on this axis?"""
    g = i % d
    if j % d != g:
        return False
    ip, jp = i // d, j // d
    ng = -(-(n - g) // d)
    if causal:
        leader = min(s * (ip // s) + s - 1, ng - 1)
        return jp <= ip and leader - jp < K
    L = K // 2
    R = K // 2 + K % 2 - 1
    leader = min(s * (ip // s) + s // 2, ng - 1)
    c = min(max(leader, L), ng - 1 - R)
    return c - L <= jp <= c + R


def axis_mask(n, K, s, d, causal):
    return torch.tensor([[attends(n, K, s, d, causal, i, j) for j in range(n)] for i in range(n)])


def full_mask(shape, ks, st, dl, ca):
    """Dense [N, N] boolean mask of a multi-dimensional problem (row-major tokens)."""
    rank = len(shape)
    m = None
    for a in range(rank):
        am = axis_mask(shape[a], ks[a], st[a], dl[a], ca[a])
        view = [1] * (2 * rank)
        view[a] = shape[a]
        view[rank + a] = shape[a]
        am = am.reshape(view)
        m = am if m is None else (m & am)
    return m.expand(*shape, *shape).reshape(math.prod(shape), math.prod(shape))


def token_tiles(shape, dl, tile):
    """Per token: its tile id (dilation group and tile index per axis) and per-axis local coords."""
    ids, local = [], []
    for coords in itertools.product(*[range(n) for n in shape]):
        ids.append(tuple((x % d, (x // d) // t) for x, d, t in zip(coords, dl, tile)))
        local.append(tuple(x // d for x, d in zip(coords, dl)))
    return ids, local


def brute_force(shape, ks, st, dl, ca, qt, kt):
    """Non-separable tile counts straight from the dense mask:
    nonempty = (q tile, kv tile) pairs holding an attended pair;
    box = pairs the box rule visits (per query tile: per axis [min, max] of its queries' attended
    key coordinates; key tiles of the same dilation group intersecting that box on every axis);
    full = box pairs in which every query attends every key; plus padded / real token counts."""
    mask = full_mask(shape, ks, st, dl, ca)
    rank = len(shape)
    q_ids, local = token_tiles(shape, dl, qt)
    k_ids, _ = token_tiles(shape, dl, kt)
    q_members, k_members = {}, {}
    for tok, tid in enumerate(q_ids):
        q_members.setdefault(tid, []).append(tok)
    for tok, tid in enumerate(k_ids):
        k_members.setdefault(tid, []).append(tok)
    nz = mask.nonzero().tolist()
    nonempty = {(q_ids[i], k_ids[j]) for i, j in nz}
    box_pairs, full, real = 0, 0, 0
    for qtid, qtoks in q_members.items():
        lo = [min(local[j][a] for i in qtoks for j in mask[i].nonzero().flatten().tolist())
              for a in range(rank)]
        hi = [max(local[j][a] for i in qtoks for j in mask[i].nonzero().flatten().tolist())
              for a in range(rank)]
        for ktid, ktoks in k_members.items():
            if any(ktid[a][0] != qtid[a][0] for a in range(rank)):
                continue  # another dilation group
            inside = True
            for a in range(rank):
                t = ktid[a][1]
                a0, a1 = t * kt[a], t * kt[a] + kt[a] - 1
                if a1 < lo[a] or a0 > hi[a]:
                    inside = False
            if not inside:
                continue
            box_pairs += 1
            real += len(qtoks) * len(ktoks)
            if bool(mask[qtoks][:, ktoks].all()):
                full += 1
    return {
        "nonempty": len(nonempty), "box": box_pairs, "full": full, "real": real,
        "attended": int(mask.sum()),
    }


def random_problem(rng):
    rank = rng.choice([1, 1, 2, 2, 3])
    nmax = {1: 40, 2: 11, 3: 6}[rank]
    shape, ks, st, dl, ca, qt, kt = [], [], [], [], [], [], []
    for _ in range(rank):
        n = rng.randint(2, nmax)
        d = rng.choice([1, 1, 1, 2, 3]) if n >= 4 else 1
        d = min(d, n // 2)
        K = rng.randint(2, max(2, n // d))
        s = rng.randint(1, K)
        shape.append(n), ks.append(K), st.append(s), dl.append(d)
        ca.append(rng.random() < 0.3)
        qt.append(rng.randint(1, 5)), kt.append(rng.randint(1, 5))
    return tuple(shape), tuple(ks), tuple(st), tuple(dl), tuple(ca), tuple(qt), tuple(kt)


# ---------------------------------------------------------------------------------------------


def test_oracle_matches_natten_window_bounds():
    rng = random.Random(1)
    for _ in range(150):
        n = rng.randint(2, 30)
        d = rng.randint(1, max(1, n // 2))
        K = rng.randint(2, max(2, n // d))
        s = rng.randint(1, K)
        causal = rng.random() < 0.4
        start, last = axis_window_bounds(n, K, s, d, causal)
        for i in range(n):
            js = [j for j in range(n) if attends(n, K, s, d, causal, i, j)]
            assert js == list(range(int(start[i]), int(last[i]) + 1, d)), (n, K, s, d, causal, i)


@pytest.mark.parametrize("seed", range(6))
def test_simulator_matches_brute_force(seed):
    rng = random.Random(1000 + seed)
    for _ in range(25):
        shape, ks, st, dl, ca, qt, kt = random_problem(rng)
        r = simulator.simulate(shape, ks, st, dl, ca, qt, kt)
        bf = brute_force(shape, ks, st, dl, ca, qt, kt)
        ctx = (shape, ks, st, dl, ca, qt, kt)
        # The separable box bound equals the same box rule computed without separability ...
        assert r.visited_tiles == bf["box"], ctx
        # ... it never visits fewer tiles than hold an attended pair ...
        assert r.visited_tiles >= bf["nonempty"], ctx
        # ... and with tiles in dilation-group coordinates it visits exactly those (the per-axis
        # union of a tile's windows is an interval; see the simulator's docstring).
        assert r.visited_tiles == bf["nonempty"], ctx
        assert r.full_tiles == bf["full"], ctx
        assert r.block_sparse == (bf["full"] == bf["box"]), ctx
        assert r.visited_pairs_real == bf["real"], ctx
        assert r.visited_pairs == bf["box"] * math.prod(qt) * math.prod(kt), ctx
        assert r.attended_pairs == bf["attended"] == WindowSpec(shape, ks, st, dl, ca).num_pairs()
        assert r.dense_pairs == math.prod(shape) ** 2


def test_box_bound_can_exceed_nonempty_for_tiles_across_dilation_groups():
    """Why tiles live in dilation-group coordinates: tiles in original coordinates mix groups,
    and then a tile's box spans key tiles that none of its queries attends."""
    n, K, d, T = 16, 2, 4, 2
    mask = axis_mask(n, K, 1, d, False)
    nonempty = {(i // T, j // T) for i, j in mask.nonzero().tolist()}
    start, last = axis_window_bounds(n, K, 1, d, False)
    boxes = sum(
        int(last[t * T:(t + 1) * T].max()) // T - int(start[t * T:(t + 1) * T].min()) // T + 1
        for t in range(n // T)
    )
    assert boxes > len(nonempty)
    # In group-local coordinates the simulator's count is exact.
    r = simulator.simulate((n,), K, 1, d, False, (T,), (T,))
    bf = brute_force((n,), (K,), (1,), (d,), (False,), (T,), (T,))
    assert r.visited_tiles == bf["nonempty"] == bf["box"]


# ---------------------------------------------------------------------------------------------
# PERF-NOTES sanity targets (whole tiles counted, dense = unpadded N^2)
# ---------------------------------------------------------------------------------------------

HUNYUAN = ((30, 48, 80), (18, 24, 24))
FLUX = ((256, 256), (80, 80))
ONE_D = ((32768,), (2048,))


@pytest.mark.parametrize(
    "problem,stride,q,kv,bound",
    [
        (HUNYUAN, 1, (2, 8, 8), (2, 8, 8), 5.4),
        (HUNYUAN, 1, (4, 4, 8), (4, 4, 8), 5.5),
        (HUNYUAN, 1, (2, 8, 4), (2, 4, 8), 7.4),
        (FLUX, 1, (16, 8), (16, 8), 7.5),
        (FLUX, 1, (8, 8), (8, 8), 9.0),
        (ONE_D, 1, (128,), (128,), 15.1),
    ],
)
def test_perf_notes_tile_bounds(problem, stride, q, kv, bound):
    shape, window = problem
    r = simulator.simulate(shape, window, stride, 1, False, q, kv)
    assert round(r.tile_bound, 1) == bound
    assert not r.block_sparse


@pytest.mark.parametrize(
    "problem,flop_bound", [(HUNYUAN, 11.1), (FLUX, 10.2), (ONE_D, 16.0)]
)
def test_perf_notes_flop_bounds(problem, flop_bound):
    shape, window = problem
    assert round(simulator.flop_bound(shape, window), 1) == flop_bound


@pytest.mark.parametrize(
    "problem,stride,tile,bound",
    [
        (HUNYUAN, (16, 8, 8), (2, 8, 8), 11.1),  # hunyuan-gna
        (FLUX, (16, 16), (16, 8), 10.2),  # flux-4k-gna
        (ONE_D, (256,), (128,), 16.0),  # 1d-32k-s256
    ],
)
def test_perf_notes_fully_block_sparse(problem, stride, tile, bound):
    shape, window = problem
    r = simulator.simulate(shape, window, stride, 1, False, tile, tile)
    assert r.block_sparse
    assert r.masked_tiles == 0
    assert round(r.flop_bound, 1) == bound
    assert r.tile_bound == pytest.approx(r.flop_bound, rel=1e-12)


def test_hunyuan_gna_flop_bound_and_padding_convention():
    r = simulator.simulate((30, 48, 80), (18, 24, 24), (16, 8, 8), 1, False, (2, 8, 8), (2, 8, 8))
    assert round(r.flop_bound, 1) == 11.1
    # PERF-NOTES counts whole tiles; counting real tokens only would give 6.0x for 4x4x8.
    r = simulator.simulate((30, 48, 80), (18, 24, 24), 1, 1, False, (4, 4, 8), (4, 4, 8))
    assert round(r.tile_bound, 2) == 5.49 and round(r.tile_bound_real, 1) == 6.0


# ---------------------------------------------------------------------------------------------


def test_block_sparse_strides_agree_with_simulation():
    rng = random.Random(7)
    for _ in range(40):
        n = rng.randint(4, 40)
        d = rng.choice([1, 1, 2])
        K = rng.randint(2, max(2, n // d))
        causal = rng.random() < 0.2
        tq, tk = rng.choice([1, 2, 4, 8]), rng.choice([1, 2, 4, 8])
        got = simulator.block_sparse_strides(n, K, d, causal, tq, tk)
        want = [s for s in range(1, K + 1)
                if brute_force((n,), (K,), (s,), (d,), (causal,), (tq,), (tk,))["full"]
                == brute_force((n,), (K,), (s,), (d,), (causal,), (tq,), (tk,))["box"]]
        assert got == want, (n, K, d, causal, tq, tk)


def test_hunyuan_gna_strides_are_block_sparse_per_axis():
    lists = [simulator.block_sparse_strides(n, K, 1, False, t, t)
             for n, K, t in zip((30, 48, 80), (18, 24, 24), (2, 8, 8))]
    assert 16 in lists[0] and 8 in lists[1] and 8 in lists[2]
    assert 1 not in lists[1]


def test_candidate_tile_shapes():
    c = simulator.candidate_tile_shapes((30, 48, 80), (1, 1, 1), (64, 128))
    assert (2, 8, 8) in c and (4, 4, 8) in c
    assert all(math.prod(t) in (64, 128) for t in c)
    assert all(t & (t - 1) == 0 for shape in c for t in shape)
    # A tile never exceeds its axis, and padding stays within 25%.
    for shape in c:
        for t, n in zip(shape, (30, 48, 80)):
            assert t <= n and -(-n // t) * t <= 1.25 * n
    assert simulator.candidate_tile_shapes((4,), None, (64,)) == []


def test_rank_tilings_sorted_and_consistent():
    res = simulator.rank_tilings((64, 64), (13, 13), 1, 1, False)
    assert res and all(a.tile_bound >= b.tile_bound for a, b in zip(res, res[1:]))
    assert all(r.q_tile == r.kv_tile for r in res)
    res2 = simulator.rank_tilings((64, 64), (13, 13), 1, 1, False, same_shape=False)
    assert len(res2) == len(res) ** 2


def test_invalid_problems_raise():
    with pytest.raises(ValueError, match="kernel_size"):
        simulator.simulate((8,), 9, 1, 1, False, (4,), (4,))
    with pytest.raises(ValueError, match="q_tile"):
        simulator.simulate((8, 8), 3, 1, 1, False, (4, 4, 4), (4, 4))
    with pytest.raises(ValueError, match="q_tile"):
        simulator.simulate((8,), 3, 1, 1, False, (0,), (4,))


def test_library_configs_ranked_by_tile_bound():
    """natten_fna_query_configs lists tile pairs in a fixed enumeration order (it has no token
    shape to rank by); the profiler puts natten's own choice first and the pairs by simulated tile
    bound after it, so --max-configs N times the N best-rated pairs, not the first N enumerated."""
    from natten_profiler.configs import Config, rank_library_configs
    from natten_profiler.problem import UseCase

    uc = UseCase((48, 40), (13, 9), (1, 1), (1, 1), (False, False), 1, 2, 2, 64, 64, "fp16")
    shapes = [(1, 64), (2, 32), (4, 16), (8, 8), (16, 4), (32, 2), (64, 1)]
    enumerated = [Config("cutlass-fna", q, kv) for q in shapes for kv in shapes]  # the library's order
    ranked = rank_library_configs(uc, "cutlass-fna", enumerated)
    assert ranked[0].q_tile_shape is None and ranked[0].kv_tile_shape is None  # natten's own choice
    rest = ranked[1:]
    assert sorted((c.q_tile_shape, c.kv_tile_shape) for c in rest) == sorted(
        (c.q_tile_shape, c.kv_tile_shape) for c in enumerated)
    bounds = [c.tile_bound for c in rest]
    assert all(b is not None and b > 0 for b in bounds)
    assert bounds == sorted(bounds, reverse=True)
    # every pair's bound is the simulator's own for that pair
    for c in rest[:5]:
        r = simulator.simulate(uc.input_size, uc.window_size, uc.stride, uc.dilation, uc.causal,
                               c.q_tile_shape, c.kv_tile_shape)
        assert c.tile_bound == pytest.approx(r.tile_bound, rel=1e-12)
    # the enumeration's first pair (the whole query tile on the last axis) is not the best rated
    assert (rest[0].q_tile_shape, rest[0].kv_tile_shape) != ((1, 64), (1, 64))
    assert rest[0].tile_bound > enumerated[0].tile_bound
