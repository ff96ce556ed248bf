"""Argument validation of natten_fna_backward / natten_fna_backward_workspace_size (ABI 1.1; the
slab fields of ABI 1.2 are covered by test_region_validation.py),
driven through ctypes with fake (never dereferenced) pointers, like test_validation.py.

Every check runs before any CUDA call, so on a GPU-less machine a valid problem ends in
NATTEN_STATUS_NO_DEVICE and an invalid one in INVALID_ARGUMENT / UNSUPPORTED with a message that
names the field and the values.
"""

from __future__ import annotations

import ctypes
import math

import pytest

import abi_ctypes as A
from abi_ctypes import INVALID_ARGUMENT, NO_DEVICE, SUCCESS, UNSUPPORTED
from test_validation import _no_gpu, mut


def call_backward(lib, p):
    return lib.natten_fna_backward(ctypes.byref(p)), A.last_error(lib)


def workspace(lib, p):
    n = ctypes.c_uint64(12345)
    st = lib.natten_fna_backward_workspace_size(ctypes.byref(p), ctypes.byref(n))
    return st, n.value, A.last_error(lib)


@pytest.fixture(scope="module")
def no_gpu(lib):
    if not _no_gpu(lib):
        pytest.skip("a CUDA device is present: these tests expect the no-device path")
    return True


def _set_tile(q, kv, **fields):
    def apply(p):
        p.q_tile[: len(q)] = list(q)
        p.kv_tile[: len(kv)] = list(kv)
        return mut(**fields)(p) if fields else p

    return apply


# (id, mutation, expected status, substrings of the message)
INVALID_CASES = [
    ("struct_size_zero", mut(struct_size=0), INVALID_ARGUMENT, ["struct_size is 0", "at least 744", "ABI 1.1"]),
    ("struct_size_forward", mut(struct_size=448), INVALID_ARGUMENT, ["natten_fna_backward_params.struct_size is 448"]),
    ("struct_size_small", mut(struct_size=A.BWD_SIZE_V1_1 - 8), INVALID_ARGUMENT,
     [f"struct_size is {A.BWD_SIZE_V1_1 - 8}"]),
    ("struct_size_huge", mut(struct_size=1 << 40), INVALID_ARGUMENT, ["struct_size is 1099511627776"]),
    ("reserved", mut(reserved=3), INVALID_ARGUMENT, ["reserved is 3"]),
    ("dtype_zero", mut(dtype=0), INVALID_ARGUMENT, ["dtype is 0"]),
    ("rank_four", mut(rank=4), INVALID_ARGUMENT, ["rank is 4"]),
    ("batch_zero", mut(batch=0), INVALID_ARGUMENT, ["batch is 0"]),
    ("shape_zero", mut(**{"shape[1]": 0}), INVALID_ARGUMENT, ["shape[1] is 0"]),
    ("heads_zero", mut(heads=0), INVALID_ARGUMENT, ["heads is 0"]),
    ("heads_kv_zero", mut(heads_kv=0), INVALID_ARGUMENT, ["heads_kv is 0"]),
    ("heads_not_multiple", mut(heads=4, heads_kv=3), INVALID_ARGUMENT, ["heads (4)", "heads_kv (3)"]),
    ("head_dim_zero", mut(head_dim=0), INVALID_ARGUMENT, ["head_dim is 0"]),
    ("head_dim_v_negative", mut(head_dim_v=-8), INVALID_ARGUMENT, ["head_dim_v is -8"]),
    ("q_null", mut(q=None), INVALID_ARGUMENT, ["q is NULL"]),
    ("k_null", mut(k=None), INVALID_ARGUMENT, ["k is NULL"]),
    ("v_null", mut(v=None), INVALID_ARGUMENT, ["v is NULL"]),
    ("out_null", mut(out=None), INVALID_ARGUMENT, ["out is NULL"]),
    ("lse_null", mut(lse=None), INVALID_ARGUMENT, ["lse is NULL"]),
    ("d_out_null", mut(d_out=None), INVALID_ARGUMENT, ["d_out is NULL"]),
    ("d_q_null", mut(d_q=None), INVALID_ARGUMENT, ["d_q is NULL"]),
    ("d_k_null", mut(d_k=None), INVALID_ARGUMENT, ["d_k is NULL"]),
    ("d_v_null", mut(d_v=None), INVALID_ARGUMENT, ["d_v is NULL"]),
    ("q_misaligned", mut(q=A.Q_PTR + 8), INVALID_ARGUMENT, ["q (0x7f0000000008) is not 16-byte aligned"]),
    ("lse_misaligned", mut(lse=A.LSE_PTR + 2), INVALID_ARGUMENT, ["lse (0x7f0040000002) is not 4-byte aligned"]),
    ("d_out_misaligned", mut(d_out=A.DO_PTR + 8), INVALID_ARGUMENT, ["d_out (0x7f0050000008) is not 16-byte aligned"]),
    ("d_lse_misaligned", mut(d_lse=A.DLSE_PTR + 1), INVALID_ARGUMENT, ["d_lse (0x7f0060000001) is not 4-byte"]),
    ("d_q_misaligned", mut(d_q=A.DQ_PTR + 2), INVALID_ARGUMENT, ["d_q (0x7f0070000002) is not 16-byte aligned"]),
    ("d_k_misaligned", mut(d_k=A.DK_PTR + 4), INVALID_ARGUMENT, ["d_k (0x7f0080000004) is not 16-byte aligned"]),
    ("d_v_misaligned", mut(d_v=A.DV_PTR + 6), INVALID_ARGUMENT, ["d_v (0x7f0090000006) is not 16-byte aligned"]),
    ("q_stride_negative", mut(**{"q_stride[3]": -64}), INVALID_ARGUMENT, ["q_stride[3] (head) is -64"]),
    ("out_head_dim_stride", mut(**{"out_stride[4]": 2}), INVALID_ARGUMENT, ["out_stride[4] (head dim) is 2", "contiguous"]),
    ("lse_negative", mut(**{"lse_stride[0]": -1}), INVALID_ARGUMENT, ["lse_stride[0] (batch) is -1"]),
    ("d_out_head_dim_stride", mut(**{"d_out_stride[4]": 3}), INVALID_ARGUMENT, ["d_out_stride[4] (head dim) is 3"]),
    ("d_lse_negative", mut(**{"d_lse_stride[3]": -4}), INVALID_ARGUMENT, ["d_lse_stride[3] (head) is -4"]),
    ("d_q_aliasing", mut(**{"d_q_stride[1]": 0}), INVALID_ARGUMENT, ["d_q_stride[1] (axis 0) is 0", "alias"]),
    ("d_k_aliasing", mut(**{"d_k_stride[3]": 0}), INVALID_ARGUMENT, ["d_k_stride[3] (head) is 0", "alias"]),
    ("d_v_aliasing", mut(**{"d_v_stride[0]": 0}), INVALID_ARGUMENT, ["d_v_stride[0] (batch) is 0", "alias"]),
    ("d_v_head_dim_stride", mut(**{"d_v_stride[4]": 0}), INVALID_ARGUMENT, ["d_v_stride[4] (head dim) is 0"]),
    ("offset_overflow", mut(batch=4, **{"d_out_stride[0]": 1 << 62}), INVALID_ARGUMENT, ["d_out: the largest element offset overflows int64"]),
    ("kernel_size_one", mut(**{"kernel_size[0]": 1}), INVALID_ARGUMENT, ["kernel_size[0] is 1", ">= 2"]),
    ("stride_too_big", mut(**{"stride[0]": 8}), INVALID_ARGUMENT, ["stride[0] is 8", "kernel_size[0] = 7"]),
    ("dilation_zero", mut(**{"dilation[0]": 0}), INVALID_ARGUMENT, ["dilation[0] is 0"]),
    ("window_too_big", mut(**{"dilation[1]": 3}), INVALID_ARGUMENT, ["kernel_size[1] * dilation[1] = 7 * 3 = 21 exceeds shape[1] = 16"]),
    ("causal_bad", mut(**{"is_causal[1]": 2}), INVALID_ARGUMENT, ["is_causal[1] is 2"]),
    ("scale_nan", mut(scale=math.nan), INVALID_ARGUMENT, ["scale is nan"]),
    ("scale_zero", mut(scale=0.0), INVALID_ARGUMENT, ["scale is 0"]),
    ("q_tile_mixed", _set_tile((8, 0), (8, 8)), INVALID_ARGUMENT, ["q_tile", "mixes zero and non-zero"]),
    ("kv_tile_missing", _set_tile((8, 8), (0, 0)), INVALID_ARGUMENT, ["q_tile is given but kv_tile is all 0"]),
    ("backend_bad", mut(backend=7), INVALID_ARGUMENT, ["backend is 7"]),
    ("device_bad", mut(device=-2), INVALID_ARGUMENT, ["device is -2"]),
    ("deterministic_bad", mut(deterministic=2), INVALID_ARGUMENT, ["deterministic is 2; it must be 0 or 1"]),
    # Support checks (after every argument check, before the device).
    ("fp32_head_dim_large", mut(dtype=A.FP32, head_dim=512), UNSUPPORTED, ["head_dim 512", "(fp32)"]),
    ("head_dim_large", mut(head_dim=512), UNSUPPORTED, ["head_dim 512"]),
    ("head_dim_v_large", mut(head_dim_v=264), UNSUPPORTED, ["head_dim_v 264"]),
    ("backend_hopper", mut(backend=A.BACKEND_HOPPER), UNSUPPORTED,
     ["NATTEN_BACKEND_HOPPER_FNA is not a backward backend", "NATTEN_BACKEND_AUTO"]),
    # kv_splits (ABI 1.3): argument checks, then the upper bound (key tiles per axis) once the tiles
    # are known; the valid problem is 16 x 16 with 64-token tiles (kv_tile (8, 8): 2 key tiles per axis).
    ("kv_splits_negative", mut(**{"kv_splits[0]": -1, "kv_splits[1]": 1}), INVALID_ARGUMENT, ["kv_splits[0] is -1"]),
    ("kv_splits_mixed", mut(**{"kv_splits[0]": 2}), INVALID_ARGUMENT, ["kv_splits mixes zero and non-zero", "(2, 0, 0)"]),
    ("kv_splits_past_rank", mut(**{"kv_splits[0]": 1, "kv_splits[1]": 1, "kv_splits[2]": 2}), INVALID_ARGUMENT,
     ["kv_splits[2] is 2 but rank is 2"]),
    ("kv_splits_reserved", mut(reserved_1_3=1), INVALID_ARGUMENT, ["reserved_1_3 is 1"]),
    ("kv_splits_too_many", _set_tile((8, 8), (8, 8), **{"kv_splits[0]": 3, "kv_splits[1]": 1}), INVALID_ARGUMENT,
     ["kv_splits[0] is 3, but the dK / dV kernel has 2 key tiles along axis 0 (kv_tile[0] = 8); use 1 to 2"]),
    ("tile_bad_product", _set_tile((8, 4), (8, 8)), UNSUPPORTED, ["q_tile (8, 4) kv_tile (8, 8) is not supported"]),
]


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_backward_rejects(lib, case):
    _, mutation, status, needles = case
    p = mutation(A.valid_backward_params())
    got, msg = call_backward(lib, p)
    assert got == status, f"status {got} ({A.STATUS_NAMES.get(got)}), message: {msg!r}"
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    # The workspace query validates the same way.
    st, n, msg2 = workspace(lib, mutation(A.valid_backward_params()))
    assert st == status and n == 0, (st, n, msg2)
    assert msg2 == msg


def test_backward_null_params(lib):
    assert lib.natten_fna_backward(None) == INVALID_ARGUMENT
    assert A.last_error(lib) == "params is NULL"
    n = ctypes.c_uint64(0)
    assert lib.natten_fna_backward_workspace_size(None, ctypes.byref(n)) == INVALID_ARGUMENT
    p = A.valid_backward_params()
    assert lib.natten_fna_backward_workspace_size(ctypes.byref(p), None) == INVALID_ARGUMENT
    assert A.last_error(lib) == "bytes is NULL"


@pytest.mark.parametrize(
    "kwargs, rows",
    [
        (dict(), 2 * 16 * 16 * 4),
        (dict(rank=1, shape=(33,), batch=1, heads=3, heads_kv=1), 33 * 3),
        (dict(rank=3, shape=(5, 6, 7), kernel=3, batch=3), 3 * 5 * 6 * 7 * 4),
    ],
    ids=["rank2", "rank1", "rank3"],
)
def test_workspace_size(lib, built_archs, kwargs, rows):
    st, n, msg = workspace(lib, A.valid_backward_params(**kwargs))
    assert st == SUCCESS, msg
    assert_workspace(built_archs, n, rows, kwargs)


def assert_workspace(archs, n, rows, kwargs):
    """delta (4 bytes per batch x token x head, rounded to 256), plus, in a build with the sm_90a
    kernels (AUTO may run the SM90 dK / dV kernel on such fp16 problems), its two visit tables (4
    bytes per batch x head x token of its 64-token query tiles, padding included, each) and its
    work counter (256 bytes). Its work order travels in the kernel's parameter block."""
    delta = (4 * rows + 255) // 256 * 256
    if not any(a.startswith("90a") for a in archs):
        assert n == delta
        return
    bh = kwargs.get("batch", 2) * kwargs.get("heads", 4)
    tables = n - delta - 256
    assert tables % (2 * 4 * 64 * bh) == 0 and tables >= 2 * 4 * rows, (n, delta)


@pytest.mark.parametrize(
    "splits", [(1, 1), (2, 2), (1, 2), (2, 1)], ids=["1x1", "2x2", "1x2", "2x1"]
)
def test_backward_kv_splits_valid(lib, no_gpu, splits):
    # 16 x 16 grid, kv_tile (8, 8): 2 key tiles per axis, so 1 or 2 CTAs per axis are valid.
    p = _set_tile((8, 8), (8, 8), **{"kv_splits[0]": splits[0], "kv_splits[1]": splits[1]})(A.valid_backward_params())
    got, msg = call_backward(lib, p)
    assert got == NO_DEVICE, msg
    st, n, msg2 = workspace(lib, p)
    assert st == SUCCESS, msg2


def test_backward_accepts_v1_2_struct_without_kv_splits(lib, no_gpu):
    # A caller built against ABI 1.2 passes struct_size 840: kv_splits is read as all 0 (default).
    p = A.valid_backward_params()
    p.kv_splits[0] = 7  # past the caller's struct: must not be read
    p.struct_size = A.BWD_SIZE_V1_2
    got, msg = call_backward(lib, p)
    assert got == NO_DEVICE, msg


def test_backward_fp32_valid_reaches_device_check(lib, no_gpu):
    p = A.valid_backward_params(dtype=A.FP32, rank=3, shape=(5, 6, 7), kernel=3, head_dim=40, head_dim_v=136)
    got, msg = call_backward(lib, p)
    assert got == NO_DEVICE, msg
    st, n, msg2 = workspace(lib, A.valid_backward_params(dtype=A.FP32))
    assert st == SUCCESS and n == (4 * 2 * 16 * 16 * 4 + 255) // 256 * 256, msg2  # fp32: SM80 only


def test_workspace_checked_before_device(lib):
    p = A.valid_backward_params()
    p.workspace = None
    got, msg = call_backward(lib, p)
    assert got == INVALID_ARGUMENT and msg == "workspace is NULL"
    p = A.valid_backward_params()
    p.workspace = A.WS_PTR + 4
    got, msg = call_backward(lib, p)
    assert got == INVALID_ARGUMENT and "workspace (0x7f00a0000004) is not 16-byte aligned" in msg
    p = A.valid_backward_params()
    p.workspace_bytes = 100
    got, msg = call_backward(lib, p)
    assert got == INVALID_ARGUMENT
    # the minimum (delta); natten_fna_backward_workspace_size may add the SM90 dK / dV tables
    assert "workspace_bytes is 100 but this problem needs 8192 bytes" in msg


def test_backward_error_order_arguments_before_support(lib):
    p = mut(head_dim=512, **{"kernel_size[0]": 1})(A.valid_backward_params())
    got, msg = call_backward(lib, p)
    assert got == INVALID_ARGUMENT and "kernel_size[0] is 1" in msg


def test_backward_axis_limit_unsupported(lib):
    n = (1 << 30) + 16
    p = A.valid_backward_params(rank=1, shape=(n,), batch=1, heads=1, heads_kv=1)
    got, msg = call_backward(lib, p)
    assert got == UNSUPPORTED, msg
    assert "shape[0] is %d" % n in msg


VALID_CASES = [
    ("rank1", dict(rank=1, shape=(33,))),
    ("rank2", dict()),
    ("rank3", dict(rank=3, shape=(5, 6, 7), kernel=3)),
    ("bf16", dict(dtype=A.BF16)),
    ("gqa", dict(heads=8, heads_kv=1)),
    ("head_dim_v_differs", dict(head_dim=64, head_dim_v=128)),
    ("head_dim_256", dict(head_dim=256, head_dim_v=256)),
    ("no_dlse", dict(with_dlse=False)),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in VALID_CASES], ids=[c[0] for c in VALID_CASES])
def test_backward_valid_reaches_device_check(lib, no_gpu, kwargs):
    got, msg = call_backward(lib, A.valid_backward_params(**kwargs))
    assert got == NO_DEVICE, msg
    assert msg.startswith("no CUDA device available"), msg


@pytest.mark.parametrize(
    "change",
    [
        mut(deterministic=1),
        mut(**{"stride[0]": 7, "dilation[1]": 2, "is_causal[0]": 1, "kernel_size[1]": 8}),
        mut(**{"q_stride[3]": 0}),  # broadcast input strides are fine
        mut(**{"d_out_stride[0]": 3, "d_out_stride[1]": 12345}),  # unaligned rows: scalar path
        mut(backend=A.BACKEND_SM80),
        _set_tile((8, 8), (8, 8)),
        _set_tile((64, 1), (1, 64)),
    ],
    ids=["deterministic", "stride_dilation_causal", "broadcast_input", "unaligned_rows", "backend_sm80",
         "tile_8x8", "tile_64x1_1x64"],
)
def test_backward_valid_variants(lib, no_gpu, change):
    got, msg = call_backward(lib, change(A.valid_backward_params()))
    assert got == NO_DEVICE, msg


def test_backward_accepts_larger_struct_with_zero_tail(lib, no_gpu):
    class Bigger(ctypes.Structure):
        _fields_ = [("base", A.FnaBackwardParams), ("future", ctypes.c_int64 * 4)]

    b = Bigger()
    b.base = A.valid_backward_params()
    b.base.struct_size = ctypes.sizeof(Bigger)
    assert lib.natten_fna_backward(ctypes.byref(b)) == NO_DEVICE
    b.future[1] = 1
    assert lib.natten_fna_backward(ctypes.byref(b)) == UNSUPPORTED
    assert "non-zero byte at offset" in A.last_error(lib)
