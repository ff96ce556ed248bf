"""natten._libnatten, the ctypes boundary to natten-kernels, on the CPU.

A tiny stand-in library compiled from natten_kernels.h (gcc) records the structs it receives, so
the marshalling of tensors (shapes, strides, pointers, dtype, window parameters, tiles, stream,
device) is checked exactly without a GPU. ABI mismatches, the "not installed" path, the
NATTEN_KERNELS_LIBRARY override and the status -> exception mapping are covered too. If
NATTEN_KERNELS_LIBRARY points at a real build, a few checks also run against it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from natten import _libnatten as L

REPO = Path(__file__).resolve().parents[3]
HEADER_DIR = REPO / "packages" / "natten-kernels" / "csrc" / "include"

FAKE_SRC = r"""
#include <string.h>
#include "natten_kernels.h"
static natten_fna_forward_params g_params;
static natten_fna_problem g_problem;
static int g_status = 0;
static int g_abi = ABI;
static const char* g_msg = "";
NATTEN_API int natten_abi_version(void) { return g_abi; }
NATTEN_API const char* natten_build_info(void) { return "fake natten-kernels; CUDA 13.0.0"; }
NATTEN_API const char* natten_last_error(void) { return g_msg; }
NATTEN_API const char* natten_status_string(int s) { (void)s; return "?"; }
NATTEN_API int natten_device_info(int d, int* a, int* b) { *a = 9; *b = d < 0 ? 0 : d; return g_status; }
NATTEN_API int natten_fna_supports(const natten_fna_problem* p) { g_problem = *p; return g_status; }
NATTEN_API int natten_fna_query_configs(const natten_fna_problem* p, natten_tile_config* out, int cap, int* count) {
  int i;
  g_problem = *p;
  *count = 0;
  if (g_status) return g_status;
  for (i = 0; i < 3 && i < cap; ++i) {
    memset(&out[i], 0, sizeof(out[i]));
    out[i].backend = 1; out[i].rank = p->rank;
    out[i].q_tile[0] = 1 << i; out[i].q_tile[1] = 64 >> i; out[i].q_tile[2] = 1;
    out[i].kv_tile[0] = 8; out[i].kv_tile[1] = 8; out[i].kv_tile[2] = 1;
  }
  *count = 3;
  return 0;
}
NATTEN_API int natten_fna_forward(const natten_fna_forward_params* p) { memcpy(&g_params, p, sizeof(g_params)); return g_status; }
NATTEN_API void* natten_fake_params(void) { return &g_params; }
NATTEN_API void* natten_fake_problem(void) { return &g_problem; }
NATTEN_API void natten_fake_set(int status, const char* msg) { g_status = status; g_msg = msg; }
"""


def _build_fake(tmp_path_factory, abi: int) -> Path:
    if not (HEADER_DIR / "natten_kernels.h").is_file():
        pytest.skip("natten_kernels.h not found (packages/natten-kernels absent)")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp(f"fake{abi}")
    src = d / "fake.c"
    src.write_text(FAKE_SRC)
    so = d / "libnatten_kernels.so"
    subprocess.run([cc, "-std=c99", "-shared", "-fPIC", f"-DABI={abi}", f"-I{HEADER_DIR}", str(src), "-o", str(so)],
                   check=True)
    return so


@pytest.fixture(scope="module")
def fake_lib_path(tmp_path_factory):
    return _build_fake(tmp_path_factory, 1001)


@pytest.fixture
def fake(fake_lib_path, monkeypatch):
    monkeypatch.setenv(L.ENV_LIBRARY, str(fake_lib_path))
    L._reset()
    assert L.is_available(), L.unavailable_reason()
    raw = ctypes.CDLL(str(fake_lib_path))
    raw.natten_fake_params.restype = ctypes.c_void_p
    raw.natten_fake_problem.restype = ctypes.c_void_p
    raw.natten_fake_set.argtypes = [ctypes.c_int, ctypes.c_char_p]
    raw.natten_fake_set(0, b"")
    # torch CPU has no CUDA streams; the binding asks torch's raw-stream getter.
    L._import_torch()
    monkeypatch.setattr(L, "_raw_stream", lambda index: 0xABC0 + index)
    yield SimpleNamespace(
        raw=raw,
        params=lambda: L.FnaForwardParams.from_address(raw.natten_fake_params()),
        problem=lambda: L.FnaProblem.from_address(raw.natten_fake_problem()),
        set=lambda status, msg=b"": raw.natten_fake_set(status, msg),
    )
    raw.natten_fake_set(0, b"")
    L._reset()


class FakeCudaTensor:
    """A CPU tensor dressed as a CUDA tensor (the binding only reads metadata and data_ptr)."""

    _next = 0x7F0000000000

    def __init__(self, t: torch.Tensor, index: int = 0):
        self._t = t
        self.shape = t.shape
        self.dtype = t.dtype
        self.device = torch.device("cuda", index)
        FakeCudaTensor._next += 1 << 24
        self._ptr = FakeCudaTensor._next

    def stride(self):
        return self._t.stride()

    def dim(self):
        return self._t.dim()

    def data_ptr(self):
        return self._ptr


def _tensors(B=2, shape=(6, 7), H=4, Hkv=2, D=32, Dv=64, dtype=torch.float16, lse=True, device=1):
    q = FakeCudaTensor(torch.empty(B, *shape, H, D, dtype=dtype), device)
    k = FakeCudaTensor(torch.empty(B, *shape, Hkv, D, dtype=dtype), device)
    v = FakeCudaTensor(torch.empty(B, *shape, Hkv, Dv, dtype=dtype), device)
    out = FakeCudaTensor(torch.empty(B, *shape, H, Dv, dtype=dtype).transpose(1, 2).contiguous().transpose(1, 2), device)
    l = FakeCudaTensor(torch.empty(B, *shape, H, dtype=torch.float32), device) if lse else None
    return q, k, v, out, l


def test_import_needs_no_library_or_cuda():
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(L.__file__).parents[1])!r})\n"
        "os.environ.pop('NATTEN_KERNELS_LIBRARY', None)\n"
        "sys.modules['natten_kernels'] = None\n"
        "from natten import _libnatten as L\n"
        "assert L.is_available() is False\n"
        "print(L.unavailable_reason())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr
    assert 'natten-kernels is not installed: pip install "natten-kernels-cu' in proc.stdout
    assert '>=1.0,<2"' in proc.stdout


def test_not_installed(monkeypatch):
    monkeypatch.delenv(L.ENV_LIBRARY, raising=False)
    monkeypatch.setitem(sys.modules, "natten_kernels", None)
    L._reset()
    try:
        assert not L.is_available()
        assert L.unavailable_reason().startswith("natten-kernels is not installed: pip install")
        with pytest.raises(RuntimeError, match="not installed"):
            L.build_info()
        with pytest.raises(L.KernelsUnavailableError):
            L.fna_forward(*_tensors(), 3, 1, 1, False, 1.0)
    finally:
        L._reset()


def test_env_override_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv(L.ENV_LIBRARY, str(tmp_path / "nope.so"))
    L._reset()
    try:
        assert "does not name an existing file" in L.unavailable_reason()
    finally:
        L._reset()


def test_env_override_not_a_library(monkeypatch, tmp_path):
    bad = tmp_path / "bad.so"
    bad.write_text("not an ELF file")
    monkeypatch.setenv(L.ENV_LIBRARY, str(bad))
    L._reset()
    try:
        assert L.unavailable_reason().startswith(f"could not load {bad}")
    finally:
        L._reset()


@pytest.mark.parametrize("abi, needle", [(2000, "implements ABI 2.0"), (0, "implements ABI 0.0")])
def test_abi_mismatch(tmp_path_factory, monkeypatch, abi, needle):
    so = _build_fake(tmp_path_factory, abi)
    monkeypatch.setenv(L.ENV_LIBRARY, str(so))
    L._reset()
    try:
        assert not L.is_available()
        reason = L.unavailable_reason()
        assert needle in reason and "needs ABI 1.x" in reason
        assert 'pip install "natten-kernels-cu' in reason and '>=1.0,<2"' in reason
        with pytest.raises(RuntimeError, match="ABI mismatch"):
            L.abi_version()
    finally:
        L._reset()


def test_info(fake, fake_lib_path):
    assert L.abi_version() == (1, 1)
    assert L.supports_slabs()
    assert L.build_info().startswith("fake natten-kernels")
    assert L.library_path() == str(fake_lib_path)
    assert L.device_info(3) == (9, 3)


def test_fna_forward_marshalling(fake):
    q, k, v, out, lse = _tensors()
    L.fna_forward(q, k, v, out, lse, (3, 5), (1, 2), (2, 1), (True, False), 0.125, q_tile=(8, 8), kv_tile=[16, 4])
    p = fake.params()
    assert p.struct_size == 544 and p.dtype == L.DTYPE_FP16 and p.rank == 2
    assert (p.batch, tuple(p.shape), p.heads, p.heads_kv, p.head_dim, p.head_dim_v) == (2, (6, 7, 0), 4, 2, 32, 64)
    assert (p.q, p.k, p.v, p.out, p.lse) == (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr())
    assert tuple(p.q_stride) == q.stride() + (0,)
    assert tuple(p.k_stride) == k.stride() + (0,)
    assert tuple(p.v_stride) == v.stride() + (0,)
    assert tuple(p.out_stride) == out.stride() + (0,)
    assert out.stride() != torch.empty(out.shape).stride()  # a non-contiguous out is passed as is
    assert tuple(p.lse_stride) == lse.stride() + (0,)
    assert tuple(p.kernel_size) == (3, 5, 0) and tuple(p.stride) == (1, 2, 0)
    assert tuple(p.dilation) == (2, 1, 0) and tuple(p.is_causal) == (1, 0, 0)
    assert p.scale == 0.125
    assert tuple(p.q_tile) == (8, 8, 0) and tuple(p.kv_tile) == (16, 4, 0)
    assert (p.backend, p.device, p.kernel_schedule) == (0, 1, 0)
    assert p.stream == 0xABC1  # current stream of device 1
    # No slabs: the ABI 1.1 tail stays zero, which an ABI 1.0 library accepts as well.
    tail = ctypes.string_at(ctypes.addressof(p) + 448, 544 - 448)
    assert tail == bytes(96)


def test_kernel_schedule_marshalling(tmp_path_factory, monkeypatch):
    """kernel_schedule names map to natten_kernel_schedule values (ABI 1.2); unknown names are
    refused before any call; an older library (ABI 1.1) refuses a non-default schedule clearly."""
    assert L.schedule_id(None) == 0
    assert L.schedule_id("cooperative") == 1 and L.schedule_id("pingpong") == 2
    # NATTEN's names: the same two schedules, and "non" = the default (no such kernel here)
    assert (L.schedule_id("coop"), L.schedule_id("pp"), L.schedule_id("non")) == (1, 2, 0)
    for bad in ("bogus", "Pingpong", 2, "Coop"):
        with pytest.raises(ValueError, match="unknown kernel_schedule"):
            L.schedule_id(bad)
    for abi, ok in ((1002, True), (1001, False)):
        so = _build_fake(tmp_path_factory, abi)
        monkeypatch.setenv(L.ENV_LIBRARY, str(so))
        L._reset()
        assert L.is_available(), L.unavailable_reason()
        L._import_torch()
        monkeypatch.setattr(L, "_raw_stream", lambda index: 0xABC0 + index)
        L._TEMPLATES.clear()
        raw = ctypes.CDLL(str(so))
        raw.natten_fake_params.restype = ctypes.c_void_p
        q, k, v, out, lse = _tensors()
        if ok:
            L.fna_forward(q, k, v, out, lse, (3, 5), 1, 1, False, 0.125, backend="hopper-fna",
                          kernel_schedule="pingpong")
            p = L.FnaForwardParams.from_address(raw.natten_fake_params())
            assert (p.backend, p.kernel_schedule) == (L.BACKEND_HOPPER_FNA, 2)
            prepared = L.PreparedFnaForward(q, k, v, out, lse, (3, 5), 1, 1, False, 0.125, backend="hopper-fna",
                                            kernel_schedule="cooperative")
            prepared.launch(q, k, v, out, lse)
            p = L.FnaForwardParams.from_address(raw.natten_fake_params())
            assert (p.backend, p.kernel_schedule, p.q) == (L.BACKEND_HOPPER_FNA, 1, q.data_ptr())
        else:
            with pytest.raises(NotImplementedError, match=r"ABI >= 1\.2"):
                L.fna_forward(q, k, v, out, lse, (3, 5), 1, 1, False, 0.125, kernel_schedule="pingpong")
        L._TEMPLATES.clear()
    L._reset()


def test_fna_forward_slab_marshalling(fake):
    """Slabs: the key tensors have their own token grid (kv_shape), origins and global shape go to
    the ABI 1.1 fields."""
    B, H, Hkv, D, Dv = 2, 4, 2, 32, 64
    q = FakeCudaTensor(torch.empty(B, 5, 7, H, D, dtype=torch.float16), 1)
    k = FakeCudaTensor(torch.empty(B, 9, 7, Hkv, D, dtype=torch.float16), 1)
    v = FakeCudaTensor(torch.empty(B, 9, 7, Hkv, Dv, dtype=torch.float16), 1)
    out = FakeCudaTensor(torch.empty(B, 5, 7, H, Dv, dtype=torch.float16), 1)
    lse = FakeCudaTensor(torch.empty(B, 5, 7, H, dtype=torch.float32), 1)
    L.fna_forward(q, k, v, out, lse, 5, 1, 1, False, 0.125, global_shape=(20, 7), q_origin=(6, 0),
                  kv_origin=[4, 0])
    p = fake.params()
    assert tuple(p.shape) == (5, 7, 0) and tuple(p.kv_shape) == (9, 7, 0)
    assert tuple(p.global_shape) == (20, 7, 0)
    assert tuple(p.q_origin) == (6, 0, 0) and tuple(p.kv_origin) == (4, 0, 0)
    assert tuple(p.k_stride) == k.stride() + (0,) and tuple(p.v_stride) == v.stride() + (0,)
    # Origins default to 0; the cache keys on the slab arguments.
    L.fna_forward(q, k, v, out, lse, 5, 1, 1, False, 0.125, global_shape=(9, 7))
    p = fake.params()
    assert tuple(p.global_shape) == (9, 7, 0) and tuple(p.q_origin) == (0, 0, 0) and tuple(p.kv_origin) == (0, 0, 0)
    # The prepared launcher carries the slab too.
    prep = L.PreparedFnaForward(q, k, v, out, None, 5, 1, 1, False, 0.125, global_shape=(20, 7), q_origin=(6, 0),
                                kv_origin=(4, 0))
    prep.launch(q, k, v, out, None)
    p = fake.params()
    assert tuple(p.global_shape) == (20, 7, 0) and tuple(p.q_origin) == (6, 0, 0) and tuple(p.kv_shape) == (9, 7, 0)
    # Without global_shape k must have q's grid, and origins alone are refused.
    with pytest.raises(L.NattenInvalidArgumentError, match=r"k has shape \(2, 9, 7, 2, 32\); expected \[B, \*shape"):
        L.fna_forward(q, k, v, out, lse, 5, 1, 1, False, 0.125)
    q2, k2, v2, out2, lse2 = _tensors()
    with pytest.raises(L.NattenInvalidArgumentError, match="need global_shape"):
        L.fna_forward(q2, k2, v2, out2, lse2, 3, 1, 1, False, 0.125, q_origin=(1, 0))
    with pytest.raises(L.NattenInvalidArgumentError, match="global_shape has 3 entries but the problem has rank 2"):
        L.fna_forward(q, k, v, out, lse, 5, 1, 1, False, 0.125, global_shape=(20, 7, 1))


def test_slabs_need_abi_1_1(tmp_path_factory, monkeypatch):
    """An ABI 1.0 library loads (natten supports 1.x) but cutlass-fna refuses slabs with a reason."""
    so = _build_fake(tmp_path_factory, 1000)
    monkeypatch.setenv(L.ENV_LIBRARY, str(so))
    L._reset()
    try:
        assert L.is_available() and L.abi_version() == (1, 0)
        assert not L.supports_slabs()
        from natten.backends import cutlass

        reason = cutlass._slabs_reason()
        assert "ABI 1.0" in reason and "ABI >= 1.1" in reason and "upgrade natten-kernels" in reason
    finally:
        L._reset()


def test_fna_forward_defaults_and_broadcast(fake):
    q, k, v, out, _ = _tensors(shape=(9,), D=64, Dv=64, dtype=torch.bfloat16)
    L.fna_forward(q, k, v, out, None, 3, 1, 1, False, 0.5, q_tile=None, kv_tile=[])
    p = fake.params()
    assert p.dtype == L.DTYPE_BF16 and p.rank == 1 and p.lse is None
    assert tuple(p.kernel_size) == (3, 0, 0) and tuple(p.is_causal) == (0, 0, 0)
    assert tuple(p.q_tile) == (0, 0, 0) and tuple(p.kv_tile) == (0, 0, 0)
    assert tuple(p.lse_stride) == (0,) * 5


def test_fna_forward_rank3(fake):
    q, k, v, out, lse = _tensors(shape=(3, 4, 5), H=2, Hkv=2, D=16, Dv=16)
    L.fna_forward(q, k, v, out, lse, [2, 3, 4], [1, 1, 1], [1, 1, 1], [False, True, False], 1.0)
    p = fake.params()
    assert p.rank == 3 and tuple(p.shape) == (3, 4, 5) and tuple(p.q_stride) == q.stride()
    assert tuple(p.is_causal) == (0, 1, 0)


def test_marshal_cache_keys_on_metadata(fake):
    """The cached struct is reused only for identical metadata; pointers are always fresh."""
    L._TEMPLATES.clear()
    a = _tensors()
    L.fna_forward(*a, 3, 1, 1, False, 0.125)
    L.fna_forward(*_tensors(), 3, 1, 1, False, 0.125)  # same metadata, new pointers
    assert len(L._TEMPLATES) == 1
    b = _tensors()
    L.fna_forward(*b, 3, 1, 1, False, 0.125)
    assert fake.params().q == b[0].data_ptr() != a[0].data_ptr()
    L.fna_forward(*b, 5, 1, 1, False, 0.125)  # different window -> new entry
    L.fna_forward(*_tensors(shape=(6, 8)), 3, 1, 1, False, 0.125)  # different shape -> new entry
    assert len(L._TEMPLATES) == 3
    assert tuple(fake.params().shape) == (6, 8, 0)


def test_prepared_fna_forward(fake):
    q, k, v, out, lse = _tensors(shape=(5, 9), H=2, Hkv=1, D=16, Dv=32)
    prep = L.PreparedFnaForward(q, k, v, out, lse, (3, 4), (2, 1), 1, (False, True), 0.25, q_tile=(8, 8), kv_tile=(4, 16))
    q2, k2, v2, out2, _ = _tensors(shape=(5, 9), H=2, Hkv=1, D=16, Dv=32)
    prep.launch(q2, k2, v2, out2, None)
    p = fake.params()
    assert (p.q, p.k, p.v, p.out, p.lse) == (q2.data_ptr(), k2.data_ptr(), v2.data_ptr(), out2.data_ptr(), None)
    assert tuple(p.kernel_size) == (3, 4, 0) and tuple(p.stride) == (2, 1, 0) and tuple(p.is_causal) == (0, 1, 0)
    assert (p.heads, p.heads_kv, p.head_dim, p.head_dim_v, p.device, p.stream) == (2, 1, 16, 32, 1, 0xABC1)
    assert tuple(p.q_tile) == (8, 8, 0) and tuple(p.kv_tile) == (4, 16, 0)
    fake.set(L.STATUS_CUDA_ERROR, b"launching the SM80 kernel failed: out of memory")
    with pytest.raises(L.NattenCudaError, match="out of memory"):
        prep.launch(q, k, v, out, lse)
    with pytest.raises(ValueError, match="out has shape"):
        L.PreparedFnaForward(q, k, v, q, lse, 3, 1, 1, False, 1.0)


@pytest.mark.parametrize(
    "status, cls, bases",
    [
        (L.STATUS_INVALID_ARGUMENT, L.NattenInvalidArgumentError, (ValueError,)),
        (L.STATUS_UNSUPPORTED, L.NattenUnsupportedError, (NotImplementedError,)),
        (L.STATUS_CUDA_ERROR, L.NattenCudaError, ()),
        (L.STATUS_NO_DEVICE, L.NattenNoDeviceError, ()),
        (L.STATUS_INTERNAL_ERROR, L.NattenInternalError, ()),
        (42, L.NattenKernelError, ()),
    ],
)
def test_status_mapping(fake, status, cls, bases):
    fake.set(status, b"kernel_size[0] is 1; it must be >= 2")
    with pytest.raises(cls) as info:
        L.fna_forward(*_tensors(), 3, 1, 1, False, 1.0)
    e = info.value
    assert isinstance(e, RuntimeError) and isinstance(e, L.NattenKernelError)
    for b in bases:
        assert isinstance(e, b)
    assert e.status == status and e.message == "kernel_size[0] is 1; it must be >= 2"
    assert "natten_fna_forward: kernel_size[0] is 1" in str(e)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda t: (t[0], t[1], t[2], FakeCudaTensor(torch.empty(2, 6, 7, 4, 32, dtype=torch.float16), 1), t[4]), "out has shape"),
        (lambda t: (t[0], FakeCudaTensor(torch.empty(2, 6, 7, 2, 32, dtype=torch.bfloat16), 1), *t[2:]), "k has dtype"),
        (lambda t: (t[0], FakeCudaTensor(torch.empty(2, 6, 6, 2, 32, dtype=torch.float16), 1), *t[2:]), "k has shape"),
        (lambda t: (*t[:4], FakeCudaTensor(torch.empty(2, 6, 7, 4, dtype=torch.float16), 1)), "lse must be float32"),
        (lambda t: (*t[:4], FakeCudaTensor(torch.empty(2, 6, 7, 3), 1)), "lse has shape"),
        (lambda t: (t[0], t[1], t[2], FakeCudaTensor(torch.empty(2, 6, 7, 4, 64, dtype=torch.float16), 0), t[4]), "out is on"),
        (lambda t: (torch.empty(2, 6, 7, 4, 32, dtype=torch.float16), *t[1:]), "needs CUDA tensors"),
        (lambda t: (FakeCudaTensor(torch.empty(2, 4, 32, dtype=torch.float16), 1), *t[1:]), "1 to 3 spatial axes"),
    ],
    ids=["out_shape", "k_dtype", "k_shape", "lse_dtype", "lse_shape", "device", "cpu", "rank0"],
)
def test_python_side_checks(fake, mutate, needle):
    args = mutate(_tensors())
    with pytest.raises(L.NattenInvalidArgumentError, match=needle) as info:
        L.fna_forward(*args, 3, 1, 1, False, 1.0)
    assert isinstance(info.value, ValueError)


def test_window_arity_checked(fake):
    with pytest.raises(ValueError, match="kernel_size has 3 entries but the problem has rank 2"):
        L.fna_forward(*_tensors(), (3, 3, 3), 1, 1, False, 1.0)


def test_float64_unsupported(fake):
    q, k, v, out, lse = _tensors(dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="float64"):
        L.fna_forward(q, k, v, out, lse, 3, 1, 1, False, 1.0)


def test_query_configs_and_supports(fake):
    configs = L.query_configs(torch.float16, 2, 64, arch=(9, 0))
    pr = fake.problem()
    assert (pr.struct_size, pr.dtype, pr.rank, pr.head_dim, pr.head_dim_v, pr.arch) == (48, 1, 2, 64, 64, 90)
    assert configs == [
        {"backend": "cutlass-fna", "backend_id": 1, "q_tile": (1, 64), "kv_tile": (8, 8)},
        {"backend": "cutlass-fna", "backend_id": 1, "q_tile": (2, 32), "kv_tile": (8, 8)},
        {"backend": "cutlass-fna", "backend_id": 1, "q_tile": (4, 16), "kv_tile": (8, 8)},
    ]
    assert L.fna_supports("bf16", 3, 128, 64, device=2, backend="cutlass-fna") is None
    pr = fake.problem()
    assert (pr.dtype, pr.rank, pr.head_dim, pr.head_dim_v, pr.arch, pr.device, pr.backend) == (2, 3, 128, 64, 0, 2, 1)
    fake.set(L.STATUS_UNSUPPORTED, b"dtype fp32 is not supported")
    assert L.query_configs("float32", 1, 64, arch=80) == []
    assert L.fna_supports("float32", 1, 64, arch=80) == "dtype fp32 is not supported"
    fake.set(L.STATUS_INVALID_ARGUMENT, b"problem->rank is 7")
    with pytest.raises(ValueError, match="rank is 7"):
        L.query_configs("fp16", 7, 64, arch=80)


def test_config_listing_forward_and_backward(monkeypatch):
    """get_configs_for_cutlass_fna lists the library's tiles; the backward listing keeps the
    64-token ones the backward kernels are built for, and says so when there is no backward."""
    import natten
    from natten.backends import cutlass

    q, k, v, _, _ = _tensors(device=0)
    tiles = [dict(q_tile=(8, 8), kv_tile=(8, 8)), dict(q_tile=(16, 8), kv_tile=(8, 16)),
             dict(q_tile=(4, 16), kv_tile=(16, 4))]
    monkeypatch.setattr(cutlass, "can_run_fna", lambda *a, **kw: None)
    monkeypatch.setattr(cutlass._libnatten, "query_configs", lambda *a, **kw: tiles)
    assert natten.get_configs_for_cutlass_fna(q, k, v) == [((8, 8), (8, 8)), ((16, 8), (8, 16)),
                                                          ((4, 16), (16, 4))]
    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    assert natten.get_bwd_configs_for_cutlass_fna(q, k, v) == [((8, 8), (8, 8)), ((4, 16), (16, 4))]
    monkeypatch.setattr(cutlass, "_backward_reason", lambda: "needs natten-kernels ABI >= 1.1")
    with pytest.raises(NotImplementedError, match="no fused backward here: needs natten-kernels ABI >= 1.1"):
        natten.get_bwd_configs_for_cutlass_fna(q, k, v)


def test_fmha_config_listing(monkeypatch):
    """get_configs_for_cutlass_fmha asks the library for rank-1 tiles (dense attention is a 1-D
    problem on the fused kernel) and returns them as (q_tile_size, kv_tile_size) ints; the backward
    listing keeps the 64-token ones; hopper-fmha asks its own backend; refusals say why."""
    import natten
    from natten.backends import cutlass, hopper

    q, k, v, _, _ = _tensors(shape=(42,), device=0)  # [B, N, H, D]
    seen = []

    def query(dtype, rank, d, dv, **kw):
        seen.append((rank, d, dv, kw.get("backend")))
        return [dict(q_tile=(64,), kv_tile=(64,)), dict(q_tile=(128,), kv_tile=(128,))]

    monkeypatch.setattr(cutlass._libnatten, "query_configs", query)
    monkeypatch.setattr(cutlass, "can_run_fmha", lambda *a, **kw: None)
    monkeypatch.setattr(cutlass, "_backward_reason", lambda: None)
    assert natten.get_configs_for_cutlass_fmha(q, k, v) == [(64, 64), (128, 128)]
    assert seen[-1][:3] == (1, q.shape[-1], v.shape[-1])
    assert natten.get_bwd_configs_for_cutlass_fmha(q, k, v) == [(64, 64)]
    monkeypatch.setattr(hopper, "can_run_fmha", lambda *a, **kw: None)
    assert natten.get_configs_for_cutlass_hopper_fmha(q, k, v) == [(64, 64), (128, 128)]
    assert seen[-1][3] == "hopper-fna"
    monkeypatch.setattr(cutlass, "_needs_grad", lambda *t: False)  # the stand-in tensors have no autograd
    monkeypatch.setattr(cutlass, "can_run_fmha", lambda *a, **kw: "it needs CUDA tensors")
    with pytest.raises(ValueError, match="cutlass-fmha cannot run these tensors: it needs CUDA tensors"):
        natten.get_configs_for_cutlass_fmha(q, k, v)
    monkeypatch.setattr(hopper, "can_run_fmha", lambda *a, **kw: "it runs only on SM 9.0")
    with pytest.raises(ValueError, match="hopper-fmha cannot run these tensors: it runs only on SM 9.0"):
        natten.get_configs_for_cutlass_hopper_fmha(q, k, v)
