"""Every workflow of the monorepo is a nox session (``nox -l`` lists them).

torch is always installed explicitly first (``TORCH_VERSION``, default 2.13.0): a bare ``torch``
requirement would pull a multi-GB CUDA build where a CPU build is wanted.
"""

from __future__ import annotations

import os
import pathlib

import nox

ROOT = pathlib.Path(__file__).parent
NATTEN = ROOT / "packages" / "natten"
KERNELS = ROOT / "packages" / "natten-kernels"
PROFILER = ROOT / "packages" / "natten-profiler"
TORCH_VERSION = os.environ.get("TORCH_VERSION", "2.13.0")

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def _install_natten(session: nox.Session, torch_version: str = TORCH_VERSION) -> None:
    session.install(f"torch=={torch_version}")
    session.install("pytest", "numpy")
    session.install("-e", str(NATTEN))


@nox.session
def tests(session: nox.Session) -> None:
    """CPU test suite of `natten` (reference backend, API, validation) and the kernel library's
    CPU tests (build, ABI, validation)."""
    _install_natten(session)
    session.run("python", "-m", "pytest", str(NATTEN / "tests"), "-q", "-m", "not gpu",
                *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on any machine: neighborhood attention on a default use case (CPU if no GPU)."""
    _install_natten(session)
    session.run("python", str(ROOT / "benchmarks" / "demo.py"), *session.posargs)
