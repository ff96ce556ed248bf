#!/usr/bin/env python3
"""The release matrix, in one place.

Read by the release workflow (``.github/workflows/release.yml`` asks this script for its job
matrices as JSON), by the nox sessions (which torch versions exist as ``tests_torch-*`` sessions)
and by the docs build (the install page's wheel table is generated from ``KERNEL_WHEELS``).

    python ci/matrix.py kernels      # JSON matrix of the natten-kernels wheel jobs
    python ci/matrix.py torch        # JSON matrix of the natten / natten-profiler test jobs
    python ci/matrix.py table        # the Markdown wheel table of docs/install.md
    python ci/matrix.py check        # consistency checks (versions, ABI range, extras)

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Dict, List

ROOT = pathlib.Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# natten-kernels: one wheel per CUDA toolkit. The wheel does not depend on torch; it links the
# CUDA runtime statically and needs only the NVIDIA driver (libcuda) at run time.
# --------------------------------------------------------------------------------------------
KERNEL_WHEELS: List[Dict[str, str]] = [
    {
        "tag": "cu130",
        "cuda": "13.0",
        # CMake's NATTEN_CUDA_ARCHS (SASS for each; see packages/natten-kernels/CMakeLists.txt).
        "archs": "80;86;89;90a;100a",
        "gpus": "A100, A10/A40/RTX 30xx, L4/L40/RTX 40xx, H100/H200, B200",
        "min_driver": "580",
        # The container the release workflow builds in (glibc 2.28 -> manylinux_2_28).
        "image": "nvidia/cuda:13.0.0-devel-rockylinux8",
        # Which torch CUDA builds this wheel pairs with (the wheel does not link torch: this is about
        # sharing one driver requirement; docs/install.md explains the choice).
        "torch_builds": "`+cu130`",
        # Built and checked by .ci/run on the development machines (nvcc 13.0 there).
        "local": "yes",
    },
    {
        "tag": "cu128",
        "cuda": "12.8",
        "archs": "80;86;89;90a;100a",
        "gpus": "A100, A10/A40/RTX 30xx, L4/L40/RTX 40xx, H100/H200, B200",
        "min_driver": "570",
        "image": "nvidia/cuda:12.8.1-devel-rockylinux8",
        "torch_builds": "`+cu128`, `+cu129`",
        # Needs a CUDA 12.8 toolkit: built by the release workflow only.
        "local": "no",
    },
]

# The manylinux policy the kernel wheels are repaired to (the build images have glibc 2.28).
MANYLINUX_PLAT = "manylinux_2_28_x86_64"

# --------------------------------------------------------------------------------------------
# torch versions `natten` and `natten-profiler` are tested against (CPU builds of torch: the
# reference backend and the API are device independent; GPU tests run on the GPU machine).
# natten declares torch>=2.5; the oldest supported release is part of the matrix.
# --------------------------------------------------------------------------------------------
TORCH_MATRIX: List[Dict[str, str]] = [
    {"torch": "2.5.1", "python": "3.9"},
    {"torch": "2.9.1", "python": "3.11"},
    {"torch": "2.11.0", "python": "3.11"},
    {"torch": "2.13.0", "python": "3.11"},
    {"torch": "2.14.1", "python": "3.11"},
]
# The ones that lie on the development machines' disk (pip installs them without a download):
# .ci/run tests against these.
TORCH_LOCAL = ["2.13.0", "2.14.1"]

PACKAGES = {
    "natten": ROOT / "packages" / "natten",
    "natten-kernels": ROOT / "packages" / "natten-kernels",
    "natten-profiler": ROOT / "packages" / "natten-profiler",
}


def _pyproject_field(pkg: str, field: str) -> str:
    text = (PACKAGES[pkg] / "pyproject.toml").read_text()
    m = re.search(rf'^{field}\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise SystemExit(f"{pkg}/pyproject.toml: no `{field} = \"...\"` line")
    return m.group(1)


def abi_version() -> tuple:
    """(major, minor) from natten_kernels.h, the ABI's source of truth."""
    header = (PACKAGES["natten-kernels"] / "csrc" / "include" / "natten_kernels.h").read_text()
    major = int(re.search(r"#define NATTEN_ABI_VERSION_MAJOR (\d+)", header).group(1))
    minor = int(re.search(r"#define NATTEN_ABI_VERSION_MINOR (\d+)", header).group(1))
    return major, minor


def natten_supported_abi() -> tuple:
    """(SUPPORTED_ABI_MAJOR, MIN_ABI_MINOR) declared in natten/_version.py (read, not imported)."""
    text = (PACKAGES["natten"] / "src" / "natten" / "_version.py").read_text()
    major = int(re.search(r"^SUPPORTED_ABI_MAJOR\s*=\s*(\d+)", text, re.M).group(1))
    minor = int(re.search(r"^MIN_ABI_MINOR\s*=\s*(\d+)", text, re.M).group(1))
    return major, minor


def check() -> List[str]:
    """Consistency of versions across the packages; returns the problems found."""
    problems: List[str] = []
    major, minor = abi_version()
    sup_major, min_minor = natten_supported_abi()
    if sup_major != major:
        problems.append(
            f"natten/_version.py SUPPORTED_ABI_MAJOR={sup_major} but natten_kernels.h has ABI "
            f"major {major}"
        )
    if min_minor > minor:
        problems.append(
            f"natten/_version.py MIN_ABI_MINOR={min_minor} is newer than the header's ABI "
            f"{major}.{minor}"
        )
    kpy = PACKAGES["natten-kernels"] / "pyproject.toml"
    if kpy.exists():
        kver = _pyproject_field("natten-kernels", "version")
        if not re.fullmatch(rf"{major}\.{minor}\.\d+", kver):
            problems.append(
                f"natten-kernels version {kver} is not <ABI major>.<ABI minor>.<patch> = "
                f"{major}.{minor}.<patch>"
            )
    nat_py = (PACKAGES["natten"] / "pyproject.toml").read_text()
    for w in KERNEL_WHEELS:
        want = f'"natten-kernels-{w["tag"]}>={sup_major}.{min_minor},<{sup_major + 1}"'
        if want not in nat_py:
            problems.append(f"packages/natten/pyproject.toml: extra {w['tag']} should be [{want}]")
    nver = _pyproject_field("natten", "version")
    ver_py = (PACKAGES["natten"] / "src" / "natten" / "_version.py").read_text()
    if f'__version__ = "{nver}"' not in ver_py:
        problems.append(f"natten/_version.py __version__ differs from pyproject's {nver}")
    init_py = (PACKAGES["natten"] / "src" / "natten" / "__init__.py").read_text()
    m = re.search(r'^__version__\s*=\s*"([^"]+)"', init_py, re.M)
    if m and m.group(1) != nver:
        problems.append(f"natten/__init__.py __version__ {m.group(1)} differs from pyproject's {nver}")
    for pkg, path in PACKAGES.items():
        if not (path / "CHANGELOG.md").exists():
            problems.append(f"{pkg}: CHANGELOG.md is missing")
    return problems


def table() -> str:
    rows = [
        "| install | wheel | CUDA | SASS architectures | GPUs | NVIDIA driver | pairs with torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in KERNEL_WHEELS:
        archs = ", ".join(f"sm_{a}" for a in w["archs"].split(";"))
        rows.append(
            f"| `natten[{w['tag']}]` | `natten-kernels-{w['tag']}` | {w['cuda']} | {archs} | "
            f"{w['gpus']} | >= {w['min_driver']} | {w['torch_builds']} |"
        )
    return "\n".join(rows)


def torch_table() -> str:
    rows = ["| torch | Python | tested by |", "|---|---|---|"]
    for t in TORCH_MATRIX:
        where = "release workflow and `.ci/run`" if t["torch"] in TORCH_LOCAL else "release workflow"
        rows.append(f"| {t['torch']} | {t['python']} | {where} |")
    return "\n".join(rows)


def main(argv: List[str]) -> int:
    what = argv[1] if len(argv) > 1 else "check"
    if what == "kernels":
        print(json.dumps({"include": KERNEL_WHEELS}))
    elif what == "torch":
        print(json.dumps({"include": TORCH_MATRIX}))
    elif what == "table":
        print(table())
        print()
        print(torch_table())
    elif what == "check":
        problems = check()
        for p in problems:
            print("matrix check:", p, file=sys.stderr)
        if not problems:
            print("matrix check: versions, ABI range and extras are consistent")
        return 1 if problems else 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
