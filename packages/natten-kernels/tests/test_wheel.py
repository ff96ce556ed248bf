"""The wheel: name from the toolkit, py3-none-<platform> tag, contents, no dependencies, and the
installed locator package finds a loadable library without torch.

By default the wheel is built in the session's CMake build directory (the kernels are compiled once
per session; scikit-build-core re-configures and re-links). Set NATTEN_KERNELS_TEST_CLEAN_WHEEL=1
to build it from scratch in a fresh directory instead (a full one-arch compile)."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import PKG, TIMINGS

# The version the wheel must carry: <ABI major>.<ABI minor>.<patch> of the header.
_ABI = tuple(int(re.search(rf"#define NATTEN_ABI_VERSION_{part} (\d+)",
                           (PKG / "csrc" / "include" / "natten_kernels.h").read_text()).group(1))
             for part in ("MAJOR", "MINOR"))
_VERSION_RE = rf"{_ABI[0]}\.{_ABI[1]}\.\d+"


@pytest.fixture(scope="module")
def wheel(kernels_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    clean = os.environ.get("NATTEN_KERNELS_TEST_CLEAN_WHEEL") == "1"
    build_dir = tmp_path_factory.mktemp("wheel-build") if clean else kernels_build.dir
    env = dict(os.environ, NATTEN_CUDA_ARCHS=kernels_build.archs)
    cmd = [sys.executable, "-m", "pip", "wheel", str(PKG), "--no-build-isolation", "--no-deps",
           "--disable-pip-version-check", "-w", str(out), "-C", f"build-dir={build_dir}"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.monotonic() - t0
    TIMINGS[f"pip wheel ({'clean build dir' if clean else 're-using the session build dir'})"] = dt
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _cuda_tag(kernels_build_lib_info: str) -> str:
    m = re.search(r"CUDA (\d+)\.(\d+)\.", kernels_build_lib_info)
    return f"cu{m.group(1)}{m.group(2)}"


def test_wheel_name_and_tag(wheel, lib):
    tag = _cuda_tag(lib.natten_build_info().decode())
    assert re.fullmatch(rf"natten_kernels_{tag}-{_VERSION_RE}-py3-none-linux_x86_64\.whl", wheel.name), wheel.name


def test_wheel_contents_and_metadata(wheel, lib):
    tag = _cuda_tag(lib.natten_build_info().decode())
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = [n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")][0]
        meta = email.message_from_string(z.read(f"{dist_info}/METADATA").decode())
        wheel_meta = email.message_from_string(z.read(f"{dist_info}/WHEEL").decode())
    payload = {n for n in names if not n.startswith(dist_info)}
    assert payload == {
        "natten_kernels/__init__.py",
        "natten_kernels/_build_config.py",
        "natten_kernels/libnatten_kernels.so",
        "natten_kernels/include/natten_kernels.h",
    }, payload
    assert meta["Name"] == f"natten-kernels-{tag}"
    assert re.fullmatch(_VERSION_RE, meta["Version"])
    assert meta.get_all("Requires-Dist") is None  # no torch, no Python dependency at all
    assert wheel_meta["Root-Is-Purelib"] == "false"
    assert wheel_meta.get_all("Tag") == ["py3-none-linux_x86_64"]


def test_installed_wheel_works_without_torch(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    code = (
        "import sys, ctypes\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        "import natten_kernels as nk\n"
        "assert 'torch' not in sys.modules\n"
        "p = nk.library_path()\n"
        f"assert p.startswith({str(target)!r}), p\n"
        "lib = ctypes.CDLL(p)\n"
        "assert lib.natten_abi_version() == nk.ABI_VERSION[0] * 1000 + nk.ABI_VERSION[1]\n"
        "print(nk.__version__, nk.ABI_VERSION, nk.build_config()['cuda_archs'], nk.include_dir())\n"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    version, rest = proc.stdout.split(" ", 1)
    assert re.fullmatch(_VERSION_RE, version) and str(_ABI) in rest


def test_wheel_library_exports_and_is_stripped(wheel, tmp_path):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    with zipfile.ZipFile(wheel) as z:
        so = tmp_path / "lib.so"
        so.write_bytes(z.read("natten_kernels/libnatten_kernels.so"))
    dyn = subprocess.run([nm, "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True).stdout
    syms = [line.split()[-1] for line in dyn.splitlines() if line.strip()]
    assert syms and all(s.startswith("natten_") for s in syms), syms
    static = subprocess.run([nm, str(so)], capture_output=True, text=True)
    assert "no symbols" in static.stderr  # install strips Release builds
