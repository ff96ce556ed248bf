"""Test setup: import natten and natten_profiler from the monorepo sources when they are not
installed (NATTEN_SRC / NATTEN_PROFILER_SRC point elsewhere), and keep CPU use modest."""

import os
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_PKG = os.path.dirname(_HERE)
_PROFILER_SRC = os.environ.get("NATTEN_PROFILER_SRC") or os.path.join(_PKG, "src")
_NATTEN_SRC = os.environ.get("NATTEN_SRC") or os.path.join(
    os.path.dirname(_PKG), "natten", "src"
)
for p in (_NATTEN_SRC, _PROFILER_SRC):
    if os.path.isdir(p) and p not in sys.path:
        sys.path.insert(0, p)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """The machines running this suite are shared: small problems, one intra-op thread (restored
    afterwards, so a combined run with other suites is unaffected)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env():
    env = dict(os.environ)
    paths = [p for p in (_NATTEN_SRC, _PROFILER_SRC) if os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NATTEN_BEST_CONFIGS", None)
    return env


@pytest.fixture
def run_module():
    """Run ``python -m natten_profiler ARGS`` in a subprocess (CPU only)."""

    def run(*args, timeout=180, cwd=None):
        env = subprocess_env()
        env["CUDA_VISIBLE_DEVICES"] = ""
        return subprocess.run(
            [sys.executable, "-m", "natten_profiler", *map(str, args)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
        )

    return run


@pytest.fixture
def cli(capsys):
    """Run the command line in-process; returns (exit code, stdout, stderr)."""
    from natten_profiler.cli import main

    def run(*args):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return rc, out, err

    return run

