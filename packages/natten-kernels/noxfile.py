"""nox sessions of natten-kernels (run from packages/natten-kernels, or `nox -f packages/natten-kernels/noxfile.py`).

    nox -s kernels   CPU test suite: CUTLASS headers (no deps) + pytest (builds the library once, archs 80)
    nox -s wheel     release wheel for all default archs into dist/ (name from the local toolkit)

Both use the current interpreter (venv_backend "none"): the build needs nvcc, cmake, ninja and
scikit-build-core from the machine, and nothing else. The CUTLASS headers are installed with
`pip install --no-deps --target build/deps` (CUTLASS's own Python dependencies are not needed)
and handed to CMake through CUTLASS_DIR, so the interpreter's site-packages are left untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

HERE = Path(__file__).resolve().parent
CUTLASS_VERSION = "4.2.0.0"
DEPS = HERE / "build" / "deps"

nox.options.sessions = ["kernels"]
nox.options.default_venv_backend = "none"


def _cutlass(session: nox.Session) -> str:
    root = DEPS / "cutlass_library" / "source"
    if not (root / "include" / "cutlass" / "cutlass.h").is_file():
        session.run("python", "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--upgrade",
                    "--target", str(DEPS), f"nvidia-cutlass=={CUTLASS_VERSION}")
    return str(root)


@nox.session(venv_backend="none")
def kernels(session: nox.Session) -> None:
    """CPU tests of natten-kernels (one-arch build, ABI, validation, symbols, wheel)."""
    session.chdir(HERE)
    env = {"CUTLASS_DIR": _cutlass(session), "NATTEN_CUDA_ARCHS": os.environ.get("NATTEN_CUDA_ARCHS", "80")}
    session.run("python", "ci/set_kernel_wheel_name.py", "--check")
    session.run("python", "ci/abi_lock.py", "--check")
    session.run("python", "-m", "pytest", "tests", "-q", *session.posargs, env=env)


@nox.session(venv_backend="none")
def wheel(session: nox.Session) -> None:
    """Release wheel (default archs unless NATTEN_CUDA_ARCHS is set) into dist/."""
    session.chdir(HERE)
    env = {"CUTLASS_DIR": _cutlass(session)}
    session.run("python", "ci/set_kernel_wheel_name.py")
    session.run("python", "-m", "pip", "wheel", ".", "--no-build-isolation", "--no-deps", "-w", "dist", env=env)
