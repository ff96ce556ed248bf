"""natten._libnatten backward marshalling (ABI 1.1) and cutlass-fna's training gate, on the CPU.

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


@pytest.fixture(scope="module")
def fake_bwd_path(tmp_path_factory):
    if not (HEADER_DIR / "natten_kernels.h").is_file():
        pytest.skip("natten_kernels.h not found")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("fakebwd")
    src = d / "fake.c"
    src.write_text(FAKE_BWD_SRC)
    so = d / "libnatten_kernels.so"
    subprocess.run([cc, "-std=c99", "-shared", "-fPIC", "-DABI=1001", f"-I{HEADER_DIR}", str(src), "-o", str(so)],
                   check=True)
    return so


@pytest.fixture
def fake_bwd(fake_bwd_path, monkeypatch):
    monkeypatch.setenv(L.ENV_LIBRARY, str(fake_bwd_path))
    L._reset()
    assert L.is_available(), L.unavailable_reason()
    raw = ctypes.CDLL(str(fake_bwd_path))
    raw.natten_fake_bparams.restype = ctypes.c_void_p
    raw.natten_fake_set.argtypes = [ctypes.c_int, ctypes.c_char_p]
    raw.natten_fake_set(0, b"")
    L._import_torch()
    monkeypatch.setattr(L, "_raw_stream", lambda index: 0xABC0 + index)
    yield SimpleNamespace(
        params=lambda: L.FnaBackwardParams.from_address(raw.natten_fake_bparams()),
        set=lambda status, msg=b"": raw.natten_fake_set(status, msg),
    )
    raw.natten_fake_set(0, b"")
    L._reset()


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
    assert p.struct_size == 744 == ctypes.sizeof(L.FnaBackwardParams)
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
