"""ci/set_kernel_wheel_name.py (distribution name from the CUDA toolkit) and the natten_kernels
locator package in a source checkout."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import PKG

SCRIPT = PKG / "ci" / "set_kernel_wheel_name.py"
sys.path.insert(0, str(PKG / "ci"))
import set_kernel_wheel_name as swn  # noqa: E402


@pytest.mark.parametrize("cuda, name", [("13.0", "natten-kernels-cu130"), ("12.8", "natten-kernels-cu128"),
                                        ("12.8.93", "natten-kernels-cu128"), ("13.1", "natten-kernels-cu131")])
def test_dist_name(cuda, name):
    assert swn.dist_name(cuda) == name


def test_rewrites_pyproject(tmp_path):
    py = tmp_path / "pyproject.toml"
    original = (PKG / "pyproject.toml").read_text()
    py.write_text(original)
    run = lambda *a: subprocess.run([sys.executable, str(SCRIPT), "--pyproject", str(py), *a],  # noqa: E731
                                    capture_output=True, text=True)
    assert run("--cuda", "12.8").stdout.strip() == "natten-kernels-cu128"
    assert 'name = "natten-kernels-cu128"' in py.read_text()
    assert py.read_text().replace("cu128", "cu130") == original.replace("cu128", "cu130")
    assert run("--cuda", "12.8", "--check").returncode == 0
    bad = run("--cuda", "13.0", "--check")
    assert bad.returncode == 1 and "natten-kernels-cu130" in bad.stderr


def test_checked_in_name_matches_the_local_toolkit():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_locator_in_source_checkout():
    """Without a build, natten_kernels still imports (no deps) and says what is missing."""
    spec = importlib.util.spec_from_file_location("_nk_src", PKG / "python" / "natten_kernels" / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.ABI_VERSION == (1, 3)
    assert mod.__version__.startswith("1.3.")
    assert mod.include_dir() is not None
    if not (PKG / "python" / "natten_kernels" / "libnatten_kernels.so").exists():
        with pytest.raises(FileNotFoundError, match="libnatten_kernels.so"):
            mod.library_path()
