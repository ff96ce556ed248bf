"""CPU tests of the FlexAttention backend (``flex-fna`` / ``flex-fmha``).

FlexAttention runs eagerly on CPU (forward only), so these tests check: exactness of the forward
(out + logsumexp, float32 against the float64 oracle) over rank 1-3, odd shapes, even kernels,
stride, dilation, per-axis causal, GQA and D_v != D, with default and explicit multi-tile layouts;
exactness of the tile-ordered mask_mod and of the block masks (element level and block level);
routing of CPU training to the reference backend; the plan cache; and that the compiled path
(exercised on CPU with dynamo's "eager" backend) compiles once per problem and never reaches the
recompile limit across a sweep of problems.
"""

import math
import random
import zlib

import pytest
import torch

import natten
from natten.backends import flex
from natten.window import WindowSpec

from helpers import TOL, assert_close, assert_lse_close, check_na_against_oracle, randn
from oracle import attention_oracle, na_mask, na_oracle

NA_FN = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The CPU suite runs on small shared machines: keep intra-op threads from oversubscribing.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# Case generation
# ------------------------------------------------------------------------------------------------


def _axis_params(rng: random.Random, n: int):
    d = rng.choice([1, 1, 1, 2, 3])
    while True:
        K = rng.randint(2, max(2, min(9, n)))
        if K * d <= n:
            break
        d = 1
    s = rng.choice([1, 1, rng.randint(1, K)])
    return K, s, d, rng.random() < 0.3


def make_cases(seed: int, count: int):
    rng = random.Random(seed)
    shapes = {
        1: [(13,), (17,), (24,), (31,), (40,)],
        2: [(7, 9), (9, 11), (12, 10), (6, 13), (16, 8)],
        3: [(5, 6, 7), (4, 7, 5), (6, 5, 9), (3, 8, 6)],
    }
    cases = []
    for idx in range(count):
        rank = (1, 2, 3)[idx % 3]
        shape = rng.choice(shapes[rank])
        params = [_axis_params(rng, n) for n in shape]
        ks, st, dl, ca = (tuple(p[i] for p in params) for i in range(4))
        H, Hkv = rng.choice([(2, 2), (4, 2), (4, 1), (3, 3), (6, 2)])
        D = rng.choice([8, 16])
        Dv = rng.choice([D, D, 4, 12])
        tiles = rng.choice(["default", "small", "mixed"])
        if tiles == "default":
            qt = kt = None
        elif tiles == "small":
            qt = tuple(rng.choice([1, 2, 4]) for _ in shape)
            kt = qt
        else:
            qt = tuple(rng.choice([1, 2, 3, 4]) for _ in shape)
            kt = tuple(rng.choice([1, 2, 4, 8]) for _ in shape)
        cases.append(dict(
            shape=shape, kw=dict(kernel_size=ks, stride=st, dilation=dl, is_causal=ca),
            B=rng.choice([1, 2]), H=H, Hkv=Hkv, D=D, Dv=Dv, q_tile=qt, kv_tile=kt,
        ))
    return cases


SWEEP = make_cases(2024, 48)
# Hand-picked corners: even kernels with stride, blocked (stride == kernel), full-axis kernels,
# dilation with uneven groups, all axes causal, MQA.
SWEEP += [
    dict(shape=(16,), kw=dict(kernel_size=4, stride=4, dilation=1, is_causal=False),
         B=1, H=2, Hkv=2, D=8, Dv=8, q_tile=(4,), kv_tile=(4,)),
    dict(shape=(11, 7), kw=dict(kernel_size=(11, 2), stride=(3, 2), dilation=1, is_causal=(False, True)),
         B=2, H=4, Hkv=1, D=8, Dv=16, q_tile=(2, 2), kv_tile=(4, 1)),
    dict(shape=(10, 9), kw=dict(kernel_size=(2, 3), stride=(2, 3), dilation=(3, 2), is_causal=True),
         B=1, H=2, Hkv=1, D=16, Dv=8, q_tile=None, kv_tile=None),
    dict(shape=(6, 5, 7), kw=dict(kernel_size=(6, 2, 3), stride=(2, 1, 3), dilation=(1, 2, 2),
                                  is_causal=(True, False, True)),
         B=1, H=4, Hkv=2, D=8, Dv=8, q_tile=(2, 1, 4), kv_tile=(1, 2, 2)),
    dict(shape=(9, 9), kw=dict(kernel_size=(9, 9), stride=1, dilation=1, is_causal=(True, False)),
         B=1, H=2, Hkv=2, D=8, Dv=8, q_tile=None, kv_tile=None),
]


def _case_id(c):
    kw = c["kw"]
    return (
        f"{'x'.join(map(str, c['shape']))}-k{kw['kernel_size']}-s{kw['stride']}-d{kw['dilation']}"
        f"-c{kw['is_causal']}-h{c['H']}/{c['Hkv']}-dv{c['Dv']}-t{c['q_tile']}/{c['kv_tile']}"
    ).replace(" ", "")


def _tensors(c, gen, dtype=torch.float32):
    q = randn((c["B"], *c["shape"], c["H"], c["D"]), gen, dtype)
    k = randn((c["B"], *c["shape"], c["Hkv"], c["D"]), gen, dtype)
    v = randn((c["B"], *c["shape"], c["Hkv"], c["Dv"]), gen, dtype)
    return q, k, v


def _spec(shape, kw):
    r = len(shape)
    t = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x,) * r  # noqa: E731
    return WindowSpec(tuple(shape), t(kw["kernel_size"]), t(kw["stride"]), t(kw["dilation"]),
                      tuple(bool(b) for b in t(kw["is_causal"])))


# ------------------------------------------------------------------------------------------------
# Forward sweep against the float64 oracle
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SWEEP, ids=[_case_id(c) for c in SWEEP])
def test_flex_forward_matches_oracle(case):
    gen = torch.Generator().manual_seed(zlib.crc32(_case_id(case).encode()))
    q, k, v = _tensors(case, gen)
    kw = dict(case["kw"], q_tile_shape=case["q_tile"], kv_tile_shape=case["kv_tile"])
    check_na_against_oracle(
        NA_FN[len(case["shape"])], q, k, v, kw, gen, backward=False, backend="flex-fna",
        what=_case_id(case),
    )


def test_sweep_covers_features():
    ranks = {len(c["shape"]) for c in SWEEP}
    assert ranks == {1, 2, 3}
    specs = [_spec(c["shape"], c["kw"]) for c in SWEEP]
    assert any(any(k % 2 == 0 for k in s.kernel_size) for s in specs)
    assert any(any(x > 1 for x in s.stride) for s in specs)
    assert any(any(x > 1 for x in s.dilation) for s in specs)
    assert any(any(s.is_causal) and not all(s.is_causal) for s in specs)
    assert any(c["H"] != c["Hkv"] for c in SWEEP)
    assert any(c["Dv"] != c["D"] for c in SWEEP)
    assert any(c["q_tile"] is not None and c["q_tile"] != c["kv_tile"] for c in SWEEP)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_flex_forward_other_dtypes(dtype):
    gen = torch.Generator().manual_seed(3)
    c = dict(shape=(9, 11), B=1, H=4, Hkv=2, D=16, Dv=8)
    q, k, v = _tensors(c, gen, dtype)
    kw = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
    out, lse = natten.na2d(q, k, v, **kw, backend="flex-fna", return_lse=True,
                           q_tile_shape=(4, 2), kv_tile_shape=(2, 4))
    ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), **kw)
    assert out.dtype == dtype
    assert_close(out, ref_out, what="out", **TOL[dtype])
    assert_lse_close(lse, ref_lse, dtype)


def test_flex_eager_query_chunks(monkeypatch):
    """The eager path runs FlexAttention in query chunks once the score budget is exceeded."""
    monkeypatch.setattr(flex, "_EAGER_SCORE_ELEMENTS", 3000)
    gen = torch.Generator().manual_seed(4)
    c = dict(shape=(20, 18), B=2, H=4, Hkv=2, D=16, Dv=24)
    q, k, v = _tensors(c, gen)
    kw = dict(kernel_size=(6, 4), stride=(3, 4), dilation=(3, 2), is_causal=(True, False))
    out, lse = natten.na2d(q, k, v, **kw, backend="flex-fna", return_lse=True,
                           q_tile_shape=(2, 4), kv_tile_shape=(4, 2))
    ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), **kw)
    assert_close(out, ref_out, what="out", **TOL[torch.float32])
    assert_lse_close(lse, ref_lse, torch.float32)
    spec = _spec(c["shape"], kw)
    plan = flex._get_na_plan(spec, (2, 4), (4, 2), torch.device("cpu"))
    assert plan.chunks and max(len(ch) for ch in plan.chunks.values()) > 1


# ------------------------------------------------------------------------------------------------
# Dense attention (flex-fmha)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("N,M", [(50, 50), (37, 61), (61, 37)])
@pytest.mark.parametrize("tiles", [None, (16, 32)])
def test_flex_fmha_matches_oracle(is_causal, N, M, tiles, monkeypatch):
    if tiles is not None:  # also exercise the chunked eager path
        monkeypatch.setattr(flex, "_EAGER_SCORE_ELEMENTS", 4000)
    gen = torch.Generator().manual_seed(N * 7 + M)
    q, k, v = randn((2, N, 4, 16), gen), randn((2, M, 2, 16), gen), randn((2, M, 2, 8), gen)
    extra = {} if tiles is None else dict(q_tile_size=tiles[0], kv_tile_size=tiles[1])
    out, lse = natten.attention(q, k, v, is_causal=is_causal, backend="flex-fmha",
                                return_lse=True, **extra)
    ref_out, ref_lse = attention_oracle(q.double(), k.double(), v.double(), is_causal=is_causal)
    assert_close(out, ref_out, what="out", **TOL[torch.float32])
    assert_lse_close(lse, ref_lse, torch.float32)


def test_flex_self_attention_shortcut():
    gen = torch.Generator().manual_seed(5)
    q = randn((1, 6, 7, 2, 8), gen)
    out, lse = natten.na2d(q, q, q, kernel_size=(6, 7), backend="flex-fna", return_lse=True)
    ref_out, ref_lse = na_oracle(q.double(), q.double(), q.double(), kernel_size=(6, 7))
    assert_close(out, ref_out, what="out", **TOL[torch.float32])
    assert_lse_close(lse, ref_lse, torch.float32)


# ------------------------------------------------------------------------------------------------
# Exact masks: tile-ordered mask_mod and block masks
# ------------------------------------------------------------------------------------------------

MASK_CASES = [
    ((13,), 5, 1, 1, False),
    ((13,), 4, 2, 2, True),
    ((40,), 8, 4, 3, True),
    ((37,), 6, 3, 2, False),
    ((9, 11), (3, 4), (2, 1), (1, 2), (False, True)),
    ((12, 10), (5, 5), (5, 2), (2, 1), (False, False)),
    ((20, 18), (6, 4), (3, 4), (3, 2), (True, True)),
    ((5, 6, 7), (3, 2, 4), (1, 2, 3), (1, 1, 1), (True, False, False)),
    ((7, 6, 9), (2, 3, 4), (2, 3, 1), (3, 1, 2), (False, True, False)),
]
MASK_TILES = [None, "4/2", "1/3", "3/8"]


def _tiles(spec_rank, t):
    if t is None:
        return None, None
    a, b = (int(x) for x in t.split("/"))
    return (a,) * spec_rank, (b,) * spec_rank


@pytest.mark.parametrize("tiles", MASK_TILES)
@pytest.mark.parametrize("case", MASK_CASES, ids=[str(i) for i in range(len(MASK_CASES))])
def test_mask_mod_and_block_mask_are_exact(case, tiles):
    shape, ks, st, dl, ca = case
    spec = _spec(shape, dict(kernel_size=ks, stride=st, dilation=dl, is_causal=ca))
    qt, kt = _tiles(spec.rank, tiles)
    q_tile, kv_tile = flex._resolve_tiles(spec, qt, kt)
    plan = flex._get_na_plan(spec, q_tile, kv_tile, torch.device("cpu"))
    G = plan.groups
    b = torch.arange(G)[:, None, None]
    qi = torch.arange(plan.q_len)[None, :, None]
    ki = torch.arange(plan.kv_len)[None, None, :]
    el = plan.mask_mod(b, b * 0, qi, ki).expand(G, plan.q_len, plan.kv_len)

    def token_map(tile, ext):  # tile-ordered position -> row-major token (-1: padding)
        grid = torch.arange(1, math.prod(shape) + 1, dtype=torch.float64).reshape(1, *shape, 1, 1)
        return flex._to_tiles(grid, tile, ext, spec.dilation).reshape(G, -1).long() - 1

    qm, km = token_map(q_tile, plan.q_ext), token_map(kv_tile, plan.kv_ext)
    ref = na_mask(shape, ks, st, dl, ca)
    for g in range(G):
        qv, kv = qm[g] >= 0, km[g] >= 0
        got = el[g][qv][:, kv]
        assert torch.equal(got, ref[qm[g][qv]][:, km[g][kv]]), f"group {g}"
        # real queries attend no padding and no other dilation group: same row counts
        assert torch.equal(el[g][qv].sum(1), ref[qm[g][qv]].sum(1)), f"group {g} row sums"
    assert bool(el.any(2).all()), "every (padded) query row attends something"

    # Block level: listed blocks (partial + full) are exactly the non-empty ones, full blocks
    # exactly the all-attended ones.
    bq, bk = plan.block_size
    blocks = el.reshape(G, plan.q_len // bq, bq, plan.kv_len // bk, bk)
    any_b = blocks.any(4).any(2)
    all_b = blocks.all(4).all(2)
    bm = plan.block_mask
    assert torch.equal(bm.to_dense()[:, 0].bool(), any_b)
    if bm.full_kv_num_blocks is None:
        assert not bool(all_b.any())
    else:
        full = flex.BlockMask.from_kv_blocks(
            bm.full_kv_num_blocks, bm.full_kv_indices, BLOCK_SIZE=bm.BLOCK_SIZE,
            seq_lengths=bm.seq_lengths,
        ).to_dense()[:, 0].bool()
        assert torch.equal(full, all_b)


# ------------------------------------------------------------------------------------------------
# Tile choice (the tile-visit bound of PERF-NOTES.md)
# ------------------------------------------------------------------------------------------------


def _bound(shape, ks, st, qt, kt, causal=None):
    r = len(shape)
    causal = causal or (False,) * r
    visited = full = 1
    for a in range(r):
        v_, f_ = flex._axis_cost(shape[a], qt[a], kt[a], ks[a], st[a], causal[a])
        visited *= v_
        full *= f_
    return math.prod(shape) ** 2 / visited, full / visited


def test_tile_cost_model_reproduces_perf_notes():
    hy = ((30, 48, 80), (18, 24, 24), (1, 1, 1))
    assert _bound(*hy, (2, 8, 8), (2, 8, 8))[0] == pytest.approx(5.4, abs=0.05)
    assert _bound(*hy, (4, 4, 8), (4, 4, 8))[0] == pytest.approx(5.5, abs=0.05)
    assert _bound(*hy, (2, 8, 4), (2, 4, 8))[0] == pytest.approx(7.4, abs=0.05)
    fx = ((256, 256), (80, 80), (1, 1))
    assert _bound(*fx, (16, 8), (16, 8))[0] == pytest.approx(7.5, abs=0.05)
    assert _bound(*fx, (8, 8), (8, 8))[0] == pytest.approx(9.0, abs=0.05)
    assert _bound((32768,), (2048,), (1,), (128,), (128,))[0] == pytest.approx(15.1, abs=0.05)


@pytest.mark.parametrize("name,shape,ks,st,min_bound,fully_sparse", [
    ("hunyuan", (30, 48, 80), (18, 24, 24), (1, 1, 1), 5.4, False),
    ("hunyuan-gna", (30, 48, 80), (18, 24, 24), (16, 8, 8), 11.1, True),
    ("flux-4k", (256, 256), (80, 80), (1, 1), 7.5, False),
    ("flux-4k-gna", (256, 256), (80, 80), (16, 16), 10.2, True),
    ("1d-32k", (32768,), (2048,), (1,), 15.1, False),
    ("1d-32k-s256", (32768,), (2048,), (256,), 16.0, True),
])
def test_default_tiles_for_benchmark_rows(name, shape, ks, st, min_bound, fully_sparse):
    r = len(shape)
    qt, kt = flex.choose_tile_shapes(shape, ks, st, (1,) * r, (False,) * r)
    assert math.prod(qt) == 128 and math.prod(kt) == 128
    bound, full_frac = _bound(shape, ks, st, qt, kt)
    assert bound >= min_bound - 0.05, (qt, kt, bound)
    if fully_sparse:
        assert full_frac == 1.0, (qt, kt, full_frac)


def test_tiny_grids_get_at_least_16_token_tiles():
    for shape in [(5,), (3, 3), (2, 3, 2), (7, 9)]:
        r = len(shape)
        qt, kt = flex.choose_tile_shapes(shape, (2,) * r, (1,) * r, (1,) * r, (False,) * r)
        assert math.prod(qt) >= 16 and math.prod(kt) >= 16


# ------------------------------------------------------------------------------------------------
# CPU training is routed to the reference backend
# ------------------------------------------------------------------------------------------------


def test_cpu_training_routes_to_reference():
    gen = torch.Generator().manual_seed(6)
    c = dict(shape=(7, 9), B=2, H=4, Hkv=2, D=8, Dv=12)
    q, k, v = _tensors(c, gen)
    kw = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(2, 1), is_causal=(True, False))
    # flex-fna on CPU with inputs that require grad: same numbers and gradients as the reference
    check_na_against_oracle(natten.na2d, q, k, v, kw, gen, backward=True, backend="flex-fna",
                            what="cpu training via flex-fna")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out_f, lse_f = natten.na2d(*leaves, **kw, backend="flex-fna", return_lse=True)
    (out_f.square().sum() + lse_f.sum()).backward()
    grads_f = [t.grad.clone() for t in leaves]
    leaves_r = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out_r, lse_r = natten.na2d(*leaves_r, **kw, backend="reference", return_lse=True)
    (out_r.square().sum() + lse_r.sum()).backward()
    assert torch.equal(out_f, out_r) and torch.equal(lse_f, lse_r)
    for gf, lr in zip(grads_f, leaves_r):
        assert torch.equal(gf, lr.grad)


def test_cpu_training_fmha_routes_to_reference():
    gen = torch.Generator().manual_seed(7)
    q, k, v = (randn((1, 40, 2, 8), gen).requires_grad_(True) for _ in range(3))
    out = natten.attention(q, k, v, is_causal=True, backend="flex-fmha")
    out.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
    ref = natten.attention(q.detach(), k.detach(), v.detach(), is_causal=True, backend="reference")
    assert torch.equal(out.detach(), ref)


def test_cpu_inference_with_requires_grad_inputs_under_no_grad_uses_flex():
    gen = torch.Generator().manual_seed(8)
    q = randn((1, 9, 11, 2, 16), gen).requires_grad_(True)
    with torch.no_grad():
        out, lse = natten.na2d(q, q, q, kernel_size=(3, 5), backend="flex-fna", return_lse=True,
                               q_tile_shape=(2, 4))
    ref_out, ref_lse = na_oracle(q.double().detach(), q.double().detach(), q.double().detach(),
                                 kernel_size=(3, 5))
    assert_close(out, ref_out, what="out", **TOL[torch.float32])
    assert_lse_close(lse, ref_lse, torch.float32)


# ------------------------------------------------------------------------------------------------
# Dispatcher and capability checks
# ------------------------------------------------------------------------------------------------


def test_cpu_dispatch_prefers_reference_and_lists_flex():
    q = torch.randn(1, 8, 8, 2, 16)
    backs = natten.get_compatible_backends(q, q, q)
    assert backs[0] == "reference" and "flex-fna" in backs
    fbacks = natten.get_compatible_fmha_backends(q.flatten(1, 2), q.flatten(1, 2), q.flatten(1, 2))
    assert fbacks[0] == "reference" and "flex-fmha" in fbacks
    from natten.backends import choose_fmha_backend, choose_fna_backend

    spec = WindowSpec((8, 8), (3, 3), (1, 1), (1, 1), (False, False))
    assert choose_fna_backend(None, q, q, q, spec, False)[0] == "reference"
    assert choose_fna_backend("flex-fna", q, q, q, spec, False)[0] == "flex-fna"
    qf = q.flatten(1, 2)
    assert choose_fmha_backend(None, qf, qf, qf, False, False, False)[0] == "reference"


def test_can_run_reasons():
    q = torch.randn(1, 8, 2, 16)
    spec = WindowSpec((8,), (3,), (1,), (1,), (False,))
    assert flex.can_run_fna(q, q, q, spec) is None
    assert flex.can_run_fmha(q, q, q) is None
    reason = flex.can_run_fna(q, q, q, spec, torch_compile=True)
    assert reason is not None and "CPU" in reason
    reason = flex.can_run_fna(q, q.double(), q, spec)
    assert reason is not None and "dtype" in reason
    with pytest.raises(ValueError, match="flex-fna"):
        natten.na1d(q, q, q, kernel_size=3, backend="flex-fna", torch_compile=True)


def test_bad_tile_shape_is_a_clear_error():
    q = torch.randn(1, 8, 8, 2, 16)
    with pytest.raises(ValueError, match="q_tile_shape"):
        natten.na2d(q, q, q, kernel_size=3, backend="flex-fna", q_tile_shape=(2, 2, 2))


# ------------------------------------------------------------------------------------------------
# Plan cache
# ------------------------------------------------------------------------------------------------


def test_same_signature_reuses_block_mask():
    flex.clear_cache()
    spec = WindowSpec((12, 10), (5, 4), (2, 1), (1, 2), (False, True))
    dev = torch.device("cpu")
    p1 = flex._get_na_plan(spec, (4, 2), (2, 4), dev)
    p2 = flex._get_na_plan(WindowSpec((12, 10), (5, 4), (2, 1), (1, 2), (False, True)),
                           (4, 2), (2, 4), dev)
    assert p1 is p2 and p1.block_mask is p2.block_mask and p1.mask_mod is p2.mask_mod
    p3 = flex._get_na_plan(spec, (2, 4), (2, 4), dev)
    assert p3 is not p1
    # through the public API: a second call hits the cache, nothing is rebuilt
    gen = torch.Generator().manual_seed(9)
    q = randn((1, 12, 10, 2, 16), gen)
    kw = dict(kernel_size=(5, 4), stride=(2, 1), dilation=(1, 2), is_causal=(False, True),
              q_tile_shape=(4, 2), kv_tile_shape=(2, 4))
    natten.na2d(q, q, q, backend="flex-fna", **kw)
    info = flex.cache_info()
    natten.na2d(q, q, q, backend="flex-fna", **kw)
    info2 = flex.cache_info()
    assert info2["misses"] == info["misses"] and info2["hits"] == info["hits"] + 1
    assert flex._get_na_plan(spec, (4, 2), (2, 4), dev).block_mask is p1.block_mask


def test_plan_cache_is_bounded_lru():
    flex.clear_cache()
    dev = torch.device("cpu")
    specs = [WindowSpec((n,), (3,), (1,), (1,), (False,)) for n in range(8, 8 + flex._CACHE_SIZE + 8)]
    plans = [flex._get_na_plan(s, (4,), (4,), dev) for s in specs]
    info = flex.cache_info()
    assert info["size"] == flex._CACHE_SIZE == info["maxsize"]
    # the most recent ones are kept (same objects), the oldest were evicted and get rebuilt
    assert flex._get_na_plan(specs[-1], (4,), (4,), dev) is plans[-1]
    assert flex._get_na_plan(specs[0], (4,), (4,), dev) is not plans[0]
    assert flex.cache_info()["size"] == flex._CACHE_SIZE


# ------------------------------------------------------------------------------------------------
# Compiled path: one compile per problem, no recompile storm, never the recompile limit
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def compiled_on_cpu(monkeypatch):
    """Run the compiled path on CPU through dynamo with the "eager" backend (same guards and
    recompilation behaviour as inductor on CUDA, without compiling kernels)."""
    import torch._dynamo

    monkeypatch.setattr(flex, "_COMPILE_BACKEND", "eager")
    monkeypatch.setattr(flex, "_ALLOW_COMPILE_ON_CPU", True)
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    # Restored by hand: pytest >= 9's monkeypatch deletes attributes it did not find in the
    # module's __dict__, and deleting a dynamo config entry hides it for the rest of the session.
    saved_limit = getattr(cfg, name)
    flex._reset_compiled()
    flex._WARNED.discard("recompile-limit")
    yield
    setattr(cfg, name, saved_limit)
    flex._reset_compiled()
    flex._WARNED.discard("recompile-limit")
    torch._dynamo.reset()


def _unique_graphs():
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _sweep_problem(i):
    n = 20 + 3 * i
    spec_kw = dict(kernel_size=(3 + i % 3), stride=1 + i % 2, dilation=1 + (i % 4 == 3),
                   is_causal=bool(i % 2))
    return n, spec_kw


def test_compiled_sweep_never_hits_recompile_limit(compiled_on_cpu):
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    count = limit + 4  # more distinct problems than dynamo's per-function recompile limit
    gen = torch.Generator().manual_seed(10)
    results = []
    g0 = _unique_graphs()
    for i in range(count):
        n, kw = _sweep_problem(i)
        q = randn((1, n, 2, 16), gen)
        out, lse = natten.na1d(q, q, q, backend="flex-fna", return_lse=True, **kw)
        results.append((q, kw, out, lse))
    assert "recompile-limit" not in flex._WARNED
    assert _unique_graphs() - g0 == count  # exactly one compile per problem
    # repeated calls of known problems hit the compiled cache: no new graph, same numbers
    g1 = _unique_graphs()
    for q, kw, out, lse in results[:3] + results[-2:]:
        out2, lse2 = natten.na1d(q, q, q, backend="flex-fna", return_lse=True, **kw)
        assert torch.equal(out, out2) and torch.equal(lse, lse2)
    assert _unique_graphs() == g1
    # and the compiled results are the exact ones
    q, kw, out, lse = results[-1]
    ref_out, ref_lse = na_oracle(q.double(), q.double(), q.double(), **kw)
    assert_close(out, ref_out, what="compiled out", **TOL[torch.float32])
    assert_lse_close(lse, ref_lse, torch.float32)


def test_without_own_recompile_budget_the_limit_would_be_hit(compiled_on_cpu, monkeypatch):
    """Control for the test above: one plain torch.compile(flex_attention) shared by all problems
    hits dynamo's recompile limit; the backend then falls back to eager and warns once."""
    import torch._dynamo

    monkeypatch.setattr(flex, "_RECOMPILE_LIMIT", None)
    flex._reset_compiled()
    gen = torch.Generator().manual_seed(11)
    n_problems = torch._dynamo.config.recompile_limit + 1
    with pytest.warns(RuntimeWarning, match="recompile limit"):
        for i in range(n_problems):
            n, kw = _sweep_problem(i)
            q = randn((1, n, 2, 16), gen)
            out = natten.na1d(q, q, q, backend="flex-fna", **kw)
    ref_out, _ = na_oracle(q.double(), q.double(), q.double(), **kw)
    assert_close(out, ref_out, what="eager fallback", **TOL[torch.float32])


# ------------------------------------------------------------------------------------------------
# The block masks in a real block-sparse kernel (inductor's CPU FlexAttention, forward only)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_block_sparse_kernel_with_full_and_partial_blocks():
    """Eager FlexAttention ignores the block lists (it evaluates mask_mod everywhere); the compiled
    kernels skip unlisted blocks and skip mask_mod on full ones. Inductor's CPU FlexAttention is
    such a kernel (forward, no logsumexp): it must give the exact result with our block masks,
    including the dilation-group broadcast of the block mask over the batch."""
    from torch.nn.attention.flex_attention import flex_attention

    shape = (32, 30)
    kw = dict(kernel_size=(16, 12), stride=(8, 4), dilation=(1, 2), is_causal=(False, True))
    spec = _spec(shape, kw)
    qt, kt = (8, 2), (4, 4)
    plan = flex._get_na_plan(spec, qt, kt, torch.device("cpu"))
    assert plan.block_mask.full_kv_num_blocks is not None
    assert int(plan.block_mask.full_kv_num_blocks.sum()) > 0
    gen = torch.Generator().manual_seed(12)
    q, k, v = randn((2, *shape, 4, 32), gen), randn((2, *shape, 2, 32), gen), randn((2, *shape, 2, 32), gen)
    dl = spec.dilation
    Q = flex._to_tiles(q, qt, plan.q_ext, dl).transpose(1, 2)
    K = flex._to_tiles(k, kt, plan.kv_ext, dl).transpose(1, 2)
    V = flex._to_tiles(v, kt, plan.kv_ext, dl).transpose(1, 2)
    compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    try:
        out = compiled(Q, K, V, block_mask=plan.block_mask, enable_gqa=True)
    except Exception as e:  # no C++ compiler / unsupported CPU
        pytest.skip(f"inductor CPU FlexAttention unavailable here: {type(e).__name__}: {e}")
    out = flex._from_tiles(out.transpose(1, 2), 2, shape, qt, plan.q_ext, dl)
    ref, _ = na_oracle(q.double(), k.double(), v.double(), **kw)
    assert_close(out, ref, what="compiled block-sparse out", **TOL[torch.float32])


def test_prepared_runner_fast_path_matches_oracle(compiled_on_cpu, monkeypatch):
    """The dispatcher's cached runner: the first call goes through fna (compiling), later calls
    call the compiled FlexAttention directly; every call equals the oracle."""
    from natten import functional as F
    from oracle import na_oracle

    F._PLANS.clear()
    calls = {"fna": 0}
    real_fna = flex.fna

    def counting_fna(*a, **k):
        calls["fna"] += 1
        return real_fna(*a, **k)

    monkeypatch.setattr(flex, "fna", counting_fna)
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 9, 14, 2, 16, generator=g) for _ in range(3))
    kw = dict(kernel_size=(3, 4), stride=(1, 2), dilation=(2, 1), is_causal=(False, True))
    ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), **kw)
    for i in range(3):
        out, lse = natten.na2d(q, k, v, **kw, backend="flex-fna", return_lse=True)
        assert_close(out, ref_out, what=f"call {i} out", **TOL[torch.float32])
        assert_close(lse, ref_lse, what=f"call {i} lse", **TOL[torch.float32])
    assert calls["fna"] == 1, calls  # only the first call went through fna
    F._PLANS.clear()


def test_prepared_runner_skips_guards_only_after_a_guarded_call(compiled_on_cpu, monkeypatch):
    """Calls 1: fna (compiles); 2: the compiled call with full guards; 3+: differentiating guards
    only (set_stance(skip_guard_eval_unsafe=True)). Not under autocast or a user's stance, nor with
    NATTEN_FLEX_SKIP_GUARDS=0; results equal the oracle every time. (The thread condition is
    tested on its own below; here the process's other threads are taken as harmless.)"""
    from natten import functional as F
    from oracle import na_oracle

    monkeypatch.setattr(flex, "_other_threads", lambda: [])
    stances = []
    real = torch.compiler.set_stance

    def spy(*a, **k):
        stances.append(k.get("skip_guard_eval_unsafe", False))
        return real(*a, **k)

    monkeypatch.setattr(torch.compiler, "set_stance", spy)
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 11, 13, 2, 16, generator=g) for _ in range(3))
    kw = dict(kernel_size=(3, 5), stride=(2, 1), is_causal=(True, False))
    ref_out, _ = na_oracle(q.double(), k.double(), v.double(), **kw)

    def call(n):
        for i in range(n):
            out = natten.na2d(q, k, v, **kw, backend="flex-fna")
            assert_close(out, ref_out, what=f"call {i}", **TOL[torch.float32])

    stance = torch._dynamo.eval_frame._stance
    assert flex._skip_guards_ok("cpu"), (
        f"preconditions: stance {stance}, autocast {torch.is_autocast_enabled('cpu')}, "
        f"switch {flex._SKIP_GUARDS}")
    F._PLANS.clear()
    call(4)
    failed = [p.key for p in flex._CACHE.values() if p.compile_failed]
    assert stances == [True, True], (stances, "plans whose compile failed:", failed)  # calls 3, 4
    stances.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=True):
        assert flex._skip_guards_ok("cpu") is False
    with torch.compiler.set_stance("eager_on_recompile"):
        stances.clear()
        call(1)
        assert stances == [], stances  # the user's stance is left alone
    monkeypatch.setattr(flex, "_other_threads", lambda: ["user-thread"])  # a user thread
    flex.GUARD_SKIP_REFUSALS.clear()
    call(1)
    assert stances == [], stances
    assert flex.GUARD_SKIP_REFUSALS == {"other Python threads are alive: user-thread": 1}, (
        flex.GUARD_SKIP_REFUSALS)
    monkeypatch.setattr(flex, "_other_threads", lambda: [])
    monkeypatch.setattr(flex, "_SKIP_GUARDS", False)
    call(2)
    assert stances == [], stances
    assert flex.GUARD_SKIP_REFUSALS.get("NATTEN_FLEX_SKIP_GUARDS=0") == 2, flex.GUARD_SKIP_REFUSALS
    F._PLANS.clear()


def test_guard_skipping_thread_condition(monkeypatch):
    """Guards are skipped only while no other Python thread could enter compiled code: the stance
    and dynamo's flag are process-wide. Inductor's own threads (its subprocess pool's reader and
    timer, its compile thread pool's workers, tqdm's monitor) do not count; any other thread does."""
    import concurrent.futures
    import functools
    import threading

    import torch._inductor.async_compile as ac

    me = threading.current_thread()
    threads = [me]
    monkeypatch.setattr(threading, "enumerate", lambda: list(threads))
    assert flex._no_other_compiling_thread()
    threads.append(threading.Thread(target=lambda: None, name="user-thread"))
    assert not flex._no_other_compiling_thread()
    threads[1:] = [threading.Thread(target=lambda: None, name="InductorSubproc"),
                   threading.Thread(target=lambda: None, name="subproc_worker_timer")]
    assert flex._no_other_compiling_thread()
    # tqdm's monitor thread (Inductor's progress bars start it), known by its class, not its name
    TMonitor = type("TMonitor", (threading.Thread,), {"__module__": "tqdm._monitor"})
    threads[1:] = [TMonitor(target=lambda: None, name="tqdm_monitor")]
    assert flex._no_other_compiling_thread()
    threads[1:] = [threading.Thread(target=lambda: None, name="tqdm_monitor")]
    assert not flex._no_other_compiling_thread()
    executor = concurrent.futures.ThreadPoolExecutor(1)
    try:
        executor.submit(lambda: None).result()
        threads[1:] = list(executor._threads)
        assert not flex._no_other_compiling_thread()  # unknown while it is not Inductor's pool
        fake_pool = functools.lru_cache(1)(lambda: executor)
        fake_pool()
        monkeypatch.setattr(ac.AsyncCompile, "pool", staticmethod(fake_pool))
        assert flex._no_other_compiling_thread()  # Inductor's compile pool
    finally:
        executor.shutdown(wait=True)


@pytest.mark.parametrize("seed", range(6))
def test_tile_layout_matches_generic_permutation(seed):
    """_TileLayout (precomputed, used on the hot path) equals _to_tiles / _from_tiles, including
    the view-only identity case (1-D, or one tile across every axis but the first)."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    for _ in range(12):
        rank = rng.randint(1, 3)
        tile = tuple(2 ** rng.randint(0, 3) for _ in range(rank))
        dil = tuple(rng.choice([1, 1, 2, 3]) for _ in range(rank))
        ident = rng.random() < 0.4
        if ident:
            dil = (1,) * rank
            ext = tuple(tile[a] * (rng.randint(1, 4) if a == 0 else 1) for a in range(rank))
            shape = ext
        else:
            ext = tuple(tile[a] * rng.randint(1, 3) for a in range(rank))
            shape = tuple(max(1, ext[a] * dil[a] - rng.randint(0, dil[a] * tile[a] - 1))
                          for a in range(rank))
        front = tuple(rng.randint(0, ext[a] * dil[a] - shape[a]) for a in range(rank))
        B, H, D = rng.randint(1, 2), rng.randint(1, 3), 4
        x = torch.randn(B, *shape, H, D, generator=g)
        layout = flex._TileLayout(shape, tile, ext, dil, front)
        if ident:
            assert layout.identity
        want = flex._to_tiles(x, tile, ext, dil, front)
        got = layout.to_tiles(x)
        assert torch.equal(got, want)
        y = torch.randn(B * layout.groups, layout.tokens, H, generator=g)
        assert torch.equal(layout.from_tiles(y, B),
                           flex._from_tiles(y, B, shape, tile, ext, dil, front))


def _random_layout(rng: random.Random):
    rank = rng.randint(1, 3)
    tile = tuple(2 ** rng.randint(0, 3) for _ in range(rank))
    dil = tuple(rng.choice([1, 1, 2, 3]) for _ in range(rank))
    ext = tuple(tile[a] * rng.randint(1, 3) for a in range(rank))
    shape = tuple(max(1, ext[a] * dil[a] - rng.randint(0, dil[a] * tile[a] - 1))
                  for a in range(rank))
    front = tuple(rng.randint(0, ext[a] * dil[a] - shape[a]) for a in range(rank))
    return shape, tile, ext, dil, front


@pytest.mark.parametrize("seed", range(4))
def test_wide_element_permutation_is_bitwise_and_differentiable(seed):
    """The permutation copies run on wide-element views (_widen); they must equal the plain copies
    bit for bit (NaN payloads included) for every dtype, odd head dims (no wide view), views with
    odd strides, and give the same gradients as the autograd-visible generic functions."""
    g = torch.Generator().manual_seed(100 + seed)
    rng = random.Random(100 + seed)
    for _ in range(25):
        shape, tile, ext, dil, front = _random_layout(rng)
        B, H, D = rng.randint(1, 2), rng.randint(1, 3), rng.choice([1, 2, 3, 4, 8, 16])
        dt = rng.choice([torch.float16, torch.bfloat16, torch.float32, torch.float64])
        extra = rng.choice([0, 0, 1, 4])  # a sliced last dim: strides no wide type divides
        x = torch.randn(B, *shape, H, D + extra, generator=g).to(dt)[..., :D]
        nan = x.detach().clone()
        nan.view(-1)[:: max(1, nan.numel() // 7)] = float("nan")  # NaNs must move unchanged
        layout = flex._TileLayout(shape, tile, ext, dil, front)
        for t in (x, nan):
            got = layout.to_tiles(t).contiguous()
            want = flex._to_tiles(t, tile, ext, dil, front).contiguous()
            assert got.dtype == t.dtype and got.shape == want.shape
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))  # bit for bit
        y = torch.randn(B * layout.groups, layout.tokens, H, D, generator=g).to(dt)
        assert torch.equal(layout.from_tiles(y, B),
                           flex._from_tiles(y, B, shape, tile, ext, dil, front))
        # gradients: to_tiles and from_tiles against the generic (autograd-visible) functions
        x1 = x.detach().clone().requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        gt = torch.randn(B * layout.groups, layout.tokens, H, D, generator=g).to(dt)
        layout.to_tiles(x1).backward(gt)
        flex._to_tiles(x2, tile, ext, dil, front).backward(gt)
        assert torch.equal(x1.grad, x2.grad)
        y1, y2 = y.clone().requires_grad_(True), y.clone().requires_grad_(True)
        go = torch.randn(B, *shape, H, D, generator=g).to(dt)
        layout.from_tiles(y1, B).backward(go)
        flex._from_tiles(y2, B, shape, tile, ext, dil, front).backward(go)
        assert torch.equal(y1.grad, y2.grad)


def test_widen_picks_the_widest_dividing_type():
    bf = torch.zeros(2, 3, 128, dtype=torch.bfloat16)
    assert flex._widen(bf).dtype == torch.int64  # 16-byte moves only on CUDA
    assert flex._widen(bf).shape == (2, 3, 32)
    assert flex._widen(torch.zeros(2, 3, 2, dtype=torch.bfloat16)).dtype == torch.int32
    assert flex._widen(torch.zeros(2, 3, 3, dtype=torch.bfloat16)) is None
    assert flex._widen(torch.zeros(2, 3, 8, dtype=torch.bfloat16)[..., 1:5]) is None  # offset
    assert flex._widen(torch.zeros(2, 8, 3).transpose(1, 2)) is None  # last dim strided
    assert flex._widen(torch.zeros(4, dtype=torch.float64)) is None  # nothing wider on CPU
