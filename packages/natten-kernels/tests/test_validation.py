"""Argument validation of the C ABI, driven through ctypes with fake (never dereferenced) pointers.

Every check runs before any CUDA call, so on this GPU-less machine a valid problem ends in
NATTEN_STATUS_NO_DEVICE and an invalid one in INVALID_ARGUMENT / UNSUPPORTED with a message that
names the argument and the values.
"""

from __future__ import annotations

import ctypes
import math
import threading

import pytest

import abi_ctypes as A
from abi_ctypes import INVALID_ARGUMENT, NO_DEVICE, UNSUPPORTED


def call_forward(lib, p):
    return lib.natten_fna_forward(ctypes.byref(p)), A.last_error(lib)


def _no_gpu(lib) -> bool:
    a, b = ctypes.c_int(), ctypes.c_int()
    return lib.natten_device_info(-1, ctypes.byref(a), ctypes.byref(b)) == NO_DEVICE


@pytest.fixture(scope="module")
def arch(built_archs):
    """An SM version this build has a kernel image for."""
    for a in (80, 86, 89, 90, 100, 103, 120):
        if _has_image(built_archs, a):
            return a
    pytest.fail(f"no usable arch in {built_archs}")


@pytest.fixture(scope="module")
def no_gpu(lib):
    if not _no_gpu(lib):
        pytest.skip("a CUDA device is present: these tests expect the no-device path")
    return True


def mut(**changes):
    """A mutation of valid_params(): keys are field names, or field[index]."""

    def apply(p):
        for key, value in changes.items():
            if "[" in key:
                name, idx = key[:-1].split("[")
                getattr(p, name)[int(idx)] = value
            else:
                setattr(p, key, value)
        return p

    return apply


def _set_tile(q, kv):
    def apply(p):
        p.q_tile[: len(q)] = list(q)
        p.kv_tile[: len(kv)] = list(kv)
        return p

    return apply


# (id, mutation, expected status, substrings of the message)
INVALID_CASES = [
    ("struct_size_zero", mut(struct_size=0), INVALID_ARGUMENT, ["struct_size is 0", "at least 448"]),
    ("struct_size_small", mut(struct_size=447), INVALID_ARGUMENT, ["struct_size is 447"]),
    ("struct_size_huge", mut(struct_size=1 << 40), INVALID_ARGUMENT, ["struct_size is 1099511627776"]),
    ("kernel_schedule", mut(kernel_schedule=3), INVALID_ARGUMENT, ["kernel_schedule is 3", "PINGPONG"]),
    ("kernel_schedule_negative", mut(kernel_schedule=-1), INVALID_ARGUMENT, ["kernel_schedule is -1"]),
    ("dtype_zero", mut(dtype=0), INVALID_ARGUMENT, ["dtype is 0"]),
    ("dtype_bad", mut(dtype=9), INVALID_ARGUMENT, ["dtype is 9"]),
    ("rank_zero", mut(rank=0), INVALID_ARGUMENT, ["rank is 0"]),
    ("rank_four", mut(rank=4), INVALID_ARGUMENT, ["rank is 4"]),
    ("batch_zero", mut(batch=0), INVALID_ARGUMENT, ["batch is 0"]),
    ("batch_negative", mut(batch=-2), INVALID_ARGUMENT, ["batch is -2"]),
    ("shape_zero", mut(**{"shape[1]": 0}), INVALID_ARGUMENT, ["shape[1] is 0"]),
    ("shape_negative", mut(**{"shape[0]": -5}), INVALID_ARGUMENT, ["shape[0] is -5"]),
    ("heads_zero", mut(heads=0), INVALID_ARGUMENT, ["heads is 0"]),
    ("heads_kv_zero", mut(heads_kv=0), INVALID_ARGUMENT, ["heads_kv is 0"]),
    ("heads_not_multiple", mut(heads=4, heads_kv=3), INVALID_ARGUMENT, ["heads (4)", "heads_kv (3)"]),
    ("head_dim_zero", mut(head_dim=0), INVALID_ARGUMENT, ["head_dim is 0"]),
    ("head_dim_v_negative", mut(head_dim_v=-8), INVALID_ARGUMENT, ["head_dim_v is -8"]),
    ("q_null", mut(q=None), INVALID_ARGUMENT, ["q is NULL"]),
    ("k_null", mut(k=None), INVALID_ARGUMENT, ["k is NULL"]),
    ("v_null", mut(v=None), INVALID_ARGUMENT, ["v is NULL"]),
    ("out_null", mut(out=None), INVALID_ARGUMENT, ["out is NULL"]),
    ("q_misaligned", mut(q=A.Q_PTR + 8), INVALID_ARGUMENT, ["q (0x7f0000000008) is not 16-byte aligned"]),
    ("k_misaligned", mut(k=A.K_PTR + 2), INVALID_ARGUMENT, ["k (0x7f0010000002)", "16-byte"]),
    ("v_misaligned", mut(v=A.V_PTR + 4), INVALID_ARGUMENT, ["v (0x7f0020000004)", "16-byte"]),
    ("out_misaligned", mut(out=A.OUT_PTR + 1), INVALID_ARGUMENT, ["out (0x7f0030000001)", "16-byte"]),
    ("lse_misaligned", mut(lse=A.LSE_PTR + 2), INVALID_ARGUMENT, ["lse (0x7f0040000002) is not 4-byte aligned"]),
    ("q_stride_negative", mut(**{"q_stride[3]": -64}), INVALID_ARGUMENT, ["q_stride[3] (head) is -64", "non-negative"]),
    ("k_stride_negative", mut(**{"k_stride[1]": -1}), INVALID_ARGUMENT, ["k_stride[1] (axis 0) is -1"]),
    ("q_head_dim_stride", mut(**{"q_stride[4]": 2}), INVALID_ARGUMENT, ["q_stride[4] (head dim) is 2", "contiguous"]),
    ("v_head_dim_stride", mut(**{"v_stride[4]": 0}), INVALID_ARGUMENT, ["v_stride[4] (head dim) is 0"]),
    ("out_aliasing", mut(**{"out_stride[2]": 0}), INVALID_ARGUMENT, ["out_stride[2] (axis 1) is 0", "alias"]),
    ("lse_aliasing", mut(**{"lse_stride[3]": 0}), INVALID_ARGUMENT, ["lse_stride[3] (head) is 0", "alias"]),
    ("lse_negative", mut(**{"lse_stride[0]": -1}), INVALID_ARGUMENT, ["lse_stride[0] (batch) is -1"]),
    ("offset_overflow", mut(batch=4, **{"q_stride[0]": 1 << 62}), INVALID_ARGUMENT, ["q: the largest element offset overflows int64"]),
    ("bytes_overflow", mut(**{"k_stride[0]": (1 << 62) + 64}), INVALID_ARGUMENT, ["k: the byte extent overflows int64"]),
    ("address_wrap", mut(q=0xFFFFFFFFFFFFFF00), INVALID_ARGUMENT, ["q: pointer 0xffffffffffffff00", "wraps"]),
    ("kernel_size_one", mut(**{"kernel_size[0]": 1}), INVALID_ARGUMENT, ["kernel_size[0] is 1", ">= 2"]),
    ("kernel_size_negative", mut(**{"kernel_size[1]": -3}), INVALID_ARGUMENT, ["kernel_size[1] is -3"]),
    ("stride_zero", mut(**{"stride[1]": 0}), INVALID_ARGUMENT, ["stride[1] is 0", "1 <= stride <= kernel_size"]),
    ("stride_too_big", mut(**{"stride[0]": 8}), INVALID_ARGUMENT, ["stride[0] is 8", "kernel_size[0] = 7"]),
    ("dilation_zero", mut(**{"dilation[0]": 0}), INVALID_ARGUMENT, ["dilation[0] is 0"]),
    ("window_too_big", mut(**{"dilation[1]": 3}), INVALID_ARGUMENT, ["kernel_size[1] * dilation[1] = 7 * 3 = 21 exceeds shape[1] = 16"]),
    ("causal_bad", mut(**{"is_causal[1]": 2}), INVALID_ARGUMENT, ["is_causal[1] is 2"]),
    ("scale_nan", mut(scale=math.nan), INVALID_ARGUMENT, ["scale is nan"]),
    ("scale_inf", mut(scale=math.inf), INVALID_ARGUMENT, ["scale is inf"]),
    ("scale_zero", mut(scale=0.0), INVALID_ARGUMENT, ["scale is 0"]),
    ("q_tile_negative", _set_tile((-8, 8), (8, 8)), INVALID_ARGUMENT, ["q_tile[0] is -8"]),
    ("q_tile_mixed", _set_tile((8, 0), (8, 8)), INVALID_ARGUMENT, ["q_tile", "mixes zero and non-zero"]),
    ("kv_tile_missing", _set_tile((8, 8), (0, 0)), INVALID_ARGUMENT, ["q_tile is given but kv_tile is all 0"]),
    ("q_tile_missing", _set_tile((0, 0), (8, 8)), INVALID_ARGUMENT, ["kv_tile is given but q_tile is all 0"]),
    ("backend_bad", mut(backend=7), INVALID_ARGUMENT, ["backend is 7"]),
    ("device_bad", mut(device=-2), INVALID_ARGUMENT, ["device is -2"]),
    # Support checks (after every argument check, before the device).
    ("fp32_hopper", mut(dtype=A.FP32, backend=A.BACKEND_HOPPER), UNSUPPORTED,
     ["NATTEN_BACKEND_HOPPER_FNA", "dtype fp32", "cutlass-fna runs fp32"]),
    ("fp32_head_dim_odd", mut(dtype=A.FP32, head_dim=60, **{"q_stride[3]": 60, "k_stride[3]": 60}), UNSUPPORTED,
     ["head_dim 60", "(fp32)"]),
    ("head_dim_odd", mut(head_dim=60, **{"q_stride[3]": 60, "k_stride[3]": 60}), UNSUPPORTED, ["head_dim 60"]),
    ("head_dim_large", mut(head_dim=512), UNSUPPORTED, ["head_dim 512"]),
    ("head_dim_v_large", mut(head_dim_v=264), UNSUPPORTED, ["head_dim_v 264"]),
    # The Hopper kernel exists since 1.2; this CPU test's fp16 problem has no sm_90a device here (and
    # the CI build has no sm_90a code), so it is refused, naming the backend.
    ("backend_hopper", mut(backend=A.BACKEND_HOPPER), UNSUPPORTED, ["NATTEN_BACKEND_HOPPER_FNA"]),
    ("backend_blackwell", mut(backend=A.BACKEND_BLACKWELL), UNSUPPORTED, ["NATTEN_BACKEND_BLACKWELL_FNA"]),
    ("tile_bad_product", _set_tile((8, 4), (8, 8)), UNSUPPORTED, ["q_tile (8, 4) kv_tile (8, 8) is not supported", "natten_fna_query_configs"]),
    ("tile_not_pow2", _set_tile((6, 10), (8, 8)), UNSUPPORTED, ["q_tile (6, 10)"]),
]


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_forward_rejects(lib, built_archs, case):
    name, mutation, status, needles = case
    if name == "backend_hopper" and "90a-real" in built_archs and _no_gpu(lib):
        # A build with sm_90a code (e.g. the default archs, tested through NATTEN_KERNELS_LIBRARY)
        # passes the support checks and stops at the device query.
        status, needles = NO_DEVICE, ["no CUDA device available"]
    p = mutation(A.valid_params())
    got, msg = call_forward(lib, p)
    assert got == status, f"status {got} ({A.STATUS_NAMES.get(got)}), message: {msg!r}"
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_forward_null_params(lib):
    assert lib.natten_fna_forward(None) == INVALID_ARGUMENT
    assert A.last_error(lib) == "params is NULL"


def test_axis_limit_unsupported(lib):
    n = (1 << 30) + 16
    p = A.valid_params(rank=1, shape=(n,), batch=1, heads=1, heads_kv=1)
    got, msg = call_forward(lib, p)
    assert got == UNSUPPORTED, msg
    assert "shape[0] is %d" % n in msg and "tokens per axis" in msg


def test_error_order_arguments_before_support(lib):
    # head dim 512 (unsupported) + a window error (invalid): the argument error is reported.
    p = mut(head_dim=512, **{"kernel_size[0]": 1})(A.valid_params())
    got, msg = call_forward(lib, p)
    assert got == INVALID_ARGUMENT and "kernel_size[0] is 1" in msg


def test_error_order_pointers_before_window(lib):
    p = mut(q=A.Q_PTR + 8, **{"kernel_size[0]": 1})(A.valid_params())
    got, msg = call_forward(lib, p)
    assert got == INVALID_ARGUMENT and "q (0x" in msg


# ---- valid problems: everything passes, then the no-device path ---------------------------------

VALID_CASES = [
    ("rank1", dict(rank=1, shape=(33,))),
    ("rank2", dict()),
    ("rank3", dict(rank=3, shape=(5, 6, 7), kernel=3)),
    ("bf16", dict(dtype=A.BF16)),
    ("fp32", dict(dtype=A.FP32)),
    ("fp32_rank3_gqa_dv", dict(dtype=A.FP32, rank=3, shape=(5, 6, 7), kernel=3, heads=6, heads_kv=2, head_dim=40,
                               head_dim_v=136)),
    ("gqa", dict(heads=8, heads_kv=1)),
    ("head_dim_v_differs", dict(head_dim=64, head_dim_v=128)),
    ("head_dim_8", dict(head_dim=8, head_dim_v=8)),
    ("head_dim_256", dict(head_dim=256, head_dim_v=256)),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in VALID_CASES], ids=[c[0] for c in VALID_CASES])
def test_forward_valid_reaches_device_check(lib, no_gpu, kwargs):
    p = A.valid_params(**kwargs)
    got, msg = call_forward(lib, p)
    assert got == NO_DEVICE, msg
    assert msg.startswith("no CUDA device available"), msg


@pytest.mark.parametrize(
    "change",
    [
        mut(lse=None),
        mut(**{"stride[0]": 7, "dilation[1]": 2, "is_causal[0]": 1, "kernel_size[1]": 8}),
        mut(**{"q_stride[3]": 0}),  # broadcast strides of inputs are fine
        mut(**{"q_stride[0]": 3, "q_stride[1]": 12345}),  # unaligned rows: the kernel's scalar path
        mut(**{"shape[0]": 2, "kernel_size[0]": 2}),
        mut(device=0),
        mut(device=5),  # an ordinal is checked against the device count, i.e. after the device query
        mut(backend=A.BACKEND_SM80),
        mut(scale=-0.5),
        _set_tile((8, 8), (8, 8)),
        _set_tile((64, 1), (1, 64)),
    ],
    ids=["no_lse", "stride_dilation_causal", "broadcast_input", "unaligned_rows", "min_kernel", "device0",
         "device5", "backend_sm80", "negative_scale", "tile_8x8", "tile_64x1_1x64"],
)
def test_forward_valid_variants(lib, no_gpu, change):
    got, msg = call_forward(lib, change(A.valid_params()))
    assert got == NO_DEVICE, msg


def test_forward_accepts_larger_struct_with_zero_tail(lib, no_gpu):
    class Bigger(ctypes.Structure):
        _fields_ = [("base", A.FnaForwardParams), ("future", ctypes.c_int64 * 4)]

    b = Bigger()
    b.base = A.valid_params()
    b.base.struct_size = ctypes.sizeof(Bigger)
    assert lib.natten_fna_forward(ctypes.byref(b)) == NO_DEVICE
    b.future[2] = 1
    assert lib.natten_fna_forward(ctypes.byref(b)) == UNSUPPORTED
    msg = A.last_error(lib)
    assert "non-zero byte at offset" in msg and "upgrade natten-kernels" in msg


def test_every_query_config_is_accepted_by_forward(lib, no_gpu, arch):
    for rank, shape in ((1, (70,)), (2, (16, 16)), (3, (8, 8, 8))):
        pr = A.valid_problem(rank=rank, arch=arch)
        configs = query_all(lib, pr)
        for c in configs[:: max(1, len(configs) // 25)]:
            p = A.valid_params(rank=rank, shape=shape, kernel=3)
            p.q_tile[:rank] = list(c.q_tile[:rank])
            p.kv_tile[:rank] = list(c.kv_tile[:rank])
            got, msg = call_forward(lib, p)
            assert got == NO_DEVICE, (rank, tuple(c.q_tile), tuple(c.kv_tile), msg)


# ---- query API ------------------------------------------------------------------------------------


def query_all(lib, pr):
    count = ctypes.c_int(-1)
    st = lib.natten_fna_query_configs(ctypes.byref(pr), None, 0, ctypes.byref(count))
    assert st == 0, A.last_error(lib)
    buf = (A.TileConfig * count.value)()
    n2 = ctypes.c_int(-1)
    st = lib.natten_fna_query_configs(ctypes.byref(pr), buf, count.value, ctypes.byref(n2))
    assert st == 0 and n2.value == count.value
    return list(buf)


def _has_image(built_archs, arch):
    """Whether the SM80-class kernels have an image for `arch`: SASS is built as plain sm_XY for
    every requested real arch (90a -> sm_90, 100a -> sm_100; CMakeLists.txt), so it runs on the same
    major and a same or newer minor; PTX ('-virtual') JITs on newer archs, arch-specific ('a') PTX
    only on its own."""
    for entry in built_archs:
        num = entry.split("-")[0]
        ptx = entry.endswith("-virtual")
        sm = int(num.rstrip("af"))
        if ptx:
            if (num.endswith("a") and sm == arch) or (not num.endswith("a") and arch >= sm):
                return True
        elif sm // 10 == arch // 10 and arch % 10 >= sm % 10:
            return True
    return False


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("dtype", [A.FP16, A.BF16, A.FP32])
def test_query_configs(lib, arch, rank, dtype):
    pr = A.valid_problem(dtype=dtype, rank=rank, head_dim=128, arch=arch)
    configs = query_all(lib, pr)
    assert len(configs) >= 1
    seen = set()
    for c in configs:
        assert c.backend == A.BACKEND_SM80 and c.rank == rank
        assert tuple(c.reserved) == (0, 0)
        for t in (c.q_tile, c.kv_tile):
            assert all(x >= 1 and (x & (x - 1)) == 0 for x in t[:rank]), tuple(t)
            assert all(x == 1 for x in t[rank:]), tuple(t)
        key = (tuple(c.q_tile), tuple(c.kv_tile))
        assert key not in seen
        seen.add(key)
    assert lib.natten_fna_supports(ctypes.byref(pr)) == 0


def test_query_configs_fp32_same_tiles(lib, arch):
    # The fp32 CUDA-core kernels use the SM80 kernel's 64-token tiles: the same configurations.
    def tiles(dtype):
        return [(tuple(c.q_tile), tuple(c.kv_tile)) for c in query_all(lib, A.valid_problem(dtype=dtype, rank=2, arch=arch))]

    assert tiles(A.FP32) == tiles(A.FP16)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(
    "dtype, head_dims, q128",
    [(A.FP16, (128, 128), True), (A.BF16, (96, 128), True), (A.FP16, (128, 72), True), (A.FP32, (128, 128), False),
     (A.FP16, (64, 64), False), (A.BF16, (136, 128), False), (A.FP16, (32, 32), False)],
)
def test_query_configs_sm80_q128(lib, no_gpu, arch, rank, dtype, head_dims, q128):
    # natten-kernels >= 1.3.6: fp16 / bf16 at padded head dim 128 also list 128-token query boxes
    # with 64-token key boxes (after the 64-token pairs); the forward accepts them, the backward not.
    pr = A.valid_problem(dtype=dtype, rank=rank, head_dim=head_dims[0], head_dim_v=head_dims[1], arch=arch)
    tokens = lambda t: math.prod(t[:rank])  # noqa: E731
    configs = [(tuple(c.q_tile[:rank]), tuple(c.kv_tile[:rank])) for c in query_all(lib, pr)]
    base = [(q, kv) for q, kv in configs if tokens(q) == 64 and tokens(kv) == 64]
    big = [(q, kv) for q, kv in configs if tokens(q) == 128]
    assert configs[: len(base)] == base and len(base) == {1: 1, 2: 49, 3: 784}[rank]
    assert len(configs) == len(base) + len(big)
    if not q128:
        assert big == []
        return
    assert len(big) == {1: 1, 2: 56, 3: 1008}[rank] and all(tokens(kv) == 64 for _, kv in big)
    assert len(set(big)) == len(big)
    shape = {1: (300,), 2: (24, 20), 3: (8, 9, 10)}[rank]
    for q, kv in big[:: max(1, len(big) // 10)]:
        p = A.valid_params(rank=rank, shape=shape, dtype=dtype, head_dim=head_dims[0], head_dim_v=head_dims[1], kernel=3)
        p.q_tile[:rank], p.kv_tile[:rank] = list(q), list(kv)
        got, msg = call_forward(lib, p)
        assert got == NO_DEVICE, (q, kv, msg)
        b = A.valid_backward_params(rank=rank, shape=shape, dtype=dtype, head_dim=head_dims[0],
                                    head_dim_v=head_dims[1], kernel=3)
        b.q_tile[:rank], b.kv_tile[:rank] = list(q), list(kv)
        assert lib.natten_fna_backward(ctypes.byref(b)) == UNSUPPORTED
        assert "is not supported by the SM80 kernel" in A.last_error(lib)


def test_forward_rejects_q128_tiles_where_not_listed(lib, no_gpu):
    for dtype, d in ((A.FP32, 128), (A.FP16, 64)):
        p = A.valid_params(rank=2, shape=(24, 20), dtype=dtype, head_dim=d, head_dim_v=d, kernel=3)
        p.q_tile[:2], p.kv_tile[:2] = [16, 8], [8, 8]
        got, msg = call_forward(lib, p)
        assert got == UNSUPPORTED and "q_tile (16, 8) kv_tile (8, 8) is not supported" in msg, msg


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("head_dims", [(64, 64), (48, 48), (128, 64), (32, 128), (256, 256), (200, 136), (8, 8)])
def test_query_configs_hopper_head_dims(lib, built_archs, rank, head_dims):
    # Since 1.3.1 the Hopper kernel runs every multiple of 8 up to 256, D != Dv included, on the
    # 32 / 64 / 128 / 256 kernels (TMA zero-fills the rest); key tiles are 64 tokens at 256.
    d, dv = head_dims
    pr = A.valid_problem(rank=rank, head_dim=d, head_dim_v=dv, arch=90)
    pr.backend = A.BACKEND_HOPPER
    if not any(e.startswith("90a") for e in built_archs):  # the CI build: refused, naming the build
        count = ctypes.c_int(-1)
        assert lib.natten_fna_query_configs(ctypes.byref(pr), None, 0, ctypes.byref(count)) == UNSUPPORTED
        assert "no sm_90a kernel" in A.last_error(lib)
        return
    kv_log2 = 6 if max(d, dv) > 128 else 7
    shapes = {1: 1, 2: 8, 3: 36}[rank]
    kv_shapes = {1: 1, 2: kv_log2 + 1, 3: (kv_log2 + 1) * (kv_log2 + 2) // 2}[rank]
    configs = query_all(lib, pr)
    assert len(configs) == shapes * kv_shapes
    pairs = {(tuple(c.q_tile[:rank]), tuple(c.kv_tile[:rank])) for c in configs}
    assert len(pairs) == len(configs)
    for q, kv in pairs:
        assert math.prod(q) == 128 and math.prod(kv) == 1 << kv_log2, (q, kv)
    assert lib.natten_fna_supports(ctypes.byref(pr)) == 0


@pytest.mark.parametrize("head_dims", [(264, 264), (64, 264), (60, 64), (64, 4)])
def test_query_hopper_head_dims_refused(lib, head_dims):
    d, dv = head_dims
    pr = A.valid_problem(rank=2, head_dim=d, head_dim_v=dv, arch=90)
    pr.backend = A.BACKEND_HOPPER
    count = ctypes.c_int(-1)
    assert lib.natten_fna_query_configs(ctypes.byref(pr), None, 0, ctypes.byref(count)) == UNSUPPORTED
    msg = A.last_error(lib)
    assert f"head_dim {d} / head_dim_v {dv}" in msg and "multiples of 8 in [8, 256]" in msg, msg


def test_query_capacity_semantics(lib, arch):
    pr = A.valid_problem(rank=2, arch=arch)
    total = ctypes.c_int()
    assert lib.natten_fna_query_configs(ctypes.byref(pr), None, 0, ctypes.byref(total)) == 0
    assert total.value >= 3, "the SM80 kernel has many rank-2 tile shapes"
    buf = (A.TileConfig * 5)()
    for c in buf:
        c.backend = -7
    n = ctypes.c_int()
    assert lib.natten_fna_query_configs(ctypes.byref(pr), buf, 3, ctypes.byref(n)) == 0
    assert n.value == total.value  # total, like snprintf
    assert [c.backend for c in buf] == [1, 1, 1, -7, -7]  # nothing past capacity is written


@pytest.mark.parametrize(
    "change, status, needle",
    [
        (dict(dtype=A.FP32, backend=A.BACKEND_HOPPER), UNSUPPORTED, "dtype fp32"),
        (dict(dtype=0), INVALID_ARGUMENT, "problem->dtype is 0"),
        (dict(rank=0), INVALID_ARGUMENT, "problem->rank is 0"),
        (dict(head_dim=0), INVALID_ARGUMENT, "problem->head_dim is 0"),
        (dict(head_dim_v=-1), INVALID_ARGUMENT, "problem->head_dim_v is -1"),
        (dict(head_dim=20), UNSUPPORTED, "head_dim 20"),
        (dict(arch=-1), INVALID_ARGUMENT, "problem->arch is -1"),
        (dict(arch=75), UNSUPPORTED, "compute capability 7.5 is not supported"),
        (dict(arch=61), UNSUPPORTED, "compute capability 6.1"),
        (dict(backend=5), INVALID_ARGUMENT, "problem->backend is 5"),
        (dict(backend=A.BACKEND_HOPPER), UNSUPPORTED, "NATTEN_BACKEND_HOPPER_FNA"),
        (dict(reserved=1), INVALID_ARGUMENT, "problem->reserved is 1"),
        (dict(struct_size=8), INVALID_ARGUMENT, "natten_fna_problem.struct_size is 8"),
    ],
    ids=["fp32_hopper", "dtype0", "rank0", "hd0", "hdv-1", "hd20", "arch-1", "arch75", "arch61", "backend5", "hopper",
         "reserved", "struct_size"],
)
def test_query_rejects(lib, arch, change, status, needle):
    pr = A.valid_problem(arch=arch)
    for k, v in change.items():
        setattr(pr, k, v)
    count = ctypes.c_int(-1)
    buf = (A.TileConfig * 4)()
    if change == dict(backend=A.BACKEND_HOPPER) and arch == 90:
        # A build whose first image is sm_90a (a Hopper-only build): the Hopper backend is the
        # valid choice there, so the same query must succeed and list configurations.
        assert lib.natten_fna_query_configs(ctypes.byref(pr), buf, 4, ctypes.byref(count)) == 0, A.last_error(lib)
        assert count.value > 0 and all(c.backend == A.BACKEND_HOPPER for c in buf[: min(count.value, 4)])
        assert lib.natten_fna_supports(ctypes.byref(pr)) == 0, A.last_error(lib)
        return
    assert lib.natten_fna_query_configs(ctypes.byref(pr), buf, 4, ctypes.byref(count)) == status
    assert count.value == 0
    assert needle in A.last_error(lib), A.last_error(lib)
    assert lib.natten_fna_supports(ctypes.byref(pr)) == status
    assert needle in A.last_error(lib)


def test_query_arg_checks(lib):
    pr = A.valid_problem()
    n = ctypes.c_int()
    assert lib.natten_fna_query_configs(ctypes.byref(pr), None, 0, None) == INVALID_ARGUMENT
    assert A.last_error(lib) == "count is NULL"
    assert lib.natten_fna_query_configs(ctypes.byref(pr), None, -1, ctypes.byref(n)) == INVALID_ARGUMENT
    assert "capacity is -1" in A.last_error(lib)
    assert lib.natten_fna_query_configs(ctypes.byref(pr), None, 4, ctypes.byref(n)) == INVALID_ARGUMENT
    assert "out is NULL but capacity is 4" in A.last_error(lib)
    assert lib.natten_fna_query_configs(None, None, 0, ctypes.byref(n)) == INVALID_ARGUMENT
    assert A.last_error(lib) == "problem is NULL"
    assert lib.natten_fna_supports(None) == INVALID_ARGUMENT


def test_query_arch_images(lib, built_archs):
    for arch in (80, 86, 87, 89, 90, 100, 103, 120):
        pr = A.valid_problem(arch=arch)
        st = lib.natten_fna_supports(ctypes.byref(pr))
        if _has_image(built_archs, arch):
            assert st == 0, (arch, A.last_error(lib))
        else:
            assert st == UNSUPPORTED, arch
            msg = A.last_error(lib)
            assert f"no kernel image for compute capability {arch // 10}.{arch % 10}" in msg, msg
            assert "NATTEN_CUDA_ARCHS" in msg


def test_query_device_arch_without_gpu(lib, no_gpu):
    pr = A.valid_problem(arch=0)
    n = ctypes.c_int(-1)
    assert lib.natten_fna_query_configs(ctypes.byref(pr), None, 0, ctypes.byref(n)) == NO_DEVICE
    assert n.value == 0
    assert "no CUDA device available" in A.last_error(lib)


# ---- device info / misc -----------------------------------------------------------------------------


def test_device_info(lib, no_gpu):
    a, b = ctypes.c_int(7), ctypes.c_int(7)
    assert lib.natten_device_info(-1, ctypes.byref(a), ctypes.byref(b)) == NO_DEVICE
    assert (a.value, b.value) == (0, 0)
    assert "no CUDA device available" in A.last_error(lib)
    assert lib.natten_device_info(0, ctypes.byref(a), ctypes.byref(b)) == NO_DEVICE
    assert lib.natten_device_info(-2, ctypes.byref(a), ctypes.byref(b)) == INVALID_ARGUMENT
    assert "device is -2" in A.last_error(lib)
    assert lib.natten_device_info(0, None, ctypes.byref(b)) == INVALID_ARGUMENT
    assert "must not be NULL" in A.last_error(lib)


def test_status_strings(lib):
    for code, name in A.STATUS_NAMES.items():
        assert lib.natten_status_string(code).decode() == name
    assert lib.natten_status_string(99).decode() == "NATTEN_STATUS_UNKNOWN"
    assert lib.natten_status_string(-1).decode() == "NATTEN_STATUS_UNKNOWN"


def test_last_error_is_thread_local(lib):
    results = {}

    def fresh_thread():
        results["fresh"] = A.last_error(lib)
        p = A.valid_params()
        p.rank = 9
        lib.natten_fna_forward(ctypes.byref(p))
        results["after"] = A.last_error(lib)

    lib.natten_fna_forward(None)  # an error in this thread
    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join()
    assert results["fresh"] == ""
    assert results["after"] == "rank is 9; it must be 1, 2 or 3"
    assert A.last_error(lib) == "params is NULL"  # untouched by the other thread


def test_last_error_survives_success(lib, arch):
    lib.natten_fna_forward(None)
    pr = A.valid_problem(arch=arch)
    assert lib.natten_fna_supports(ctypes.byref(pr)) == 0
    # the message of the last *failure* stays readable until the next failure
    assert A.last_error(lib) == "params is NULL"
