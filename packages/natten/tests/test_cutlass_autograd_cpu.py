"""cutlass-fna's training plumbing on the CPU: the autograd.Function, the natten::fna_forward /
natten::fna_backward operators and their fake implementations under
torch.compile(fullgraph=True), with CPU stand-ins of the two kernels registered for this test only
(float64 oracle math), on whole grids and on query/key slabs of a larger grid (the slab fields
travel from the autograd.Function through both operators). The CUDA kernels themselves are tested
in tests/gpu/."""

from __future__ import annotations

import torch

from natten import ops  # noqa: F401  (defines the operators)
from natten.backends import cutlass
import pytest

from natten.window import Region, WindowSpec
from oracle import na_oracle, na_region_oracle


def _oracle(q, k, v, kernel_size, stride, dilation, is_causal, scale, global_shape=(), q_origin=(), kv_origin=()):
    if global_shape:
        return na_region_oracle(q, k, v, global_shape, q_origin, kv_origin, kernel_size, stride, dilation, is_causal,
                                scale=scale)
    return na_oracle(q, k, v, kernel_size, stride, dilation, is_causal, scale=scale)


# Records the slab arguments each stand-in saw (the last call).
_SEEN = {}


def _fwd_cpu(query, key, value, kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile, global_shape=(),
             q_origin=(), kv_origin=(), backend=1, kernel_schedule=0):
    _SEEN["fwd"] = (list(global_shape), list(q_origin), list(kv_origin))
    _SEEN["fwd_backend"] = int(backend)
    out, lse = _oracle(query.double(), key.double(), value.double(), kernel_size, stride, dilation, is_causal, scale,
                       global_shape, q_origin, kv_origin)
    return out.to(query.dtype), lse.float()


def _bwd_cpu(query, key, value, out, lse, d_out, d_lse, kernel_size, stride, dilation, is_causal, scale,
             q_tile, kv_tile, deterministic, global_shape=(), q_origin=(), kv_origin=(), kv_splits=(), backend=0):
    _SEEN["bwd"] = (list(global_shape), list(q_origin), list(kv_origin))
    _SEEN["bwd_tiles"] = (list(q_tile), list(kv_tile))
    _SEEN["kv_splits"] = list(kv_splits)
    _SEEN["bwd_backend"] = int(backend)
    _SEEN["d_lse"] = d_lse
    _SEEN["d_out"] = d_out
    with torch.enable_grad():  # backward runs with grad mode off
        xs = [t.detach().double().requires_grad_(True) for t in (query, key, value)]
        o, l = _oracle(*xs, kernel_size, stride, dilation, is_causal, scale, global_shape, q_origin, kv_origin)
        outs, grads = [o], [d_out.double()]
        if d_lse is not None:
            outs.append(l)
            grads.append(d_lse.double())
        dq, dk, dv = torch.autograd.grad(outs, xs, grads)
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)


def test_autograd_function_eager_and_compiled(monkeypatch):
    # Eager calls skip the dispatcher (ops.fna_forward_eager / fna_backward_eager are the CUDA
    # implementations themselves); route them through it so the CPU stand-ins run.
    monkeypatch.setattr(ops, "fna_forward_eager", ops.fna_forward)
    monkeypatch.setattr(ops, "fna_backward_eager", ops.fna_backward)
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
            out, lse = cutlass._FnaFunction.apply(q, k, v, ks, st, dl, ca, 0.3, [], [], [], [], True, [], [], [],
                                                  [])
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
        assert _SEEN["bwd_backend"] == 1  # cutlass-fna: the SM80 backward kernels only
        # hopper-fna's forward (backend 2): the backward lets the library choose (AUTO = 0)
        xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
        out, lse = cutlass._FnaFunction.apply(*xs, ks, st, dl, ca, 0.3, [], [], [], [], True, [], [], [], [], 2, 0)
        ((out * w).sum() + (lse * wl).sum()).backward()
        assert _SEEN["bwd_backend"] == 0 and _SEEN["fwd_backend"] == 2
        for a, c in zip([x.grad for x in xs], ref):
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    finally:
        lib._destroy()


class _CpuPreparedBackward:
    """Stand-in of _libnatten.PreparedFnaBackward (CPU, float64 oracle through _bwd_cpu): records
    what it was prepared with and how often it launched."""

    made: list = []

    def __init__(self, q, k, v, out, lse, d_out, d_q, d_k, d_v, kernel_size, stride, dilation, is_causal, scale,
                 q_tile=None, kv_tile=None, backend=None, deterministic=False, global_shape=None, q_origin=None,
                 kv_origin=None, kv_splits=None):
        self.args = (list(kernel_size), list(stride), list(dilation), list(is_causal), scale, list(q_tile or []),
                     list(kv_tile or []), deterministic, list(global_shape or []), list(q_origin or []),
                     list(kv_origin or []), list(kv_splits or []), backend)
        self.strides = (d_out.stride(), d_q.stride(), d_k.stride(), d_v.stride())
        self.launches = 0
        _CpuPreparedBackward.made.append(self)

    def launch(self, q, k, v, out, lse, d_out, d_q, d_k, d_v):
        assert (d_out.stride(), d_q.stride(), d_k.stride(), d_v.stride()) == self.strides
        self.launches += 1
        ks, st, dl, ca, scale, qt, kt, det, gs, qo, ko, splits, backend = self.args
        grads = _bwd_cpu(q, k, v, out, lse, d_out, None, ks, st, dl, ca, scale, qt, kt, det, gs, qo, ko, splits,
                         backend)
        for dst, src in zip((d_q, d_k, d_v), grads):
            dst.copy_(src)


@pytest.fixture
def cpu_stand_ins(monkeypatch):
    monkeypatch.setattr(ops, "fna_forward_eager", ops.fna_forward)
    monkeypatch.setattr(ops, "fna_backward_eager", ops.fna_backward)
    monkeypatch.setattr(cutlass._libnatten, "PreparedFnaBackward", _CpuPreparedBackward)
    _CpuPreparedBackward.made.clear()
    lib = torch.library.Library("natten", "IMPL")
    lib.impl("fna_forward", _fwd_cpu, "CPU")
    lib.impl("fna_backward", _bwd_cpu, "CPU")
    yield
    lib._destroy()


def test_training_on_slabs_eager_and_compiled(cpu_stand_ins, monkeypatch):
    """cutlass.fna with a slab spec and inputs that require grad (a library with backward slabs):
    the slab reaches the forward and the backward operator, the gradients equal autograd through
    the float64 region oracle (d_k / d_v on the key slab's grid, zero for keys no slab query
    attends), eager and under torch.compile(fullgraph=True)."""
    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    monkeypatch.setattr(cutlass, "_backward_slabs_reason", lambda: None)
    glob, qo, qs, ko, kvs = (20, 9), (6, 0), (5, 9), (3, 0), (11, 9)  # key slab wider than needed
    ks, st, dl, ca = (5, 3), (2, 1), (1, 2), (False, True)
    spec = WindowSpec(glob, ks, st, dl, ca, Region(q_origin=qo, q_shape=qs, kv_origin=ko, kv_shape=kvs))
    g = torch.Generator().manual_seed(1)
    q0 = torch.randn(2, *qs, 4, 8, generator=g)
    k0 = torch.randn(2, *kvs, 2, 8, generator=g)
    v0 = torch.randn(2, *kvs, 2, 6, generator=g)
    w = torch.randn(2, *qs, 4, 6, generator=g)
    wl = torch.randn(2, *qs, 4, generator=g)

    def loss_fn(q, k, v):
        out, lse = cutlass.fna(q, k, v, spec, 0.3)
        return (out * w).sum() + (lse * wl).sum()

    def grads(fn):
        xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
        fn(*xs).backward()
        return [x.grad for x in xs]

    ref = grads(lambda q, k, v: (lambda o: (o[0] * w).sum() + (o[1] * wl).sum())(
        na_region_oracle(q, k, v, glob, qo, ko, ks, st, dl, ca, scale=0.3)))
    _SEEN.clear()
    eager = grads(loss_fn)
    assert _SEEN["fwd"] == _SEEN["bwd"] == ([20, 9], [6, 0], [3, 0])
    compiled = grads(torch.compile(loss_fn, fullgraph=True, backend="aot_eager"))
    assert tuple(eager[1].shape) == tuple(k0.shape) and tuple(eager[0].shape) == tuple(q0.shape)
    # Global keys 3 and 4 (key slab rows 0, 1) are attended by no query of the slab (its keys: [5, 14)).
    assert eager[1][:, :2].abs().max() == 0 and eager[2][:, :2].abs().max() == 0
    assert eager[1][:, 2].abs().max() > 0
    for a, b, c in zip(eager, compiled, ref):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5)


def test_training_on_slabs_refused_with_an_old_library(monkeypatch):
    """With a library whose backward takes no slabs, cutlass.fna refuses slab training with the reason."""
    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    monkeypatch.setattr(cutlass, "_backward_slabs_reason", lambda: "slabs need ABI >= 1.2")
    spec = WindowSpec((20, 9), (5, 3), (1, 1), (1, 1), (False, False),
                      Region(q_origin=(6, 0), q_shape=(5, 9), kv_origin=(4, 0), kv_shape=(9, 9)))
    q = torch.zeros(1, 5, 9, 2, 8, requires_grad=True)
    k = torch.zeros(1, 9, 9, 2, 8)
    with pytest.raises(NotImplementedError, match="cutlass-fna cannot train here: slabs need ABI >= 1.2"):
        cutlass.fna(q, k, k, spec, 0.3)


def test_backward_kv_splits_reach_the_operator(cpu_stand_ins, monkeypatch):
    """backward_kv_splits travels to natten::fna_backward (eager and compiled); without it,
    natten.use_kv_parallelism_in_fused_na(False) asks for one CTA per axis ([1] * rank), and the
    default is [] (one CTA per key tile). A library without kv_splits (ABI < 1.3) refuses an
    explicit value with a message naming the ABI."""
    import natten

    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    monkeypatch.setattr(cutlass, "_kv_splits_supported", lambda: True)
    spec = WindowSpec((9, 10), (3, 4), (1, 1), (1, 1), (False, False))
    g = torch.Generator().manual_seed(2)
    q0, k0, v0 = (torch.randn(1, 9, 10, 2, 8, generator=g) for _ in range(3))

    def run(fn=None, **options):
        xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
        f = fn or (lambda q, k, v: cutlass.fna(q, k, v, spec, 0.3, **options)[0].sum())
        f(*xs).backward()
        return _SEEN["kv_splits"]

    assert run() == []
    assert run(backward_kv_splits=(2, 1)) == [2, 1]
    compiled = torch.compile(lambda q, k, v: cutlass.fna(q, k, v, spec, 0.3, backward_kv_splits=(1, 2))[0].sum(),
                             fullgraph=True, backend="aot_eager")
    assert run(compiled) == [1, 2]
    with pytest.warns(UserWarning, match="slows the backward down"):
        natten.use_kv_parallelism_in_fused_na(False)
    try:
        assert run() == [1, 1]
        assert run(backward_kv_splits=(2, 2)) == [2, 2]  # an explicit value wins
    finally:
        natten.use_kv_parallelism_in_fused_na(True)
    monkeypatch.setattr(cutlass, "_kv_splits_supported", lambda: False)
    monkeypatch.setattr(cutlass._libnatten, "abi_version", lambda: (1, 2))
    with pytest.raises(NotImplementedError, match=r"backward_kv_splits needs natten-kernels ABI >= 1\.3"):
        run(backward_kv_splits=(2, 1))
    assert run() == []  # the flag alone never fails on an old library


def test_backward_tiles_default_to_the_forward_tiles_only_when_64_tokens(cpu_stand_ins, monkeypatch):
    """Without backward tiles the backward gets the forward's tiles when they are 64-token boxes
    (the backward's compiled tile); the forward's 128-token query tiles (natten-kernels >= 1.3.6)
    leave the choice to the library ([]), since the backward would refuse them."""
    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    spec = WindowSpec((16, 12), (5, 3), (1, 1), (1, 1), (False, False))
    g = torch.Generator().manual_seed(4)
    q0, k0, v0 = (torch.randn(1, 16, 12, 2, 8, generator=g) for _ in range(3))

    def run(**options):
        xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
        cutlass.fna(*xs, spec, 0.3, **options)[0].sum().backward()
        return _SEEN["bwd_tiles"]

    assert run(q_tile_shape=(8, 8), kv_tile_shape=(16, 4)) == ([8, 8], [16, 4])
    assert run(q_tile_shape=(16, 8), kv_tile_shape=(8, 8)) == ([], [])
    assert run() == ([], [])
    assert run(q_tile_shape=(16, 8), kv_tile_shape=(8, 8), backward_q_tile_shape=(4, 16),
               backward_kv_tile_shape=(8, 8)) == ([4, 16], [8, 8])
    assert cutlass._backward_tiles_from_forward([16, 8], [8, 8]) == ([], [])
    assert cutlass._backward_tiles_from_forward([64], [64]) == ([64], [64])
    assert cutlass._backward_tiles_from_forward([], []) == ([], [])


class _CpuPreparedForward:
    """Stand-in of _libnatten.PreparedFnaForward (CPU, float64 oracle): records what it was
    prepared with and how often it launched."""

    made: list = []

    def __init__(self, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale, q_tile=None,
                 kv_tile=None, backend=None, global_shape=None, q_origin=None, kv_origin=None,
                 kernel_schedule=None):
        self.window = (list(kernel_size), list(stride), list(dilation), list(is_causal), scale)
        self.backend, self.schedule, self.tiles = backend, kernel_schedule, (q_tile, kv_tile)
        self.launches = 0
        _CpuPreparedForward.made.append(self)

    def launch(self, q, k, v, out, lse):
        self.launches += 1
        o, l = _fwd_cpu(q, k, v, *self.window, [], [])
        out.copy_(o)
        lse.copy_(l)


@pytest.mark.parametrize("backend", ["cutlass-fna", "hopper-fna"])
def test_prepared_training_path(cpu_stand_ins, monkeypatch, backend):
    """Repeated training calls through natten's plan cache take the prepared path (the forward
    launches through one marshalled struct, the backward gets its arguments ready-made): gradients
    (through out and lse) equal autograd through the float64 oracle on every call, the backward
    reaches the operator with the backend's backward choice (cutlass-fna: SM80 = 1; hopper-fna:
    the library's = 0), poisoned outputs (tests) go through the prepared launch, and misaligned
    views fall back to the unprepared path."""
    from natten.backends import hopper
    from natten import functional

    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    monkeypatch.setattr(cutlass._libnatten, "PreparedFnaForward", _CpuPreparedForward)
    _CpuPreparedForward.made.clear()
    mod = cutlass if backend == "cutlass-fna" else hopper
    spec = WindowSpec((9, 10), (3, 4), (1, 2), (1, 1), (False, True))
    g = torch.Generator().manual_seed(3)
    q0 = torch.randn(2, 9, 10, 4, 8, generator=g)
    k0 = torch.randn(2, 9, 10, 2, 8, generator=g)
    v0 = torch.randn(2, 9, 10, 2, 4, generator=g)  # D_v != D (16-byte rows: kernel-ready)
    w = torch.randn(2, 9, 10, 4, 4, generator=g)
    wl = torch.randn(2, 9, 10, 4, generator=g)
    xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
    run = mod.prepare_fna(*xs, spec, 0.3, kernel_schedule=None)
    assert isinstance(run, cutlass._PreparedTraining)
    ref_xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
    o, l = na_oracle(*ref_xs, (3, 4), (1, 2), (1, 1), (False, True), scale=0.3)
    ((o * w).sum() + (l * wl).sum()).backward()
    for call in range(2):
        for x in xs:
            x.grad = None
        _SEEN.clear()
        out, lse = run(*xs)
        ((out * w).sum() + (lse * wl).sum()).backward()
        for x, r in zip(xs, ref_xs):
            torch.testing.assert_close(x.grad, r.grad, atol=1e-5, rtol=1e-5)
        assert _SEEN["bwd_backend"] == (1 if backend == "cutlass-fna" else 0)
    assert len(_CpuPreparedForward.made) == 1 and _CpuPreparedForward.made[0].launches == 2
    assert _CpuPreparedForward.made[0].backend == (1 if backend == "cutlass-fna" else 2)
    # a logsumexp gradient took the general backward above; a loss of out alone (d_lse None, d_out
    # laid out like out) takes the backward marshalled once per plan and deterministic flag
    assert _CpuPreparedBackward.made == []
    ref_xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
    o, _ = na_oracle(*ref_xs, (3, 4), (1, 2), (1, 1), (False, True), scale=0.3)
    (o * w).sum().backward()
    for call in range(3):
        for x in xs:
            x.grad = None
        _SEEN.clear()
        out, _ = run(*xs)
        (out * w).sum().backward()
        for x, r in zip(xs, ref_xs):
            torch.testing.assert_close(x.grad, r.grad, atol=1e-5, rtol=1e-5)
        assert _SEEN["bwd_backend"] == (1 if backend == "cutlass-fna" else 0)
        assert _SEEN["d_lse"] is None
    assert len(_CpuPreparedBackward.made) == 1 and _CpuPreparedBackward.made[0].launches == 3
    assert _CpuPreparedBackward.made[0].args[7] is False  # deterministic
    monkeypatch.setattr(cutlass, "_deterministic", lambda: True)  # the flag the forward saves
    for x in xs:
        x.grad = None
    out, _ = run(*xs)
    (out * w).sum().backward()
    monkeypatch.setattr(cutlass, "_deterministic", lambda: False)
    assert len(_CpuPreparedBackward.made) == 2 and _CpuPreparedBackward.made[1].args[7] is True
    for x, r in zip(xs, ref_xs):
        torch.testing.assert_close(x.grad, r.grad, atol=1e-5, rtol=1e-5)
    # an output gradient laid out unlike out (here: expanded) takes the general path
    for x in xs:
        x.grad = None
    _SEEN.clear()
    out, _ = run(*xs)
    out.sum().backward()
    assert [m.launches for m in _CpuPreparedBackward.made] == [3, 1]
    assert _SEEN["d_out"].stride() != out.stride()  # the operator's general path saw it
    # poisoned outputs (tests): the prepared launch writes into NaN-filled tensors
    monkeypatch.setattr(ops, "_POISON_OUTPUTS", True)
    for x in xs:
        x.grad = None
    out, _ = run(*xs)
    out.sum().backward()
    assert _CpuPreparedForward.made[0].launches == 8 and not out.isnan().any()
    # ... and the prepared backward into NaN-filled gradients (every element written)
    for x in xs:
        x.grad = None
    out, _ = run(*xs)
    (out * w).sum().backward()
    assert [m.launches for m in _CpuPreparedBackward.made] == [4, 1]  # the non-deterministic one again
    for x, r in zip(xs, ref_xs):
        torch.testing.assert_close(x.grad, r.grad, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(ops, "_POISON_OUTPUTS", False)
    # a misaligned view takes the unprepared path (no prepared launch)
    flat = [torch.zeros(t.numel() + 1).narrow(0, 1, t.numel()).view(t.shape).copy_(t).requires_grad_(True)
            for t in (q0, k0, v0)]
    out, _ = run(*flat)
    out.sum().backward()
    assert _CpuPreparedForward.made[0].launches == 9 and flat[0].grad is not None
    # inputs that do not require grad are not this runner's (the plan key has the grad mode)
    assert not isinstance(mod.prepare_fna(q0, k0, v0, spec, 0.3), cutlass._PreparedTraining)
    # mismatched backward tiles: the unprepared path, which raises the clear error
    bad = mod.prepare_fna(*xs, spec, 0.3, backward_q_tile_shape=(8, 8))
    assert not isinstance(bad, cutlass._PreparedTraining)
    with pytest.raises(ValueError, match="backward_kv_tile_shape"):
        bad(*xs)
    del functional


@pytest.mark.parametrize("dv", [8, 4])
@pytest.mark.parametrize("backend", ["cutlass-fna", "hopper-fna"])
def test_prepared_paths_allocate_contiguous_outputs(cpu_stand_ins, monkeypatch, backend, dv):
    """The prepared launchers (training and no-grad) allocate the output, the logsumexp and the
    gradients as fresh contiguous tensors of the plan's shapes (the layouts their marshalled structs
    were made for), also when q itself is a strided view and when the output's head dim differs
    from q's (empty_like(q) where the shapes agree, empty(shape) otherwise); unpoisoned, values
    equal the float64 oracle."""
    from natten.backends import hopper

    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    monkeypatch.setattr(cutlass._libnatten, "PreparedFnaForward", _CpuPreparedForward)
    monkeypatch.setattr(ops, "_POISON_OUTPUTS", False)
    _CpuPreparedBackward.made.clear()
    mod = cutlass if backend == "cutlass-fna" else hopper
    spec = WindowSpec((6, 5), (3, 3), (1, 1), (1, 1), (False, False))
    g = torch.Generator().manual_seed(5)
    q0 = torch.randn(1, 2, 6, 5, 8, generator=g).permute(0, 2, 3, 1, 4)  # [1, 6, 5, 2, 8], strided
    k0 = torch.randn(1, 6, 5, 2, 8, generator=g)
    v0 = torch.randn(1, 6, 5, 2, dv, generator=g)
    w = torch.randn(1, 6, 5, 2, dv, generator=g)
    ref = [t.detach().clone().requires_grad_(True) for t in (q0, k0, v0)]
    o_ref, l_ref = na_oracle(*ref, (3, 3), (1, 1), (1, 1), (False, False), scale=0.4)
    (o_ref * w).sum().backward()
    def dense_strides(t):
        return t.stride() == torch.empty(t.shape).stride()

    _CpuPreparedForward.made.clear()
    with torch.no_grad():
        run = mod.prepare_fna(q0, k0, v0, spec, 0.4)
        for _ in range(2):
            out, lse = run(q0, k0, v0)
            assert out.shape == (1, 6, 5, 2, dv) and dense_strides(out) and dense_strides(lse)
            torch.testing.assert_close(out, o_ref.detach(), atol=1e-5, rtol=1e-5)
    assert len(_CpuPreparedForward.made) == 1 and _CpuPreparedForward.made[0].launches == 2  # prepared
    xs = [q0.detach().requires_grad_(True), k0.clone().requires_grad_(True), v0.clone().requires_grad_(True)]
    run = mod.prepare_fna(*xs, spec, 0.4, kernel_schedule=None)
    assert isinstance(run, cutlass._PreparedTraining) and run._out_like_q == (dv == 8)
    for _ in range(2):
        for x in xs:
            x.grad = None
        out, lse = run(*xs)
        assert out.shape == (1, 6, 5, 2, dv) and dense_strides(out) and dense_strides(lse)
        (out * w).sum().backward()
        for x, r in zip(xs, ref):  # (x.grad follows x's strides: autograd's layout contract)
            torch.testing.assert_close(x.grad, r.grad, atol=1e-5, rtol=1e-5)
    assert len(_CpuPreparedForward.made) == 2 and _CpuPreparedForward.made[1].launches == 2
    made = _CpuPreparedBackward.made[-1]  # each launch asserts the gradients' strides equal these
    assert made.launches == 2
    assert list(made.strides[1:]) == [torch.empty(t.shape).stride() for t in (q0, k0, v0)]


@pytest.mark.parametrize("prepared", [False, True])
def test_unused_output_gradients_are_not_materialized(cpu_stand_ins, monkeypatch, prepared):
    """Eager training calls do not zero-fill the gradient of an output the loss does not use: with
    only ``out`` in the loss the backward operator gets ``d_lse=None`` (no zeros tensor, no fill
    kernel, nothing for the kernel to read); with only ``lse`` it gets a zero ``d_out``. Gradients
    equal autograd through the float64 oracle either way, on the plain autograd.Function and the
    prepared path."""
    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    monkeypatch.setattr(cutlass._libnatten, "PreparedFnaForward", _CpuPreparedForward)
    spec = WindowSpec((7, 6), (3, 2), (1, 1), (1, 1), (True, False))
    g = torch.Generator().manual_seed(11)
    q0, k0, v0 = (torch.randn(1, 7, 6, 2, 8, generator=g) for _ in range(3))
    w = torch.randn(1, 7, 6, 2, 8, generator=g)
    wl = torch.randn(1, 7, 6, 2, generator=g)
    for use_out, use_lse in ((True, False), (False, True)):
        xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
        if prepared:
            run = cutlass.prepare_fna(*xs, spec, 0.5)
            assert isinstance(run, cutlass._PreparedTraining)
            out, lse = run(*xs)
        else:
            out, lse = cutlass._FnaFunction.apply(*xs, [3, 2], [1, 1], [1, 1], [True, False], 0.5, [], [], [], [],
                                                  False, [], [], [], [])
        _SEEN.clear()
        loss = (out * w).sum() if use_out else (lse * wl).sum()
        loss.backward()
        assert (_SEEN["d_lse"] is None) == use_out
        if not use_out:
            assert _SEEN["d_out"].shape == out.shape and not _SEEN["d_out"].any()
        ref_xs = [t.clone().requires_grad_(True) for t in (q0, k0, v0)]
        o, l = na_oracle(*ref_xs, (3, 2), (1, 1), (1, 1), (True, False), scale=0.5)
        ((o * w).sum() if use_out else (l * wl).sum()).backward()
        for x, r in zip(xs, ref_xs):  # lse does not depend on v: the oracle's grad is None, ours zeros
            want = r.grad if r.grad is not None else torch.zeros_like(r)
            torch.testing.assert_close(x.grad, want, atol=1e-5, rtol=1e-5)
