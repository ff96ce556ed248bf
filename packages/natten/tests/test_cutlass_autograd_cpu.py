"""cutlass-fna's training plumbing on the CPU: the autograd.Function, the natten::fna_forward /
natten::fna_backward operators and their fake implementations under
torch.compile(fullgraph=True), with CPU stand-ins of the two kernels registered for this test only
(float64 oracle math). The CUDA kernels themselves are tested in tests/gpu/."""

from __future__ import annotations

import torch

from natten import ops  # noqa: F401  (defines the operators)
from natten.backends import cutlass
from oracle import na_oracle


def _fwd_cpu(query, key, value, kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile):
    out, lse = na_oracle(query.double(), key.double(), value.double(), kernel_size, stride, dilation,
                         is_causal, scale=scale)
    return out.to(query.dtype), lse.float()


def _bwd_cpu(query, key, value, out, lse, d_out, d_lse, kernel_size, stride, dilation, is_causal, scale,
             q_tile, kv_tile, deterministic):
    with torch.enable_grad():  # backward runs with grad mode off
        xs = [t.detach().double().requires_grad_(True) for t in (query, key, value)]
        o, l = na_oracle(*xs, kernel_size, stride, dilation, is_causal, scale=scale)
        outs, grads = [o], [d_out.double()]
        if d_lse is not None:
            outs.append(l)
            grads.append(d_lse.double())
        dq, dk, dv = torch.autograd.grad(outs, xs, grads)
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)


def test_autograd_function_eager_and_compiled(monkeypatch):
    # Eager calls skip the dispatcher (ops.fna_forward_eager is the CUDA implementation itself);
    # route them through it so the CPU stand-in runs.
    monkeypatch.setattr(ops, "fna_forward_eager", ops.fna_forward)
    lib = torch.library.Library("natten", "IMPL")
    lib.impl("fna_forward", _fwd_cpu, "CPU")
    lib.impl("fna_backward", _bwd_cpu, "CPU")
    try:
        g = torch.Generator().manual_seed(0)
        q0 = torch.randn(2, 9, 10, 4, 8, generator=g)
        k0 = torch.randn(2, 9, 10, 2, 8, generator=g)
        v0 = torch.randn(2, 9, 10, 2, 6, generator=g)
        w = torch.randn(2, 9, 10, 4, 6, generator=g)
        wl = torch.randn(2, 9, 10, 4, generator=g)
        ks, st, dl, ca = [3, 4], [1, 2], [2, 1], [False, True]

        def loss_fn(q, k, v):
            out, lse = cutlass._FnaFunction.apply(q, k, v, ks, st, dl, ca, 0.3, [], [], [], [], True)
            return (out * w).sum() + (lse * wl).sum()

        def grads(fn):
            xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
            fn(*xs).backward()
            return [x.grad for x in xs]

        ref = grads(lambda q, k, v: (lambda o: (o[0] * w).sum() + (o[1] * wl).sum())(
            na_oracle(q, k, v, ks, st, dl, ca, scale=0.3)))
        eager = grads(loss_fn)
        compiled = grads(torch.compile(loss_fn, fullgraph=True, backend="aot_eager"))
        for a, b, c in zip(eager, compiled, ref):
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5)
    finally:
        lib._destroy()
