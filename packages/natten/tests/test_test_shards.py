"""The test-sharding hook of conftest.py (NATTEN_TEST_SHARD="i/n", used by ci/gpu.sh to run one long
GPU test file in several processes): the shards of a file are disjoint and together hold every test
exactly once; a malformed value is a usage error naming it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
# This directory's conftest.py by path: in a session over several test trees (nox's tests_torch runs
# natten's and natten-profiler's) the module named "conftest" may be another tree's.
_spec = importlib.util.spec_from_file_location("_natten_tests_conftest", os.path.join(_HERE, "conftest.py"))
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


class _Hook:
    def __init__(self) -> None:
        self.deselected: list = []

    def pytest_deselected(self, items: list) -> None:
        self.deselected.extend(items)


class _Config:
    def __init__(self) -> None:
        self.hook = _Hook()


@pytest.mark.parametrize("count", [1, 5, 7, 12])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_shards_partition_the_items(monkeypatch: pytest.MonkeyPatch, count: int, n: int) -> None:
    kept = []
    for i in range(n):
        monkeypatch.setenv("NATTEN_TEST_SHARD", f"{i}/{n}")
        items, config = [f"t{k}" for k in range(count)], _Config()
        conftest.pytest_collection_modifyitems(config, items)
        assert items == [f"t{k}" for k in range(i, count, n)]  # round robin in collection order
        assert sorted(items + config.hook.deselected) == sorted(f"t{k}" for k in range(count))
        kept += items
    assert sorted(kept) == sorted(f"t{k}" for k in range(count))  # every item in exactly one shard


def test_no_shard_keeps_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATTEN_TEST_SHARD", raising=False)
    items, config = ["a", "b", "c"], _Config()
    conftest.pytest_collection_modifyitems(config, items)
    assert items == ["a", "b", "c"] and config.hook.deselected == []


@pytest.mark.parametrize("bad", ["2/2", "x/3", "1", "-1/2", "0/0", "1/2/3"])
def test_malformed_shard_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("NATTEN_TEST_SHARD", bad)
    with pytest.raises(pytest.UsageError, match="NATTEN_TEST_SHARD") as e:
        conftest.pytest_collection_modifyitems(_Config(), ["a", "b"])
    assert repr(bad) in str(e.value)


def test_shard_through_pytest() -> None:
    """End to end: pytest itself applies the hook (two shards of a small file, collected only)."""
    target = os.path.join(_HERE, "test_context.py")

    def collect(shard: str | None) -> list:
        env = {k: v for k, v in os.environ.items() if k != "NATTEN_TEST_SHARD"}
        if shard:
            env["NATTEN_TEST_SHARD"] = shard
        res = subprocess.run([sys.executable, "-m", "pytest", target, "--collect-only", "-q", "-p", "no:cacheprovider"],
                             capture_output=True, text=True, env=env, cwd=_HERE, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        return [line for line in res.stdout.splitlines() if "::" in line]

    full = collect(None)
    assert len(full) >= 2, full
    assert collect("0/2") == full[0::2] and collect("1/2") == full[1::2]
