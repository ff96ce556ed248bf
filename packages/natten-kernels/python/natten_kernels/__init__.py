"""Locator for the natten-kernels CUDA library (``libnatten_kernels.so``).

This package has no Python dependencies and imports nothing heavy: it only tells where the shared
library is and which C ABI version it implements. The library itself is driven through its C ABI
(``natten_kernels.h``, documented in docs/abi.md) -- by ``natten`` through ctypes, or by any other
language.

    >>> import natten_kernels
    >>> natten_kernels.library_path()      # absolute path of libnatten_kernels.so
    >>> natten_kernels.ABI_VERSION         # (major, minor) of the C ABI
    >>> natten_kernels.__version__         # "<ABI major>.<ABI minor>.<patch>"
"""

from __future__ import annotations

import os
import re
import sys
from typing import Optional, Tuple

__all__ = ["ABI_VERSION", "__version__", "library_path", "include_dir", "build_config"]

_HERE = os.path.dirname(os.path.abspath(__file__))

try:  # written by CMake at build time (cmake/_build_config.py.in)
    from . import _build_config as _bc  # type: ignore[attr-defined]
except ImportError:  # a source checkout that was never built
    _bc = None


def _abi_from_header() -> Tuple[int, int]:
    for candidate in (
        os.path.join(_HERE, "include", "natten_kernels.h"),
        os.path.join(_HERE, "..", "..", "csrc", "include", "natten_kernels.h"),
    ):
        try:
            with open(candidate, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        major = re.search(r"#define\s+NATTEN_ABI_VERSION_MAJOR\s+(\d+)", text)
        minor = re.search(r"#define\s+NATTEN_ABI_VERSION_MINOR\s+(\d+)", text)
        if major and minor:
            return int(major.group(1)), int(minor.group(1))
    return (0, 0)


if _bc is not None:
    ABI_VERSION: Tuple[int, int] = tuple(_bc.ABI_VERSION)  # type: ignore[assignment]
    __version__: str = _bc.VERSION
else:
    ABI_VERSION = _abi_from_header()
    __version__ = "%d.%d.0+unbuilt" % ABI_VERSION

if sys.platform == "win32":
    _LIB_NAMES = ("natten_kernels.dll",)
elif sys.platform == "darwin":
    _LIB_NAMES = ("libnatten_kernels.dylib", "libnatten_kernels.so")
else:
    _LIB_NAMES = ("libnatten_kernels.so",)


def library_path() -> str:
    """Absolute path of the installed ``libnatten_kernels`` shared library.

    Raises FileNotFoundError when the package is present but holds no library (e.g. a source
    checkout that was never built).
    """
    names = ((_bc.LIBRARY_NAME,) if _bc is not None else ()) + _LIB_NAMES
    for name in names:
        path = os.path.join(_HERE, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        "natten_kernels: no %s in %s (is this an unbuilt source checkout? install a "
        "natten-kernels-cuXXX wheel, or build it: see packages/natten-kernels/README.md)"
        % (" / ".join(dict.fromkeys(names)), _HERE)
    )


def include_dir() -> Optional[str]:
    """Directory holding ``natten_kernels.h`` (installed with the wheel), or None."""
    for path in (os.path.join(_HERE, "include"), os.path.join(_HERE, "..", "..", "csrc", "include")):
        if os.path.isfile(os.path.join(path, "natten_kernels.h")):
            return os.path.abspath(path)
    return None


def build_config() -> dict:
    """What this wheel was built with (version, ABI, CUDA version, archs, git revision)."""
    if _bc is None:
        return {"version": __version__, "abi_version": ABI_VERSION}
    return {
        "version": _bc.VERSION,
        "distribution": _bc.DIST_NAME,
        "abi_version": tuple(_bc.ABI_VERSION),
        "cuda_version": _bc.CUDA_VERSION,
        "cuda_archs": _bc.CUDA_ARCHS,
        "git_revision": _bc.GIT_REVISION,
        "library_name": _bc.LIBRARY_NAME,
    }
