"""The built library: loads with ctypes alone (no torch, no CUDA device), reports its ABI version and
build info, exports only natten_* symbols, and carries the CUDA runtime statically."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import PKG, test_archs

EXPECTED_EXPORTS = {
    "natten_abi_version",
    "natten_build_info",
    "natten_last_error",
    "natten_status_string",
    "natten_device_info",
    "natten_fna_supports",
    "natten_fna_query_configs",
    "natten_fna_forward",
    "natten_fna_backward",
    "natten_fna_backward_workspace_size",
}


def _header_abi():
    text = (PKG / "csrc" / "include" / "natten_kernels.h").read_text()
    major = int(re.search(r"#define NATTEN_ABI_VERSION_MAJOR (\d+)", text).group(1))
    minor = int(re.search(r"#define NATTEN_ABI_VERSION_MINOR (\d+)", text).group(1))
    return major, minor


def test_loads_with_ctypes_alone(library_path):
    """A fresh interpreter loads and calls the library with nothing but ctypes."""
    code = (
        "import ctypes, sys\n"
        f"lib = ctypes.CDLL({str(library_path)!r})\n"
        "lib.natten_build_info.restype = ctypes.c_char_p\n"
        "lib.natten_last_error.restype = ctypes.c_char_p\n"
        "print(lib.natten_abi_version())\n"
        "print(lib.natten_build_info().decode())\n"
        "print(repr(lib.natten_last_error().decode()))\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    major, minor = _header_abi()
    assert lines[0] == str(major * 1000 + minor)
    assert lines[1].startswith("natten-kernels ")
    assert lines[2] == "''"  # no failure yet in this thread


def test_abi_version(lib):
    major, minor = _header_abi()
    assert (major, minor) == (1, 3)
    assert lib.natten_abi_version() == major * 1000 + minor


def test_build_info(lib):
    info = lib.natten_build_info().decode()
    fields = dict(part.split(" ", 1) for part in info.split("; "))
    major, minor = _header_abi()
    assert re.fullmatch(r"%d\.%d\.\d+ \(natten-kernels-cu\d+\)" % (major, minor), fields["natten-kernels"]), info
    assert fields["ABI"] == f"{major}.{minor}"
    assert re.fullmatch(r"\d+\.\d+\.\d+ \(static runtime\)", fields["CUDA"]), info
    cuda = fields["CUDA"].split(".")
    assert fields["natten-kernels"].endswith(f"(natten-kernels-cu{cuda[0]}{cuda[1]})")
    assert fields["build"] == "Release"
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?|unknown|\S+", fields["git"]), info
    assert fields["archs"]
    assert "CUTLASS" in fields and "host" in fields


def test_build_info_archs_match_request(lib, request):
    import os

    if os.environ.get("NATTEN_KERNELS_LIBRARY"):
        pytest.skip("testing an externally built library")
    info = lib.natten_build_info().decode()
    archs = info.split("archs ")[1].split(";")[0].split(",")
    want = [a if "-" in a else a + "-real" for a in re.split(r"[;, ]+", test_archs()) if a]
    assert archs == want


def _nm(path):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    out = subprocess.run([nm, "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_exports_only_natten_symbols(library_path):
    syms = _nm(library_path)
    stray = sorted(s for s in syms if not s.startswith("natten_"))
    assert not stray, f"non-natten_ exported symbols: {stray[:20]}"
    assert syms == EXPECTED_EXPORTS


def _readelf_dynamic(path):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not found")
    return subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True, check=True).stdout


def test_static_cuda_runtime_and_no_rpath(library_path):
    dyn = _readelf_dynamic(library_path)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", dyn)
    assert not [n for n in needed if "cudart" in n or "libcuda" in n], needed
    assert set(needed) <= {"libstdc++.so.6", "libgcc_s.so.1", "libc.so.6", "libm.so.6", "libdl.so.2",
                           "libpthread.so.0", "librt.so.1", "ld-linux-x86-64.so.2"}, needed
    assert "RPATH" not in dyn and "RUNPATH" not in dyn
