"""Global context switches: set/get round-trips."""

import pytest
import torch

import natten


def _pref_name(p):
    if isinstance(p, str):
        return p.lower()
    name = getattr(p, "name", None)
    assert name is not None, f"unexpected memory preference value {p!r}"
    return name.lower()


def test_kv_parallelism_round_trip():
    with pytest.warns(UserWarning, match="saves nothing"):  # it only slows the backward down here
        natten.use_kv_parallelism_in_fused_na(False)
    assert natten.is_kv_parallelism_in_fused_na_enabled() is False
    natten.use_kv_parallelism_in_fused_na(True)
    assert natten.is_kv_parallelism_in_fused_na_enabled() is True
    natten.use_kv_parallelism_in_fused_na(False)
    assert natten.is_kv_parallelism_in_fused_na_enabled() is False
    natten.use_kv_parallelism_in_fused_na()  # default mode=True
    assert natten.is_kv_parallelism_in_fused_na_enabled() is True


@pytest.mark.parametrize("pref", ["strict", "unrestricted", "default"])
def test_memory_usage_preference_round_trip(pref):
    natten.set_memory_usage_preference(pref)
    assert _pref_name(natten.get_memory_usage_preference()) == pref
    natten.set_memory_usage_preference()  # default argument
    assert _pref_name(natten.get_memory_usage_preference()) == "default"


@pytest.mark.parametrize("bad", ["fast", "", "STRICTLY", "none"])
def test_memory_usage_preference_rejects_unknown(bad):
    natten.set_memory_usage_preference("strict")
    with pytest.raises(ValueError, match=r"(?i)(default|strict|unrestricted|preference)"):
        natten.set_memory_usage_preference(bad)
    # the setting is unchanged by the rejected call
    assert _pref_name(natten.get_memory_usage_preference()) == "strict"


def test_deterministic_round_trip():
    assert torch.are_deterministic_algorithms_enabled() is False
    natten.use_deterministic_algorithms(True)
    assert natten.are_deterministic_algorithms_enabled() is True
    natten.use_deterministic_algorithms(False)
    assert natten.are_deterministic_algorithms_enabled() is False
    natten.use_deterministic_algorithms()  # default mode=True
    assert natten.are_deterministic_algorithms_enabled() is True
    natten.use_deterministic_algorithms(False)
    assert natten.are_deterministic_algorithms_enabled() is False


def test_flex_compile_flags_round_trip():
    natten.disable_flex_compile()
    assert natten.is_flex_compile_allowed() is False
    assert natten.is_flex_compile_backprop_allowed() is False

    natten.allow_flex_compile()
    assert natten.is_flex_compile_allowed() is True
    assert natten.is_flex_compile_backprop_allowed() is False

    natten.allow_flex_compile_backprop()
    assert natten.is_flex_compile_allowed() is True
    assert natten.is_flex_compile_backprop_allowed() is True

    natten.disable_flex_compile_backprop()
    assert natten.is_flex_compile_allowed() is True
    assert natten.is_flex_compile_backprop_allowed() is False

    natten.allow_flex_compile(True, backprop=True)
    assert natten.is_flex_compile_allowed() is True
    assert natten.is_flex_compile_backprop_allowed() is True

    natten.disable_flex_compile()
    assert natten.is_flex_compile_allowed() is False
    assert natten.is_flex_compile_backprop_allowed() is False


def test_flags_do_not_change_reference_results():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 12, 2, 8, generator=gen)
    base = natten.na1d(q, q, q, kernel_size=5, backend="reference")
    natten.use_deterministic_algorithms(True)
    natten.use_kv_parallelism_in_fused_na(False)
    natten.set_memory_usage_preference("strict")
    natten.allow_flex_compile(True, backprop=True)
    other = natten.na1d(q, q, q, kernel_size=5, backend="reference")
    assert torch.allclose(base, other, atol=1e-6)
