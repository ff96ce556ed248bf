"""Query/key slabs of a larger grid (global_shape, q_origin, kv_origin, kv_shape): the forward's
fields (ABI 1.1) and the backward's (ABI 1.2), checked through the real library with fake pointers
(no GPU needed: a valid call ends in NO_DEVICE).

Covers every new error message, that the key/value tensors (and the backward's d_k / d_v) are
checked against kv_shape, that a caller built against ABI 1.0 (forward struct_size 448) or 1.1
(backward struct_size 744) is read without the new fields, and - on random problems - that the
library accepts a key slab exactly when it holds every key the query slab attends (brute force
over SEMANTICS.md in Python), for the forward and the backward alike.
"""

from __future__ import annotations

import ctypes
import math
import random

import pytest

import abi_ctypes as A
from abi_ctypes import INVALID_ARGUMENT, NO_DEVICE, UNSUPPORTED
from test_validation import call_forward, mut, no_gpu  # noqa: F401  (fixture)
from test_validation_backward import assert_workspace, call_backward, workspace


def slab_params(rank=2, glob=(32, 20), q_origin=(8, 0), q_shape=(8, 20), kv_origin=(4, 0), kv_shape=(16, 20),
                kernel=7, heads=4, heads_kv=2, head_dim=64, head_dim_v=32, batch=2) -> A.FnaForwardParams:
    """A valid slab problem: the query slab [8, 16) x [0, 20) of a 32 x 20 grid, kernel 7; its keys
    are [5, 19) x [0, 20), held by the key slab [4, 20) x [0, 20)."""
    p = A.valid_params(rank=rank, shape=q_shape, batch=batch, heads=heads, heads_kv=heads_kv, head_dim=head_dim,
                       head_dim_v=head_dim_v, kernel=kernel)
    n = rank + 3
    p.k_stride[:n] = A.contiguous_strides([batch, *kv_shape, heads_kv, head_dim])
    p.v_stride[:n] = A.contiguous_strides([batch, *kv_shape, heads_kv, head_dim_v])
    p.kernel_size[:rank] = [kernel] * rank
    p.global_shape[:rank] = list(glob)
    p.q_origin[:rank] = list(q_origin)
    p.kv_origin[:rank] = list(kv_origin)
    p.kv_shape[:rank] = list(kv_shape)
    return p


INVALID_CASES = [
    ("global_mixed", mut(**{"global_shape[1]": 0}), ["global_shape = (32, 0, 0)[:2] mixes zero and non-zero"]),
    ("global_negative", mut(**{"global_shape[1]": -4}), ["global_shape[1] is -4; it must be >= 1"]),
    ("kv_shape_mixed", mut(**{"kv_shape[0]": 0}), ["kv_shape = (0, 20, 0)[:2] mixes zero and non-zero"]),
    ("kv_shape_negative", mut(**{"kv_shape[0]": -16}), ["kv_shape[0] is -16"]),
    ("q_origin_negative", mut(**{"q_origin[0]": -1}), ["q_origin[0] is -1; it must be >= 0"]),
    ("kv_origin_negative", mut(**{"kv_origin[1]": -2}), ["kv_origin[1] is -2; it must be >= 0"]),
    ("q_slab_outside", mut(**{"q_origin[0]": 28}),
     ["q_origin[0] + shape[0] = 28 + 8 exceeds global_shape[0] = 32", "inside the global grid"]),
    ("kv_slab_outside", mut(**{"kv_origin[1]": 1}), ["kv_origin[1] + kv_shape[1] = 1 + 20 exceeds global_shape[1] = 20"]),
    ("kv_origin_overflow", mut(**{"kv_origin[0]": (1 << 63) - 4}), ["kv_origin[0] + kv_shape[0]", "exceeds global_shape[0]"]),
    ("window_exceeds_global", mut(**{"dilation[0]": 5}),
     ["kernel_size[0] * dilation[0] = 7 * 5 = 35 exceeds global_shape[0] = 32"]),
    ("kv_slab_misses_left", mut(**{"kv_origin[0]": 6, "kv_shape[0]": 14}),
     ["the key slab [6, 20) on axis 0 (kv_origin[0] = 6, kv_shape[0] = 14) does not cover the keys [5, 19)",
      "query slab [8, 16) (q_origin[0] = 8, shape[0] = 8)", "global_shape[0] = 32, kernel_size[0] = 7"]),
    ("kv_slab_misses_right", mut(**{"kv_shape[0]": 14}), ["the key slab [4, 18) on axis 0", "keys [5, 19)"]),
    ("kv_slab_misses_axis1", mut(**{"kv_shape[1]": 19}), ["the key slab [0, 19) on axis 1", "keys [0, 20)"]),
]


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_slab_rejects(lib, case):
    _, mutation, needles = case
    got, msg = call_forward(lib, mutation(slab_params()))
    assert got == INVALID_ARGUMENT, f"status {got} ({A.STATUS_NAMES.get(got)}), message: {msg!r}"
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


@pytest.mark.parametrize(
    "change, needle",
    [
        (mut(**{"q_origin[0]": 8}), "q_origin[0] is 8 but global_shape is all 0"),
        (mut(**{"kv_origin[1]": 2}), "kv_origin[1] is 2 but global_shape is all 0"),
        (mut(**{"kv_shape[0]": 17, "kv_shape[1]": 16}), "kv_shape[0] is 17 but shape[0] is 16 and global_shape is all 0"),
    ],
    ids=["q_origin", "kv_origin", "kv_shape"],
)
def test_slab_fields_without_global_shape(lib, change, needle):
    got, msg = call_forward(lib, change(A.valid_params()))
    assert got == INVALID_ARGUMENT and needle in msg, msg


def test_kv_tensors_are_checked_against_kv_shape(lib):
    # A key slab of 2^61 tokens: k's largest offset overflows int64 (q's grid alone would not).
    p = slab_params(rank=1, glob=(1 << 62,), q_origin=(0,), q_shape=(8,), kv_origin=(0,), kv_shape=(1 << 61,),
                    kernel=3)
    got, msg = call_forward(lib, p)
    assert got == INVALID_ARGUMENT, msg
    assert "k: the largest element offset overflows int64" in msg and f"size {1 << 61}" in msg


def test_global_axis_limit_unsupported(lib):
    n = (1 << 30) + 16
    p = slab_params(rank=1, glob=(n,), q_origin=(n - 40,), q_shape=(8,), kv_origin=(n - 64,), kv_shape=(64,),
                    kernel=3)
    got, msg = call_forward(lib, p)
    assert got == UNSUPPORTED, msg
    assert f"global_shape[0] is {n}" in msg and "tokens per axis" in msg


@pytest.mark.parametrize(
    "change",
    [
        mut(),
        mut(**{"kv_shape[0]": 14, "kv_origin[0]": 5}),  # exactly the keys [5, 19)
        mut(**{"global_shape[0]": 16, "q_origin[0]": 0, "kv_origin[0]": 0}),  # the key slab is the whole grid
        mut(**{"is_causal[0]": 1, "kv_origin[0]": 2, "kv_shape[0]": 14}),  # causal: keys [2, 16)
        mut(**{"stride[1]": 7, "dilation[0]": 2, "kv_origin[0]": 2, "kv_shape[0]": 20}),  # keys [2, 22)
        mut(lse=None),
    ],
    ids=["slab", "tight", "whole_key_grid", "causal", "stride_dilation", "no_lse"],
)
def test_valid_slabs_reach_device_check(lib, no_gpu, change):  # noqa: F811
    got, msg = call_forward(lib, change(slab_params()))
    assert got == NO_DEVICE, msg


def test_whole_grid_given_explicitly(lib, no_gpu):  # noqa: F811
    p = A.valid_params()
    p.global_shape[:2] = list(p.shape[:2])
    p.kv_shape[:2] = list(p.shape[:2])
    assert call_forward(lib, p)[0] == NO_DEVICE


def test_abi_1_0_caller_ignores_the_new_fields(lib, no_gpu):  # noqa: F811
    # A 1.0 caller's struct ends at byte 448; whatever follows it in memory is not its data.
    p = A.valid_params()
    p.global_shape[:] = [99, -1, 7]
    p.q_origin[:] = [5, 5, 5]
    p.kv_shape[:] = [1, 0, 3]
    p.struct_size = A.SIZE_V1_0
    got, msg = call_forward(lib, p)
    assert got == NO_DEVICE, msg
    p.struct_size = ctypes.sizeof(A.FnaForwardParams)
    got, msg = call_forward(lib, p)
    assert got == INVALID_ARGUMENT and "global_shape[1] is -1" in msg, msg


def test_struct_size_between_versions_reads_the_given_bytes(lib):
    # struct_size 456 holds global_shape[0] only; global_shape[1] reads as 0.
    p = slab_params()
    p.struct_size = A.SIZE_V1_0 + 8
    got, msg = call_forward(lib, p)
    assert got == INVALID_ARGUMENT and "global_shape = (32, 0, 0)[:2] mixes zero and non-zero" in msg, msg


# ---- the key slab is accepted exactly when it holds the query slab's keys -----------------------

def _attends(i: int, j: int, n: int, K: int, s: int, d: int, causal: bool) -> bool:
    """SEMANTICS.md on one axis, global coordinates."""
    if i % d != j % d:
        return False
    g, ip, jp = i % d, i // d, j // d
    ng = math.ceil((n - g) / d)
    if causal:
        leader = min(s * (ip // s) + s - 1, ng - 1)
        return jp <= ip and leader - jp < K
    left, right = K // 2, K // 2 + K % 2 - 1
    leader = min(s * (ip // s) + s // 2, ng - 1)
    c = max(left, min(leader, ng - 1 - right))
    return c - left <= jp <= c + right


def _key_range(n, K, s, d, causal, q0, q1):
    keys = [j for i in range(q0, q1) for j in range(n) if _attends(i, j, n, K, s, d, causal)]
    return min(keys), max(keys) + 1


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_coverage_matches_brute_force(lib, no_gpu, direction):  # noqa: F811
    rng = random.Random(2024 if direction == "forward" else 2025)
    checked = {"accepted": 0, "rejected": 0}
    for _ in range(400 if direction == "forward" else 250):
        n = rng.randint(2, 40)
        K = rng.randint(2, min(n, 9))
        d = rng.randint(1, n // K)
        s = rng.randint(1, K)
        causal = rng.random() < 0.4
        q0 = rng.randrange(n)
        q1 = rng.randint(q0 + 1, n)
        lo, hi = _key_range(n, K, s, d, causal, q0, q1)
        k0 = max(0, lo + rng.randint(-2, 1))
        k1 = min(n, max(k0 + 1, hi + rng.randint(-1, 2)))
        make = slab_params if direction == "forward" else slab_backward_params
        p = make(rank=1, glob=(n,), q_origin=(q0,), q_shape=(q1 - q0,), kv_origin=(k0,), kv_shape=(k1 - k0,),
                 kernel=K)
        p.stride[0], p.dilation[0], p.is_causal[0] = s, d, int(causal)
        got, msg = (call_forward if direction == "forward" else call_backward)(lib, p)
        covered = k0 <= lo and hi <= k1
        what = f"n={n} K={K} s={s} d={d} causal={causal} q=[{q0},{q1}) kv=[{k0},{k1}) keys=[{lo},{hi})"
        if covered:
            assert got == NO_DEVICE, f"{what}: {msg}"
            checked["accepted"] += 1
        else:
            assert got == INVALID_ARGUMENT, f"{what}: {msg}"
            assert f"does not cover the keys [{lo}, {hi})" in msg, f"{what}: {msg}"
            checked["rejected"] += 1
    assert checked["accepted"] > 50 and checked["rejected"] > 50, checked



# ---- the backward's slab fields (ABI 1.2) --------------------------------------------------------

def slab_backward_params(rank=2, glob=(32, 20), q_origin=(8, 0), q_shape=(8, 20), kv_origin=(4, 0),
                         kv_shape=(16, 20), kernel=7, heads=4, heads_kv=2, head_dim=64, head_dim_v=32,
                         batch=2) -> A.FnaBackwardParams:
    """slab_params' problem as a backward: q / out / lse / d_out / d_lse / d_q on the query slab's
    grid, k / v / d_k / d_v on the key slab's."""
    p = A.valid_backward_params(rank=rank, shape=q_shape, batch=batch, heads=heads, heads_kv=heads_kv,
                                head_dim=head_dim, head_dim_v=head_dim_v, kernel=kernel)
    n = rank + 3
    p.k_stride[:n] = p.d_k_stride[:n] = A.contiguous_strides([batch, *kv_shape, heads_kv, head_dim])
    p.v_stride[:n] = p.d_v_stride[:n] = A.contiguous_strides([batch, *kv_shape, heads_kv, head_dim_v])
    p.kernel_size[:rank] = [kernel] * rank
    p.global_shape[:rank] = list(glob)
    p.q_origin[:rank] = list(q_origin)
    p.kv_origin[:rank] = list(kv_origin)
    p.kv_shape[:rank] = list(kv_shape)
    return p


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_backward_slab_rejects_like_the_forward(lib, case):
    """The backward runs the forward's region checks: same statuses, same messages."""
    _, mutation, needles = case
    got, msg = call_backward(lib, mutation(slab_backward_params()))
    assert got == INVALID_ARGUMENT, f"status {got} ({A.STATUS_NAMES.get(got)}), message: {msg!r}"
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    fwd_got, fwd_msg = call_forward(lib, mutation(slab_params()))
    assert (fwd_got, fwd_msg) == (got, msg)
    st, nbytes, ws_msg = workspace(lib, mutation(slab_backward_params()))
    assert (st, nbytes, ws_msg) == (got, 0, msg)


@pytest.mark.parametrize(
    "change, needle",
    [
        (mut(**{"q_origin[0]": 8}), "q_origin[0] is 8 but global_shape is all 0"),
        (mut(**{"kv_origin[1]": 2}), "kv_origin[1] is 2 but global_shape is all 0"),
        (mut(**{"kv_shape[0]": 17, "kv_shape[1]": 16}), "kv_shape[0] is 17 but shape[0] is 16 and global_shape is all 0"),
    ],
    ids=["q_origin", "kv_origin", "kv_shape"],
)
def test_backward_slab_fields_without_global_shape(lib, change, needle):
    got, msg = call_backward(lib, change(A.valid_backward_params()))
    assert got == INVALID_ARGUMENT and needle in msg, msg


@pytest.mark.parametrize("tensor", ["k", "v", "d_k", "d_v"])
def test_backward_kv_tensors_are_checked_against_kv_shape(lib, tensor):
    # A key slab of 2^61 tokens: the key-side tensors' largest offset overflows int64.
    p = slab_backward_params(rank=1, glob=(1 << 62,), q_origin=(0,), q_shape=(8,), kv_origin=(0,),
                             kv_shape=(1 << 61,), kernel=3, batch=1)
    for other in {"k", "v", "d_k", "d_v"} - {tensor}:  # only `tensor` keeps strides that overflow
        getattr(p, f"{other}_stride")[1] = 1
    got, msg = call_backward(lib, p)
    assert got == INVALID_ARGUMENT, msg
    assert f"{tensor}: the largest element offset overflows int64" in msg and f"size {1 << 61}" in msg, msg


def test_backward_gradients_use_the_slab_grids(lib, no_gpu):  # noqa: F811
    """d_q is checked on the query slab's grid and d_k on the key slab's: a zero d_q stride on an
    axis of the query slab aliases, a zero stride on an extent-1 axis does not."""
    p = slab_backward_params(q_shape=(1, 20), q_origin=(8, 0), kv_origin=(5, 0), kv_shape=(7, 20))
    p.d_q_stride[1] = 0  # the query slab has one row on axis 0: no aliasing
    got, msg = call_backward(lib, p)
    assert got == NO_DEVICE, msg
    p.d_k_stride[1] = 0  # the key slab has 7 rows on axis 0: d_k would alias
    got, msg = call_backward(lib, p)
    assert got == INVALID_ARGUMENT and "d_k_stride[1] (axis 0) is 0 for a dimension of size 7" in msg, msg


def test_backward_global_axis_limit_unsupported(lib):
    n = (1 << 30) + 16
    p = slab_backward_params(rank=1, glob=(n,), q_origin=(n - 40,), q_shape=(8,), kv_origin=(n - 64,),
                             kv_shape=(64,), kernel=3)
    got, msg = call_backward(lib, p)
    assert got == UNSUPPORTED, msg
    assert f"global_shape[0] is {n}" in msg and "tokens per axis" in msg


@pytest.mark.parametrize(
    "change",
    [
        mut(),
        mut(**{"kv_shape[0]": 14, "kv_origin[0]": 5}),  # exactly the keys [5, 19)
        mut(**{"global_shape[0]": 16, "q_origin[0]": 0, "kv_origin[0]": 0}),  # the key slab is the whole grid
        mut(**{"is_causal[0]": 1, "kv_origin[0]": 2, "kv_shape[0]": 14}),  # causal: keys [2, 16)
        mut(**{"stride[1]": 7, "dilation[0]": 2, "kv_origin[0]": 2, "kv_shape[0]": 20}),  # keys [2, 22)
        mut(d_lse=None),
        mut(deterministic=1),
    ],
    ids=["slab", "tight", "whole_key_grid", "causal", "stride_dilation", "no_dlse", "deterministic"],
)
def test_backward_valid_slabs_reach_device_check(lib, no_gpu, change):  # noqa: F811
    got, msg = call_backward(lib, change(slab_backward_params()))
    assert got == NO_DEVICE, msg


def test_backward_workspace_covers_the_query_slab(lib, built_archs):
    """One float per (batch, head, query slab token), not per global token."""
    st, nbytes, msg = workspace(lib, slab_backward_params())
    assert st == 0, msg
    assert_workspace(built_archs, nbytes, 2 * 4 * 8 * 20, dict(batch=2, heads=4))


def test_abi_1_1_backward_caller_ignores_the_new_fields(lib, no_gpu, built_archs):  # noqa: F811
    # A 1.1 caller's struct ends at byte 744; whatever follows it in memory is not its data.
    p = A.valid_backward_params()
    p.global_shape[:] = [99, -1, 7]
    p.q_origin[:] = [5, 5, 5]
    p.kv_shape[:] = [1, 0, 3]
    p.struct_size = A.BWD_SIZE_V1_1
    got, msg = call_backward(lib, p)
    assert got == NO_DEVICE, msg
    st, nbytes, msg = workspace(lib, p)
    assert st == 0, msg
    assert_workspace(built_archs, nbytes, 2 * 4 * 16 * 16, dict(batch=2, heads=4))
    p.struct_size = ctypes.sizeof(A.FnaBackwardParams)
    got, msg = call_backward(lib, p)
    assert got == INVALID_ARGUMENT and "global_shape[1] is -1" in msg, msg


def test_backward_struct_size_between_versions_reads_the_given_bytes(lib):
    # struct_size 752 holds global_shape[0] only; global_shape[1] reads as 0.
    p = slab_backward_params()
    p.struct_size = A.BWD_SIZE_V1_1 + 8
    got, msg = call_backward(lib, p)
    assert got == INVALID_ARGUMENT and "global_shape = (32, 0, 0)[:2] mixes zero and non-zero" in msg, msg
