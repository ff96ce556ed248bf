"""CPU tests of ``flex-fna`` on query/key slabs of a larger grid (``global_shape``, ``q_origin``,
``kv_origin``).

FlexAttention runs eagerly on CPU (forward only), so these tests check: the forward (out +
logsumexp) against the float64 oracle in float32 and float64 over ranks 1-3 with random slabs,
stride, dilation, per-axis causal, GQA and D_v != D, with default and explicit tiles (including
slabs that miss whole dilation groups and key slabs wider than needed); that CPU training is routed
to the reference backend with the same slabs; exactness of the slab's tile-ordered mask_mod and
block masks (element level and block level, no empty row, padding included); that sharding an axis
keeps the block sparsity of the unsharded problem; the plan cache key; the tile choice for slabs;
and the compiled path (dynamo's "eager" backend on CPU): one compile per slab, no recompiles.
"""

import math
import random

import pytest
import torch

import natten
from natten.backends import flex
from natten.window import Region, WindowSpec, key_range

from helpers import TOL, assert_close, assert_lse_close, randn
from oracle import na_mask, na_region_oracle
from test_region import region_case, run_region_case

NA_FN = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The CPU suite runs on small shared machines: keep intra-op threads from oversubscribing.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _region_spec(shape, ks, st, dl, ca, qo, qs, ko, kvs) -> WindowSpec:
    r = len(shape)
    t = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x,) * r  # noqa: E731
    return WindowSpec(
        tuple(shape), t(ks), t(st), t(dl), tuple(bool(c) for c in t(ca)),
        Region(tuple(qo), tuple(qs), tuple(ko), tuple(kvs)),
    )


def _covering_kv(spec: WindowSpec, qo, qs, margin=(0, 0)):
    """The key slab covering the query slab, widened by ``margin`` (front, back) within the grid."""
    kr = key_range(spec, qo, qs)
    ko = tuple(max(0, lo - margin[0]) for lo, _ in kr)
    ke = tuple(min(n, hi + margin[1]) for (_, hi), n in zip(kr, spec.shape))
    return ko, tuple(e - o for e, o in zip(ke, ko))


# ------------------------------------------------------------------------------------------------
# Forward against the float64 oracle: random slabs (default tiles)
# ------------------------------------------------------------------------------------------------

F32_SEEDS = [(rank, 3000 + 100 * rank + i) for rank in (1, 2, 3) for i in range(4)]
F64_SEEDS = [(rank, 3000 + 100 * rank + i) for rank in (1, 2, 3) for i in range(4, 6)]


@pytest.mark.parametrize("rank,seed", F32_SEEDS, ids=[f"r{r}-s{s}" for r, s in F32_SEEDS])
def test_flex_region_forward_float32(rank, seed):
    run_region_case(seed, rank, torch.float32, "flex-fna", backward=False)


@pytest.mark.parametrize("rank,seed", F64_SEEDS, ids=[f"r{r}-s{s}" for r, s in F64_SEEDS])
def test_flex_region_forward_float64(rank, seed):
    run_region_case(seed, rank, torch.float64, "flex-fna", backward=False)


def test_random_cases_cover_features():
    cases = [region_case(seed, rank) for rank, seed in F32_SEEDS + F64_SEEDS]
    specs = [c[0] for c in cases]
    assert any(any(s > 1 for s in spec.stride) for spec in specs)
    assert any(any(d > 1 for d in spec.dilation) for spec in specs)
    assert any(any(spec.is_causal) for spec in specs)
    assert any(c[6] != c[7] for c in cases)  # GQA / MQA
    assert any(c[8] != c[9] for c in cases)  # D_v != D
    # slabs that are proper parts of the grid, and key slabs that differ from the query slab
    assert all(c[2] != spec.shape for c, spec in zip(cases, specs))
    assert any(c[2] != c[4] for c in cases)


@pytest.mark.parametrize("rank,seed", [(1, 7101), (2, 7201), (3, 7301)])
def test_cpu_training_routes_to_reference_with_slabs(rank, seed):
    # flex-fna on CPU with inputs that require grad runs the reference backend: gradients exact
    run_region_case(seed, rank, torch.float64, "flex-fna", backward=True)


# ------------------------------------------------------------------------------------------------
# Forward against the oracle: hand-picked slabs with explicit tiles
# ------------------------------------------------------------------------------------------------

# (global shape, kernel, stride, dilation, causal, q_origin, q_shape, kv margin, heads, D, Dv,
#  q tile, kv tile)
TILE_CASES = [
    # odd origin on a dilated axis (front padding for the dilation group), tiles of 4/8
    ((40,), 7, 3, 2, True, (13,), (9,), (1, 2), (4, 2), 16, 8, (4,), (8,)),
    # 2-D interior slab, even kernel with stride, causal on one axis, non-square tiles
    ((19, 14), (5, 4), (2, 4), (3, 1), (False, True), (7, 3), (5, 9), (0, 0), (4, 2), 16, 8,
     (2, 4), (4, 2)),
    # a slab thinner than the dilation: whole dilation groups hold no query of the slab
    ((12, 10), (3, 3), (1, 2), (3, 1), (False, False), (4, 2), (1, 5), (2, 1), (2, 2), 8, 8,
     (2, 2), (2, 2)),
    # 3-D time shard (outer axis), dilation on the inner axis, causal time
    ((8, 10, 9), (3, 5, 4), (1, 2, 1), (1, 1, 2), (True, False, False), (4, 0, 0), (4, 10, 9),
     (0, 0), (4, 1), 16, 16, (2, 4, 2), (2, 2, 4)),
    # 3-D slab cut on every axis, key slab wider than needed, MQA, D_v != D
    ((7, 9, 8), (3, 4, 5), (3, 1, 2), (2, 1, 1), (False, True, False), (2, 3, 1), (3, 4, 6),
     (2, 3), (3, 1), 8, 12, (1, 4, 2), (2, 2, 2)),
]


def _tile_case_id(c):
    return f"{'x'.join(map(str, c[0]))}-q{c[5]}+{c[6]}-t{c[11]}/{c[12]}".replace(" ", "")


@pytest.mark.parametrize("case", TILE_CASES, ids=[_tile_case_id(c) for c in TILE_CASES])
def test_flex_region_explicit_tiles(case):
    shape, ks, st, dl, ca, qo, qs, margin, (H, Hkv), D, Dv, qt, kt = case
    rank = len(shape)
    spec = _region_spec(shape, ks, st, dl, ca, qo, qs, qo, qs)
    ko, kvs = _covering_kv(spec, qo, qs, margin)
    gen = torch.Generator().manual_seed(sum(shape) * 31 + sum(qo))
    q = randn((2, *qs, H, D), gen)
    k = randn((2, *kvs, Hkv, D), gen)
    v = randn((2, *kvs, Hkv, Dv), gen)
    kw = dict(kernel_size=spec.kernel_size, stride=spec.stride, dilation=spec.dilation,
              is_causal=spec.is_causal)
    out, lse = NA_FN[rank](q, k, v, **kw, backend="flex-fna", return_lse=True, q_tile_shape=qt,
                           kv_tile_shape=kt, global_shape=shape, q_origin=qo, kv_origin=ko)
    ref_out, ref_lse = na_region_oracle(q.double(), k.double(), v.double(), shape, qo, ko, **kw)
    assert_close(out, ref_out, what="out", **TOL[torch.float32])
    assert_lse_close(lse, ref_lse, torch.float32)


def test_time_shards_reassemble_the_unsharded_output():
    """Context parallelism on the time axis: each shard's queries with the key slab they need give
    exactly the matching rows of the unsharded flex output."""
    shape = (9, 6, 7)
    kw = dict(kernel_size=(4, 3, 3), stride=(1, 2, 1), dilation=(2, 1, 1),
              is_causal=(True, False, False))
    gen = torch.Generator().manual_seed(21)
    q, k = randn((1, *shape, 2, 16), gen), randn((1, *shape, 2, 16), gen)
    v = randn((1, *shape, 2, 8), gen)
    full, full_lse = natten.na3d(q, k, v, **kw, backend="flex-fna", return_lse=True)
    spec = _region_spec(shape, kw["kernel_size"], kw["stride"], kw["dilation"], kw["is_causal"],
                        (0, 0, 0), shape, (0, 0, 0), shape)
    outs, lses = [], []
    for t0, t1 in ((0, 3), (3, 5), (5, 9)):
        qo, qs = (t0, 0, 0), (t1 - t0, *shape[1:])
        ko, kvs = _covering_kv(spec, qo, qs)
        sl = tuple(slice(o, o + n) for o, n in zip(ko, kvs))
        o, l = natten.na3d(q[:, t0:t1], k[(slice(None),) + sl], v[(slice(None),) + sl], **kw,
                           backend="flex-fna", return_lse=True, global_shape=shape, q_origin=qo,
                           kv_origin=ko)
        outs.append(o)
        lses.append(l)
    assert_close(torch.cat(outs, 1), full, what="sharded out", atol=1e-5, rtol=1e-5)
    assert_close(torch.cat(lses, 1), full_lse, what="sharded lse", atol=1e-5, rtol=1e-5)


def test_flex_region_eager_query_chunks(monkeypatch):
    """The eager path's query chunks (mask_mod shifted to each chunk) work on slabs."""
    monkeypatch.setattr(flex, "_EAGER_SCORE_ELEMENTS", 2000)
    shape = (20, 18)
    kw = dict(kernel_size=(6, 4), stride=(3, 4), dilation=(3, 2), is_causal=(True, False))
    qo, qs = (5, 3), (9, 11)
    spec = _region_spec(shape, kw["kernel_size"], kw["stride"], kw["dilation"], kw["is_causal"],
                        qo, qs, qo, qs)
    ko, kvs = _covering_kv(spec, qo, qs, (1, 1))
    gen = torch.Generator().manual_seed(4)
    q = randn((2, *qs, 4, 16), gen)
    k, v = randn((2, *kvs, 2, 16), gen), randn((2, *kvs, 2, 24), gen)
    out, lse = natten.na2d(q, k, v, **kw, backend="flex-fna", return_lse=True,
                           q_tile_shape=(2, 4), kv_tile_shape=(4, 2), global_shape=shape,
                           q_origin=qo, kv_origin=ko)
    ref_out, ref_lse = na_region_oracle(q.double(), k.double(), v.double(), shape, qo, ko, **kw)
    assert_close(out, ref_out, what="out", **TOL[torch.float32])
    assert_lse_close(lse, ref_lse, torch.float32)
    plan = flex._get_na_plan(_region_spec(shape, kw["kernel_size"], kw["stride"], kw["dilation"],
                                          kw["is_causal"], qo, qs, ko, kvs), (2, 4), (4, 2), CPU)
    assert plan.chunks and max(len(ch) for ch in plan.chunks.values()) > 1


# ------------------------------------------------------------------------------------------------
# Exact masks on slabs: tile-ordered mask_mod and block masks
# ------------------------------------------------------------------------------------------------


def _mask_cases(seed: int, count: int):
    """Random slabs, including thin ones (fewer tokens than the dilation) and key slabs wider than
    the query slab needs, with default, equal and mixed tiles."""
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        rank = rng.choice([1, 2, 3])
        shape = tuple(rng.randint(2, 20 if rank < 3 else 9) for _ in range(rank))
        ks, st, dl, ca = [], [], [], []
        for n in shape:
            k = rng.randint(2, max(2, min(n, 7)))
            d = rng.randint(1, max(1, n // k))
            ks.append(k)
            dl.append(d)
            st.append(rng.randint(1, k))
            ca.append(rng.random() < 0.4)
        if any(k * d > n for k, d, n in zip(ks, dl, shape)):
            continue
        qo, qs = [], []
        for n in shape:
            a = rng.randint(0, n - 1)
            b = rng.randint(a + 1, min(n, a + rng.choice([1, 2, 3, n])))
            qo.append(a)
            qs.append(b - a)
        spec = _region_spec(shape, ks, st, dl, ca, qo, qs, qo, qs)
        ko, kvs = _covering_kv(spec, qo, qs, (rng.randint(0, 5), rng.randint(0, 5)))
        mode = rng.choice(["default", "equal", "mixed"])
        qt = kt = None
        if mode != "default":
            qt = tuple(rng.choice([1, 2, 3, 4, 8]) for _ in range(rank))
            kt = qt if mode == "equal" else tuple(rng.choice([1, 2, 4, 8]) for _ in range(rank))
        out.append((_region_spec(shape, ks, st, dl, ca, qo, qs, ko, kvs), qt, kt))
    return out


MASK_CASES = _mask_cases(77, 60)


def test_mask_cases_cover_corners():
    specs = [c[0] for c in MASK_CASES]
    assert any(any(qs < d for qs, d in zip(s.q_shape, s.dilation)) for s in specs)  # empty groups
    assert any(any(o % d for o, d in zip(s.q_origin, s.dilation)) for s in specs)  # dilation pad
    assert any(any(s.is_causal) for s in specs)
    assert any(c[1] is not None and c[1] != c[2] for c in MASK_CASES)


def _check_plan_exact(spec: WindowSpec, plan) -> None:
    G = plan.groups
    b = torch.arange(G)[:, None, None]
    qi = torch.arange(plan.q_len)[None, :, None]
    ki = torch.arange(plan.kv_len)[None, None, :]
    el = plan.mask_mod(b, b * 0, qi, ki).expand(G, plan.q_len, plan.kv_len)
    gflat = torch.arange(math.prod(spec.shape)).reshape(spec.shape)

    def token_map(origin, extent, tile, ext, front):  # tile-ordered position -> global token
        sl = tuple(slice(o, o + n) for o, n in zip(origin, extent))
        ids = (gflat[sl] + 1).to(torch.float64).reshape(1, *extent, 1, 1)
        return flex._to_tiles(ids, tile, ext, spec.dilation, front).reshape(G, -1).long() - 1

    qm = token_map(spec.q_origin, spec.q_shape, plan.q_tile, plan.q_ext, plan.q_front)
    km = token_map(spec.kv_origin, spec.kv_shape, plan.kv_tile, plan.kv_ext, plan.kv_front)
    # every slab token appears exactly once
    assert sorted(int(x) for x in qm[qm >= 0]) == sorted(int(x) for x in gflat[
        tuple(slice(o, o + n) for o, n in zip(spec.q_origin, spec.q_shape))].reshape(-1))
    ref = na_mask(spec.shape, spec.kernel_size, spec.stride, spec.dilation, spec.is_causal)
    for g in range(G):
        qv, kv = qm[g] >= 0, km[g] >= 0
        got = el[g][qv][:, kv]
        assert torch.equal(got, ref[qm[g][qv]][:, km[g][kv]]), f"group {g}"
        # real queries attend no padding and nothing outside the key slab: same row counts
        assert torch.equal(el[g][qv].sum(1), ref[qm[g][qv]].sum(1)), f"group {g} row sums"
    assert bool(el.any(2).all()), "every (padded) query row attends something"

    bq, bk = plan.block_size
    blocks = el.reshape(G, plan.q_len // bq, bq, plan.kv_len // bk, bk)
    any_b = blocks.any(4).any(2)
    all_b = blocks.all(4).all(2)
    bm = plan.block_mask
    assert torch.equal(bm.to_dense()[:, 0].bool(), any_b), "listed blocks != non-empty blocks"
    if bm.full_kv_num_blocks is None:
        assert not bool(all_b.any())
    else:
        full = flex.BlockMask.from_kv_blocks(
            bm.full_kv_num_blocks, bm.full_kv_indices, BLOCK_SIZE=bm.BLOCK_SIZE,
            seq_lengths=bm.seq_lengths,
        ).to_dense()[:, 0].bool()
        assert torch.equal(full, all_b), "full blocks != all-attended blocks"


@pytest.mark.parametrize("case", MASK_CASES, ids=[str(i) for i in range(len(MASK_CASES))])
def test_region_mask_mod_and_block_mask_are_exact(case):
    spec, qt, kt = case
    q_tile, kv_tile = flex._resolve_tiles(spec, qt, kt)
    _check_plan_exact(spec, flex._get_na_plan(spec, q_tile, kv_tile, CPU))


# ------------------------------------------------------------------------------------------------
# Sharding keeps the block sparsity of the unsharded problem
# ------------------------------------------------------------------------------------------------


def _blocks(plan):
    """Dense ``any`` / ``full`` block relations ``[G, q_tiles, kv_tiles]`` of a plan."""
    bm = plan.block_mask
    any_ = bm.to_dense()[:, 0].bool()
    if bm.full_kv_num_blocks is None:
        return any_, torch.zeros_like(any_)
    full = flex.BlockMask.from_kv_blocks(
        bm.full_kv_num_blocks, bm.full_kv_indices, BLOCK_SIZE=bm.BLOCK_SIZE,
        seq_lengths=bm.seq_lengths,
    ).to_dense()[:, 0].bool()
    return any_, full


def _shard_rows(plan_full, plan_shard, spec_shard):
    """The unsharded plan's block relations restricted to the shard's query tiles (rows) and key
    tiles (columns): the shards' tiles are tiles of the unsharded problem (global tile grid)."""
    any_f, full_f = _blocks(plan_full)
    rank = spec_shard.rank
    qg_f = [plan_full.q_ext[a] // plan_full.q_tile[a] for a in range(rank)]
    kg_f = [plan_full.kv_ext[a] // plan_full.kv_tile[a] for a in range(rank)]
    G = plan_full.groups
    any_f = any_f.reshape(G, *qg_f, *kg_f)
    full_f = full_f.reshape(G, *qg_f, *kg_f)
    sl = [slice(None)]
    for a in range(rank):  # query tiles of the shard
        t, d = plan_shard.q_tile[a], spec_shard.dilation[a]
        first = (spec_shard.q_origin[a] // d) // t
        sl.append(slice(first, first + plan_shard.q_ext[a] // t))
    cols = []
    for a in range(rank):  # key tiles of the shard
        u, d = plan_shard.kv_tile[a], spec_shard.dilation[a]
        first = (spec_shard.kv_origin[a] // d) // u
        cols.append(slice(first, first + plan_shard.kv_ext[a] // u))
    rows_any = any_f[tuple(sl)]
    rows_full = full_f[tuple(sl)]
    nq = math.prod(plan_shard.q_ext[a] // plan_shard.q_tile[a] for a in range(rank))
    inside_any = rows_any[(Ellipsis, *cols)].reshape(G, nq, -1)
    inside_full = rows_full[(Ellipsis, *cols)].reshape(G, nq, -1)
    return rows_any.reshape(G, nq, -1), inside_any, inside_full


SHARD_PROBLEMS = [
    # (global shape, kernel, stride, causal, tiles (q = kv)): video-like 3-D grids
    ((16, 24, 24), (6, 8, 8), (1, 1, 1), (False, False, False), (2, 8, 8)),
    ((16, 24, 24), (8, 8, 8), (4, 8, 8), (False, False, False), (2, 8, 8)),
    ((16, 24, 24), (6, 8, 8), (1, 1, 1), (True, False, False), (2, 8, 8)),
    ((12, 16, 20), (5, 7, 6), (2, 1, 3), (False, True, False), (4, 4, 8)),
]


@pytest.mark.parametrize("problem", SHARD_PROBLEMS, ids=[f"p{i}" for i in range(4)])
@pytest.mark.parametrize("aligned", [True, False])
def test_time_sharding_keeps_block_sparsity(problem, aligned):
    shape, ks, st, ca, tile = problem
    T = shape[0]
    full_spec = WindowSpec(shape, ks, st, (1, 1, 1), ca)
    plan_full = flex._get_na_plan(full_spec, tile, tile, CPU)
    any_full, _ = _blocks(plan_full)
    if aligned:  # shard boundaries on the time tile grid
        bounds = list(range(0, T, 2 * tile[0])) + [T]
    else:
        bounds = sorted({0, 3, 7, 8, T - 3, T})
    visited_total = 0
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        qo, qs = (t0, 0, 0), (t1 - t0, *shape[1:])
        probe = _region_spec(shape, ks, st, (1, 1, 1), ca, qo, qs, qo, qs)
        ko, kvs = _covering_kv(probe, qo, qs)
        spec = _region_spec(shape, ks, st, (1, 1, 1), ca, qo, qs, ko, kvs)
        plan = flex._get_na_plan(spec, tile, tile, CPU)
        if math.prod(shape) <= 4000:  # small enough for the element-level check
            _check_plan_exact(spec, plan)
        any_s, full_s = _blocks(plan)
        rows_any, inside_any, inside_full = _shard_rows(plan_full, plan, spec)
        visited = int(any_s.sum())
        # never more key tiles than the unsharded problem visits for these query tiles
        assert visited <= int(rows_any.sum()), (t0, t1)
        # and the visited blocks are a subset of the unsharded ones (same global tiles)
        assert not bool((any_s & ~inside_any).any()), (t0, t1)
        if aligned:
            # on the tile grid: exactly the unsharded blocks, full and partial alike
            assert torch.equal(any_s, inside_any), (t0, t1)
            assert torch.equal(full_s, inside_full), (t0, t1)
            assert visited == int(rows_any.sum())
        visited_total += visited
    if aligned:
        assert visited_total == int(any_full.sum())


# ------------------------------------------------------------------------------------------------
# Tile choice, plan cache, capability
# ------------------------------------------------------------------------------------------------


def test_tiles_are_fitted_to_the_slabs():
    shape, ks, st, dl, ca = (32, 48, 80), (9, 24, 24), (1, 1, 1), (1, 1, 1), (False,) * 3
    qo, qs = (8, 0, 0), (4, 48, 80)
    spec = _region_spec(shape, ks, st, dl, ca, qo, qs, qo, qs)
    ko, kvs = _covering_kv(spec, qo, qs)
    region = Region(qo, qs, ko, kvs)
    qt, kt = flex.choose_tile_shapes(shape, ks, st, dl, ca, region=region)
    assert math.prod(qt) == 128 and math.prod(kt) == 128
    assert qt[0] <= 4  # no tile taller than the 4-frame query slab
    # the chosen tiles visit no more work than the unsharded problem's tiles on this slab
    gq, gk = flex.choose_tile_shapes(shape, ks, st, dl, ca)

    def work(q_tile, kv_tile):  # visited blocks x tokens per block
        s = _region_spec(shape, ks, st, dl, ca, qo, qs, ko, kvs)
        any_, _ = _blocks(flex._get_na_plan(s, q_tile, kv_tile, CPU))
        return int(any_.sum()) * math.prod(q_tile) * math.prod(kv_tile)

    assert work(qt, kt) <= work(gq, gk)
    # without a region the choice is the one of the whole grid
    assert flex.choose_tile_shapes(shape, ks, st, dl, ca, region=None) == (gq, gk)


def test_plan_cache_key_includes_the_region():
    flex.clear_cache()
    shape, ks, st, dl, ca = (12, 10), (5, 4), (2, 1), (1, 2), (False, True)
    a = _region_spec(shape, ks, st, dl, ca, (4, 0), (4, 10), (1, 0), (10, 10))
    b = _region_spec(shape, ks, st, dl, ca, (4, 0), (4, 10), (0, 0), (11, 10))
    c = _region_spec(shape, ks, st, dl, ca, (0, 0), (4, 10), (0, 0), (8, 10))
    whole = WindowSpec(shape, ks, st, dl, ca)
    plans = [flex._get_na_plan(s, (2, 4), (4, 2), CPU) for s in (a, b, c, whole)]
    assert len({id(p) for p in plans}) == 4
    same_as_a = _region_spec(shape, ks, st, dl, ca, (4, 0), (4, 10), (1, 0), (10, 10))
    again = flex._get_na_plan(same_as_a, (2, 4), (4, 2), CPU)
    assert again is plans[0] and again.block_mask is plans[0].block_mask
    # through the public API: a second call with the same slabs hits the cache
    gen = torch.Generator().manual_seed(9)
    q, k = randn((1, 4, 10, 2, 16), gen), randn((1, 10, 10, 2, 16), gen)
    kw = dict(kernel_size=ks, stride=st, dilation=dl, is_causal=ca, q_tile_shape=(2, 4),
              kv_tile_shape=(4, 2), global_shape=shape, q_origin=(4, 0), kv_origin=(1, 0))
    natten.na2d(q, k, k, backend="flex-fna", **kw)
    info = flex.cache_info()
    natten.na2d(q, k, k, backend="flex-fna", **kw)
    info2 = flex.cache_info()
    assert info2["misses"] == info["misses"] and info2["hits"] == info["hits"] + 1


def test_flex_accepts_slabs_and_checks_grids():
    q = torch.randn(1, 4, 8, 2, 16)
    k = torch.randn(1, 7, 8, 2, 16)
    spec = _region_spec((12, 8), (3, 3), (1, 1), (1, 1), (False, False), (3, 0), (4, 8), (2, 0),
                        (7, 8))
    assert flex.can_run_fna(q, k, k, spec) is None
    from natten.backends import choose_fna_backend

    assert choose_fna_backend("flex-fna", q, k, k, spec, False)[0] == "flex-fna"
    with pytest.raises(ValueError, match="key token grid"):
        flex.fna(q, q, q, spec, 0.25)


# ------------------------------------------------------------------------------------------------
# Compiled path (dynamo's "eager" backend on CPU): one compile per slab, then cache hits
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def compiled_on_cpu(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(flex, "_COMPILE_BACKEND", "eager")
    monkeypatch.setattr(flex, "_ALLOW_COMPILE_ON_CPU", True)
    flex._reset_compiled()
    yield
    flex._reset_compiled()
    torch._dynamo.reset()


def test_compiled_slabs_compile_once_each(compiled_on_cpu):
    from torch._dynamo.utils import counters

    shape = (10, 12)
    kw = dict(kernel_size=(3, 5), stride=(1, 2), dilation=(2, 1), is_causal=(True, False))
    gen = torch.Generator().manual_seed(13)
    q, k, v = (randn((1, *shape, 2, 16), gen) for _ in range(3))
    probe = _region_spec(shape, kw["kernel_size"], kw["stride"], kw["dilation"], kw["is_causal"],
                         (0, 0), shape, (0, 0), shape)
    runs = []
    for t0, t1 in ((0, 5), (5, 10)):
        qo, qs = (t0, 0), (t1 - t0, shape[1])
        ko, kvs = _covering_kv(probe, qo, qs)
        sl = (slice(None), slice(ko[0], ko[0] + kvs[0]))
        runs.append((q[:, t0:t1], k[sl], v[sl], qo, ko))
    g0 = int(counters["stats"]["unique_graphs"])
    results = []
    for qq, kk, vv, qo, ko in runs:
        results.append(natten.na2d(qq, kk, vv, **kw, backend="flex-fna", return_lse=True,
                                   global_shape=shape, q_origin=qo, kv_origin=ko))
    assert int(counters["stats"]["unique_graphs"]) - g0 == len(runs)  # one compile per slab
    g1 = int(counters["stats"]["unique_graphs"])
    for (qq, kk, vv, qo, ko), (out, lse) in zip(runs, results):
        out2, lse2 = natten.na2d(qq, kk, vv, **kw, backend="flex-fna", return_lse=True,
                                 global_shape=shape, q_origin=qo, kv_origin=ko)
        assert torch.equal(out, out2) and torch.equal(lse, lse2)
        ref_out, ref_lse = na_region_oracle(qq.double(), kk.double(), vv.double(), shape, qo, ko,
                                            **kw)
        assert_close(out, ref_out, what="compiled out", **TOL[torch.float32])
        assert_lse_close(lse, ref_lse, torch.float32)
    assert int(counters["stats"]["unique_graphs"]) == g1  # repeated calls: no recompile
