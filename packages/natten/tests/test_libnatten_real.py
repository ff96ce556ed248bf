"""natten._libnatten against a real libnatten_kernels.so (collected only when
NATTEN_KERNELS_LIBRARY names one: the natten-kernels CPU suite runs it against the library it just
built, see packages/natten-kernels/tests/test_natten_integration.py; ci/gpu.sh sets it too)."""

import os

import pytest
import torch

from natten import _libnatten as L
from test_libnatten import _tensors

@pytest.fixture
def real_lib(monkeypatch):
    path = os.environ[L.ENV_LIBRARY]
    L._reset()
    if not L.is_available():
        pytest.fail(L.unavailable_reason())
    yield path
    L._reset()


def test_real_library(real_lib, monkeypatch):
    assert L.abi_version()[0] == 1
    assert L.build_info().startswith("natten-kernels ")
    # fp32 runs on the SM80 backend's CUDA-core kernels (same tiles as fp16); Hopper refuses it.
    assert L.fna_supports("float32", 1, 64, arch=80) is None
    assert L.fna_supports("float32", 2, 40, 136, arch=86) is None
    assert L.query_configs("float32", 2, 64, arch=80) == L.query_configs("float16", 2, 64, arch=80)
    assert "dtype fp32" in L.fna_supports("float32", 1, 64, arch=90, backend="hopper-fna")
    with pytest.raises(L.NattenInvalidArgumentError, match="problem->rank is 4"):
        L.query_configs("fp16", 4, 64, arch=80)
    L._import_torch()
    monkeypatch.setattr(L, "_raw_stream", lambda index: 0)
    q, k, v, out, lse = _tensors(device=0)
    with pytest.raises(L.NattenInvalidArgumentError, match=r"kernel_size\[1\] \* dilation\[1\] = 5 \* 2 = 10 exceeds shape\[1\] = 7"):
        L.fna_forward(q, k, v, out, lse, (3, 5), 1, (1, 2), False, 0.125)
    try:
        L.device_info(-1)
    except L.NattenNoDeviceError:
        # No GPU: a valid call passes every check and stops at the device query. (With a GPU the
        # fake pointers must never reach a launch, so this part only runs without one.)
        with pytest.raises(L.NattenNoDeviceError, match="no CUDA device"):
            L.fna_forward(q, k, v, out, lse, (3, 5), 1, 1, False, 0.125)


def test_real_library_slab_validation(real_lib, monkeypatch):
    """ABI 1.1 slab fields reach the library's checks (messages name the field, axis and values)."""
    assert L.supports_slabs()
    L._import_torch()
    monkeypatch.setattr(L, "_raw_stream", lambda index: 0)
    q, _, _, out, lse = _tensors(shape=(4, 7), device=0)
    _, k, v, _, _ = _tensors(shape=(6, 7), device=0)
    # The query slab [3, 7) of a 12-row grid with kernel 3 needs the keys [2, 8); [2, 8) works,
    # [1, 7) misses key 7.
    with pytest.raises(L.NattenInvalidArgumentError,
                       match=r"the key slab \[1, 7\) on axis 0 .* does not cover the keys \[2, 8\) that the "
                             r"query slab \[3, 7\)"):
        L.fna_forward(q, k, v, out, lse, 3, 1, 1, False, 0.125, global_shape=(12, 7), q_origin=(3, 0),
                      kv_origin=(1, 0))
    with pytest.raises(L.NattenInvalidArgumentError,
                       match=r"q_origin\[0\] \+ shape\[0\] = 10 \+ 4 exceeds global_shape\[0\] = 12"):
        L.fna_forward(q, k, v, out, lse, 3, 1, 1, False, 0.125, global_shape=(12, 7), q_origin=(10, 0),
                      kv_origin=(2, 0))
    with pytest.raises(L.NattenInvalidArgumentError,
                       match=r"kernel_size\[1\] \* dilation\[1\] = 3 \* 3 = 9 exceeds global_shape\[1\] = 7"):
        L.fna_forward(q, k, v, out, lse, 3, 1, (1, 3), False, 0.125, global_shape=(12, 7), q_origin=(3, 0),
                      kv_origin=(2, 0))
    with pytest.raises(L.NattenInvalidArgumentError, match=r"q_origin\[1\] is -1; it must be >= 0"):
        L.fna_forward(q, k, v, out, lse, 3, 1, 1, False, 0.125, global_shape=(12, 7), q_origin=(3, -1),
                      kv_origin=(2, 0))
    try:
        L.device_info(-1)
    except L.NattenNoDeviceError:
        with pytest.raises(L.NattenNoDeviceError, match="no CUDA device"):
            L.fna_forward(q, k, v, out, lse, 3, 1, 1, False, 0.125, global_shape=(12, 7), q_origin=(3, 0),
                          kv_origin=(2, 0))
def _grads_like(q, k, v, out, lse, device=0):
    from test_libnatten import FakeCudaTensor

    def like(t, dtype=None):
        return FakeCudaTensor(torch.empty(t.shape, dtype=dtype or t.dtype), device)

    return like(out), like(lse), like(q), like(k), like(v)


def test_real_library_backward(real_lib, monkeypatch):
    """natten_fna_backward (ABI 1.1) through the binding: validation errors come back as the
    library's messages, the workspace size is the library's, and (without a GPU) a valid call
    passes every check and stops at the device query."""
    from test_libnatten import FakeCudaTensor

    assert L.abi_version() >= (1, 1)
    assert L.has_backward()
    L._import_torch()
    monkeypatch.setattr(L, "_raw_stream", lambda index: 0)
    q, k, v, out, lse = _tensors(device=0)
    d_out, d_lse, d_q, d_k, d_v = _grads_like(q, k, v, out, lse)
    args = (q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v)
    # 2 * 6 * 7 * 4 rows of float32, rounded up to 256 bytes.
    assert _delta_part(L.fna_backward_workspace_size(*args, (3, 5), 1, 1, False, 0.125), 2 * 4) == 1536
    with pytest.raises(L.NattenInvalidArgumentError,
                       match=r"kernel_size\[1\] \* dilation\[1\] = 5 \* 2 = 10 exceeds shape\[1\] = 7"):
        L.fna_backward(*args, (3, 5), 1, (1, 2), False, 0.125)
    with pytest.raises(L.NattenInvalidArgumentError, match=r"stride\[0\] is 4"):
        L.fna_backward(*args, (3, 5), (4, 1), 1, False, 0.125)
    with pytest.raises(L.NattenInvalidArgumentError, match="lse .* is required"):
        L.fna_backward(q, k, v, out, None, d_out, d_lse, d_q, d_k, d_v, (3, 5), 1, 1, False, 0.125)
    with pytest.raises(L.NattenInvalidArgumentError, match="d_k has shape"):
        L.fna_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_v, d_v, (3, 5), 1, 1, False, 0.125)
    with pytest.raises(L.NattenUnsupportedError, match="q_tile"):
        L.fna_backward(*args, (3, 5), 1, 1, False, 0.125, q_tile=(8, 4), kv_tile=(8, 8))
    ws = FakeCudaTensor(torch.empty(1536, dtype=torch.uint8), 0)
    small = FakeCudaTensor(torch.empty(512, dtype=torch.uint8), 0)
    try:
        L.device_info(-1)
    except L.NattenNoDeviceError:
        with pytest.raises(L.NattenInvalidArgumentError, match="workspace_bytes is 512 but this problem needs 1536"):
            L.fna_backward(*args, (3, 5), 1, 1, False, 0.125, workspace=small)
        with pytest.raises(L.NattenNoDeviceError, match="no CUDA device"):
            L.fna_backward(*args, (3, 5), 1, 1, False, 0.125, workspace=ws, deterministic=True)
        with pytest.raises(L.NattenNoDeviceError, match="no CUDA device"):
            L.fna_backward(q, k, v, out, lse, d_out, None, d_q, d_k, d_v, (3, 5), (2, 3), (2, 1), (True, False),
                           0.125, workspace=ws)


def _delta_part(nbytes: int, batch_heads: int) -> int:
    """The delta part of a backward workspace size: a library with the sm_90a kernels adds (under
    AUTO) the SM90 dK / dV kernel's visit tables, 2 x 64 floats per batch x head x query tile, so
    strip whole table rows (the delta part is below one such row here)."""
    if "90a" in L.build_info():
        rows = 2 * 64 * 4 * batch_heads
        return nbytes % rows if nbytes > rows else nbytes
    return nbytes


def test_real_library_backward_slabs(real_lib, monkeypatch):
    """ABI 1.2: the backward's slab fields reach the library's checks (the forward's messages), the
    workspace covers the query slab, and (without a GPU) a valid slab call stops at the device."""
    from test_libnatten import FakeCudaTensor

    if not L.supports_backward_slabs():
        pytest.skip(f"the library (ABI {L.abi_version()}) has no backward for slabs")
    L._import_torch()
    monkeypatch.setattr(L, "_raw_stream", lambda index: 0)
    q, _, _, out, lse = _tensors(shape=(4, 7), device=0)
    _, k, v, _, _ = _tensors(shape=(6, 7), device=0)
    grads = _grads_like(q, k, v, out, lse)
    args = (q, k, v, out, lse, *grads)
    # The query slab [3, 7) of a 12-row grid with kernel 3 needs the keys [2, 8).
    assert _delta_part(L.fna_backward_workspace_size(*args, 3, 1, 1, False, 0.125, global_shape=(12, 7),
                                                     q_origin=(3, 0), kv_origin=(2, 0)),
                       2 * 4) == 1024  # 2 * 4 * 7 * 4 floats -> 896 -> 1024
    with pytest.raises(L.NattenInvalidArgumentError,
                       match=r"the key slab \[1, 7\) on axis 0 .* does not cover the keys \[2, 8\) that the "
                             r"query slab \[3, 7\)"):
        L.fna_backward(*args, 3, 1, 1, False, 0.125, global_shape=(12, 7), q_origin=(3, 0), kv_origin=(1, 0))
    with pytest.raises(L.NattenInvalidArgumentError,
                       match=r"kv_origin\[0\] \+ kv_shape\[0\] = 7 \+ 6 exceeds global_shape\[0\] = 12"):
        L.fna_backward(*args, 3, 1, 1, False, 0.125, global_shape=(12, 7), q_origin=(3, 0), kv_origin=(7, 0))
    ws = FakeCudaTensor(torch.empty(1024, dtype=torch.uint8), 0)
    try:
        L.device_info(-1)
    except L.NattenNoDeviceError:
        with pytest.raises(L.NattenNoDeviceError, match="no CUDA device"):
            L.fna_backward(*args, 3, 1, 1, False, 0.125, workspace=ws, global_shape=(12, 7), q_origin=(3, 0),
                           kv_origin=(2, 0))
