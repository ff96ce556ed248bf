#!/usr/bin/env python3
"""Smoke test of an installed natten + natten-kernels + natten-profiler (run by check_wheels.py in
a fresh venv, outside the repository so nothing is imported from the source tree)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import torch

import natten
import natten_kernels
from natten import _version

assert "site-packages" in natten.__file__, f"natten imported from {natten.__file__}, not the wheel"
print(f"natten {natten.__version__} (torch {torch.__version__}) from {os.path.dirname(natten.__file__)}")

path = natten_kernels.library_path()
assert os.path.isfile(path), f"natten_kernels.library_path() = {path!r} does not exist"
lib = ctypes.CDLL(path)
lib.natten_abi_version.restype = ctypes.c_int
lib.natten_build_info.restype = ctypes.c_char_p
abi = lib.natten_abi_version()
assert _version.abi_supported(abi), (
    f"library ABI {abi} is outside natten's supported range "
    f"{_version.SUPPORTED_ABI_MAJOR}.{_version.MIN_ABI_MINOR}+")
print(f"libnatten_kernels: {path}\n  ABI {abi}; {lib.natten_build_info().decode()}")
# Without a GPU the library must still load and answer (no libcuda needed at load time).
major, minor = ctypes.c_int(-1), ctypes.c_int(-1)
status = lib.natten_device_info(-1, ctypes.byref(major), ctypes.byref(minor))
print(f"  natten_device_info -> status {status}, cc {major.value}.{minor.value}")
assert status in (0, 4), f"natten_device_info returned {status} (expected SUCCESS or NO_DEVICE)"

# natten.na2d on the CPU, checked against dense attention (a window covering the whole grid).
q, k, v = (torch.randn(2, 12, 12, 4, 16) for _ in range(3))
out = natten.na2d(q, k, v, kernel_size=5, stride=2, dilation=2)
assert out.shape == (2, 12, 12, 4, 16) and torch.isfinite(out).all()
full = natten.na2d(q, k, v, kernel_size=12)
ref = torch.nn.functional.scaled_dot_product_attention(
    *(t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).unflatten(1, (12, 12))
assert torch.allclose(full, ref, atol=1e-5), (full - ref).abs().max()
print("natten.na2d on CPU: ok")

# The console script sits next to this interpreter (the venv's bin/), whether or not that is on PATH.
exe = os.path.join(os.path.dirname(sys.executable), "natten-profiler")
assert os.path.isfile(exe), f"the natten-profiler console script is not installed ({exe})"
r = subprocess.run([exe, "--help"], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
print("natten-profiler --help: ok")
print("smoke test passed")
