"""Configure-time guards of CMakeLists.txt (configure only: a few seconds each, no compilation)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import PKG

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None,
                                reason="cmake/ninja not found")


def _nvcc_tag():
    nvcc = os.environ.get("CUDACXX") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        nvcc = shutil.which("nvcc")
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"cu{m.group(1)}{m.group(2)}"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    """One build directory for the module: compiler detection runs once; every configure first
    unsets the cache entries the tests set."""
    return tmp_path_factory.mktemp("cmake-config")


RESET = ["-UNATTEN_CUDA_ARCHS", "-UCUTLASS_DIR", "-USKBUILD_PROJECT_NAME", "-USKBUILD_PROJECT_VERSION"]


def configure(build_dir, *args, env=None):
    e = dict(os.environ)
    e.pop("NATTEN_CUDA_ARCHS", None)
    e.update(env or {})
    proc = subprocess.run(
        ["cmake", "-S", str(PKG), "-B", str(build_dir), "-G", "Ninja", f"-DPython_EXECUTABLE={sys.executable}",
         *RESET, *args],
        capture_output=True, text=True, env=e,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_archs_from_env_and_cmake_var(build_dir):
    rc, out = configure(build_dir, env={"NATTEN_CUDA_ARCHS": "86, 90a"})
    assert rc == 0, out
    assert "archs 86-real,90a-real (env NATTEN_CUDA_ARCHS)" in out
    assert f"distribution natten-kernels-{_nvcc_tag()}" in out
    assert re.search(r"CUTLASS 4\.2\.\d+ at ", out), out
    # -D wins over the environment; the cache of the same build dir is reused.
    rc, out = configure(build_dir, "-DNATTEN_CUDA_ARCHS=80;100a-real;90-virtual", env={"NATTEN_CUDA_ARCHS": "86"})
    assert rc == 0, out
    assert "archs 80-real,100a-real,90-virtual (-DNATTEN_CUDA_ARCHS)" in out
    gen = (build_dir / "generated" / "natten_build_config.h").read_text()
    # The SM80-class images: plain sm_100 SASS for 100a (runs on 10.x), PTX for 90.
    assert "{80, 0, 0}, {100, 0, 0}, {90, 0, 1}," in gen


def _gencodes(build_dir):
    """The --generate-code flags of the SM80-class and the Hopper translation units."""
    cmds = subprocess.run(["ninja", "-C", str(build_dir), "-t", "commands"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    sm80 = [c for c in cmds if "/kernels/sm80/fna_forward_fp16_hdim64.cu" in c and "nvcc" in c]
    sm90 = [c for c in cmds if "/kernels/sm90/fna_forward_fp16_hdim64.cu" in c and "nvcc" in c]
    flags = lambda c: re.findall(r"--generate-code=\S+", c)  # noqa: E731
    return flags(sm80[0]), (flags(sm90[0]) if sm90 else None)


def test_sm80_kernels_share_one_ptx(build_dir):
    """The SM80-class units run cicc (most of their compile time) once and ptxas once per SM: every
    real arch gets its SASS from the lowest requested arch's PTX; '-virtual' entries add their own
    PTX; the Hopper units keep sm_90a."""
    rc, out = configure(build_dir, "-DNATTEN_CUDA_ARCHS=80;86;89;90a;100a")
    assert rc == 0, out[-3000:]
    sm80, sm90 = _gencodes(build_dir)
    assert sm80 == ["--generate-code=arch=compute_80,code=[sm_80,sm_86,sm_89,sm_90,sm_100]"], sm80
    assert sm90 == ["--generate-code=arch=compute_90a,code=[sm_90a]"], sm90
    assert "{80, 0, 0}, {86, 0, 0}, {89, 0, 0}, {90, 0, 0}, {100, 0, 0}," in (
        build_dir / "generated" / "natten_build_config.h").read_text()
    rc, out = configure(build_dir, "-DNATTEN_CUDA_ARCHS=100a;90a;120-virtual")
    assert rc == 0, out[-3000:]
    sm80, sm90 = _gencodes(build_dir)
    assert sm80 == ["--generate-code=arch=compute_90,code=[sm_90,sm_100]",
                    "--generate-code=arch=compute_120,code=[compute_120]"], sm80
    assert sm90 == ["--generate-code=arch=compute_90a,code=[sm_90a]"], sm90
    rc, out = configure(build_dir, "-DNATTEN_CUDA_ARCHS=86")
    assert rc == 0, out[-3000:]
    sm80, sm90 = _gencodes(build_dir)
    assert sm80 == ["--generate-code=arch=compute_86,code=[sm_86]"] and sm90 is None, (sm80, sm90)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-DNATTEN_CUDA_ARCHS=75"], "is below sm_80"),
        (["-DNATTEN_CUDA_ARCHS=sm_80"], "bad CUDA arch 'sm_80'"),
        (["-DNATTEN_CUDA_ARCHS=80", "-DSKBUILD_PROJECT_VERSION=2.0.0"], "does not match the ABI version 1.3"),
        (["-DNATTEN_CUDA_ARCHS=80", "-DCUTLASS_DIR=/nonexistent/cutlass"], "CUTLASS headers not found"),
    ],
    ids=["arch75", "arch_syntax", "version", "cutlass_dir"],
)
def test_configure_errors(build_dir, args, needle):
    rc, out = configure(build_dir, *args)
    assert rc != 0
    assert needle in out, out[-3000:]


def test_dist_name_must_match_toolkit(build_dir):
    other = "natten-kernels-cu128" if _nvcc_tag() != "cu128" else "natten-kernels-cu130"
    rc, out = configure(build_dir, "-DNATTEN_CUDA_ARCHS=80", f"-DSKBUILD_PROJECT_NAME={other}",
                        "-DSKBUILD_PROJECT_VERSION=1.3.0")
    assert rc != 0
    flat = " ".join(out.split())
    assert f"must be named 'natten-kernels-{_nvcc_tag()}'" in flat, out[-3000:]
    assert "set_kernel_wheel_name.py" in flat


def test_valid_configure_after_errors(build_dir):
    """The guards leave nothing behind: the same directory configures cleanly again."""
    rc, out = configure(build_dir, "-DNATTEN_CUDA_ARCHS=80")
    assert rc == 0, out[-3000:]
    assert "archs 80-real (-DNATTEN_CUDA_ARCHS)" in out
