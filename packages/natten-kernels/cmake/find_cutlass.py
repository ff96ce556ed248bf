"""Print the CUTLASS source root shipped inside the `nvidia-cutlass` wheel, without importing it.

`cutlass_library/__init__.py` imports CUTLASS's Python dependencies (cuda-python, numpy, scipy,
networkx, ...), which the kernel build does not need and which are not installed when the wheel is
installed with `pip install --no-deps nvidia-cutlass==4.2.0.0`. So this script only looks at the
file system: every sys.path / site-packages entry is searched for
`cutlass_library/source/include/cutlass/cutlass.h`.

Output (stdout, one line): `<source root>;<version or "unknown">`, or nothing if not found.
Exit code is always 0; CMake decides what to do.
"""

from __future__ import annotations

import os
import site
import sys


def _candidates():
    seen = set()
    paths = list(sys.path)
    try:
        paths += site.getsitepackages()
    except Exception:  # virtualenv's old site.py lacks it
        pass
    try:
        paths.append(site.getusersitepackages())
    except Exception:
        pass
    for p in paths:
        if not p or not os.path.isdir(p):
            continue
        p = os.path.realpath(p)
        if p in seen:
            continue
        seen.add(p)
        yield p


def _dist_version(site_dir: str) -> str:
    try:
        for name in os.listdir(site_dir):
            if name.startswith("nvidia_cutlass-") and name.endswith(".dist-info"):
                return name[len("nvidia_cutlass-") : -len(".dist-info")]
    except OSError:
        pass
    return "unknown"


def main() -> int:
    for p in _candidates():
        root = os.path.join(p, "cutlass_library", "source")
        if os.path.isfile(os.path.join(root, "include", "cutlass", "cutlass.h")):
            sys.stdout.write(f"{root};{_dist_version(p)}")
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
