"""A ctypes mirror of natten_kernels.h for the tests (independent of natten._libnatten on purpose;
test_header.py checks both against the C compiler's offsetof)."""

from __future__ import annotations

import ctypes

MAX_RANK = 3
MAX_TENSOR_DIMS = 6

SUCCESS, INVALID_ARGUMENT, UNSUPPORTED, CUDA_ERROR, NO_DEVICE, INTERNAL_ERROR = range(6)
STATUS_NAMES = {
    SUCCESS: "NATTEN_STATUS_SUCCESS",
    INVALID_ARGUMENT: "NATTEN_STATUS_INVALID_ARGUMENT",
    UNSUPPORTED: "NATTEN_STATUS_UNSUPPORTED",
    CUDA_ERROR: "NATTEN_STATUS_CUDA_ERROR",
    NO_DEVICE: "NATTEN_STATUS_NO_DEVICE",
    INTERNAL_ERROR: "NATTEN_STATUS_INTERNAL_ERROR",
}
FP16, BF16, FP32 = 1, 2, 3
BACKEND_AUTO, BACKEND_SM80, BACKEND_HOPPER, BACKEND_BLACKWELL = 0, 1, 2, 3

_i32, _i64 = ctypes.c_int32, ctypes.c_int64


class FnaForwardParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint64),
        ("dtype", _i32),
        ("rank", _i32),
        ("batch", _i64),
        ("shape", _i64 * 3),
        ("heads", _i64),
        ("heads_kv", _i64),
        ("head_dim", _i64),
        ("head_dim_v", _i64),
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("q_stride", _i64 * 6),
        ("k_stride", _i64 * 6),
        ("v_stride", _i64 * 6),
        ("out_stride", _i64 * 6),
        ("lse_stride", _i64 * 5),
        ("kernel_size", _i32 * 3),
        ("stride", _i32 * 3),
        ("dilation", _i32 * 3),
        ("is_causal", _i32 * 3),
        ("scale", ctypes.c_float),
        ("q_tile", _i32 * 3),
        ("kv_tile", _i32 * 3),
        ("backend", _i32),
        ("device", _i32),
        ("kernel_schedule", _i32),  # ABI 1.2 (was reserved)
        ("stream", ctypes.c_void_p),
        # ABI 1.1: slabs of a larger grid (all 0 = the whole grid)
        ("global_shape", _i64 * 3),
        ("q_origin", _i64 * 3),
        ("kv_origin", _i64 * 3),
        ("kv_shape", _i64 * 3),
    ]


SIZE_V1_0 = 448  # NATTEN_FNA_FORWARD_PARAMS_SIZE_V1_0: the struct of a caller built against ABI 1.0
class FnaBackwardParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint64),
        ("dtype", _i32),
        ("rank", _i32),
        ("batch", _i64),
        ("shape", _i64 * 3),
        ("heads", _i64),
        ("heads_kv", _i64),
        ("head_dim", _i64),
        ("head_dim_v", _i64),
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("d_out", ctypes.c_void_p),
        ("d_lse", ctypes.c_void_p),
        ("d_q", ctypes.c_void_p),
        ("d_k", ctypes.c_void_p),
        ("d_v", ctypes.c_void_p),
        ("q_stride", _i64 * 6),
        ("k_stride", _i64 * 6),
        ("v_stride", _i64 * 6),
        ("out_stride", _i64 * 6),
        ("lse_stride", _i64 * 5),
        ("d_out_stride", _i64 * 6),
        ("d_lse_stride", _i64 * 5),
        ("d_q_stride", _i64 * 6),
        ("d_k_stride", _i64 * 6),
        ("d_v_stride", _i64 * 6),
        ("kernel_size", _i32 * 3),
        ("stride", _i32 * 3),
        ("dilation", _i32 * 3),
        ("is_causal", _i32 * 3),
        ("scale", ctypes.c_float),
        ("q_tile", _i32 * 3),
        ("kv_tile", _i32 * 3),
        ("backend", _i32),
        ("device", _i32),
        ("deterministic", _i32),
        ("reserved", _i32),
        ("workspace", ctypes.c_void_p),
        ("workspace_bytes", ctypes.c_uint64),
        ("stream", ctypes.c_void_p),
        # ABI 1.2: slabs of a larger grid (all 0 = the whole grid)
        ("global_shape", _i64 * 3),
        ("q_origin", _i64 * 3),
        ("kv_origin", _i64 * 3),
        ("kv_shape", _i64 * 3),
        # ABI 1.3: KV parallelism of the dK / dV kernel (all 0 = one CTA per key tile)
        ("kv_splits", _i32 * 3),
        ("reserved_1_3", _i32),
    ]


BWD_SIZE_V1_1 = 744  # NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_1: the struct of a caller built against ABI 1.1
BWD_SIZE_V1_2 = 840  # NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_2: ... against ABI 1.2 (slabs, no kv_splits)


class FnaProblem(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint64),
        ("dtype", _i32),
        ("rank", _i32),
        ("head_dim", _i64),
        ("head_dim_v", _i64),
        ("arch", _i32),
        ("device", _i32),
        ("backend", _i32),
        ("reserved", _i32),
    ]


class TileConfig(ctypes.Structure):
    _fields_ = [
        ("backend", _i32),
        ("rank", _i32),
        ("q_tile", _i32 * 3),
        ("kv_tile", _i32 * 3),
        ("reserved", _i32 * 2),
    ]


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.natten_abi_version.restype = ctypes.c_int
    lib.natten_abi_version.argtypes = []
    lib.natten_build_info.restype = ctypes.c_char_p
    lib.natten_build_info.argtypes = []
    lib.natten_last_error.restype = ctypes.c_char_p
    lib.natten_last_error.argtypes = []
    lib.natten_status_string.restype = ctypes.c_char_p
    lib.natten_status_string.argtypes = [ctypes.c_int]
    lib.natten_device_info.restype = ctypes.c_int
    lib.natten_device_info.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.natten_fna_forward.restype = ctypes.c_int
    lib.natten_fna_forward.argtypes = [ctypes.c_void_p]
    if hasattr(lib, "natten_fna_backward"):  # ABI >= 1.1
        lib.natten_fna_backward.restype = ctypes.c_int
        lib.natten_fna_backward.argtypes = [ctypes.c_void_p]
        lib.natten_fna_backward_workspace_size.restype = ctypes.c_int
        lib.natten_fna_backward_workspace_size.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.natten_fna_supports.restype = ctypes.c_int
    lib.natten_fna_supports.argtypes = [ctypes.c_void_p]
    lib.natten_fna_query_configs.restype = ctypes.c_int
    lib.natten_fna_query_configs.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    return lib


# Fake, never dereferenced device addresses (validation runs before any device access).
Q_PTR, K_PTR, V_PTR, OUT_PTR, LSE_PTR = 0x7F0000000000, 0x7F0010000000, 0x7F0020000000, 0x7F0030000000, 0x7F0040000000


def contiguous_strides(sizes):
    strides, acc = [], 1
    for s in reversed(sizes):
        strides.append(acc)
        acc *= s
    return list(reversed(strides))


def valid_params(
    rank=2, shape=(16, 16), batch=2, heads=4, heads_kv=2, head_dim=64, head_dim_v=64, dtype=FP16, kernel=7
) -> FnaForwardParams:
    """A problem that passes every argument check (so, without a GPU, the call ends in NO_DEVICE)."""
    p = FnaForwardParams()
    p.struct_size = ctypes.sizeof(FnaForwardParams)
    p.dtype = dtype
    p.rank = rank
    p.batch = batch
    p.shape[:rank] = list(shape)
    p.heads, p.heads_kv, p.head_dim, p.head_dim_v = heads, heads_kv, head_dim, head_dim_v
    p.q, p.k, p.v, p.out, p.lse = Q_PTR, K_PTR, V_PTR, OUT_PTR, LSE_PTR
    n = rank + 3
    p.q_stride[:n] = contiguous_strides([batch, *shape, heads, head_dim])
    p.k_stride[:n] = contiguous_strides([batch, *shape, heads_kv, head_dim])
    p.v_stride[:n] = contiguous_strides([batch, *shape, heads_kv, head_dim_v])
    p.out_stride[:n] = contiguous_strides([batch, *shape, heads, head_dim_v])
    p.lse_stride[: n - 1] = contiguous_strides([batch, *shape, heads])
    for a in range(rank):
        p.kernel_size[a] = min(kernel, shape[a])
        p.stride[a] = 1
        p.dilation[a] = 1
        p.is_causal[a] = 0
    p.scale = head_dim ** -0.5
    p.device = -1
    return p


DO_PTR, DLSE_PTR, DQ_PTR, DK_PTR, DV_PTR, WS_PTR = (
    0x7F0050000000, 0x7F0060000000, 0x7F0070000000, 0x7F0080000000, 0x7F0090000000, 0x7F00A0000000)


def valid_backward_params(
    rank=2, shape=(16, 16), batch=2, heads=4, heads_kv=2, head_dim=64, head_dim_v=64, dtype=FP16, kernel=7,
    with_dlse=True,
) -> FnaBackwardParams:
    """A backward problem that passes every argument check (without a GPU: NO_DEVICE)."""
    f = valid_params(rank, shape, batch, heads, heads_kv, head_dim, head_dim_v, dtype, kernel)
    p = FnaBackwardParams()
    p.struct_size = ctypes.sizeof(FnaBackwardParams)
    for name in ("dtype", "rank", "batch", "heads", "heads_kv", "head_dim", "head_dim_v", "q", "k", "v", "out",
                 "lse", "scale", "device"):
        setattr(p, name, getattr(f, name))
    for name in ("shape", "q_stride", "k_stride", "v_stride", "out_stride", "lse_stride", "kernel_size", "stride",
                 "dilation", "is_causal"):
        getattr(p, name)[:] = list(getattr(f, name))
    p.d_out, p.d_q, p.d_k, p.d_v = DO_PTR, DQ_PTR, DK_PTR, DV_PTR
    p.d_lse = DLSE_PTR if with_dlse else None
    p.d_out_stride[:] = list(f.out_stride)
    p.d_lse_stride[:] = list(f.lse_stride)
    p.d_q_stride[:] = list(f.q_stride)
    p.d_k_stride[:] = list(f.k_stride)
    p.d_v_stride[:] = list(f.v_stride)
    p.workspace = WS_PTR
    p.workspace_bytes = 1 << 30
    return p


def valid_problem(dtype=FP16, rank=2, head_dim=64, head_dim_v=None, arch=80) -> FnaProblem:
    pr = FnaProblem()
    pr.struct_size = ctypes.sizeof(FnaProblem)
    pr.dtype = dtype
    pr.rank = rank
    pr.head_dim = head_dim
    pr.head_dim_v = head_dim if head_dim_v is None else head_dim_v
    pr.arch = arch
    pr.device = -1
    return pr


def last_error(lib) -> str:
    return lib.natten_last_error().decode()
