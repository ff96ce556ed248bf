"""Query/key slabs of a larger grid (``global_shape``, ``q_origin``, ``kv_origin``) against the
float64 oracle: forward, logsumexp and gradients, plus the validation errors."""

import random

import pytest
import torch

import natten
from natten.window import WindowSpec, key_range
from helpers import TOL, assert_close, assert_lse_close, randn, leaf, to64
from oracle import na_region_oracle

OPS = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}


def random_region_problem(rng: random.Random, rank: int):
    """A random valid NA problem on a global grid plus a random query slab and the key slab that
    covers it (sometimes with extra margin)."""
    while True:
        shape = tuple(rng.randint(3, 12 if rank < 3 else 7) for _ in range(rank))
        ks, st, dl, ca = [], [], [], []
        for n in shape:
            k = rng.randint(2, min(n, 6))
            d = rng.randint(1, max(1, n // k))
            ks.append(k)
            dl.append(d)
            st.append(rng.randint(1, k))
            ca.append(rng.random() < 0.3)
        spec = WindowSpec(shape, tuple(ks), tuple(st), tuple(dl), tuple(ca))
        qo, qs = [], []
        for n in shape:
            a = rng.randint(0, n - 1)
            b = rng.randint(a + 1, n)
            qo.append(a)
            qs.append(b - a)
        kr = key_range(spec, qo, qs)
        ko = [max(0, lo - rng.randint(0, 1)) for lo, _ in kr]
        kend = [min(n, hi + rng.randint(0, 1)) for (_, hi), n in zip(kr, shape)]
        return spec, tuple(qo), tuple(qs), tuple(ko), tuple(e - o for e, o in zip(kend, ko))


def region_case(seed: int, rank: int):
    """The random problem of ``run_region_case(seed, rank, ...)``: ``(spec, q_origin, q_shape,
    kv_origin, kv_shape, B, H, H_kv, D, D_v)``."""
    rng = random.Random(seed)
    spec, qo, qs, ko, kvs = random_region_problem(rng, rank)
    Hkv = rng.choice([1, 2])
    H = Hkv * rng.choice([1, 2])
    D = rng.choice([8, 16])
    Dv = rng.choice([8, 16])
    B = rng.choice([1, 2])
    return spec, qo, qs, ko, kvs, B, H, Hkv, D, Dv


def run_region_case(seed: int, rank: int, dtype, backend: str, device="cpu", backward=True,
                    **options):
    """Run one random slab problem through ``backend`` (``options`` go to the op, e.g. tile
    shapes) and compare out, logsumexp and (with ``backward``) gradients with the oracle."""
    gen = torch.Generator().manual_seed(seed)
    spec, qo, qs, ko, kvs, B, H, Hkv, D, Dv = region_case(seed, rank)
    q = randn((B, *qs, H, D), gen, dtype).to(device)
    k = randn((B, *kvs, Hkv, D), gen, dtype).to(device)
    v = randn((B, *kvs, Hkv, Dv), gen, dtype).to(device)
    kw = dict(kernel_size=spec.kernel_size, stride=spec.stride, dilation=spec.dilation,
              is_causal=spec.is_causal)
    ql, kl, vl = leaf(q, backward), leaf(k, backward), leaf(v, backward)
    out, lse = OPS[rank](ql, kl, vl, **kw, backend=backend, return_lse=True,
                         global_shape=spec.shape, q_origin=qo, kv_origin=ko, **options)
    q64, k64, v64 = to64(q, backward), to64(k, backward), to64(v, backward)
    ref_out, ref_lse = na_region_oracle(q64, k64, v64, spec.shape, qo, ko, **kw)
    what = f"seed {seed} {spec} q {qo}+{qs} kv {ko}+{kvs}"
    assert_close(out, ref_out, what=f"{what} out", **TOL[dtype])
    assert_lse_close(lse, ref_lse, dtype, what=f"{what} lse")
    if backward:
        dout = randn(out.shape, gen, dtype).to(device)
        glse = randn(lse.shape, gen, torch.float32).to(device)
        torch.autograd.backward([out, lse], [dout, glse.to(lse.dtype)])
        torch.autograd.backward([ref_out, ref_lse], [dout.to(torch.float64), glse.to(torch.float64)])
        for name, mine, ref in (("dq", ql, q64), ("dk", kl, k64), ("dv", vl, v64)):
            assert_close(mine.grad, ref.grad, what=f"{what} {name}", **TOL[dtype])


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_reference_region_matches_oracle(rank, seed):
    run_region_case(1000 * rank + seed, rank, torch.float64, "reference")


def test_region_float32_and_whole_grid_equivalence():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (randn((1, 9, 10, 2, 8), gen) for _ in range(3))
    a = natten.na2d(q, k, v, (3, 4), dilation=(2, 1), is_causal=(False, True), backend="reference")
    b = natten.na2d(q, k, v, (3, 4), dilation=(2, 1), is_causal=(False, True), backend="reference",
                    global_shape=(9, 10), q_origin=0, kv_origin=(0, 0))
    assert torch.equal(a, b)
    # A slab's output equals the matching rows of the global output.
    c = natten.na2d(q[:, 3:7], k[:, 1:9], v[:, 1:9], (3, 4), dilation=(2, 1),
                    is_causal=(False, True), backend="reference", global_shape=(9, 10),
                    q_origin=(3, 0), kv_origin=(1, 0))
    assert_close(c, a[:, 3:7], atol=1e-6, rtol=1e-6, what="slab vs global")


def test_region_errors_name_the_axis_and_ranges():
    q = torch.randn(1, 4, 10, 1, 8)
    k = torch.randn(1, 5, 10, 1, 8)
    with pytest.raises(ValueError, match=r"key slab \[2, 7\) on axis 0 \(X\) does not cover the keys \[\d+, \d+\)"):
        natten.na2d(q, k, k, 3, global_shape=(12, 10), q_origin=(2, 0), kv_origin=(2, 0))
    with pytest.raises(ValueError, match=r"query slab \[10, 14\).*global_shape` \(12\) on axis 0"):
        natten.na2d(q, k, k, 3, global_shape=(12, 10), q_origin=(10, 0), kv_origin=(0, 0))
    with pytest.raises(ValueError, match="token grids differ"):
        natten.na2d(q, k, k, 3)
    with pytest.raises(ValueError, match="`global_shape`"):
        natten.na2d(q, k, k, 3, global_shape=(12,))
    with pytest.raises(ValueError, match=r"kernel_size` \(11\) is larger than the input size \(10\)"):
        natten.na2d(q, k, k, (3, 11), global_shape=(12, 10), q_origin=(2, 0), kv_origin=(1, 0))


def test_axis_key_range_matches_window_bounds():
    from natten.window import axis_key_range, axis_window_bounds

    rng = random.Random(0)
    for _ in range(3000):
        n = rng.randint(2, 40)
        K = rng.randint(2, n)
        d = rng.randint(1, max(1, n // K))
        s = rng.randint(1, K)
        c = rng.random() < 0.4
        a = rng.randint(0, n - 1)
        b = rng.randint(a + 1, n)
        start, last = axis_window_bounds(n, K, s, d, c)
        want = (int(start[a:b].min()), int(last[a:b].max()) + 1)
        assert axis_key_range(n, K, s, d, c, a, b) == want, (n, K, s, d, c, a, b)
