import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# NATTEN_SRC lets the suite run against another checkout of the package sources.
_SRC = os.environ.get("NATTEN_SRC") or os.path.join(os.path.dirname(_HERE), "src")

# Make `import natten` work without PYTHONPATH, and `import oracle` / `import helpers` from tests.
for p in (_SRC, _HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_natten_context():
    """Tests that flip global context flags must not leak into other tests."""
    yield
    try:
        import natten
    except Exception:
        return
    for fn, args in (
        ("use_deterministic_algorithms", (False,)),
        ("use_kv_parallelism_in_fused_na", (True,)),
        ("set_memory_usage_preference", ("default",)),
        ("allow_flex_compile", (True, True)),
    ):
        f = getattr(natten, fn, None)
        if f is not None:
            try:
                f(*args)
            except Exception:
                pass


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


# The GPU suite (tests/gpu, marked `gpu`) runs on the GPU machine through ci/gpu.sh; on a machine
# without CUDA it is not collected at all (rather than reported as skipped).
collect_ignore = [] if _cuda_available() else ["gpu"]
# Needs a built library (the natten-kernels suite and ci/gpu.sh provide one).
if not os.environ.get("NATTEN_KERNELS_LIBRARY"):
    collect_ignore.append("test_libnatten_real.py")
