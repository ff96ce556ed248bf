"""CPU checks of the fused-kernel index math (no GPU needed).

* test_window_math: compiles tests/window_math_test.cpp with g++ (window.cuh drops
  __host__ __device__ outside nvcc) and runs it: exhaustive per-axis window / tile-range checks
  against a brute-force transcription of SEMANTICS.md plus a replay of the SM80 kernel's tile
  scheduler, key-tile walk and masks on random multi-dimensional problems.
* test_sm80_layouts: compiles tests/sm80_layout_test.cu with nvcc as a *host* program against the
  CUTLASS/CuTe headers and runs it on the CPU (fragment / smem layout plumbing of the SM80
  kernel). Skipped when nvcc or the CUTLASS headers are not available; it takes ~1-2 minutes to
  compile, so it only runs when NATTEN_TEST_LAYOUTS=1 (or CUTLASS is found and CI asks for it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1]
INCLUDE = PKG / "csrc" / "include"
SM80 = PKG / "csrc" / "kernels" / "sm80"
KERNELS = PKG / "csrc" / "kernels"
TESTS = PKG / "tests"


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _cpp_check(tmp_path: Path, source: str, include: Path, run_timeout: int) -> None:
    """Compiles tests/<source> with g++ (-I the public headers and `include`), runs it and checks
    that it exits 0 and prints OK."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / Path(source).stem
    build = _run([cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-x", "c++", f"-I{INCLUDE}", f"-I{include}",
                  str(TESTS / source), "-o", str(exe)], timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    run = _run([str(exe)], timeout=run_timeout)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "OK" in run.stdout


def test_window_math(tmp_path: Path) -> None:
    _cpp_check(tmp_path, "window_math_test.cpp", SM80, run_timeout=600)


def test_column_words(tmp_path: Path) -> None:
    """The SM90 backward kernels' 64-column mask words (sm90/column_words.cuh) against brute force
    for every 64-token tile shape and random intervals (tests/column_words_test.cpp)."""
    _cpp_check(tmp_path, "column_words_test.cpp", KERNELS, run_timeout=300)


def test_backward_tile_math(tmp_path: Path) -> None:
    """Inverse (key -> query) ranges and the key-parallel tile walk of the fused backward."""
    _cpp_check(tmp_path, "bwd_tile_math_test.cpp", SM80, run_timeout=600)


def _cutlass_include() -> Path | None:
    candidates = []
    env = os.environ.get("CUTLASS_INCLUDE_DIR")
    if env:
        candidates.append(Path(env))
    root_env = os.environ.get("CUTLASS_DIR")  # the CUTLASS source root the build uses (the nox session sets it)
    if root_env:
        candidates.append(Path(root_env) / "include")
    root = PKG
    for _ in range(4):  # monorepo .deps/cutlass (pip --target install of nvidia-cutlass)
        candidates.append(root / ".deps" / "cutlass" / "cutlass_library" / "source" / "include")
        root = root.parent
    try:
        import cutlass_library  # type: ignore

        candidates.append(Path(cutlass_library.__file__).parent / "source" / "include")
    except Exception:
        pass
    for c in candidates:
        if (c / "cute" / "tensor.hpp").is_file():
            return c
    return None


@pytest.mark.skipif(os.environ.get("NATTEN_TEST_LAYOUTS", "0") != "1", reason="set NATTEN_TEST_LAYOUTS=1 (slow compile)")
def test_sm80_layouts(tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))
    cutlass = _cutlass_include()
    if nvcc is None or cutlass is None:
        pytest.skip("nvcc or CUTLASS headers not found")
    exe = tmp_path / "sm80_layout_test"
    build = _run(
        [
            nvcc,
            "-std=c++17",
            "--expt-relaxed-constexpr",
            f"-I{cutlass}",
            f"-I{INCLUDE}",
            f"-I{SM80}",
            str(TESTS / "sm80_layout_test.cu"),
            "-o",
            str(exe),
        ],
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    run = _run([str(exe)], timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "OK" in run.stdout


def test_small_window_plan(tmp_path: Path) -> None:
    """The SM80 small-window forward kernel's plan bounds, walk and row masks against brute force
    (tests/small_window_test.cpp)."""
    _cpp_check(tmp_path, "small_window_test.cpp", SM80, run_timeout=300)


def test_sm90_work_context(tmp_path: Path) -> None:
    """The SM90 forward's division-free work context and row windows (sm90/work_context.cuh) equal
    the generic SM80 scheduler's on random dilation-1 problems and the suite's shapes
    (tests/sm90_work_context_test.cpp)."""
    _cpp_check(tmp_path, "sm90_work_context_test.cpp", KERNELS, run_timeout=300)


def test_sm90_dkdv_order(tmp_path: Path) -> None:
    """The SM90 dK / dV kernel's work order (sm90/bwd_dkdv_order.hpp): separable visit counts and
    sort against every key tile's brute-force walk on random dilation-1 problems and the 1-D suite
    rows, the per-thread cache, and the rule that decides when it is used
    (tests/sm90_dkdv_order_test.cpp)."""
    _cpp_check(tmp_path, "sm90_dkdv_order_test.cpp", KERNELS, run_timeout=300)


def test_sm90_visit_tables(tmp_path: Path) -> None:
    """The SM90 dK / dV kernel's visit-table layout (sm90/bwd_visit_tables.hpp): the tables
    kernel's entry -> token map against the layout's definition on random problems with query
    slabs and every split of the 64-token query tile; every token has one entry, padding entries
    exist exactly where a tile is partial (tests/sm90_visit_tables_test.cpp)."""
    _cpp_check(tmp_path, "sm90_visit_tables_test.cpp", KERNELS, run_timeout=300)


def test_sm90_cluster_pairs(tmp_path: Path) -> None:
    """The Hopper forward's cluster pairs (sm90/work_context.cuh): the pair axis against its
    definition (the fastest axis whose query tiles 2j, 2j+1 walk the same keys for every work tile),
    the pair -> tile map one to one with both members in one row of that axis, ordered_tile in the
    launch order; random problems and the suite's shapes (tests/sm90_cluster_pairs_test.cpp)."""
    _cpp_check(tmp_path, "sm90_cluster_pairs_test.cpp", KERNELS, run_timeout=300)


def test_sm90_walk_order(tmp_path: Path) -> None:
    """The Hopper forward's key-walk order (sm80/tile_scheduler.cuh: walk_origin, walk_advance): plain
    is key_tile_origin's order; rotated visits every key tile once, axis-0 tile index = step modulo
    the box's axis-0 count, split-tail chunks partition the walk; the first round of 1d-32k-s256
    reads <= 10 distinct key tiles per step rotated (tests/sm90_walk_order_test.cpp)."""
    _cpp_check(tmp_path, "sm90_walk_order_test.cpp", KERNELS, run_timeout=300)
