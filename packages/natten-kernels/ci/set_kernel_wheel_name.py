#!/usr/bin/env python3
"""Set the distribution name in packages/natten-kernels/pyproject.toml from the CUDA toolkit.

PEP 621 does not allow a dynamic `name`, so the name is static in pyproject.toml and this script
rewrites it before a build: natten-kernels-cu<major><minor> (CUDA 13.0 -> natten-kernels-cu130,
CUDA 12.8 -> natten-kernels-cu128). CMakeLists.txt refuses to build a wheel whose name does not
match the toolkit it compiles with, so a stale name fails loudly instead of mislabelling a wheel.

Usage:
    python ci/set_kernel_wheel_name.py              # detect: $CUDACXX, else /usr/local/cuda, else PATH
    python ci/set_kernel_wheel_name.py --cuda 12.8  # explicit
    python ci/set_kernel_wheel_name.py --check      # exit 1 if pyproject.toml does not match
    python ci/set_kernel_wheel_name.py --print      # print the name for the detected toolkit
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PYPROJECT = os.path.join(os.path.dirname(HERE), "pyproject.toml")
NAME_RE = re.compile(r'^name\s*=\s*"natten-kernels(?:-cu\d+)?"\s*$', re.M)


def find_nvcc() -> str:
    cudacxx = os.environ.get("CUDACXX")
    if cudacxx:
        return cudacxx
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc"
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    raise SystemExit("set_kernel_wheel_name: no nvcc found (set CUDACXX or pass --cuda X.Y)")


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], check=True, capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise SystemExit(f"set_kernel_wheel_name: cannot parse `{nvcc} --version`:\n{out}")
    return f"{m.group(1)}.{m.group(2)}"


def dist_name(cuda: str) -> str:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?", cuda.strip())
    if not m:
        raise SystemExit(f"set_kernel_wheel_name: bad CUDA version {cuda!r} (expected e.g. 13.0)")
    return f"natten-kernels-cu{m.group(1)}{m.group(2)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", help="CUDA version X.Y (default: ask nvcc)")
    ap.add_argument("--pyproject", default=PYPROJECT)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="only check, exit 1 on mismatch")
    g.add_argument("--print", action="store_true", help="only print the name")
    args = ap.parse_args(argv)

    name = dist_name(args.cuda or nvcc_version(find_nvcc()))
    if args.print:
        print(name)
        return 0
    with open(args.pyproject, encoding="utf-8") as f:
        text = f.read()
    m = NAME_RE.search(text)
    if not m:
        raise SystemExit(f"set_kernel_wheel_name: no `name = \"natten-kernels-cuXYZ\"` line in {args.pyproject}")
    current = m.group(0).split('"')[1]
    if args.check:
        if current != name:
            print(f"pyproject.toml names {current}, the toolkit needs {name}", file=sys.stderr)
            return 1
        print(name)
        return 0
    if current != name:
        text = NAME_RE.sub(f'name = "{name}"', text, count=1)
        with open(args.pyproject, "w", encoding="utf-8") as f:
            f.write(text)
    print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
