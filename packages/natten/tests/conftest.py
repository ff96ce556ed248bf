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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """``NATTEN_TEST_SHARD="i/n"`` (set by ci/gpu.sh) keeps every n-th collected test starting at the
    i-th (0-based) and deselects the rest, so that one long test file runs in n processes at once;
    the n shards of a file together run each of its tests exactly once. It runs last (after ``-m`` /
    ``-k`` deselection), so the shards split the selected tests."""
    spec = os.environ.get("NATTEN_TEST_SHARD")
    if not spec:
        return
    try:
        i, n = (int(x) for x in spec.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"NATTEN_TEST_SHARD must be 'i/n' with 0 <= i < n, got {spec!r}") from None
    keep = items[i::n]
    dropped = [item for k, item in enumerate(items) if k % n != i]
    items[:] = keep
    if dropped:
        config.hook.pytest_deselected(items=dropped)
