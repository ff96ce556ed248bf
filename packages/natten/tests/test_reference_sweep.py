"""Seeded random sweeps of natten.na1d/na2d/na3d (reference backend, CPU) against the oracle.

Every case derives all its parameters from its own seed, so a failing case id reproduces exactly.
"""

import math
import random

import pytest
import torch

import natten
from helpers import TOL, assert_close, check_na_against_oracle, randn
from oracle import dense_attention, na_mask

NA_FN = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}
MAX_AXIS = {1: 40, 2: 12, 3: 7}


def make_case(seed: int, rank: int, allow_add_kv: bool = True):
    r = random.Random(seed)
    shape = tuple(r.randint(2, MAX_AXIS[rank]) for _ in range(rank))
    ks, st, dl, ca = [], [], [], []
    for n in shape:
        if r.random() < 0.5:
            K = r.randint(2, max(2, n // 2))  # small kernels, so that dilation > 1 is possible
        else:
            K = r.randint(2, n)
        s = 1 if r.random() < 0.3 else r.randint(1, K)
        d = r.randint(1, n // K)
        c = r.random() < 0.35
        ks.append(K)
        st.append(s)
        dl.append(d)
        ca.append(c)

    def pack(vals):
        # scalars are broadcast to every axis; exercise both spellings
        if all(x == vals[0] for x in vals) and r.random() < 0.5:
            return vals[0]
        return tuple(vals)

    B = r.choice([1, 2])
    H_kv = r.choice([1, 2])
    H = H_kv * r.choice([1, 2, 3])
    D = r.choice([4, 8, 16])
    Dv = D if r.random() < 0.6 else r.choice([4, 8, 12])
    scale = None if r.random() < 0.7 else r.choice([0.3, 1.0])
    S_kv = r.randint(1, 9) if (allow_add_kv and r.random() < 0.3) else 0
    noncontig = H == H_kv and D == Dv and r.random() < 0.25
    kw = dict(kernel_size=pack(ks), stride=pack(st), dilation=pack(dl), is_causal=pack(ca))
    if scale is not None:
        kw["scale"] = scale
    return dict(
        rank=rank, shape=shape, B=B, H=H, H_kv=H_kv, D=D, Dv=Dv, S_kv=S_kv,
        noncontig=noncontig, kw=kw, seed=seed,
    )


def make_tensors(case, dtype, gen):
    B, shape, H, H_kv, D, Dv = (case[x] for x in ("B", "shape", "H", "H_kv", "D", "Dv"))
    if case["noncontig"]:
        qkv = randn((B, *shape, 3, H, D), gen, dtype)
        q, k, v = qkv.unbind(-3)  # views with non-trivial strides, like the module produces
        assert not q.is_contiguous()
    else:
        q = randn((B, *shape, H, D), gen, dtype)
        k = randn((B, *shape, H_kv, D), gen, dtype)
        v = randn((B, *shape, H_kv, Dv), gen, dtype)
    ak = av = None
    if case["S_kv"]:
        ak = randn((B, case["S_kv"], H_kv, D), gen, dtype)
        av = randn((B, case["S_kv"], H_kv, Dv), gen, dtype)
    return q, k, v, ak, av


def describe(case):
    return (
        f"seed={case['seed']} shape={case['shape']} B={case['B']} H={case['H']} "
        f"H_kv={case['H_kv']} D={case['D']} Dv={case['Dv']} S_kv={case['S_kv']} "
        f"noncontig={case['noncontig']} {case['kw']}"
    )


def run_case(case, dtype, backward=True, backend="reference", tol=None):
    gen = torch.Generator().manual_seed(case["seed"])
    q, k, v, ak, av = make_tensors(case, dtype, gen)
    check_na_against_oracle(
        NA_FN[case["rank"]], q, k, v, case["kw"], gen,
        additional_keys=ak, additional_values=av, backward=backward, backend=backend,
        tol=tol, what=describe(case),
    )


def _ids(seeds, rank):
    return [f"{rank}d-seed{s}" for s in seeds]


# ------------------------------------------------------------------------------------------------
# float64 (forward + backward), tight tolerance
# ------------------------------------------------------------------------------------------------
F64_CASES = (
    [(1, s) for s in range(1000, 1016)]
    + [(2, s) for s in range(2000, 2016)]
    + [(3, s) for s in range(3000, 3012)]
)


@pytest.mark.parametrize("rank,seed", F64_CASES, ids=[f"{r}d-seed{s}" for r, s in F64_CASES])
def test_sweep_float64(rank, seed):
    run_case(make_case(seed, rank), torch.float64)


# ------------------------------------------------------------------------------------------------
# float32 (forward + backward): the bulk of the sweep, one pytest case per problem
# ------------------------------------------------------------------------------------------------
F32_CASES = (
    [(1, s) for s in range(10_000, 10_045)]
    + [(2, s) for s in range(20_000, 20_045)]
    + [(3, s) for s in range(30_000, 30_030)]
)


@pytest.mark.parametrize("rank,seed", F32_CASES, ids=[f"{r}d-seed{s}" for r, s in F32_CASES])
def test_sweep_float32(rank, seed):
    run_case(make_case(seed, rank), torch.float32)


# ------------------------------------------------------------------------------------------------
# float16 / bfloat16 forward
# ------------------------------------------------------------------------------------------------
LOWP_CASES = [(dt, r, s) for dt in ("float16", "bfloat16") for r, s in
              [(1, 40_001), (1, 40_002), (1, 40_003), (2, 40_004), (2, 40_005), (2, 40_006),
               (3, 40_007), (3, 40_008), (1, 40_009), (2, 40_010)]]


@pytest.mark.parametrize("dtype,rank,seed", LOWP_CASES, ids=[f"{d}-{r}d-seed{s}" for d, r, s in LOWP_CASES])
def test_sweep_low_precision_forward(dtype, rank, seed):
    run_case(make_case(seed, rank), getattr(torch, dtype), backward=False)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_large_logits(dtype):
    # Scores far outside the half-precision comfort zone (|logit| ~ 100) must still be handled
    # exactly (softmax statistics kept in float32); values have magnitude ~1.
    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(42_000)
    q = randn((1, 9, 10, 2, 16), gen, dtype, scale=6.0)
    k = randn((1, 9, 10, 2, 16), gen, dtype, scale=6.0)
    v = randn((1, 9, 10, 2, 16), gen, dtype)
    check_na_against_oracle(natten.na2d, q, k, v, dict(kernel_size=(5, 4), stride=(2, 1)), gen,
                            backward=False, what="large logits")


def test_low_precision_backward_smoke():
    # Backward in half precision must run and be close to the float64 gradient (loose tolerance).
    for dtype, tol in ((torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        case = make_case(41_000, 2, allow_add_kv=False)
        run_case(case, dtype, backward=True, tol=dict(atol=tol, rtol=tol))


# ------------------------------------------------------------------------------------------------
# default backend on CPU
# ------------------------------------------------------------------------------------------------
DEFAULT_CASES = [(r, 50_000 + 10 * r + i) for r in (1, 2, 3) for i in range(5)]


@pytest.mark.parametrize("rank,seed", DEFAULT_CASES, ids=[f"{r}d-seed{s}" for r, s in DEFAULT_CASES])
def test_default_backend_matches_oracle(rank, seed):
    case = make_case(seed, rank)
    run_case(case, torch.float32, backend=None)
    # and equals the explicit reference backend
    gen = torch.Generator().manual_seed(seed)
    q, k, v, ak, av = make_tensors(case, torch.float32, gen)
    extra = {} if ak is None else dict(additional_keys=ak, additional_values=av)
    o_def = NA_FN[rank](q, k, v, **case["kw"], **extra)
    o_ref = NA_FN[rank](q, k, v, backend="reference", **case["kw"], **extra)
    assert_close(o_def, o_ref, atol=1e-5, rtol=1e-5, what="default vs reference")


def test_return_lse_false_returns_tensor():
    gen = torch.Generator().manual_seed(7)
    q = randn((1, 9, 2, 8), gen)
    out = natten.na1d(q, q, q, kernel_size=3, backend="reference")
    assert isinstance(out, torch.Tensor) and out.shape == (1, 9, 2, 8)
    out2 = natten.na1d(q, q, q, kernel_size=3, backend="reference", return_lse=False)
    assert torch.equal(out, out2)


# ------------------------------------------------------------------------------------------------
# Exact mask extraction: q = k = 0 makes every attended key equally likely; v = one-hot(key index)
# makes out[query] the row of attention probabilities.  Compared exactly against the oracle mask.
# ------------------------------------------------------------------------------------------------


def natten_probabilities(shape, kw, backend="reference"):
    rank = len(shape)
    N = math.prod(shape)
    q = torch.zeros(1, *shape, 1, 4, dtype=torch.float64)
    v = torch.eye(N, dtype=torch.float64).reshape(1, *shape, 1, N)
    out = NA_FN[rank](q, q.clone(), v, backend=backend, **kw)
    return out.reshape(N, N)


def check_mask(shape, kw):
    P = natten_probabilities(shape, kw)
    mask = na_mask(shape, kw["kernel_size"], kw["stride"], kw["dilation"], kw["is_causal"])
    got = P > 1e-12
    if not torch.equal(got, mask):
        i = int((got != mask).any(1).nonzero()[0])
        raise AssertionError(
            f"shape={shape} {kw}: query {i} attends {got[i].nonzero().flatten().tolist()}, "
            f"expected {mask[i].nonzero().flatten().tolist()}"
        )
    expected = mask.double() / mask.sum(1, keepdim=True)
    assert torch.allclose(P, expected, atol=1e-12), f"shape={shape} {kw}: non-uniform weights"


@pytest.mark.parametrize("n", list(range(2, 14)))
def test_mask_exhaustive_1d(n):
    count = 0
    for K in range(2, n + 1):
        for s in range(1, K + 1):
            for d in range(1, n // K + 1):
                for c in (False, True):
                    check_mask((n,), dict(kernel_size=K, stride=s, dilation=d, is_causal=c))
                    count += 1
    assert count > 0


MASK_ND_CASES = [(2, s) for s in range(60_000, 60_025)] + [(3, s) for s in range(61_000, 61_012)]


@pytest.mark.parametrize("rank,seed", MASK_ND_CASES, ids=[f"{r}d-seed{s}" for r, s in MASK_ND_CASES])
def test_mask_random_nd(rank, seed):
    case = make_case(seed, rank)
    kw = dict(case["kw"])
    kw.pop("scale", None)
    check_mask(case["shape"], kw)


def test_mask_per_axis_causal_tuple_2d():
    # causal on one axis only, with stride and dilation on the other
    check_mask((6, 9), dict(kernel_size=(3, 4), stride=(1, 2), dilation=(2, 2), is_causal=(True, False)))
    check_mask((6, 9), dict(kernel_size=(3, 4), stride=(3, 1), dilation=(1, 1), is_causal=(False, True)))


# ------------------------------------------------------------------------------------------------
# Self-attention fast path: kernel == shape and non-causal on all axes == full attention.
# ------------------------------------------------------------------------------------------------
FULL_CASES = [
    ((17,), 1, False),
    ((17,), 5, True),
    ((5, 7), 1, False),
    ((5, 7), (2, 7), True),
    ((3, 4, 5), 1, False),
    ((3, 4, 5), (3, 1, 2), True),
]


@pytest.mark.parametrize("idx", range(len(FULL_CASES)))
@pytest.mark.parametrize("with_add_kv", [False, True])
def test_full_attention_fast_path(idx, with_add_kv):
    shape, stride, gqa = FULL_CASES[idx]
    rank = len(shape)
    gen = torch.Generator().manual_seed(70_000 + 2 * idx + int(with_add_kv))
    H, H_kv = (4, 2) if gqa else (2, 2)
    D, Dv = 8, (12 if gqa else 8)
    B = 2
    q = randn((B, *shape, H, D), gen)
    k = randn((B, *shape, H_kv, D), gen)
    v = randn((B, *shape, H_kv, Dv), gen)
    ak = av = None
    if with_add_kv:
        ak = randn((B, 3, H_kv, D), gen)
        av = randn((B, 3, H_kv, Dv), gen)
    ql, kl, vl = (t.clone().requires_grad_() for t in (q, k, v))
    akl = None if ak is None else ak.clone().requires_grad_()
    avl = None if av is None else av.clone().requires_grad_()
    extra = {} if ak is None else dict(additional_keys=akl, additional_values=avl)
    out, lse = NA_FN[rank](ql, kl, vl, kernel_size=shape, stride=stride, backend="reference",
                           return_lse=True, **extra)
    N = math.prod(shape)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ak64 = None if ak is None else ak.double().requires_grad_()
    av64 = None if av is None else av.double().requires_grad_()
    ref, ref_lse = dense_attention(
        q64.reshape(B, N, H, D), k64.reshape(B, N, H_kv, D), v64.reshape(B, N, H_kv, Dv),
        mask=None, additional_keys=ak64, additional_values=av64,
    )
    assert_close(out, ref.reshape(B, *shape, H, Dv), **TOL[torch.float32], what="out")
    assert_close(lse, ref_lse.reshape(B, *shape, H), **TOL[torch.float32], what="lse")
    dout = randn(out.shape, gen)
    out.backward(dout)
    ref.reshape(B, *shape, H, Dv).backward(dout.double())
    pairs = [("dq", ql, q64), ("dk", kl, k64), ("dv", vl, v64)]
    if ak is not None:
        pairs += [("d_add_k", akl, ak64), ("d_add_v", avl, av64)]
    for name, a, b in pairs:
        assert_close(a.grad, b.grad, **TOL[torch.float32], what=name)


@pytest.mark.parametrize(
    "shape,kw",
    [
        # kernel == shape but causal on some axis: NOT full attention
        ((9,), dict(kernel_size=9, is_causal=True)),
        ((5, 6), dict(kernel_size=(5, 6), is_causal=(False, True))),
        # kernel == shape on one axis only
        ((5, 6), dict(kernel_size=(5, 3))),
        ((4, 5, 3), dict(kernel_size=(4, 2, 3), stride=(2, 2, 1))),
    ],
)
def test_kernel_equals_shape_but_not_full(shape, kw):
    rank = len(shape)
    case = dict(rank=rank, shape=shape, B=1, H=2, H_kv=1, D=8, Dv=8, S_kv=0, noncontig=False,
                kw=kw, seed=77)
    run_case(case, torch.float64)


# ------------------------------------------------------------------------------------------------
# Scale, explicit per-axis arguments vs broadcast scalars
# ------------------------------------------------------------------------------------------------


def test_scalar_and_tuple_arguments_agree():
    gen = torch.Generator().manual_seed(11)
    q = randn((1, 7, 8, 2, 4), gen)
    k = randn((1, 7, 8, 2, 4), gen)
    v = randn((1, 7, 8, 2, 4), gen)
    a = natten.na2d(q, k, v, kernel_size=3, stride=2, dilation=2, is_causal=True, backend="reference")
    b = natten.na2d(q, k, v, kernel_size=(3, 3), stride=(2, 2), dilation=(2, 2),
                    is_causal=(True, True), backend="reference")
    assert torch.equal(a, b)


def test_scale_is_used():
    gen = torch.Generator().manual_seed(12)
    q = randn((1, 11, 1, 8), gen)
    k = randn((1, 11, 1, 8), gen)
    v = randn((1, 11, 1, 8), gen)
    for scale in (None, 0.05, 2.0, 0.0, -0.7):
        kw = dict(kernel_size=5) if scale is None else dict(kernel_size=5, scale=scale)
        check_na_against_oracle(natten.na1d, q, k, v, kw, gen, what=f"scale={scale}")
    a = natten.na1d(q, k, v, kernel_size=5, scale=0.05, backend="reference")
    b = natten.na1d(q, k, v, kernel_size=5, scale=2.0, backend="reference")
    assert not torch.allclose(a, b)


def test_batch_and_heads_independent():
    # Each (batch, head) slice computed alone equals the corresponding slice of the batched call.
    gen = torch.Generator().manual_seed(13)
    q = randn((3, 6, 5, 4, 8), gen)
    k = randn((3, 6, 5, 2, 8), gen)
    v = randn((3, 6, 5, 2, 8), gen)
    kw = dict(kernel_size=(3, 2), stride=(1, 2), is_causal=(False, True), backend="reference")
    full = natten.na2d(q, k, v, **kw)
    for b in range(3):
        for h in range(4):
            part = natten.na2d(q[b:b + 1, ..., h:h + 1, :], k[b:b + 1, ..., h // 2:h // 2 + 1, :],
                               v[b:b + 1, ..., h // 2:h // 2 + 1, :], **kw)
            assert_close(part[0, ..., 0, :], full[b, ..., h, :], atol=1e-6, rtol=1e-6, what=f"b{b}h{h}")


# ------------------------------------------------------------------------------------------------
# gradcheck in float64 on tiny problems
# ------------------------------------------------------------------------------------------------


def _g64(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


def test_gradcheck_na1d():
    q, k, v = _g64((1, 7, 2, 3), 1), _g64((1, 7, 1, 3), 2), _g64((1, 7, 1, 2), 3)
    f = lambda q, k, v: natten.na1d(q, k, v, kernel_size=3, stride=2, backend="reference")
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)
    f = lambda q, k, v: natten.na1d(q, k, v, kernel_size=2, dilation=2, is_causal=True, backend="reference")
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


def test_gradcheck_na1d_additional_kv():
    q, k, v = _g64((1, 6, 2, 3), 4), _g64((1, 6, 2, 3), 5), _g64((1, 6, 2, 2), 6)
    ak, av = _g64((1, 2, 2, 3), 7), _g64((1, 2, 2, 2), 8)
    f = lambda q, k, v, ak, av: natten.na1d(q, k, v, kernel_size=3, is_causal=True,
                                           additional_keys=ak, additional_values=av,
                                           backend="reference")
    assert torch.autograd.gradcheck(f, (q, k, v, ak, av), eps=1e-6, atol=1e-6)


def test_gradcheck_na2d_causal_stride_dilation():
    q, k, v = _g64((1, 4, 5, 2, 3), 9), _g64((1, 4, 5, 2, 3), 10), _g64((1, 4, 5, 2, 3), 11)
    f = lambda q, k, v: natten.na2d(q, k, v, kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2),
                                    is_causal=(True, False), backend="reference")
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


def test_gradcheck_na3d():
    q, k, v = _g64((1, 3, 4, 3, 1, 2), 12), _g64((1, 3, 4, 3, 1, 2), 13), _g64((1, 3, 4, 3, 1, 2), 14)
    f = lambda q, k, v: natten.na3d(q, k, v, kernel_size=(2, 3, 2), stride=(1, 3, 2),
                                    is_causal=(False, False, True), backend="reference")
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# LSE is differentiable (needed e.g. to merge natten outputs with a plain autograd merge)
# ------------------------------------------------------------------------------------------------


def test_lse_gradient():
    gen = torch.Generator().manual_seed(15)
    q, k, v = randn((1, 9, 2, 4), gen), randn((1, 9, 2, 4), gen), randn((1, 9, 2, 4), gen)
    ql, kl, vl = (t.clone().double().requires_grad_() for t in (q, k, v))
    _, lse = natten.na1d(ql, kl, vl, kernel_size=4, stride=2, backend="reference", return_lse=True)
    w = randn(lse.shape, gen, torch.float64)
    (lse.double() * w).sum().backward()
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    from oracle import na_oracle

    _, ref_lse = na_oracle(q64, k64, v64, kernel_size=4, stride=2)
    (ref_lse * w).sum().backward()
    for name, a, b in (("dq", ql, q64), ("dk", kl, k64)):
        assert a.grad is not None, f"{name}: no gradient flows from lse"
        assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, what=f"{name} from lse")


# ------------------------------------------------------------------------------------------------
# Full NATTEN 0.21 signature, attention_kwargs, partial requires_grad
# ------------------------------------------------------------------------------------------------


def test_full_signature_defaults_accepted():
    gen = torch.Generator().manual_seed(16)
    q, k, v = randn((1, 6, 7, 2, 8), gen), randn((1, 6, 7, 2, 8), gen), randn((1, 6, 7, 2, 8), gen)
    ak, av = randn((1, 3, 2, 8), gen), randn((1, 3, 2, 8), gen)
    out, lse = natten.na2d(
        q, k, v, kernel_size=(3, 4), stride=(1, 2), dilation=(2, 1), is_causal=(False, True),
        scale=None, additional_keys=ak, additional_values=av,
        attention_kwargs=dict(backend="reference"), backend="reference",
        q_tile_shape=None, kv_tile_shape=None, backward_q_tile_shape=None,
        backward_kv_tile_shape=None, backward_kv_splits=None, backward_use_pt_reduction=False,
        run_persistent_kernel=True, kernel_schedule=None, torch_compile=False,
        try_fuse_additional_kv=False, return_lse=True,
    )
    from oracle import na_oracle

    ref, ref_lse = na_oracle(q.double(), k.double(), v.double(), kernel_size=(3, 4), stride=(1, 2),
                             dilation=(2, 1), is_causal=(False, True),
                             additional_keys=ak.double(), additional_values=av.double())
    assert_close(out, ref, **TOL[torch.float32], what="out")
    assert_close(lse, ref_lse, **TOL[torch.float32], what="lse")
    # try_fuse_additional_kv is only a performance hint: same result
    out2 = natten.na2d(q, k, v, kernel_size=(3, 4), stride=(1, 2), dilation=(2, 1),
                       is_causal=(False, True), additional_keys=ak, additional_values=av,
                       backend="reference", try_fuse_additional_kv=True)
    assert_close(out2, ref, **TOL[torch.float32], what="try_fuse_additional_kv")


def test_attention_full_signature_defaults_accepted():
    gen = torch.Generator().manual_seed(17)
    q, k, v = randn((2, 10, 2, 8), gen), randn((2, 12, 1, 8), gen), randn((2, 12, 1, 4), gen)
    out, lse = natten.attention(
        q, k, v, is_causal=True, scale=0.3, seqlens_Q=None, seqlens_KV=None,
        cumulative_seqlen_Q=None, cumulative_seqlen_KV=None, max_seqlen_Q=None, max_seqlen_KV=None,
        backend="reference", backward_use_pt_reduction=False, run_persistent_kernel=True,
        kernel_schedule=None, torch_compile=False, return_lse=True,
    )
    from oracle import attention_oracle

    ref, ref_lse = attention_oracle(q.double(), k.double(), v.double(), is_causal=True, scale=0.3)
    assert_close(out, ref, **TOL[torch.float32], what="out")
    assert_close(lse, ref_lse, **TOL[torch.float32], what="lse")


@pytest.mark.parametrize("which", ["q", "k", "v", "qv"])
def test_partial_requires_grad(which):
    gen = torch.Generator().manual_seed(18)
    q, k, v = randn((1, 10, 2, 4), gen), randn((1, 10, 2, 4), gen), randn((1, 10, 2, 4), gen)
    ts = {"q": q, "k": k, "v": v}
    for name in which:
        ts[name].requires_grad_()
    out = natten.na1d(ts["q"], ts["k"], ts["v"], kernel_size=3, is_causal=True, backend="reference")
    dout = randn(out.shape, gen)
    out.backward(dout)
    from oracle import na_oracle

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, _ = na_oracle(q64, k64, v64, kernel_size=3, is_causal=True)
    ref.backward(dout.double())
    refs = {"q": q64, "k": k64, "v": v64}
    for name in "qkv":
        if name in which:
            assert_close(ts[name].grad, refs[name].grad, **TOL[torch.float32], what=f"d{name}")
        else:
            assert ts[name].grad is None


# ------------------------------------------------------------------------------------------------
# Every backend that get_compatible_backends lists for CPU tensors must be correct too
# ------------------------------------------------------------------------------------------------
COMPAT_CASES = [(1, 90_001), (1, 90_002), (2, 90_003), (2, 90_004), (2, 90_005), (3, 90_006), (3, 90_007)]


@pytest.mark.parametrize("rank,seed", COMPAT_CASES, ids=[f"{r}d-seed{s}" for r, s in COMPAT_CASES])
def test_every_compatible_backend_matches_oracle(rank, seed):
    case = make_case(seed, rank)
    gen = torch.Generator().manual_seed(seed)
    q, k, v, _, _ = make_tensors(case, torch.float32, gen)
    backends = natten.backends.get_compatible_backends(q, k, v)
    assert "reference" in backends
    for b in backends:
        run_case(case, torch.float32, backend=b)
