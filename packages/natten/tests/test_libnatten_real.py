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
    assert L.fna_supports("float32", 1, 64, arch=80).startswith("dtype fp32 is not supported")
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
