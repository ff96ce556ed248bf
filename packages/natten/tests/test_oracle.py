"""Hand-checked unit tests of the independent oracle (tests/oracle.py).

Every expected mask below was worked out by hand from /work/shared/SEMANTICS.md; each entry is
the list of key coordinates attended by query coordinate i = 0, 1, 2, ...
"""

import math

import pytest
import torch

from oracle import (
    attended_flat_keys,
    attention_oracle,
    axis_mask,
    dense_attention,
    na_mask,
    na_oracle,
)


def rows_to_mask(n, rows):
    m = torch.zeros(n, n, dtype=torch.bool)
    for i, keys in enumerate(rows):
        for j in keys:
            m[i, j] = True
    return m


def rng(*r):
    return list(range(*r))


HAND_CASES = [
    # (name, n, K, s, d, causal, expected rows)
    (
        "n7_K3_border_shift",
        7, 3, 1, 1, False,
        [rng(0, 3), rng(0, 3), rng(1, 4), rng(2, 5), rng(3, 6), rng(4, 7), rng(4, 7)],
    ),
    (
        # even K=4: L=2 left, R=1 right
        "n7_K4_even",
        7, 4, 1, 1, False,
        [rng(0, 4), rng(0, 4), rng(0, 4), rng(1, 5), rng(2, 6), rng(3, 7), rng(3, 7)],
    ),
    (
        # stride 2: leaders 1, 3, 5, 7 -> centres 2, 3, 5, 6 (clamped to [2, 6])
        "n8_K4_s2",
        8, 4, 2, 1, False,
        [rng(0, 4), rng(0, 4), rng(1, 5), rng(1, 5), rng(3, 7), rng(3, 7), rng(4, 8), rng(4, 8)],
    ),
    (
        # stride == K: blocked attention
        "n6_K3_s3_blocked",
        6, 3, 3, 1, False,
        [rng(0, 3)] * 3 + [rng(3, 6)] * 3,
    ),
    (
        # stride == K with a partial last group {6}: leader clamped to 6, window shifted inward
        "n7_K3_s3_partial",
        7, 3, 3, 1, False,
        [rng(0, 3)] * 3 + [rng(3, 6)] * 3 + [rng(4, 7)],
    ),
    (
        # even kernel, even stride == K: leaders 2 and 6 (right of centre)
        "n8_K4_s4_blocked",
        8, 4, 4, 1, False,
        [rng(0, 4)] * 4 + [rng(4, 8)] * 4,
    ),
    (
        # odd K, even stride 4: leaders 2, 6, min(10, 8) = 8 -> centres 2, 6, 6
        "n9_K5_s4",
        9, 5, 4, 1, False,
        [rng(0, 5)] * 4 + [rng(4, 9)] * 4 + [rng(4, 9)],
    ),
    (
        # stride 3, even K: leaders 1, 4, 7, 9 -> centres 2, 4, 7, 8
        "n10_K4_s3",
        10, 4, 3, 1, False,
        [rng(0, 4)] * 3 + [rng(2, 6)] * 3 + [rng(5, 9)] * 3 + [rng(6, 10)],
    ),
    (
        # dilation 2: group 0 = {0,2,4,6} (n_g = 4), group 1 = {1,3,5} (n_g = 3)
        "n7_K3_d2",
        7, 3, 1, 2, False,
        [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [1, 3, 5], [2, 4, 6]],
    ),
    (
        "n6_K3_causal",
        6, 3, 1, 1, True,
        [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]],
    ),
    (
        # causal + stride 2: group starts max(l - 2, 0) with leaders 1, 3, 5, 6
        "n7_K3_s2_causal",
        7, 3, 2, 1, True,
        [[0], [0, 1], [1, 2], [1, 2, 3], [3, 4], [3, 4, 5], [4, 5, 6]],
    ),
    (
        # causal + dilation 2, K = 2
        "n6_K2_d2_causal",
        6, 2, 1, 2, True,
        [[0], [1], [0, 2], [1, 3], [2, 4], [3, 5]],
    ),
    (
        # causal + stride == K (blocked causal)
        "n6_K3_s3_causal",
        6, 3, 3, 1, True,
        [[0], [0, 1], [0, 1, 2], [3], [3, 4], [3, 4, 5]],
    ),
    (
        # kernel == n, non-causal: full attention
        "n5_K5_full",
        5, 5, 1, 1, False,
        [rng(0, 5)] * 5,
    ),
]


@pytest.mark.parametrize("case", HAND_CASES, ids=[c[0] for c in HAND_CASES])
def test_axis_mask_hand_checked(case):
    _, n, K, s, d, causal, rows = case
    expected = rows_to_mask(n, rows)
    got = axis_mask(n, K, s, d, causal)
    assert torch.equal(got, expected), f"\n{got.int()}\n!=\n{expected.int()}"


@pytest.mark.parametrize("n", [5, 8, 11, 16])
def test_axis_mask_invariants(n):
    # Non-causal: exactly K keys per query; causal: every query attends itself and at most K keys.
    for K in range(2, n + 1):
        for s in range(1, K + 1):
            for d in range(1, n // K + 1):
                m = axis_mask(n, K, s, d, False)
                assert (m.sum(1) == K).all(), (n, K, s, d)
                mc = axis_mask(n, K, s, d, True)
                assert mc.diagonal().all(), (n, K, s, d)
                assert (mc.sum(1) <= K).all(), (n, K, s, d)
                assert not torch.triu(mc, 1).any(), (n, K, s, d)


def test_na_mask_2d_is_and_of_axes_row_major():
    shape = (4, 5)
    m = na_mask(shape, (3, 2), (1, 2), (1, 2), (False, True))
    m0 = axis_mask(4, 3, 1, 1, False)
    m1 = axis_mask(5, 2, 2, 2, True)
    for i0 in range(4):
        for i1 in range(5):
            for j0 in range(4):
                for j1 in range(5):
                    assert bool(m[i0 * 5 + i1, j0 * 5 + j1]) == bool(m0[i0, j0] and m1[i1, j1])
    for fi in range(20):
        assert attended_flat_keys(shape, (3, 2), (1, 2), (1, 2), (False, True), fi) == [
            j for j in range(20) if m[fi, j]
        ]


def test_dense_attention_matches_softmax_formula():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 2, 4, generator=g, dtype=torch.float64)
    k = torch.randn(1, 5, 1, 4, generator=g, dtype=torch.float64)
    v = torch.randn(1, 5, 1, 3, generator=g, dtype=torch.float64)
    out, lse = dense_attention(q, k, v, scale=0.7)
    for h in range(2):
        s = q[0, :, h] @ k[0, :, 0].T * 0.7
        assert torch.allclose(lse[0, :, h], torch.logsumexp(s, -1))
        assert torch.allclose(out[0, :, h], torch.softmax(s, -1) @ v[0, :, 0])


def test_oracle_additional_kv_and_gqa_mapping():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 6, 4, 3, generator=g, dtype=torch.float64)
    k = torch.randn(1, 6, 2, 3, generator=g, dtype=torch.float64)
    v = torch.randn(1, 6, 2, 5, generator=g, dtype=torch.float64)
    ak = torch.randn(1, 2, 2, 3, generator=g, dtype=torch.float64)
    av = torch.randn(1, 2, 2, 5, generator=g, dtype=torch.float64)
    out, lse = na_oracle(q, k, v, 3, additional_keys=ak, additional_values=av)
    m = axis_mask(6, 3)
    for h in range(4):
        hk = h // 2
        for i in range(6):
            keys = torch.cat([k[0, m[i], hk], ak[0, :, hk]])
            vals = torch.cat([v[0, m[i], hk], av[0, :, hk]])
            s = keys @ q[0, i, h] * 3 ** -0.5
            assert torch.allclose(lse[0, i, h], torch.logsumexp(s, 0))
            assert torch.allclose(out[0, i, h], torch.softmax(s, 0) @ vals)


def test_attention_oracle_causal_and_varlen():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 5, 1, 2, generator=g, dtype=torch.float64)
    k = torch.randn(1, 7, 1, 2, generator=g, dtype=torch.float64)
    v = torch.randn(1, 7, 1, 2, generator=g, dtype=torch.float64)
    out, _ = attention_oracle(q, k, v, is_causal=True)
    # query 0 sees only key 0
    assert torch.allclose(out[0, 0, 0], v[0, 0, 0])
    out, _ = attention_oracle(q, k, v, seqlens_Q=[2, 3], seqlens_KV=[4, 3])
    o1, _ = dense_attention(q[:, :2], k[:, :4], v[:, :4])
    o2, _ = dense_attention(q[:, 2:], k[:, 4:], v[:, 4:])
    assert torch.allclose(out, torch.cat([o1, o2], 1))


def test_gpu_test_helpers_on_cpu():
    """The helpers the GPU tests use, checked here where CI runs: check_window_rows_1d accepts
    the reference backend's rows and rejects a corrupted one; SweepFailures collects and stops."""
    import natten
    from helpers import SweepFailures, check_window_rows_1d

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 40, 2, 16, generator=g) for _ in range(3))
    out, lse = natten.na1d(q, k, v, 6, backend="reference", return_lse=True)
    check_window_rows_1d(q, k, v, out, lse, (0, 1, 20, 38, 39), 6, atol=1e-5)
    bad = out.clone()
    bad[:, 39] += 1
    with pytest.raises(AssertionError, match="row 39"):
        check_window_rows_1d(q, k, v, bad, lse, (39,), 6, atol=1e-5)
    failures = SweepFailures(limit=2)
    with failures.case("first: "):
        raise AssertionError("boom")
    with failures.case():
        pass
    assert not failures.full and failures.messages == ["first: boom"] and len(failures) == 1
    failures.add("second")
    assert failures.full
    with pytest.raises(AssertionError, match="first: boom\nsecond"):
        failures.check()


def test_random_slabs_hold_every_attended_key():
    """helpers.random_slabs (the slab draw of the GPU sweeps): query slabs inside the grid, key slabs
    inside the grid that hold every key the query slab attends; whole, thin and partial slabs all
    occur."""
    import random

    from helpers import random_slabs
    from natten.window import WindowSpec, key_range

    rng = random.Random(5)
    kinds = set()
    for _ in range(300):
        rank = rng.randint(1, 3)
        shape = tuple(rng.randint(2, 30) for _ in range(rank))
        ks = tuple(rng.randint(2, n) for n in shape)
        st = tuple(rng.randint(1, k) for k in ks)
        dl = tuple(rng.randint(1, max(1, n // k)) for n, k in zip(shape, ks))
        ca = tuple(rng.random() < 0.3 for _ in shape)
        spec = WindowSpec(shape, ks, st, dl, ca)
        qo, qs, ko, kvs = random_slabs(rng, spec)
        for a, n in enumerate(shape):
            assert 0 <= qo[a] and qs[a] >= 1 and qo[a] + qs[a] <= n, (shape, qo, qs)
            assert 0 <= ko[a] and ko[a] + kvs[a] <= n, (shape, ko, kvs)
            kinds.add("whole" if qs[a] == n else ("thin" if qs[a] <= 4 else "partial"))
        for (lo, end), o, m in zip(key_range(spec, qo, qs), ko, kvs):
            assert o <= lo and end <= o + m, (spec, qo, qs, ko, kvs)
    assert kinds == {"whole", "thin", "partial"}
