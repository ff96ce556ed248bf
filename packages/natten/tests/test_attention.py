"""natten.attention: dense, causal, GQA, Dv != D, LSE, gradients and varlen, against the oracle."""

import math
import random

import pytest
import torch

import natten
from helpers import TOL, assert_close, assert_lse_close, randn
from oracle import attention_oracle


def _run_and_compare(q, k, v, gen, is_causal=False, scale=None, backend="reference",
                     varlen_kwargs=None, seqlens=None, backward=True, what=""):
    dtype = q.dtype
    tol = TOL[dtype]
    ql, kl, vl = (t.clone().requires_grad_(backward) for t in (q, k, v))
    kw = dict(is_causal=is_causal, return_lse=True)
    if backend is not None:
        kw["backend"] = backend
    if scale is not None:
        kw["scale"] = scale
    if varlen_kwargs:
        kw.update(varlen_kwargs)
    out, lse = natten.attention(ql, kl, vl, **kw)
    assert out.dtype == dtype
    q64, k64, v64 = (t.double().requires_grad_(backward) for t in (q, k, v))
    sq, skv = seqlens if seqlens is not None else (None, None)
    ref, ref_lse = attention_oracle(q64, k64, v64, is_causal=is_causal, scale=scale,
                                    seqlens_Q=sq, seqlens_KV=skv)
    assert_close(out, ref, what=f"{what} out", **tol)
    assert_lse_close(lse, ref_lse, dtype, what=f"{what} lse")
    if backward:
        dout = randn(out.shape, gen, dtype)
        out.backward(dout)
        ref.backward(dout.double())
        for name, a, b in (("dq", ql, q64), ("dk", kl, k64), ("dv", vl, v64)):
            assert a.grad is not None, f"{what}: {name} missing"
            assert_close(a.grad, b.grad, what=f"{what} {name}", **tol)
    return out, lse


DENSE_SEEDS = list(range(100, 124))


@pytest.mark.parametrize("seed", DENSE_SEEDS)
def test_attention_dense_and_causal(seed):
    r = random.Random(seed)
    dtype = torch.float64 if seed % 3 == 0 else torch.float32
    B = r.choice([1, 2])
    N = r.randint(1, 70)
    M = N if r.random() < 0.5 else r.randint(1, 70)
    H_kv = r.choice([1, 2, 3])
    H = H_kv * r.choice([1, 2, 4])
    D = r.choice([4, 8, 16, 32])
    Dv = D if r.random() < 0.5 else r.choice([4, 8, 24])
    is_causal = r.random() < 0.5
    scale = None if r.random() < 0.7 else 0.5
    gen = torch.Generator().manual_seed(seed)
    q = randn((B, N, H, D), gen, dtype)
    k = randn((B, M, H_kv, D), gen, dtype)
    v = randn((B, M, H_kv, Dv), gen, dtype)
    _run_and_compare(q, k, v, gen, is_causal=is_causal, scale=scale,
                     what=f"seed={seed} B={B} N={N} M={M} H={H} H_kv={H_kv} D={D} Dv={Dv} "
                          f"causal={is_causal} scale={scale} {dtype}")


@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_default_backend(is_causal):
    gen = torch.Generator().manual_seed(5)
    q, k, v = randn((2, 33, 4, 16), gen), randn((2, 33, 2, 16), gen), randn((2, 33, 2, 8), gen)
    _run_and_compare(q, k, v, gen, is_causal=is_causal, backend=None, what="default backend")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_attention_low_precision_forward(dtype):
    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(6)
    q, k, v = randn((1, 50, 2, 16), gen, dtype), randn((1, 50, 2, 16), gen, dtype), randn((1, 50, 2, 16), gen, dtype)
    for c in (False, True):
        _run_and_compare(q, k, v, gen, is_causal=c, backward=False, what=f"{dtype} causal={c}")


def test_attention_return_lse_false():
    gen = torch.Generator().manual_seed(8)
    q = randn((1, 10, 2, 8), gen)
    out = natten.attention(q, q, q, backend="reference")
    assert isinstance(out, torch.Tensor) and out.shape == (1, 10, 2, 8)


def test_gradcheck_attention():
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(1, 5, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 6, 1, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 6, 1, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    for c in (False, True):
        f = lambda q, k, v: natten.attention(q, k, v, is_causal=c, backend="reference")
        assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# varlen
# ------------------------------------------------------------------------------------------------
VARLEN_CASES = [
    # (seqlens_Q, seqlens_KV, H, H_kv, D, Dv, dtype)
    ([3, 5, 2], [3, 5, 2], 2, 2, 8, 8, torch.float64),
    ([3, 5, 2], [4, 2, 6], 2, 1, 8, 8, torch.float32),
    ([1, 17, 9, 4], [7, 1, 9, 13], 4, 2, 16, 8, torch.float32),
    ([12], [20], 3, 3, 8, 4, torch.float32),
    ([6, 6, 6, 6, 6], [2, 3, 4, 5, 6], 2, 2, 4, 12, torch.float64),
    # runs of equal (query, key) lengths: one batched call per run (see the next test)
    ([5, 5, 5, 3, 3, 5, 5], [7, 7, 7, 3, 3, 7, 6], 2, 1, 8, 8, torch.float64),
]


def _split(t, lens):
    return torch.split(t, list(lens), dim=1)


@pytest.mark.parametrize("idx", range(len(VARLEN_CASES)))
@pytest.mark.parametrize("mode", ["seqlens", "cumulative"])
def test_attention_varlen(idx, mode):
    sq, skv, H, H_kv, D, Dv, dtype = VARLEN_CASES[idx]
    gen = torch.Generator().manual_seed(200 + idx)
    N, M = sum(sq), sum(skv)
    q = randn((1, N, H, D), gen, dtype)
    k = randn((1, M, H_kv, D), gen, dtype)
    v = randn((1, M, H_kv, Dv), gen, dtype)
    if mode == "seqlens":
        vk = dict(seqlens_Q=torch.tensor(sq, dtype=torch.int32),
                  seqlens_KV=torch.tensor(skv, dtype=torch.int32))
    else:
        cq = torch.tensor([0] + list(torch.cumsum(torch.tensor(sq), 0)), dtype=torch.int32)
        ck = torch.tensor([0] + list(torch.cumsum(torch.tensor(skv), 0)), dtype=torch.int32)
        vk = dict(cumulative_seqlen_Q=cq, cumulative_seqlen_KV=ck,
                  max_seqlen_Q=max(sq), max_seqlen_KV=max(skv))
    out, lse = _run_and_compare(q, k, v, gen, varlen_kwargs=vk, seqlens=(sq, skv),
                                what=f"varlen {mode} {sq} {skv}")
    # equal to running each sequence separately
    outs, lses = [], []
    for qi, ki, vi in zip(_split(q, sq), _split(k, skv), _split(v, skv)):
        o, l = natten.attention(qi, ki, vi, backend="reference", return_lse=True)
        outs.append(o)
        lses.append(l)
    tol = TOL[dtype]
    assert_close(out, torch.cat(outs, 1), what="varlen vs per-sequence out", **tol)
    assert_close(lse, torch.cat(lses, 1), what="varlen vs per-sequence lse", **tol)


def test_attention_varlen_batches_runs_of_equal_lengths(monkeypatch):
    """Consecutive sequences with the same (query, key) lengths go to the backend as one batch
    (a view of the packed tensors), so uniform packs cost one call; results and gradients equal
    per-sequence calls."""
    from natten.backends import reference

    sq, skv = [5, 5, 5, 3, 3, 5, 5, 2], [7, 7, 7, 3, 3, 7, 6, 2]
    calls = []
    real = reference.fmha

    def counting(q, k, v, *args, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(reference, "fmha", counting)
    gen = torch.Generator().manual_seed(301)
    q = randn((1, sum(sq), 2, 8), gen).requires_grad_(True)
    k = randn((1, sum(skv), 1, 8), gen).requires_grad_(True)
    v = randn((1, sum(skv), 1, 4), gen).requires_grad_(True)
    out, lse = natten.attention(q, k, v, backend="reference", return_lse=True, is_causal=True,
                                seqlens_Q=torch.tensor(sq, dtype=torch.int32),
                                seqlens_KV=torch.tensor(skv, dtype=torch.int32))
    assert calls == [((3, 5, 2, 8), (3, 7, 1, 8)), ((2, 3, 2, 8), (2, 3, 1, 8)), ((1, 5, 2, 8), (1, 7, 1, 8)),
                     ((1, 5, 2, 8), (1, 6, 1, 8)), ((1, 2, 2, 8), (1, 2, 1, 8))]
    w = randn(out.shape, gen)
    gq, gk, gv = torch.autograd.grad((out * w).sum() + lse.sum(), (q, k, v))
    outs, lses = [], []
    for qi, ki, vi in zip(_split(q, sq), _split(k, skv), _split(v, skv)):
        o, l = real(qi, ki, vi, True, 8 ** -0.5)
        outs.append(o)
        lses.append(l)
    ref_out, ref_lse = torch.cat(outs, 1), torch.cat(lses, 1)
    rq, rk, rv = torch.autograd.grad((ref_out * w).sum() + ref_lse.sum(), (q, k, v))
    for a, b, name in ((out, ref_out, "out"), (lse, ref_lse, "lse"), (gq, rq, "dq"), (gk, rk, "dk"), (gv, rv, "dv")):
        assert_close(a, b, atol=1e-5, rtol=1e-5, what=f"batched runs vs per-sequence {name}")


def test_attention_varlen_seqlens_equals_cumulative():
    sq, skv = [4, 9, 1], [5, 5, 5]
    gen = torch.Generator().manual_seed(300)
    q, k, v = randn((1, 14, 2, 8), gen), randn((1, 15, 2, 8), gen), randn((1, 15, 2, 8), gen)
    a = natten.attention(q, k, v, backend="reference",
                         seqlens_Q=torch.tensor(sq, dtype=torch.int32),
                         seqlens_KV=torch.tensor(skv, dtype=torch.int32))
    b = natten.attention(q, k, v, backend="reference",
                         cumulative_seqlen_Q=torch.tensor([0, 4, 13, 14], dtype=torch.int32),
                         cumulative_seqlen_KV=torch.tensor([0, 5, 10, 15], dtype=torch.int32),
                         max_seqlen_Q=9, max_seqlen_KV=5)
    assert_close(a, b, atol=1e-6, rtol=1e-6, what="seqlens vs cumulative")
    # default backend as well
    c = natten.attention(q, k, v, seqlens_Q=torch.tensor(sq, dtype=torch.int32),
                         seqlens_KV=torch.tensor(skv, dtype=torch.int32))
    assert_close(a, c, atol=1e-5, rtol=1e-5, what="varlen default backend")


@pytest.mark.parametrize("seed", range(8))
def test_cutlass_fmha_decomposition_into_na_problems(seed):
    """cutlass-fmha runs dense attention as 1-D NA problems (cutlass._fmha_parts); running those
    exact problems on the float64 reference NA backend and concatenating equals dense attention,
    forward, LSE and gradients (the kernel itself is checked on the GPU)."""
    from natten.backends import cutlass, reference

    rng = random.Random(7000 + seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(6):
        nk = rng.randint(2, 40)
        nq = rng.choice([nk, rng.randint(1, nk), rng.randint(nk, 3 * nk + 5)])
        causal = rng.random() < 0.5
        hkv = rng.choice([1, 2])
        h = hkv * rng.choice([1, 2])
        d, dv = rng.choice([(8, 8), (8, 16)])
        q = torch.randn(2, nq, h, d, generator=gen, dtype=torch.float64, requires_grad=True)
        k = torch.randn(2, nk, hkv, d, generator=gen, dtype=torch.float64, requires_grad=True)
        v = torch.randn(2, nk, hkv, dv, generator=gen, dtype=torch.float64, requires_grad=True)
        parts = cutlass._fmha_parts(nq, nk, causal)
        assert parts[0][0].start == 0 and parts[-1][0].stop == nq
        res = [reference.fna(q[:, sl], k, v, spec, 0.3) for sl, spec in parts]
        out = torch.cat([r[0] for r in res], 1)
        lse = torch.cat([r[1] for r in res], 1)
        ref, ref_lse = attention_oracle(q, k, v, is_causal=causal, scale=0.3)
        what = f"nq={nq} nk={nk} causal={causal}"
        assert_close(out, ref, what=what, atol=1e-10, rtol=0)
        assert_close(lse, ref_lse, what=what, atol=1e-10, rtol=0)
        dout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        got = torch.autograd.grad(out, (q, k, v), dout)
        want = torch.autograd.grad(ref, (q, k, v), dout)
        for name, a, b in zip(("dq", "dk", "dv"), got, want):
            assert_close(a, b, what=f"{what} {name}", atol=1e-10, rtol=0)


def test_cutlass_fmha_reasons_without_gpu():
    from natten.backends import cutlass

    q = torch.randn(1, 8, 2, 16)
    assert "CUDA" in cutlass.can_run_fmha(q, q, q)


def test_fmha_order_prefers_compiled_flex_over_cutlass_fmha(monkeypatch):
    """On CUDA, where FlexAttention compiles, flex-fmha is tried before cutlass-fmha (measured
    faster for dense attention); without compilation the table order stays."""
    from natten import backends
    from natten.backends import flex

    class FakeCuda:
        is_cuda = True

    names = list(backends.FMHA_BACKENDS)
    q = FakeCuda()
    monkeypatch.setattr(flex, "_needs_grad", lambda *t: False)
    monkeypatch.setattr(flex, "_use_compile", lambda q, g: True)
    order = backends._fmha_order(names, q, q, q)
    assert order.index("flex-fmha") == order.index("cutlass-fmha") - 1
    assert sorted(order) == sorted(names)
    monkeypatch.setattr(flex, "_use_compile", lambda q, g: False)
    assert backends._fmha_order(names, q, q, q) == names


@pytest.mark.parametrize("nq_per_nk,causal", [(1, False), (1, True), (3, False), (2, True)])
def test_fmha_on_fna_runs_the_parts_with_the_given_na_backend(nq_per_nk, causal):
    """cutlass._fmha_on_fna (used by cutlass-fmha and hopper-fmha) runs every part with the NA
    function it is given and concatenates them; with the float64 reference NA backend it equals
    dense attention (hopper-fmha takes N_q = m * N_kv, which is all it asks of it)."""
    from natten.backends import cutlass, reference

    gen = torch.Generator().manual_seed(nq_per_nk + 10 * causal)
    nk = 23
    q = torch.randn(2, nq_per_nk * nk, 4, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, nk, 2, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, nk, 2, 16, generator=gen, dtype=torch.float64)
    calls = []

    def na(qp, kp, vp, spec, scale, q_tile, kv_tile, **options):
        calls.append((qp.shape[1], spec.is_partial, q_tile, kv_tile, options))
        return reference.fna(qp, kp, vp, spec, scale)

    out, lse = cutlass._fmha_on_fna(na, q, k, v, causal, 0.3, (128,), (128,), kernel_schedule="x")
    ref, ref_lse = attention_oracle(q, k, v, is_causal=causal, scale=0.3)
    assert_close(out, ref, what="out", atol=1e-10, rtol=0)
    assert_close(lse, ref_lse, what="lse", atol=1e-10, rtol=0)
    assert len(calls) == nq_per_nk
    assert all(c == (nk, False, (128,), (128,), {"kernel_schedule": "x"}) for c in calls), calls


def test_hopper_fmha_reasons_without_gpu():
    from natten.backends import hopper

    q = torch.randn(1, 8, 2, 64)
    assert "CUDA" in hopper.can_run_fmha(q, q, q)
    with pytest.raises(natten.backends.BackendNotSupportedError, match="hopper-fmha"):
        natten.attention(q, q, q, backend="hopper-fmha")


@pytest.mark.parametrize("seed", range(6))
def test_hopper_dilation_runs_as_folded_groups(seed, monkeypatch):
    """hopper-fna runs a dilated problem as the dilation-1 problem on the dilation groups folded
    into the batch (one launch). With the launch replaced by the float64 reference backend on the
    folded tensors, the result equals the dilated problem's oracle (the kernel on dilation-1
    problems is checked on the GPU)."""
    from natten.backends import hopper, reference
    from natten.window import WindowSpec
    from oracle import na_oracle

    rng = random.Random(900 + seed)
    gen = torch.Generator().manual_seed(seed)
    launches = []

    def launch(q, k, v, spec, scale, q_tile, kv_tile, options):
        assert all(d == 1 for d in spec.dilation) and tuple(q.shape[1:-2]) == spec.shape
        launches.append((tuple(q.shape), spec))
        return reference.fna(q, k, v, spec, scale)

    monkeypatch.setattr(hopper, "_fna_kernel", launch)
    for _ in range(5):
        rank = rng.randint(1, 3)
        dl = tuple(rng.choice([1, 2, 3]) for _ in range(rank))
        if all(d == 1 for d in dl):
            dl = (2,) + dl[1:]
        ext = tuple(rng.randint(2, 6) for _ in range(rank))
        shape = tuple(e * d for e, d in zip(ext, dl))
        ks = tuple(rng.randint(2, e) for e in ext)
        st = tuple(rng.randint(1, k) for k in ks)
        ca = tuple(rng.random() < 0.3 for _ in range(rank))
        hkv = rng.choice([1, 2])
        B, H, D, Dv = rng.randint(1, 2), hkv * rng.choice([1, 2]), 8, rng.choice([8, 16])
        q = torch.randn(B, *shape, H, D, generator=gen, dtype=torch.float64)
        k = torch.randn(B, *shape, hkv, D, generator=gen, dtype=torch.float64)
        v = torch.randn(B, *shape, hkv, Dv, generator=gen, dtype=torch.float64)
        spec = WindowSpec(shape, ks, st, dl, ca)
        assert hopper._dilation_reason(spec) is None
        launches.clear()
        out, lse = hopper.fna(q, k, v, spec, 0.25)
        assert len(launches) == 1 and launches[0][0][0] == B * math.prod(dl)
        ref, ref_lse = na_oracle(q, k, v, ks, st, dl, ca, scale=0.25)
        what = f"shape={shape} k={ks} s={st} d={dl} c={ca}"
        assert_close(out, ref, what=what, atol=1e-10, rtol=0)
        assert_close(lse, ref_lse, what=f"{what} lse", atol=1e-10, rtol=0)


def test_hopper_dilation_reasons():
    from natten.backends import hopper
    from natten.window import WindowSpec

    assert hopper._dilation_reason(WindowSpec((12, 9), (3, 3), (1, 1), (2, 3), (False, False))) is None
    reason = hopper._dilation_reason(WindowSpec((12, 10), (3, 3), (1, 1), (2, 3), (False, False)))
    assert "axis 1: 10 tokens, dilation 3" in reason and "cutlass-fna" in reason
    assert hopper._dilation_reason(WindowSpec((7,), (3,), (1,), (1,), (False,))) is None


def test_hopper_auto_reason_head_dims_and_dilation():
    """hopper-fna declines the automatic choice where cutlass-fna measured faster: head dims that
    run on its 32 kernel (max(D, Dv) <= 32) and dilation; nothing else."""
    from natten.backends import hopper
    from natten.window import WindowSpec

    spec = WindowSpec((8, 8), (3, 3), (1, 1), (1, 1), (False, False))
    dil = WindowSpec((8, 8), (3, 3), (1, 1), (2, 1), (False, False))

    def t(d):
        return torch.empty(1, 8, 8, 1, d)

    assert "head dim <= 32" in hopper.auto_reason(t(24), t(24), t(32), spec)
    assert hopper.auto_reason(t(24), t(24), t(40), spec) is None  # the 64 kernel
    assert hopper.auto_reason(t(256), t(256), t(8), spec) is None
    assert "dilation" in hopper.auto_reason(t(64), t(64), t(64), dil)
    assert [hopper.kernel_head_dim(d, d) for d in (8, 32, 40, 64, 72, 128, 136, 256, 264)] == [
        32, 32, 64, 64, 128, 128, 256, 256, 0]


def test_automatic_selection_respects_a_backend_declining():
    """A backend that can run a problem but declines automatic selection (its ``auto_reason``,
    e.g. hopper-fna at head dim 32) is passed over by the automatic choice only: naming it still
    runs it, and the next backend that can run the problem is chosen."""
    import types

    from natten import backends as B

    fast = types.ModuleType("fast")
    fast.auto_reason = lambda *a: "measured slower here"
    slow = types.ModuleType("slow")
    table = {"fast": fast, "slow": slow}

    def reasons():
        return [("fast", None), ("slow", None)]

    def declines(mod):
        return mod.auto_reason() if hasattr(mod, "auto_reason") else None

    assert B._choose(None, table, {}, reasons, lambda m: None, "x", declines)[0] == "slow"
    assert B._choose("fast", table, {}, reasons, lambda m: None, "x", declines)[0] == "fast"
    assert B._choose(None, table, {}, reasons, lambda m: None, "x")[0] == "fast"
    # every backend that can run it declines: the first one that can still runs it
    slow.auto_reason = lambda *a: "also slower"
    assert B._choose(None, table, {}, reasons, lambda m: None, "x", declines)[0] == "fast"
