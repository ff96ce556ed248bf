"""natten.NeighborhoodAttention{1,2,3}D modules."""

import pytest
import torch

import natten
from helpers import assert_close
from oracle import na_oracle

MODULES = {1: natten.NeighborhoodAttention1D, 2: natten.NeighborhoodAttention2D,
           3: natten.NeighborhoodAttention3D}
NA_FN = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}

MODULE_CASES = [
    # rank, shape, embed_dim, heads, kwargs
    (1, (19,), 32, 4, dict(kernel_size=5)),
    (1, (16,), 24, 3, dict(kernel_size=4, stride=2, dilation=2, is_causal=True)),
    (2, (7, 9), 32, 2, dict(kernel_size=3)),
    (2, (8, 8), 16, 4, dict(kernel_size=(4, 3), stride=(2, 3), dilation=(2, 1), is_causal=(True, False))),
    (3, (4, 5, 6), 16, 2, dict(kernel_size=3)),
    (3, (4, 5, 6), 24, 4, dict(kernel_size=(2, 3, 3), stride=(1, 2, 3), is_causal=(False, True, False),
                                qkv_bias=False, qk_scale=0.2)),
]


def manual_forward(m, x, rank, na_kwargs, scale):
    B, *shape, C = x.shape
    qkv = m.qkv(x).reshape(B, *shape, 3, m.num_heads, m.head_dim)
    q, k, v = qkv.unbind(-3)
    o = NA_FN[rank](q, k, v, scale=scale, backend="reference", **na_kwargs)
    return m.proj(o.reshape(B, *shape, C))


@pytest.mark.parametrize("idx", range(len(MODULE_CASES)))
def test_module_matches_manual(idx):
    rank, shape, C, heads, kw = MODULE_CASES[idx]
    torch.manual_seed(100 + idx)
    m = MODULES[rank](C, heads, **kw).double()
    assert m.num_heads == heads
    assert m.head_dim == C // heads
    qk_scale = kw.get("qk_scale")
    expected_scale = qk_scale if qk_scale is not None else (C // heads) ** -0.5
    assert abs(m.scale - expected_scale) < 1e-12
    assert isinstance(m.qkv, torch.nn.Linear) and m.qkv.in_features == C and m.qkv.out_features == 3 * C
    assert isinstance(m.proj, torch.nn.Linear) and m.proj.in_features == C and m.proj.out_features == C
    assert (m.qkv.bias is None) == (kw.get("qkv_bias", True) is False)

    x = torch.randn(2, *shape, C, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    na_kw = {k: v for k, v in kw.items() if k in ("kernel_size", "stride", "dilation", "is_causal")}
    x2 = x.detach().clone().requires_grad_()
    y2 = manual_forward(m, x2, rank, na_kw, m.scale)
    assert_close(y, y2, atol=1e-10, rtol=1e-10, what="module vs manual natten")

    # and vs the independent oracle
    B = x.shape[0]
    qkv = m.qkv(x.detach()).reshape(B, *shape, 3, heads, C // heads)
    q, k, v = qkv.unbind(-3)
    o, _ = na_oracle(q, k, v, scale=expected_scale, **na_kw)
    y3 = m.proj(o.reshape(B, *shape, C))
    assert_close(y, y3, atol=1e-9, rtol=1e-9, what="module vs oracle")

    # backward works and matches
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    assert x.grad is not None and x.grad.shape == x.shape
    assert_close(x.grad, x2.grad, atol=1e-9, rtol=1e-9, what="dx")
    for p in m.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_module_float32_backward_and_shapes():
    for rank, shape in ((1, (33,)), (2, (10, 11)), (3, (5, 6, 4))):
        m = MODULES[rank](32, 4, kernel_size=3)
        x = torch.randn(2, *shape, 32, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("embed_dim,heads", [(10, 3), (32, 5), (7, 2)])
def test_module_embed_dim_not_divisible(rank, embed_dim, heads):
    with pytest.raises((ValueError, TypeError, NotImplementedError), match=r"(?i)(embed_dim|heads|divisible)"):
        MODULES[rank](embed_dim, heads, kernel_size=3)
    # constructing a valid module afterwards still works
    m = MODULES[rank](12, 3, kernel_size=2)
    x = torch.randn(1, *([5] * rank), 12)
    assert m(x).shape == x.shape


def test_module_torch_compile_fullgraph_2d():
    torch._dynamo.reset()
    torch.manual_seed(5)
    m = natten.NeighborhoodAttention2D(16, 2, kernel_size=3, stride=(1, 2), is_causal=(False, True))
    x = torch.randn(1, 6, 7, 16)
    eager = m(x)
    cm = torch.compile(m, fullgraph=True)
    compiled = cm(x)
    assert compiled.shape == eager.shape
    assert_close(compiled, eager, atol=1e-5, rtol=1e-5, what="compiled vs eager")
    # backward through the compiled module
    xg = x.clone().requires_grad_()
    cm(xg).sum().backward()
    xe = x.clone().requires_grad_()
    m(xe).sum().backward()
    assert_close(xg.grad, xe.grad, atol=1e-4, rtol=1e-4, what="compiled vs eager dx")
