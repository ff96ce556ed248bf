"""The benchmark suite's forward+backward timing modes (benchmarks/run.py, CPU): what each mode
computes, so that the two modes time the same gradients and differ only in the harness's own work."""

import importlib.util
import os
import sys

import pytest
import torch

_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "benchmarks", "run.py")


@pytest.fixture(scope="module")
def run():
    if not os.path.exists(_RUN):
        pytest.skip("benchmarks/run.py is not in this checkout (installed package)")
    spec = importlib.util.spec_from_file_location("natten_bench_run", _RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


def _inputs():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(3))


def _fwd(q, k, v):
    return lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v


def test_grad_mode_returns_the_gradients_for_a_fixed_d_out_and_leaves_grad_alone(run):
    q, k, v = _inputs()
    step = run.backward_step(_fwd(q, k, v), (q, k, v), "grad")
    first, second = step(), step()
    assert all(t.grad is None for t in (q, k, v))  # no accumulation into leaves
    for a, b in zip(first, second):  # the same d_out on every call
        assert torch.equal(a, b)
    # the d_out it holds is random (not all ones) and has the output's shape: recover it from the
    # gradient with respect to v, which is P^T d_out for P = softmax(q k^T)
    p = torch.softmax(q @ k.transpose(-1, -2), -1).detach()
    d_out = torch.linalg.solve(p.transpose(-1, -2), first[2])
    assert d_out.shape == (2, 5, 3, 4)
    assert not torch.allclose(d_out, torch.ones_like(d_out))
    ref = torch.autograd.grad(_fwd(q, k, v)(), (q, k, v), d_out)
    for a, b in zip(first, ref):
        torch.testing.assert_close(a, b)


def test_sum_mode_accumulates_ones_gradients_into_the_leaves(run):
    q, k, v = _inputs()
    step = run.backward_step(_fwd(q, k, v), (q, k, v), "sum")
    step()
    once = [t.grad.clone() for t in (q, k, v)]
    ref = torch.autograd.grad(_fwd(q, k, v)().sum(), (q, k, v))
    for a, b in zip(once, ref):
        torch.testing.assert_close(a, b)
    step()
    for t, a in zip((q, k, v), once):
        torch.testing.assert_close(t.grad, 2 * a)


def test_unknown_mode_is_an_error_naming_the_modes(run):
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=r"bwd mode must be one of \('grad', 'sum'\), got 'mean'"):
        run.backward_step(_fwd(q, k, v), (q, k, v), "mean")
