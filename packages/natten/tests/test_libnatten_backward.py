"""natten._libnatten backward marshalling (ABI 1.1, slabs: ABI 1.2) and cutlass-fna's training
gate, on the CPU.

A stand-in library compiled from natten_kernels.h records the natten_fna_backward_params it
receives (like test_libnatten.py does for the forward), so the marshalling of the gradient tensors,
workspace, deterministic flag, tiles and stream is checked exactly without a GPU.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch

from natten import _libnatten as L
from test_libnatten import HEADER_DIR, FAKE_SRC, FakeCudaTensor, _build_fake, _tensors

FAKE_BWD_SRC = FAKE_SRC + r"""
static natten_fna_backward_params g_bparams;
static unsigned long long g_ws = 4096;
NATTEN_API int natten_fna_backward_workspace_size(const natten_fna_backward_params* p, uint64_t* bytes) {
  g_bparams = *p;
  *bytes = g_status ? 0 : g_ws;
  return g_status;
}
NATTEN_API int natten_fna_backward(const natten_fna_backward_params* p) { memcpy(&g_bparams, p, sizeof(g_bparams)); return g_status; }
NATTEN_API void* natten_fake_bparams(void) { return &g_bparams; }
"""


def _build_fake_bwd(tmp_path_factory, abi: int):
    if not (HEADER_DIR / "natten_kernels.h").is_file():
        pytest.skip("natten_kernels.h not found")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp(f"fakebwd{abi}")
    src = d / "fake.c"
    src.write_text(FAKE_BWD_SRC)
    so = d / "libnatten_kernels.so"
    subprocess.run([cc, "-std=c99", "-shared", "-fPIC", f"-DABI={abi}", f"-I{HEADER_DIR}", str(src), "-o", str(so)],
                   check=True)
    return so


@pytest.fixture(scope="module")
def fake_bwd_path(tmp_path_factory):
    return _build_fake_bwd(tmp_path_factory, 1003)


@pytest.fixture(scope="module")
def fake_bwd_1_2_path(tmp_path_factory):
    """A stand-in that reports ABI 1.2: slabs, but no kv_splits."""
    return _build_fake_bwd(tmp_path_factory, 1002)


@pytest.fixture(scope="module")
def fake_bwd_1_1_path(tmp_path_factory):
    """A stand-in that reports ABI 1.1: a backward, but none for slabs."""
    return _build_fake_bwd(tmp_path_factory, 1001)


def _use_fake(path, monkeypatch):
    monkeypatch.setenv(L.ENV_LIBRARY, str(path))
    L._reset()
    assert L.is_available(), L.unavailable_reason()
    raw = ctypes.CDLL(str(path))
    raw.natten_fake_bparams.restype = ctypes.c_void_p
    raw.natten_fake_set.argtypes = [ctypes.c_int, ctypes.c_char_p]
    raw.natten_fake_set(0, b"")
    L._import_torch()
    monkeypatch.setattr(L, "_raw_stream", lambda index: 0xABC0 + index)
    L._BWD_TEMPLATES.clear()
    return raw, SimpleNamespace(
        params=lambda: L.FnaBackwardParams.from_address(raw.natten_fake_bparams()),
        set=lambda status, msg=b"": raw.natten_fake_set(status, msg),
    )


def _fake_fixture(path_fixture: str):
    """A fixture that loads the stand-in library of ``path_fixture`` and unloads it afterwards."""

    @pytest.fixture
    def fixture(request, monkeypatch):
        raw, fake = _use_fake(request.getfixturevalue(path_fixture), monkeypatch)
        yield fake
        raw.natten_fake_set(0, b"")
        L._BWD_TEMPLATES.clear()
        L._reset()

    return fixture


fake_bwd = _fake_fixture("fake_bwd_path")
fake_bwd_1_2 = _fake_fixture("fake_bwd_1_2_path")
fake_bwd_1_1 = _fake_fixture("fake_bwd_1_1_path")


def _grads(q, k, v, out, lse, device=1):
    def like(t, transpose=False):
        base = torch.empty(t.shape, dtype=t.dtype)
        if transpose:
            base = base.transpose(1, 2).contiguous().transpose(1, 2)
        return FakeCudaTensor(base, device)

    return like(out, transpose=True), like(lse), like(q), like(k), like(v)


def test_backward_marshalling(fake_bwd):
    assert L.has_backward()
    q, k, v, out, lse = _tensors()
    d_out, d_lse, d_q, d_k, d_v = _grads(q, k, v, out, lse)
    ws = FakeCudaTensor(torch.empty(4096, dtype=torch.uint8), 1)
    L.fna_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, (3, 4), (2, 1), (1, 2), (True, False), 0.25,
                   q_tile=(8, 8), kv_tile=(4, 16), deterministic=True, workspace=ws)
    p = fake_bwd.params()
    assert p.struct_size == 856 == ctypes.sizeof(L.FnaBackwardParams)
    # No slabs, no kv_splits: the ABI 1.2 / 1.3 fields stay zero (the whole grid, one CTA per key
    # tile; what 1.1 and 1.2 libraries accept too).
    for name in ("global_shape", "q_origin", "kv_origin", "kv_shape", "kv_splits"):
        assert tuple(getattr(p, name)) == (0, 0, 0), name
    assert p.reserved_1_3 == 0
    assert (p.dtype, p.rank, p.batch, tuple(p.shape)) == (L.DTYPE_FP16, 2, 2, (6, 7, 0))
    assert (p.heads, p.heads_kv, p.head_dim, p.head_dim_v) == (4, 2, 32, 64)
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse), ("d_out", d_out), ("d_lse", d_lse),
                    ("d_q", d_q), ("d_k", d_k), ("d_v", d_v)):
        assert getattr(p, name) == t.data_ptr(), name
    n = 5
    assert tuple(p.d_out_stride[:n]) == d_out.stride()
    assert tuple(p.out_stride[:n]) == out.stride()
    assert tuple(p.d_lse_stride[: n - 1]) == d_lse.stride()
    assert tuple(p.d_q_stride[:n]) == d_q.stride() and tuple(p.d_k_stride[:n]) == d_k.stride()
    assert tuple(p.d_v_stride[:n]) == d_v.stride()
    assert tuple(p.kernel_size) == (3, 4, 0) and tuple(p.stride) == (2, 1, 0)
    assert tuple(p.dilation) == (1, 2, 0) and tuple(p.is_causal) == (1, 0, 0)
    assert abs(p.scale - 0.25) < 1e-7
    assert tuple(p.q_tile) == (8, 8, 0) and tuple(p.kv_tile) == (4, 16, 0)
    assert (p.deterministic, p.reserved, p.device) == (1, 0, 1)
    assert (p.workspace, p.workspace_bytes) == (ws.data_ptr(), 4096)
    assert p.stream == 0xABC1
    # d_lse optional; deterministic off.
    L.fna_backward(q, k, v, out, lse, d_out, None, d_q, d_k, d_v, 3, 1, 1, False, 0.25, workspace=ws)
    p = fake_bwd.params()
    assert p.d_lse is None and p.deterministic == 0 and tuple(p.q_tile) == (0, 0, 0)


def test_backward_errors(fake_bwd):
    q, k, v, out, lse = _tensors()
    d_out, d_lse, d_q, d_k, d_v = _grads(q, k, v, out, lse)
    ws = FakeCudaTensor(torch.empty(4096, dtype=torch.uint8), 1)
    with pytest.raises(L.NattenInvalidArgumentError, match="lse .* is required"):
        L.fna_backward(q, k, v, out, None, d_out, d_lse, d_q, d_k, d_v, 3, 1, 1, False, 0.25, workspace=ws)
    with pytest.raises(L.NattenInvalidArgumentError, match="d_q has shape"):
        L.fna_backward(q, k, v, out, lse, d_out, d_lse, d_k, d_k, d_v, 3, 1, 1, False, 0.25, workspace=ws)
    with pytest.raises(L.NattenInvalidArgumentError, match="d_lse must be float32"):
        L.fna_backward(q, k, v, out, lse, d_out, d_q, d_q, d_k, d_v, 3, 1, 1, False, 0.25, workspace=ws)
    fake_bwd.set(L.STATUS_UNSUPPORTED, b"nope")
    with pytest.raises(L.NattenUnsupportedError, match="natten_fna_backward_workspace_size: nope"):
        L.fna_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, 5, 1, 1, False, 0.25, workspace=ws)


def test_prepared_backward_launches_the_struct_fna_backward_builds(fake_bwd, monkeypatch):
    """PreparedFnaBackward marshals (and validates) once; each launch passes natten_fna_backward the
    struct fna_backward would build for the same tensors (pointers, workspace from torch's
    allocator, stream), and a status from the library is raised with its message."""
    q, k, v, out, lse = _tensors()
    d_out, _, d_q, d_k, d_v = _grads(q, k, v, out, lse)
    ws = FakeCudaTensor(torch.empty(4096, dtype=torch.uint8), 1)
    window = ((3, 4), (2, 1), (1, 2), (True, False), 0.25)
    L.fna_backward(q, k, v, out, lse, d_out, None, d_q, d_k, d_v, *window, q_tile=(8, 8), kv_tile=(4, 16),
                   deterministic=True, workspace=ws)
    want = bytes(fake_bwd.params())
    prepared = L.PreparedFnaBackward(q, k, v, out, lse, d_out, d_q, d_k, d_v, *window, q_tile=(8, 8),
                                     kv_tile=(4, 16), deterministic=True)
    made = []

    def empty(n, dtype, device):
        made.append((n, dtype, device))
        return ws

    real_torch = L._torch
    monkeypatch.setattr(L, "_torch", SimpleNamespace(uint8=torch.uint8, empty=empty))
    prepared.launch(q, k, v, out, lse, d_out, d_q, d_k, d_v)
    assert bytes(fake_bwd.params()) == want
    assert made == [(4096, torch.uint8, q.device)]
    # other tensors of the same layout: their pointers, nothing else changes
    q2, k2, v2, out2, lse2 = _tensors()
    d_out2, _, d_q2, d_k2, d_v2 = _grads(q2, k2, v2, out2, lse2)
    prepared.launch(q2, k2, v2, out2, lse2, d_out2, d_q2, d_k2, d_v2)
    p = fake_bwd.params()
    for name, t in (("q", q2), ("k", k2), ("v", v2), ("out", out2), ("lse", lse2), ("d_out", d_out2),
                    ("d_q", d_q2), ("d_k", d_k2), ("d_v", d_v2)):
        assert getattr(p, name) == t.data_ptr(), name
    assert p.d_lse is None and p.deterministic == 1 and tuple(p.q_tile) == (8, 8, 0)
    fake_bwd.set(L.STATUS_INVALID_ARGUMENT, b"bad launch")
    with pytest.raises(L.NattenInvalidArgumentError, match="natten_fna_backward: bad launch"):
        prepared.launch(q, k, v, out, lse, d_out, d_q, d_k, d_v)
    fake_bwd.set(0)
    monkeypatch.setattr(L, "_torch", real_torch)
    # validation happens when it is made
    with pytest.raises(L.NattenInvalidArgumentError, match="d_q has shape"):
        L.PreparedFnaBackward(q, k, v, out, lse, d_out, d_k, d_k, d_v, *window)


def test_abi_1_0_library_has_no_backward(tmp_path_factory, monkeypatch):
    so = _build_fake(tmp_path_factory, 1000)
    monkeypatch.setenv(L.ENV_LIBRARY, str(so))
    L._reset()
    try:
        assert L.is_available()
        assert not L.has_backward()
        L._import_torch()
        q, k, v, out, lse = _tensors()
        d_out, d_lse, d_q, d_k, d_v = _grads(q, k, v, out, lse)
        with pytest.raises(L.KernelsUnavailableError, match="has no backward; it needs ABI 1.1"):
            L.fna_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, 3, 1, 1, False, 0.25)
        # cutlass-fna refuses training inputs with such a library (and says why).
        from natten.backends import cutlass

        assert "ABI >= 1.1" in cutlass._backward_reason()
    finally:
        L._reset()


def _slab_tensors():
    """A query slab of 5 x 7 tokens and a key slab of 9 x 7 of a 20 x 7 grid (kernel 5 x 5)."""
    q, _, _, out, lse = _tensors(shape=(5, 7))
    _, k, v, _, _ = _tensors(shape=(9, 7))
    return q, k, v, out, lse


def test_backward_marshals_slabs(fake_bwd):
    """With ABI 1.2 the slab fields reach natten_fna_backward; d_k / d_v have the key slab's grid."""
    assert L.supports_backward_slabs()
    q, k, v, out, lse = _slab_tensors()
    d_out, d_lse, d_q, d_k, d_v = _grads(q, k, v, out, lse)
    assert tuple(d_k.shape[1:3]) == (9, 7) and tuple(d_q.shape[1:3]) == (5, 7)
    ws = FakeCudaTensor(torch.empty(4096, dtype=torch.uint8), 1)
    L.fna_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, 5, 1, 1, False, 0.25, workspace=ws,
                   global_shape=(20, 7), q_origin=(6, 0), kv_origin=(4, 0))
    p = fake_bwd.params()
    assert p.struct_size == 856
    assert tuple(p.shape) == (5, 7, 0)
    assert tuple(p.global_shape) == (20, 7, 0) and tuple(p.q_origin) == (6, 0, 0)
    assert tuple(p.kv_origin) == (4, 0, 0) and tuple(p.kv_shape) == (9, 7, 0)
    assert tuple(p.d_k_stride[:5]) == d_k.stride() and tuple(p.k_stride[:5]) == k.stride()
    # The workspace query sees the same fields.
    assert L.fna_backward_workspace_size(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, 5, 1, 1, False, 0.25,
                                         global_shape=(20, 7), q_origin=(6, 0), kv_origin=(4, 0)) == 4096
    assert tuple(fake_bwd.params().kv_shape) == (9, 7, 0)
    # d_k must be like k (the key slab's grid), not like q.
    with pytest.raises(L.NattenInvalidArgumentError, match=r"d_k has shape \(2, 5, 7, 4, 32\); expected \(2, 9, 7, 2, 32\)"):
        L.fna_backward(q, k, v, out, lse, d_out, d_lse, d_q, _grads(q, q, v, out, lse)[3], d_v, 5, 1, 1, False,
                       0.25, workspace=ws, global_shape=(20, 7), q_origin=(6, 0), kv_origin=(4, 0))


def test_abi_1_1_library_refuses_backward_slabs(fake_bwd_1_1):
    """An ABI 1.1 library has a backward (whole grids still run, with the 1.2-sized struct whose slab
    tail is zero) but none for slabs: the binding refuses before calling it, and cutlass-fna says
    why it cannot train on slabs."""
    assert L.has_backward() and not L.supports_backward_slabs()
    q, k, v, out, lse = _slab_tensors()
    d_out, d_lse, d_q, d_k, d_v = _grads(q, k, v, out, lse)
    ws = FakeCudaTensor(torch.empty(4096, dtype=torch.uint8), 1)
    with pytest.raises(L.NattenUnsupportedError, match=r"ABI 1\.1\) has no backward for query/key slabs.*ABI >= 1\.2"):
        L.fna_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, 5, 1, 1, False, 0.25, workspace=ws,
                       global_shape=(20, 7), q_origin=(6, 0), kv_origin=(4, 0))
    wq, wk, wv, wout, wlse = _tensors()
    g = _grads(wq, wk, wv, wout, wlse)
    L.fna_backward(wq, wk, wv, wout, wlse, *g, 3, 1, 1, False, 0.25, workspace=ws)
    p = fake_bwd_1_1.params()
    assert p.struct_size == 856 and tuple(p.global_shape) == (0, 0, 0)

    from natten.backends import cutlass
    from natten.window import Region, WindowSpec

    reason = cutlass._backward_slabs_reason()
    assert "ABI 1.1" in reason and "ABI >= 1.2" in reason and "upgrade natten-kernels" in reason
    # can_run_fna: slabs are fine without grad, refused (with that reason) with grad.
    region = Region(q_origin=(6, 0), q_shape=(5, 7), kv_origin=(4, 0), kv_shape=(9, 7))
    spec = WindowSpec((20, 7), (5, 5), (1, 1), (1, 1), (False, False), region)

    class Grad:  # only what can_run_fna reads
        def __init__(self, t, grad):
            self.shape, self.dtype, self.requires_grad = t.shape, torch.float16, grad
            self.device = torch.device("cuda", 1)

        def dim(self):
            return len(self.shape)

    import unittest.mock as mock

    with mock.patch.object(cutlass, "_kernel_reason", lambda *a: None), \
            mock.patch.object(cutlass, "_library_reason", lambda: None):
        assert cutlass.can_run_fna(Grad(q, False), Grad(k, False), Grad(v, False), spec) is None
        why = cutlass.can_run_fna(Grad(q, True), Grad(k, False), Grad(v, False), spec)
        assert why is not None and "query/key slabs" in why and "ABI >= 1.2" in why


def test_backward_kv_splits_marshalling(fake_bwd):
    """kv_splits (ABI 1.3) reaches natten_fna_backward and the workspace query, per axis."""
    assert L.supports_kv_splits()
    q, k, v, out, lse = _tensors()
    g = _grads(q, k, v, out, lse)
    ws = FakeCudaTensor(torch.empty(4096, dtype=torch.uint8), 1)
    L.fna_backward(q, k, v, out, lse, *g, 3, 1, 1, False, 0.25, workspace=ws, kv_splits=(2, 1))
    p = fake_bwd.params()
    assert tuple(p.kv_splits) == (2, 1, 0) and p.reserved_1_3 == 0
    assert L.fna_backward_workspace_size(q, k, v, out, lse, *g, 3, 1, 1, False, 0.25, kv_splits=(1, 3)) == 4096
    assert tuple(fake_bwd.params().kv_splits) == (1, 3, 0)
    with pytest.raises(L.NattenInvalidArgumentError, match=r"kv_splits has 3 entries but the problem has rank 2"):
        L.fna_backward(q, k, v, out, lse, *g, 3, 1, 1, False, 0.25, workspace=ws, kv_splits=(1, 1, 1))


def test_abi_1_2_library_refuses_kv_splits(fake_bwd_1_2):
    """An ABI 1.2 library runs the backward (the 1.3 struct's kv_splits tail is zero) but has no
    kv_splits: the binding refuses before calling it and names the ABI it needs."""
    assert L.has_backward() and L.supports_backward_slabs() and not L.supports_kv_splits()
    q, k, v, out, lse = _tensors()
    g = _grads(q, k, v, out, lse)
    ws = FakeCudaTensor(torch.empty(4096, dtype=torch.uint8), 1)
    with pytest.raises(L.NattenUnsupportedError, match=r"ABI 1\.2\) does not take kv_splits.*ABI >= 1\.3"):
        L.fna_backward(q, k, v, out, lse, *g, 3, 1, 1, False, 0.25, workspace=ws, kv_splits=(1, 1))
    L.fna_backward(q, k, v, out, lse, *g, 3, 1, 1, False, 0.25, workspace=ws)
    assert tuple(fake_bwd_1_2.params().kv_splits) == (0, 0, 0)
