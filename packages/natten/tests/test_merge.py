"""natten.merge_attentions: equals one softmax over the union of the key sets."""

import pytest
import torch

import natten
from helpers import assert_close, randn
from oracle import dense_attention, na_oracle

BAD = (ValueError, TypeError, NotImplementedError)


def _split_sizes(M, parts, r):
    # deterministic split of M keys into `parts` non-empty chunks
    cuts = sorted(r.sample(range(1, M), parts - 1))
    bounds = [0] + cuts + [M]
    return [bounds[i + 1] - bounds[i] for i in range(parts)]


def _problem(seed, parts, dtype=torch.float32, B=2, N=13, M=23, H=4, H_kv=2, D=8, Dv=8):
    import random

    r = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    q = randn((B, N, H, D), gen, dtype)
    k = randn((B, M, H_kv, D), gen, dtype)
    v = randn((B, M, H_kv, Dv), gen, dtype)
    sizes = _split_sizes(M, parts, r)
    return q, k, v, sizes, gen


def reference_merge(outputs, lses):
    """Independent float64 merge formula: lse = logsumexp_i lse_i, out = sum_i exp(lse_i - lse) o_i."""
    L = torch.stack([l.double() for l in lses], 0)
    lse = torch.logsumexp(L, 0)
    w = torch.exp(L - lse.unsqueeze(0)).unsqueeze(-1)
    out = (w * torch.stack([o.double() for o in outputs], 0)).sum(0)
    return out, lse


@pytest.mark.parametrize("parts", [2, 3, 4])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_merge_natten_parts_equals_full_softmax(parts, dtype):
    """Parts computed by natten.attention, merged (default use_autograd_fix) == dense oracle,
    including gradients w.r.t. q and every part's k and v."""
    dtype = getattr(torch, dtype)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-6, rtol=1e-6)
    q, k, v, sizes, gen = _problem(10 + parts, parts, dtype)
    ql = q.clone().requires_grad_()
    ks = [t.clone().requires_grad_() for t in torch.split(k, sizes, 1)]
    vs = [t.clone().requires_grad_() for t in torch.split(v, sizes, 1)]
    outs, lses = [], []
    for kp, vp in zip(ks, vs):
        o, l = natten.attention(ql, kp, vp, backend="reference", return_lse=True)
        outs.append(o)
        lses.append(l)
    out, lse = natten.merge_attentions(outs, lses, torch_compile=False)
    assert out.shape == q.shape[:3] + (v.shape[-1],)
    assert lse.shape == q.shape[:3]

    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = dense_attention(q64, k64, v64)
    assert_close(out, ref, what="merged out", **tol)
    assert_close(lse, ref_lse, what="merged lse", atol=max(tol["atol"], 1e-5), rtol=max(tol["rtol"], 1e-5))

    dout = randn(out.shape, gen, dtype)
    out.backward(dout)
    ref.backward(dout.double())
    assert_close(ql.grad, q64.grad, what="dq", **tol)
    assert_close(torch.cat([t.grad for t in ks], 1), k64.grad, what="dk", **tol)
    assert_close(torch.cat([t.grad for t in vs], 1), v64.grad, what="dv", **tol)


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_merge_leaf_inputs_gradients(parts):
    """With plain (non-natten) inputs and use_autograd_fix=False, merge is an ordinary
    differentiable function: grads w.r.t. every output and every lse match the formula."""
    gen = torch.Generator().manual_seed(40 + parts)
    B, N, H, D = 2, 7, 3, 5
    outs = [randn((B, N, H, D), gen).requires_grad_() for _ in range(parts)]
    lses = [(randn((B, N, H), gen) * 3).requires_grad_() for _ in range(parts)]
    out, lse = natten.merge_attentions(outs, lses, torch_compile=False, use_autograd_fix=False)
    outs64 = [o.detach().double().requires_grad_() for o in outs]
    lses64 = [l.detach().double().requires_grad_() for l in lses]
    ref, ref_lse = reference_merge(outs64, lses64)
    assert_close(out, ref, atol=1e-5, rtol=1e-5, what="out")
    assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5, what="lse")
    dout = randn(out.shape, gen)
    dlse = randn(lse.shape, gen)
    torch.autograd.backward([out, lse], [dout, dlse])
    torch.autograd.backward([ref, ref_lse], [dout.double(), dlse.double()])
    for i in range(parts):
        assert outs[i].grad is not None and lses[i].grad is not None, f"part {i}: missing grad"
        assert_close(outs[i].grad, outs64[i].grad, atol=1e-5, rtol=1e-5, what=f"d out[{i}]")
        assert_close(lses[i].grad, lses64[i].grad, atol=1e-5, rtol=1e-5, what=f"d lse[{i}]")


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_merge_oracle_parts_end_to_end_gradients(parts):
    """Parts from the float64 oracle (autograd through its lse), merged with use_autograd_fix=False:
    gradients w.r.t. q, k, v equal those of one softmax over all keys."""
    q, k, v, sizes, gen = _problem(60 + parts, parts, torch.float64)
    q64, k64, v64 = (t.clone().requires_grad_() for t in (q, k, v))
    outs, lses = [], []
    for kp, vp in zip(torch.split(k64, sizes, 1), torch.split(v64, sizes, 1)):
        o, l = dense_attention(q64, kp, vp)
        outs.append(o)
        lses.append(l)
    out, lse = natten.merge_attentions(outs, lses, torch_compile=False, use_autograd_fix=False)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref, ref_lse = dense_attention(qr, kr, vr)
    assert_close(out, ref, atol=1e-6, rtol=1e-6, what="out")
    assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5, what="lse")
    dout = randn(out.shape, gen, torch.float64)
    (out * dout).sum().backward()
    (ref * dout).sum().backward()
    for name, a, b in (("dq", q64, qr), ("dk", k64, kr), ("dv", v64, vr)):
        assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-6, what=name)


def test_merge_na2d_with_extra_context_multidim():
    """Outputs with a 2-D token layout [B, X, Y, H, D] merge like flattened ones, and
    na2d + attention over extra keys, merged, equals na2d with additional_keys/values."""
    gen = torch.Generator().manual_seed(80)
    q, k, v = randn((1, 6, 7, 2, 8), gen), randn((1, 6, 7, 2, 8), gen), randn((1, 6, 7, 2, 8), gen)
    ak, av = randn((1, 5, 2, 8), gen), randn((1, 5, 2, 8), gen)
    o1, l1 = natten.na2d(q, k, v, kernel_size=3, backend="reference", return_lse=True)
    o2, l2 = natten.attention(q.reshape(1, 42, 2, 8), ak, av, backend="reference", return_lse=True)
    o2, l2 = o2.reshape(o1.shape), l2.reshape(l1.shape)
    out, lse = natten.merge_attentions([o1, o2], [l1, l2], torch_compile=False)
    assert out.shape == o1.shape and lse.shape == l1.shape
    ref, ref_lse = na_oracle(q.double(), k.double(), v.double(), kernel_size=3,
                             additional_keys=ak.double(), additional_values=av.double())
    assert_close(out, ref, atol=1e-4, rtol=1e-4, what="out")
    assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4, what="lse")
    direct, dlse = natten.na2d(q, k, v, kernel_size=3, backend="reference", additional_keys=ak,
                               additional_values=av, return_lse=True)
    assert_close(direct, out, atol=1e-5, rtol=1e-5, what="na2d additional kv vs merge")
    assert_close(dlse, lse, atol=1e-5, rtol=1e-5, what="na2d additional kv lse vs merge")


def test_merge_torch_compile_default():
    """Default torch_compile=True path gives the same numbers."""
    q, k, v, sizes, gen = _problem(90, 2)
    outs, lses = [], []
    for kp, vp in zip(torch.split(k, sizes, 1), torch.split(v, sizes, 1)):
        o, l = natten.attention(q, kp, vp, backend="reference", return_lse=True)
        outs.append(o)
        lses.append(l)
    a, la = natten.merge_attentions(outs, lses)
    b, lb = natten.merge_attentions(outs, lses, torch_compile=False)
    assert_close(a, b, atol=1e-5, rtol=1e-5, what="compiled vs eager out")
    assert_close(la, lb, atol=1e-5, rtol=1e-5, what="compiled vs eager lse")
    ref, ref_lse = dense_attention(q.double(), k.double(), v.double())
    assert_close(a, ref, atol=1e-4, rtol=1e-4, what="compiled merge vs oracle")


def test_gradcheck_merge():
    gen = torch.Generator().manual_seed(95)
    for parts in (2, 3):
        outs = [torch.randn(1, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
                for _ in range(parts)]
        lses = [torch.randn(1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
                for _ in range(parts)]

        def f(*args):
            return natten.merge_attentions(list(args[:parts]), list(args[parts:]),
                                           torch_compile=False, use_autograd_fix=False)

        assert torch.autograd.gradcheck(f, (*outs, *lses), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# mismatched inputs
# ------------------------------------------------------------------------------------------------


def _valid_parts():
    gen = torch.Generator().manual_seed(99)
    return ([randn((1, 5, 2, 4), gen), randn((1, 5, 2, 4), gen)],
            [randn((1, 5, 2), gen), randn((1, 5, 2), gen)])


MERGE_BAD = {
    "one_part": (lambda o, l: ([o[0]], [l[0]]), r"(?i)(two|2|least|number|count)"),
    "zero_parts": (lambda o, l: ([], []), r"(?i)(two|2|least|number|count|empty)"),
    "count_mismatch": (lambda o, l: (o, l[:1]), r"(?i)(number|count|match|lse|len)"),
    "output_shape_mismatch": (lambda o, l: ([o[0], o[1][:, :4]], l), r"(?i)shape"),
    "head_dim_mismatch": (lambda o, l: ([o[0], o[1][..., :3]], l), r"(?i)(shape|dim)"),
    "lse_shape_mismatch": (lambda o, l: (o, [l[0], l[1][:, :4]]), r"(?i)(lse|shape|logsumexp)"),
    "lse_rank": (lambda o, l: (o, [l[0], l[1].unsqueeze(-1)]), r"(?i)(lse|shape|rank|logsumexp)"),
}


@pytest.mark.parametrize("name", list(MERGE_BAD))
def test_merge_bad_inputs(name):
    make, pattern = MERGE_BAD[name]
    outs, lses = _valid_parts()
    bo, bl = make(outs, lses)
    with pytest.raises(BAD, match=pattern):
        natten.merge_attentions(bo, bl, torch_compile=False)
    # a valid call still works afterwards
    out, lse = natten.merge_attentions(outs, lses, torch_compile=False)
    ref, ref_lse = reference_merge(outs, lses)
    assert_close(out, ref, atol=1e-5, rtol=1e-5, what="valid merge after error")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_merge_low_precision_outputs(dtype):
    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(120)
    outs = [randn((1, 6, 2, 8), gen, dtype) for _ in range(3)]
    lses = [randn((1, 6, 2), gen) * 2 for _ in range(3)]
    out, lse = natten.merge_attentions(outs, lses, torch_compile=False)
    assert out.dtype == dtype
    assert lse.dtype == torch.float32
    ref, ref_lse = reference_merge(outs, lses)
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    assert_close(out, ref, atol=tol, rtol=tol, what="out")
    assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5, what="lse")


def test_merge_with_empty_part():
    """A part that attended no key (lse = -inf, output 0) does not change the merge."""
    gen = torch.Generator().manual_seed(130)
    o1 = randn((1, 5, 2, 4), gen).requires_grad_()
    l1 = randn((1, 5, 2), gen).requires_grad_()
    o2 = torch.zeros(1, 5, 2, 4, requires_grad=True)
    l2 = torch.full((1, 5, 2), float("-inf"), requires_grad=True)
    out, lse = natten.merge_attentions([o1, o2], [l1, l2], torch_compile=False, use_autograd_fix=False)
    assert_close(out, o1, atol=1e-6, rtol=1e-6, what="out")
    assert_close(lse, l1, atol=1e-6, rtol=1e-6, what="lse")
    (out.sum() + lse.sum()).backward()
    assert torch.isfinite(o1.grad).all() and torch.isfinite(l1.grad).all()
    assert_close(o1.grad, torch.ones_like(o1), atol=1e-6, rtol=1e-6, what="d o1")
    assert_close(l1.grad, torch.ones_like(l1), atol=1e-6, rtol=1e-6, what="d l1")
