"""Version of ``natten`` and the range of the natten-kernels C ABI it supports.

``natten-kernels`` is versioned ``<ABI major>.<ABI minor>.<patch>`` (see docs/abi.md). This
package works with any library whose ABI major equals ``SUPPORTED_ABI_MAJOR`` and whose ABI minor
is at least ``MIN_ABI_MINOR`` (minor versions only add). The ``cu130``/``cu128`` extras in
pyproject.toml pin the same range (``natten-kernels-cuXXX>=MAJOR.MIN_MINOR,<MAJOR+1``);
``python ci/matrix.py check`` verifies that they agree with each other and with natten_kernels.h.

The loader (``natten._libnatten``) is meant to compare ``natten_abi_version()`` of the loaded
library against :func:`abi_supported`.
"""

from __future__ import annotations

__version__ = "0.21.0"

SUPPORTED_ABI_MAJOR = 1
MIN_ABI_MINOR = 0


def abi_supported(abi_version: int) -> bool:
    """Whether a library reporting ``natten_abi_version() == abi_version`` (MAJOR*1000 + MINOR)
    can be used by this natten."""
    major, minor = divmod(int(abi_version), 1000)
    return major == SUPPORTED_ABI_MAJOR and minor >= MIN_ABI_MINOR
