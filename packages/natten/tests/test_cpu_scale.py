"""Large problems on the reference backend (CPU): must complete without materialising N x N
scores; a few query rows (out, lse, dq) and key columns (dk, dv) are spot-checked against a
float64 brute-force computation of those rows/columns only."""

import math
import random
import resource

import pytest
import torch

import natten
from oracle import as_tuple, axis_attends


def _coords(flat, shape):
    c = []
    for n in reversed(shape):
        c.append(flat % n)
        flat //= n
    return c[::-1]


def _flat(coord, shape):
    f = 0
    for c, n in zip(coord, shape):
        f = f * n + c
    return f


def _local_range(n, i, radius):
    return range(max(0, i - radius), min(n, i + radius + 1))


def _axis_keys(n, K, s, d, c, i, radius=None):
    rng = range(n) if radius is None else _local_range(n, i, radius)
    return [j for j in rng if axis_attends(n, K, s, d, c, i, j)]


def _axis_queries(n, K, s, d, c, j, radius=None):
    rng = range(n) if radius is None else _local_range(n, j, radius)
    return [i for i in rng if axis_attends(n, K, s, d, c, i, j)]


def _product(shape, per_axis):
    flat = [0]
    for ax, n in enumerate(shape):
        flat = [f * n + x for f in flat for x in per_axis[ax]]
    return flat


class Problem:
    def __init__(self, shape, kernel_size, stride=1, dilation=1, is_causal=False):
        self.shape = shape
        r = len(shape)
        self.ks = as_tuple(kernel_size, r)
        self.st = as_tuple(stride, r)
        self.dl = as_tuple(dilation, r)
        self.ca = as_tuple(is_causal, r)
        # A window is always within (K + s) * d of its query, so scanning a radius of
        # 3 * K * d around it finds every attended key (verified against full scans below).
        self.radius = [3 * k * d for k, d in zip(self.ks, self.dl)]

    def args(self, ax):
        return self.shape[ax], self.ks[ax], self.st[ax], self.dl[ax], self.ca[ax]

    def keys_of(self, flat_i, full=False):
        c = _coords(flat_i, self.shape)
        per = [_axis_keys(*self.args(ax), c[ax], None if full else self.radius[ax])
               for ax in range(len(self.shape))]
        return _product(self.shape, per)

    def queries_of(self, flat_j):
        c = _coords(flat_j, self.shape)
        per = [_axis_queries(*self.args(ax), c[ax], self.radius[ax]) for ax in range(len(self.shape))]
        return _product(self.shape, per)


def _row(qi, k, v, keys, scale):
    """float64 out/lse of one query vector qi over the given keys; k, v flat [N, D] float64."""
    s = (k[keys] @ qi) * scale
    lse = torch.logsumexp(s, 0)
    return torch.softmax(s, 0) @ v[keys], lse


def run_large(shape, kernel_size, fn, seed, **kw):
    torch.manual_seed(seed)
    B, H, D = 1, 1, 16
    N = math.prod(shape)
    prob = Problem(shape, kernel_size, **kw)
    q = torch.randn(B, *shape, H, D, requires_grad=True)
    k = torch.randn(B, *shape, H, D, requires_grad=True)
    v = torch.randn(B, *shape, H, D, requires_grad=True)
    out, lse = fn(q, k, v, kernel_size=kernel_size, backend="reference", return_lse=True, **kw)
    assert out.shape == (B, *shape, H, D) and lse.shape == (B, *shape, H)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    dout = torch.randn_like(out)
    out.backward(dout)
    for t in (q, k, v):
        assert t.grad is not None and t.grad.shape == t.shape and torch.isfinite(t.grad).all()

    scale = D ** -0.5
    q64 = q.detach().double().reshape(N, D)
    k64 = k.detach().double().reshape(N, D)
    v64 = v.detach().double().reshape(N, D)
    do64 = dout.double().reshape(N, D)
    out_f = out.detach().reshape(N, D)
    lse_f = lse.detach().reshape(N)
    dq_f, dk_f, dv_f = (t.grad.reshape(N, D) for t in (q, k, v))

    r = random.Random(seed)
    corners = [_flat([0] * len(shape), shape), _flat([n - 1 for n in shape], shape),
               _flat([n // 2 for n in shape], shape), _flat([1] + [n - 2 for n in shape[1:]], shape)]
    rows = corners + [r.randrange(N) for _ in range(6)]

    # the local scan is exact: compare with a full scan on a few rows
    for i in rows[:3]:
        assert prob.keys_of(i) == prob.keys_of(i, full=True)

    for i in rows:
        keys = prob.keys_of(i)
        if not any(prob.ca):
            assert len(keys) == math.prod(prob.ks)
        qi = q64[i].clone().requires_grad_()
        o_ref, l_ref = _row(qi, k64, v64, keys, scale)
        (o_ref * do64[i]).sum().backward()
        torch.testing.assert_close(out_f[i].double(), o_ref.detach(), atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"out row {i}: {m}")
        torch.testing.assert_close(lse_f[i].double(), l_ref.detach(), atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"lse row {i}: {m}")
        torch.testing.assert_close(dq_f[i].double(), qi.grad, atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"dq row {i}: {m}")

    # key columns: dk_j, dv_j come from every query attending key j
    for j in rows[:5]:
        queries = prob.queries_of(j)
        assert len(queries) > 0
        kj = k64[j].clone().requires_grad_()
        vj = v64[j].clone().requires_grad_()
        kk = k64.index_copy(0, torch.tensor([j]), kj[None])
        vv = v64.index_copy(0, torch.tensor([j]), vj[None])
        loss = 0.0
        for i in queries:
            keys = prob.keys_of(i)
            assert j in keys
            o_i, _ = _row(q64[i], kk, vv, keys, scale)
            loss = loss + (o_i * do64[i]).sum()
        loss.backward()
        torch.testing.assert_close(dk_f[j].double(), kj.grad, atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"dk col {j}: {m}")
        torch.testing.assert_close(dv_f[j].double(), vj.grad, atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"dv col {j}: {m}")


# Dense N x N fp32 scores for N = 65,536 would alone take 16 GiB; the whole process (including
# everything run before in this session) must stay far below that.
PEAK_RSS_LIMIT_GB = 8.0


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def test_large_1d_65536_window_127():
    run_large((65536,), 127, natten.na1d, seed=1)
    assert _peak_rss_gb() < PEAK_RSS_LIMIT_GB, f"peak RSS {_peak_rss_gb():.1f} GiB"


def test_large_2d_256x256_window_9x9():
    run_large((256, 256), (9, 9), natten.na2d, seed=2)
    assert _peak_rss_gb() < PEAK_RSS_LIMIT_GB, f"peak RSS {_peak_rss_gb():.1f} GiB"
