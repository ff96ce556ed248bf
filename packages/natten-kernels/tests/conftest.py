"""Fixtures of the natten-kernels tests (CPU only: no GPU is needed or used).

The library is built once per session with CMake + Ninja into a temporary directory, for the
architectures in $NATTEN_CUDA_ARCHS (default "80" to keep it fast). Set
  NATTEN_KERNELS_LIBRARY=/path/to/libnatten_kernels.so   to test an existing build instead, and
  NATTEN_KERNELS_TEST_BUILD_DIR=/some/dir                 to keep the build dir between sessions
                                                          (incremental rebuilds).
The wheel test re-uses the session build directory, so the kernels compile once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
PKG = HERE.parent
REPO = PKG.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import abi_ctypes  # noqa: E402

TIMINGS: dict = {}


def test_archs() -> str:
    return os.environ.get("NATTEN_CUDA_ARCHS") or "80"


test_archs.__test__ = False  # not a test


def _run(cmd, what, **kw):
    t0 = time.monotonic()
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}) after {dt:.0f}s:\n$ {' '.join(map(str, cmd))}\n"
                    f"{proc.stdout[-8000:]}", pytrace=False)
    return proc, dt


@pytest.fixture(scope="session")
def kernels_build(tmp_path_factory):
    """CMake build of the library (once per session)."""
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH", pytrace=False)
    keep = os.environ.get("NATTEN_KERNELS_TEST_BUILD_DIR")
    build_dir = Path(keep) if keep else tmp_path_factory.mktemp("natten-kernels-build")
    archs = test_archs()
    _, t_cfg = _run(
        ["cmake", "-S", PKG, "-B", build_dir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
         f"-DNATTEN_CUDA_ARCHS={archs}", f"-DPython_EXECUTABLE={sys.executable}"],
        "cmake configure",
    )
    _, t_build = _run(["cmake", "--build", build_dir], "cmake --build")
    TIMINGS[f"cmake configure (archs {archs})"] = t_cfg
    TIMINGS[f"cmake build (archs {archs})"] = t_build
    lib = build_dir / "libnatten_kernels.so"
    assert lib.is_file(), f"no {lib} after the build"
    return SimpleNamespace(dir=build_dir, library=lib, archs=archs)


@pytest.fixture(scope="session")
def library_path(request) -> Path:
    env = os.environ.get("NATTEN_KERNELS_LIBRARY")
    if env:
        path = Path(env)
        if not path.is_file():
            pytest.fail(f"NATTEN_KERNELS_LIBRARY={env} does not exist", pytrace=False)
        return path
    return request.getfixturevalue("kernels_build").library


@pytest.fixture(scope="session")
def lib(library_path):
    return abi_ctypes.load(str(library_path))


@pytest.fixture(scope="session")
def built_archs(lib) -> list:
    """Arch entries of this build, parsed from natten_build_info() ("archs 80-real,90a-real; ...")."""
    info = lib.natten_build_info().decode()
    part = [p.strip() for p in info.split(";") if p.strip().startswith("archs ")][0]
    return part[len("archs "):].split(",")


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("natten-kernels build timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k}: {v:.1f} s")
