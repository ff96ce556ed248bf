"""The one module of natten that talks to the natten-kernels C library (through ctypes).

Nothing else in natten imports ctypes or knows the C ABI (``natten_kernels.h``, see docs/abi.md).
The library is found through ``natten_kernels.library_path()`` (the ``natten-kernels-cuXXX``
wheel), or through the environment variable ``NATTEN_KERNELS_LIBRARY`` (a direct path to
``libnatten_kernels.so``, for development builds), and loaded lazily on first use. Importing this
module needs neither torch with CUDA nor the library.

Public surface:
    is_available() / unavailable_reason()     whether the library can be used, and why not
    abi_version() / build_info() / library_path()
    supports_slabs()                          whether the library takes slabs of a larger grid (ABI >= 1.1)
    device_info(device)                       compute capability
    fna_forward(q, k, v, out, lse, ...)       the fused neighborhood-attention forward
    has_backward()                            whether the loaded library has the backward (ABI >= 1.1)
    supports_backward_slabs()                 whether its backward takes slabs of a larger grid (ABI >= 1.2)
    fna_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, ...)   the fused backward
    query_configs(...) / fna_supports(...)    which tile configurations the build has
    NattenKernelError and subclasses          raised for non-zero statuses
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ._version import MIN_ABI_MINOR, SUPPORTED_ABI_MAJOR

__all__ = [
    "NattenKernelError",
    "NattenInvalidArgumentError",
    "NattenUnsupportedError",
    "NattenCudaError",
    "NattenNoDeviceError",
    "NattenInternalError",
    "KernelsUnavailableError",
    "is_available",
    "unavailable_reason",
    "abi_version",
    "build_info",
    "library_path",
    "supports_slabs",
    "device_info",
    "fna_forward",
    "has_backward",
    "supports_backward_slabs",
    "fna_backward",
    "query_configs",
    "fna_supports",
]

ENV_LIBRARY = "NATTEN_KERNELS_LIBRARY"

# ------------------------------------------------------------------------------------------------
# Constants mirrored from natten_kernels.h (ABI 1.2)
# ------------------------------------------------------------------------------------------------

MAX_RANK = 3
MAX_TENSOR_DIMS = MAX_RANK + 3

STATUS_SUCCESS = 0
STATUS_INVALID_ARGUMENT = 1
STATUS_UNSUPPORTED = 2
STATUS_CUDA_ERROR = 3
STATUS_NO_DEVICE = 4
STATUS_INTERNAL_ERROR = 5
STATUS_NAMES = {
    STATUS_SUCCESS: "NATTEN_STATUS_SUCCESS",
    STATUS_INVALID_ARGUMENT: "NATTEN_STATUS_INVALID_ARGUMENT",
    STATUS_UNSUPPORTED: "NATTEN_STATUS_UNSUPPORTED",
    STATUS_CUDA_ERROR: "NATTEN_STATUS_CUDA_ERROR",
    STATUS_NO_DEVICE: "NATTEN_STATUS_NO_DEVICE",
    STATUS_INTERNAL_ERROR: "NATTEN_STATUS_INTERNAL_ERROR",
}

DTYPE_FP16 = 1
DTYPE_BF16 = 2
DTYPE_FP32 = 3

BACKEND_AUTO = 0
BACKEND_CUTLASS_FNA_SM80 = 1
BACKEND_HOPPER_FNA = 2
BACKEND_BLACKWELL_FNA = 3
BACKEND_NAMES = {
    BACKEND_CUTLASS_FNA_SM80: "cutlass-fna",
    BACKEND_HOPPER_FNA: "hopper-fna",
    BACKEND_BLACKWELL_FNA: "blackwell-fna",
}
_BACKEND_IDS = {name: i for i, name in BACKEND_NAMES.items()}

# natten_kernel_schedule (ABI 1.2): consumer schedule of the Hopper forward. None = the library's
# default. Ignored by the SM80 kernel.
KERNEL_SCHEDULES = {"cooperative": 1, "pingpong": 2}
# NATTEN's names for the same knob, accepted so NATTEN code runs unchanged: "coop" and "pp" are
# these two schedules; "non" (NATTEN's non-persistent, non-warp-specialized kernel, which natten's
# Hopper kernel has no counterpart of) selects the library's default schedule.
NATTEN_SCHEDULE_ALIASES = {"coop": "cooperative", "pp": "pingpong", "non": None}
SCHEDULE_MIN_ABI_MINOR = 2


def schedule_id(kernel_schedule: Optional[str]) -> int:
    """natten_kernel_schedule value of a schedule name (None -> 0, the default); NATTEN's names
    ``"coop"``, ``"pp"`` and ``"non"`` are accepted too (:data:`NATTEN_SCHEDULE_ALIASES`)."""
    if isinstance(kernel_schedule, str) and kernel_schedule in NATTEN_SCHEDULE_ALIASES:
        kernel_schedule = NATTEN_SCHEDULE_ALIASES[kernel_schedule]
    if kernel_schedule is None:
        return 0
    try:
        return KERNEL_SCHEDULES[kernel_schedule]
    except (KeyError, TypeError):
        raise NattenInvalidArgumentError(
            STATUS_INVALID_ARGUMENT,
            f"unknown kernel_schedule {kernel_schedule!r} for hopper-fna; expected None or one of "
            f"{sorted(KERNEL_SCHEDULES)} (or NATTEN's {sorted(NATTEN_SCHEDULE_ALIASES)})",
        ) from None

# ------------------------------------------------------------------------------------------------
# Structures (must match natten_kernels.h byte for byte; sizes asserted below)
# ------------------------------------------------------------------------------------------------

_i32 = ctypes.c_int32
_i64 = ctypes.c_int64
_I32x3 = _i32 * MAX_RANK
_I64x3 = _i64 * MAX_RANK
_I64xT = _i64 * MAX_TENSOR_DIMS
_I64xL = _i64 * (MAX_TENSOR_DIMS - 1)


class FnaForwardParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint64),
        ("dtype", _i32),
        ("rank", _i32),
        ("batch", _i64),
        ("shape", _I64x3),
        ("heads", _i64),
        ("heads_kv", _i64),
        ("head_dim", _i64),
        ("head_dim_v", _i64),
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("q_stride", _I64xT),
        ("k_stride", _I64xT),
        ("v_stride", _I64xT),
        ("out_stride", _I64xT),
        ("lse_stride", _I64xL),
        ("kernel_size", _I32x3),
        ("stride", _I32x3),
        ("dilation", _I32x3),
        ("is_causal", _I32x3),
        ("scale", ctypes.c_float),
        ("q_tile", _I32x3),
        ("kv_tile", _I32x3),
        ("backend", _i32),
        ("device", _i32),
        ("kernel_schedule", _i32),  # ABI 1.2 (reserved, must be 0, before)
        ("stream", ctypes.c_void_p),
        # ABI 1.1: slabs of a larger grid (all zero = the tensors hold the whole grid)
        ("global_shape", _I64x3),
        ("q_origin", _I64x3),
        ("kv_origin", _I64x3),
        ("kv_shape", _I64x3),
    ]


class FnaBackwardParams(ctypes.Structure):
    """natten_fna_backward_params (ABI 1.1; slab fields appended in ABI 1.2)."""

    _fields_ = [
        ("struct_size", ctypes.c_uint64),
        ("dtype", _i32),
        ("rank", _i32),
        ("batch", _i64),
        ("shape", _I64x3),
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
        ("q_stride", _I64xT),
        ("k_stride", _I64xT),
        ("v_stride", _I64xT),
        ("out_stride", _I64xT),
        ("lse_stride", _I64xL),
        ("d_out_stride", _I64xT),
        ("d_lse_stride", _I64xL),
        ("d_q_stride", _I64xT),
        ("d_k_stride", _I64xT),
        ("d_v_stride", _I64xT),
        ("kernel_size", _I32x3),
        ("stride", _I32x3),
        ("dilation", _I32x3),
        ("is_causal", _I32x3),
        ("scale", ctypes.c_float),
        ("q_tile", _I32x3),
        ("kv_tile", _I32x3),
        ("backend", _i32),
        ("device", _i32),
        ("deterministic", _i32),
        ("reserved", _i32),
        ("workspace", ctypes.c_void_p),
        ("workspace_bytes", ctypes.c_uint64),
        ("stream", ctypes.c_void_p),
        # ABI 1.2: slabs of a larger grid (all zero = the tensors hold the whole grid)
        ("global_shape", _I64x3),
        ("q_origin", _I64x3),
        ("kv_origin", _I64x3),
        ("kv_shape", _I64x3),
        # ABI 1.3: KV parallelism of the dK / dV kernel (all zero = one CTA per key tile)
        ("kv_splits", _I32x3),
        ("reserved_1_3", _i32),
    ]


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
        ("q_tile", _I32x3),
        ("kv_tile", _I32x3),
        ("reserved", _i32 * 2),
    ]


FNA_FORWARD_PARAMS_SIZE = ctypes.sizeof(FnaForwardParams)
FNA_PROBLEM_SIZE = ctypes.sizeof(FnaProblem)
assert FNA_FORWARD_PARAMS_SIZE == 544, FNA_FORWARD_PARAMS_SIZE  # NATTEN_FNA_FORWARD_PARAMS_SIZE_V1_1
# The slab fields are zero unless a slab is passed, so an ABI 1.0 library (which accepts a larger
# struct with a zero tail) runs every call without slabs.
SLABS_MIN_ABI_MINOR = 1
FNA_BACKWARD_PARAMS_SIZE = ctypes.sizeof(FnaBackwardParams)
assert FNA_BACKWARD_PARAMS_SIZE == 856, FNA_BACKWARD_PARAMS_SIZE  # NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_3
FNA_BACKWARD_PARAMS_SIZE_V1_1 = 744  # NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_1 (without the slab fields)
# kv_splits (ABI 1.3) stays zero unless given, so ABI 1.1 / 1.2 libraries (which accept the larger
# struct with a zero tail) run every call without it; with it, the minor is checked first.
KV_SPLITS_MIN_ABI_MINOR = 3
# Same rule for the backward: its slab fields are zero unless a slab is passed, so an ABI 1.1
# library (which accepts the larger struct with a zero tail) runs every whole-grid backward.
BACKWARD_SLABS_MIN_ABI_MINOR = 2
assert FNA_PROBLEM_SIZE == 48, FNA_PROBLEM_SIZE  # NATTEN_FNA_PROBLEM_SIZE_V1_0
assert ctypes.sizeof(TileConfig) == 40

# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


class NattenKernelError(RuntimeError):
    """A natten-kernels call returned a non-zero status. ``status`` is the code, ``message`` the
    library's natten_last_error() text."""

    def __init__(self, status: int, message: str, function: str = ""):
        self.status = int(status)
        self.status_name = STATUS_NAMES.get(self.status, "NATTEN_STATUS_UNKNOWN(%d)" % self.status)
        self.message = message
        self.function = function
        where = f"{function}: " if function else ""
        super().__init__(f"{where}{message} [{self.status_name}]")


class NattenInvalidArgumentError(NattenKernelError, ValueError):
    """NATTEN_STATUS_INVALID_ARGUMENT (also raised for bad tensors before calling the library)."""


class NattenUnsupportedError(NattenKernelError, NotImplementedError):
    """NATTEN_STATUS_UNSUPPORTED: valid, but this build/device has no kernel for it."""


class NattenCudaError(NattenKernelError):
    """NATTEN_STATUS_CUDA_ERROR."""


class NattenNoDeviceError(NattenKernelError):
    """NATTEN_STATUS_NO_DEVICE."""


class NattenInternalError(NattenKernelError):
    """NATTEN_STATUS_INTERNAL_ERROR (a bug in natten-kernels)."""


class KernelsUnavailableError(RuntimeError):
    """The library is not installed, cannot be loaded, or has an incompatible ABI."""


_ERROR_CLASSES = {
    STATUS_INVALID_ARGUMENT: NattenInvalidArgumentError,
    STATUS_UNSUPPORTED: NattenUnsupportedError,
    STATUS_CUDA_ERROR: NattenCudaError,
    STATUS_NO_DEVICE: NattenNoDeviceError,
    STATUS_INTERNAL_ERROR: NattenInternalError,
}


def _error(lib: Any, status: int, function: str) -> NattenKernelError:
    msg = lib.natten_last_error()
    text = msg.decode("utf-8", "replace") if msg else ""
    return _ERROR_CLASSES.get(status, NattenKernelError)(status, text, function)


def _invalid(message: str) -> NattenInvalidArgumentError:
    return NattenInvalidArgumentError(STATUS_INVALID_ARGUMENT, message, "natten_fna_forward")


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None
_reason: Optional[str] = None  # why the library is unusable (cached after the first attempt)


def _suggested_dist() -> str:
    """natten-kernels wheel to suggest, from torch's CUDA version if torch is already imported."""
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
    if cuda and str(cuda).startswith("12."):
        return "natten-kernels-cu128"
    return "natten-kernels-cu130"


def _install_hint() -> str:
    lo, hi = f"{SUPPORTED_ABI_MAJOR}.{MIN_ABI_MINOR}", SUPPORTED_ABI_MAJOR + 1
    return f'pip install "{_suggested_dist()}>={lo},<{hi}"'


def _locate() -> str:
    env = os.environ.get(ENV_LIBRARY)
    if env:
        if not os.path.isfile(env):
            raise KernelsUnavailableError(f"{ENV_LIBRARY}={env!r} does not name an existing file")
        return env
    try:
        import natten_kernels  # the locator package of the natten-kernels-cuXXX wheels; no deps
    except ImportError:
        raise KernelsUnavailableError(
            f"natten-kernels is not installed: {_install_hint()} "
            f"(or set {ENV_LIBRARY} to a libnatten_kernels.so)"
        ) from None
    try:
        return natten_kernels.library_path()
    except (OSError, AttributeError) as e:  # FileNotFoundError for a package without the .so
        raise KernelsUnavailableError(f"natten-kernels is installed but unusable: {e}") from None


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_char_p = ctypes.c_int, ctypes.c_char_p
    lib.natten_abi_version.argtypes = []
    lib.natten_abi_version.restype = c_int
    lib.natten_build_info.argtypes = []
    lib.natten_build_info.restype = c_char_p
    lib.natten_last_error.argtypes = []
    lib.natten_last_error.restype = c_char_p
    lib.natten_status_string.argtypes = [c_int]
    lib.natten_status_string.restype = c_char_p
    lib.natten_device_info.argtypes = [c_int, ctypes.POINTER(c_int), ctypes.POINTER(c_int)]
    lib.natten_device_info.restype = c_int
    lib.natten_fna_supports.argtypes = [ctypes.POINTER(FnaProblem)]
    lib.natten_fna_supports.restype = c_int
    lib.natten_fna_query_configs.argtypes = [
        ctypes.POINTER(FnaProblem),
        ctypes.POINTER(TileConfig),
        c_int,
        ctypes.POINTER(c_int),
    ]
    lib.natten_fna_query_configs.restype = c_int
    lib.natten_fna_forward.argtypes = [ctypes.POINTER(FnaForwardParams)]
    lib.natten_fna_forward.restype = c_int
    if hasattr(lib, "natten_fna_backward"):  # ABI >= 1.1 (optional: a 1.0 library still serves the forward)
        lib.natten_fna_backward.argtypes = [ctypes.POINTER(FnaBackwardParams)]
        lib.natten_fna_backward.restype = c_int
        lib.natten_fna_backward_workspace_size.argtypes = [
            ctypes.POINTER(FnaBackwardParams),
            ctypes.POINTER(ctypes.c_uint64),
        ]
        lib.natten_fna_backward_workspace_size.restype = c_int


def _try_load() -> None:
    """Loads and checks the library once; sets _lib or _reason. Caller holds _lock."""
    global _lib, _lib_path, _reason
    try:
        path = _locate()
    except KernelsUnavailableError as e:
        _reason = str(e)
        return
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        _reason = f"could not load {path}: {e}"
        return
    try:
        _declare(lib)
    except AttributeError as e:
        _reason = f"{path} is not a natten-kernels library (missing symbol: {e})"
        return
    version = int(lib.natten_abi_version())
    major, minor = divmod(version, 1000)
    if major != SUPPORTED_ABI_MAJOR or minor < MIN_ABI_MINOR:
        _reason = (
            f"natten-kernels ABI mismatch: {path} implements ABI {major}.{minor}, but this natten "
            f"needs ABI {SUPPORTED_ABI_MAJOR}.x with x >= {MIN_ABI_MINOR}: {_install_hint()}"
        )
        return
    _lib, _lib_path, _reason = lib, path, None


def _get() -> ctypes.CDLL:
    """The loaded library, or KernelsUnavailableError (a RuntimeError) saying why not."""
    lib = _lib
    if lib is not None:
        return lib
    with _lock:
        if _lib is None and _reason is None:
            _try_load()
        if _lib is not None:
            return _lib
        raise KernelsUnavailableError(_reason)


def _reset() -> None:
    """Forget the loaded library / cached failure (tests; after changing NATTEN_KERNELS_LIBRARY).
    An already-loaded shared object stays mapped in the process."""
    global _lib, _lib_path, _reason
    with _lock:
        _lib, _lib_path, _reason = None, None, None
        _TEMPLATES.clear()
        _BWD_TEMPLATES.clear()


def is_available() -> bool:
    """True if the library is installed, loads, and has a compatible ABI. Never raises."""
    try:
        _get()
        return True
    except Exception:
        return False


def unavailable_reason() -> Optional[str]:
    """None when available, else why not (not installed, load failure, ABI mismatch)."""
    try:
        _get()
        return None
    except Exception as e:
        return str(e)


def library_path() -> str:
    """Path of the loaded library."""
    _get()
    assert _lib_path is not None
    return _lib_path


def abi_version() -> Tuple[int, int]:
    """(major, minor) of the loaded library's C ABI."""
    return divmod(int(_get().natten_abi_version()), 1000)  # type: ignore[return-value]


def supports_slabs() -> bool:
    """Whether the loaded library takes query/key slabs of a larger grid (``global_shape``,
    ``q_origin``, ``kv_origin`` of :func:`fna_forward`; ABI >= 1.1)."""
    return abi_version()[1] >= SLABS_MIN_ABI_MINOR


def supports_backward_slabs() -> bool:
    """Whether the loaded library's backward takes query/key slabs of a larger grid (the same
    fields of :func:`fna_backward`; ABI >= 1.2)."""
    return abi_version()[1] >= BACKWARD_SLABS_MIN_ABI_MINOR


def build_info() -> str:
    """The library's build description (version, CUDA, archs, git revision, build type)."""
    return _get().natten_build_info().decode("utf-8", "replace")


def device_info(device: int = -1) -> Tuple[int, int]:
    """Compute capability (major, minor) of a CUDA device (-1 = current)."""
    lib = _get()
    major, minor = ctypes.c_int(), ctypes.c_int()
    status = lib.natten_device_info(int(device), ctypes.byref(major), ctypes.byref(minor))
    if status:
        raise _error(lib, status, "natten_device_info")
    return major.value, minor.value


# ------------------------------------------------------------------------------------------------
# Marshalling helpers
# ------------------------------------------------------------------------------------------------

_torch: Any = None
_raw_stream: Any = None
_DTYPES: Dict[Any, int] = {}
_DTYPE_NAMES = {
    "float16": DTYPE_FP16, "fp16": DTYPE_FP16, "half": DTYPE_FP16,
    "bfloat16": DTYPE_BF16, "bf16": DTYPE_BF16,
    "float32": DTYPE_FP32, "fp32": DTYPE_FP32, "float": DTYPE_FP32,
}


def _import_torch() -> Any:
    global _torch, _raw_stream
    if _torch is None:
        import torch

        _DTYPES.update({torch.float16: DTYPE_FP16, torch.bfloat16: DTYPE_BF16, torch.float32: DTYPE_FP32})
        _raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        _torch = torch
    return _torch


def _dtype_enum(dtype: Any) -> int:
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
        raise NattenInvalidArgumentError(STATUS_INVALID_ARGUMENT, f"unknown dtype {dtype!r}")
    if isinstance(dtype, int):
        return dtype
    _import_torch()
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise NattenUnsupportedError(
            STATUS_UNSUPPORTED, f"dtype {dtype} is not supported by natten-kernels (float16, bfloat16, float32)"
        ) from None


def _per_axis(value: Any, rank: int, name: str) -> List[int]:
    if isinstance(value, (bool, int)):
        return [int(value)] * rank
    vals = [int(v) for v in value]
    if len(vals) != rank:
        raise _invalid(f"{name} has {len(vals)} entries but the problem has rank {rank}: {tuple(vals)}")
    return vals


def _tile(value: Optional[Sequence[int]], rank: int, name: str) -> List[int]:
    if value is None or len(value) == 0:
        return [0] * rank
    return _per_axis(value, rank, name)


def _stream_for(device_index: int) -> int:
    if _raw_stream is not None:
        return int(_raw_stream(device_index))
    return int(_torch.cuda.current_stream(device_index).cuda_stream)


# ------------------------------------------------------------------------------------------------
# Fused neighborhood attention
# ------------------------------------------------------------------------------------------------


def fna_forward(
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int]],
    dilation: Union[int, Sequence[int]],
    is_causal: Union[bool, Sequence[bool]],
    scale: float,
    q_tile: Optional[Sequence[int]] = None,
    kv_tile: Optional[Sequence[int]] = None,
    backend: Optional[str] = None,
    global_shape: Optional[Sequence[int]] = None,
    q_origin: Optional[Sequence[int]] = None,
    kv_origin: Optional[Sequence[int]] = None,
    kernel_schedule: Optional[str] = None,
) -> None:
    """Fused neighborhood-attention forward into ``out`` (and ``lse`` unless None).

    Heads-last CUDA tensors: q ``[B, *shape, H, D]``, k ``[B, *shape, H_kv, D]``,
    v ``[B, *shape, H_kv, D_v]``, out ``[B, *shape, H, D_v]`` (same dtype as q), lse
    ``[B, *shape, H]`` float32 or None. Window parameters are per axis (an int is broadcast).
    ``q_tile``/``kv_tile``: tile shapes from :func:`query_configs`, or None to let the library
    choose. Launches on torch's current stream of q's device; returns without synchronizing.

    Slabs of a larger grid (needs :func:`supports_slabs`): with ``global_shape``, q/out/lse hold
    the slab of that grid starting at ``q_origin`` and k/v the slab at ``kv_origin`` (their token
    grid may differ from q's); windows are computed on the global grid and the library checks that
    the key slab holds every key the query slab attends. Origins default to 0.

    ``kernel_schedule``: consumer schedule of the Hopper kernel (``"cooperative"``, ``"pingpong"``;
    None = default; needs ABI >= 1.2 when given; the SM80 kernel ignores it).

    Raises NattenInvalidArgumentError (ValueError), NattenUnsupportedError (NotImplementedError),
    NattenCudaError, NattenNoDeviceError, or KernelsUnavailableError (RuntimeError).

    Per-call cost: everything except the data pointers and the stream depends only on tensor
    metadata and the window parameters, so the marshalled struct is cached per such key (the
    checks run once per key); a call then copies the cached bytes and sets six fields.
    """
    lib = _lib if _lib is not None else _get()
    if _torch is None:
        _import_torch()
    try:
        key: Any = (
            q.shape, q.stride(), q.dtype, q.device,
            k.shape, k.stride(), k.dtype, k.device,
            v.shape, v.stride(), v.dtype, v.device,
            out.shape, out.stride(), out.dtype, out.device,
            None if lse is None else (lse.shape, lse.stride(), lse.dtype, lse.device),
            _key(kernel_size), _key(stride), _key(dilation), _key(is_causal), scale,
            _key(q_tile), _key(kv_tile), backend,
            _key(global_shape), _key(q_origin), _key(kv_origin), kernel_schedule,
        )
        entry = _TEMPLATES.get(key)
    except TypeError:  # something unhashable: marshal without the cache
        key, entry = None, None
    if entry is None:
        entry = _marshal(q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile, backend,
                         global_shape, q_origin, kv_origin, kernel_schedule)
        if key is not None:
            if len(_TEMPLATES) >= _MAX_TEMPLATES:
                _TEMPLATES.clear()
            _TEMPLATES[key] = entry
    template, index = entry
    p = FnaForwardParams.from_buffer_copy(template)
    p.q = q.data_ptr()
    p.k = k.data_ptr()
    p.v = v.data_ptr()
    p.out = out.data_ptr()
    if lse is not None:
        p.lse = lse.data_ptr()
    p.stream = _stream_for(index)
    status = lib.natten_fna_forward(ctypes.byref(p))
    if status:
        raise _error(lib, status, "natten_fna_forward")


_TEMPLATES: Dict[Any, Tuple[bytes, int]] = {}
_MAX_TEMPLATES = 1024


def _key(x: Any) -> Any:
    return x if x is None or isinstance(x, (int, float)) else tuple(x)


def _marshal(q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile, backend,
             global_shape=None, q_origin=None, kv_origin=None, kernel_schedule=None):
    """Checks the tensors and builds the struct without pointers/stream: (bytes, device index).
    The slab fields are set only when ``global_shape`` is given (else they stay zero: the whole
    grid, which an ABI 1.0 library accepts too)."""
    torch = _torch
    qs = q.shape
    rank = len(qs) - 3
    if rank < 1 or rank > MAX_RANK:
        raise _invalid(f"q must be [B, *shape, H, D] with 1 to 3 spatial axes, got shape {tuple(qs)}")
    dtype = q.dtype
    dt = _DTYPES.get(dtype)
    if dt is None:
        raise NattenUnsupportedError(
            STATUS_UNSUPPORTED, f"dtype {dtype} is not supported (float16, bfloat16, float32)", "natten_fna_forward"
        )
    device = q.device
    if device.type != "cuda":
        raise _invalid(f"natten-kernels needs CUDA tensors; q is on {device}")
    for name, t in (("k", k), ("v", v), ("out", out)):
        if t.dtype != dtype:
            raise _invalid(f"{name} has dtype {t.dtype} but q has {dtype}")
        if t.device != device:
            raise _invalid(f"{name} is on {t.device} but q is on {device}")
        if t.dim() != rank + 3:
            raise _invalid(f"{name} has shape {tuple(t.shape)}; expected rank {rank + 3} like q {tuple(qs)}")
    ks, vs, os_ = k.shape, v.shape, out.shape
    heads, head_dim = qs[rank + 1], qs[rank + 2]
    heads_kv, head_dim_v = ks[rank + 1], vs[rank + 2]
    sliced = global_shape is not None
    if not sliced and (q_origin is not None or kv_origin is not None):
        raise _invalid("q_origin / kv_origin describe slabs of a larger grid and need global_shape")
    # With slabs k and v have the key slab's token grid, which may differ from q's.
    same = (ks[0] == qs[0]) if sliced else (ks[: rank + 1] == qs[: rank + 1])
    if not same or ks[rank + 2] != head_dim:
        grid = "*kv_shape" if sliced else "*shape"
        raise _invalid(f"k has shape {tuple(ks)}; expected [B, {grid}, H_kv, D] matching q {tuple(qs)}")
    if vs[: rank + 2] != ks[: rank + 2]:
        raise _invalid(f"v has shape {tuple(vs)}; expected [B, *shape, H_kv, D_v] matching k {tuple(ks)}")
    if os_[: rank + 2] != qs[: rank + 2] or os_[rank + 2] != head_dim_v:
        raise _invalid(f"out has shape {tuple(os_)}; expected {tuple(qs[:rank + 2]) + (head_dim_v,)}")
    if lse is not None:
        if lse.dtype != torch.float32:
            raise _invalid(f"lse must be float32, got {lse.dtype}")
        if lse.device != device:
            raise _invalid(f"lse is on {lse.device} but q is on {device}")
        if tuple(lse.shape) != tuple(qs[: rank + 2]):
            raise _invalid(f"lse has shape {tuple(lse.shape)}; expected {tuple(qs[:rank + 2])}")

    p = FnaForwardParams()
    p.struct_size = FNA_FORWARD_PARAMS_SIZE
    p.dtype = dt
    p.rank = rank
    p.batch = qs[0]
    p.shape[:rank] = qs[1 : rank + 1]
    p.heads = heads
    p.heads_kv = heads_kv
    p.head_dim = head_dim
    p.head_dim_v = head_dim_v
    n = rank + 3
    p.q_stride[:n] = q.stride()
    p.k_stride[:n] = k.stride()
    p.v_stride[:n] = v.stride()
    p.out_stride[:n] = out.stride()
    if lse is not None:
        p.lse_stride[: n - 1] = lse.stride()
    p.kernel_size[:rank] = _per_axis(kernel_size, rank, "kernel_size")
    p.stride[:rank] = _per_axis(stride, rank, "stride")
    p.dilation[:rank] = _per_axis(dilation, rank, "dilation")
    p.is_causal[:rank] = _per_axis(is_causal, rank, "is_causal")
    p.scale = scale
    p.q_tile[:rank] = _tile(q_tile, rank, "q_tile")
    p.kv_tile[:rank] = _tile(kv_tile, rank, "kv_tile")
    p.backend = _backend_id(backend)
    sched = schedule_id(kernel_schedule)
    if sched:
        abi_minor = int(_get().natten_abi_version()) % 1000
        if abi_minor < SCHEDULE_MIN_ABI_MINOR:
            raise NattenUnsupportedError(
                STATUS_UNSUPPORTED,
                f"kernel_schedule={kernel_schedule!r} needs natten-kernels ABI >= 1.{SCHEDULE_MIN_ABI_MINOR}; "
                f"the loaded library has 1.{abi_minor}",
                "natten_fna_forward",
            )
        p.kernel_schedule = sched
    if sliced:
        p.global_shape[:rank] = _per_axis(global_shape, rank, "global_shape")
        p.q_origin[:rank] = _per_axis(0 if q_origin is None else q_origin, rank, "q_origin")
        p.kv_origin[:rank] = _per_axis(0 if kv_origin is None else kv_origin, rank, "kv_origin")
        p.kv_shape[:rank] = ks[1 : rank + 1]
    index = device.index
    if index is None:
        index = torch.cuda.current_device()
    p.device = index
    return bytes(p), index


def _backend_id(backend: Union[str, int, None]) -> int:
    if backend is None:
        return BACKEND_AUTO
    if isinstance(backend, int):
        return backend
    try:
        return _BACKEND_IDS[backend]
    except KeyError:
        raise NattenInvalidArgumentError(
            STATUS_INVALID_ARGUMENT, f"unknown backend {backend!r}; expected one of {sorted(_BACKEND_IDS)}"
        ) from None


def _problem(
    dtype: Any,
    rank: int,
    head_dim: int,
    head_dim_v: Optional[int],
    arch: Optional[Union[int, Tuple[int, int]]],
    device: Optional[int],
    backend: Union[str, int, None],
) -> FnaProblem:
    pr = FnaProblem()
    pr.struct_size = FNA_PROBLEM_SIZE
    pr.dtype = _dtype_enum(dtype)
    pr.rank = int(rank)
    pr.head_dim = int(head_dim)
    pr.head_dim_v = int(head_dim if head_dim_v is None else head_dim_v)
    if isinstance(arch, tuple):
        arch = arch[0] * 10 + arch[1]
    pr.arch = 0 if arch is None else int(arch)
    pr.device = -1 if device is None else int(device)
    pr.backend = _backend_id(backend)
    return pr


def query_configs(
    dtype: Any,
    rank: int,
    head_dim: int,
    head_dim_v: Optional[int] = None,
    arch: Optional[Union[int, Tuple[int, int]]] = None,
    device: Optional[int] = None,
    backend: Union[str, int, None] = None,
) -> List[Dict[str, Any]]:
    """Tile configurations this build supports for the problem, in the library's order.

    ``arch``: SM version as 80 / (8, 0); None = ask ``device`` (None = current CUDA device).
    Returns ``[{"backend": "cutlass-fna", "backend_id": 1, "q_tile": (..), "kv_tile": (..)}, ...]``,
    or [] when the problem is valid but unsupported. Raises NattenInvalidArgumentError for an
    invalid problem and NattenNoDeviceError when arch is None and there is no GPU.
    """
    lib = _get()
    pr = _problem(dtype, rank, head_dim, head_dim_v, arch, device, backend)
    count = ctypes.c_int(0)
    status = lib.natten_fna_query_configs(ctypes.byref(pr), None, 0, ctypes.byref(count))
    if status == STATUS_UNSUPPORTED:
        return []
    if status:
        raise _error(lib, status, "natten_fna_query_configs")
    n = count.value
    buf = (TileConfig * max(n, 1))()
    status = lib.natten_fna_query_configs(ctypes.byref(pr), buf, n, ctypes.byref(count))
    if status:
        raise _error(lib, status, "natten_fna_query_configs")
    result = []
    for c in buf[: min(n, count.value)]:
        r = c.rank
        result.append(
            {
                "backend": BACKEND_NAMES.get(c.backend, str(c.backend)),
                "backend_id": c.backend,
                "q_tile": tuple(c.q_tile[:r]),
                "kv_tile": tuple(c.kv_tile[:r]),
            }
        )
    return result


def fna_supports(
    dtype: Any,
    rank: int,
    head_dim: int,
    head_dim_v: Optional[int] = None,
    arch: Optional[Union[int, Tuple[int, int]]] = None,
    device: Optional[int] = None,
    backend: Union[str, int, None] = None,
) -> Optional[str]:
    """None if this build has a kernel for the problem, else the library's reason (never raises
    for a non-zero status; raises KernelsUnavailableError if the library is unavailable)."""
    lib = _get()
    try:
        pr = _problem(dtype, rank, head_dim, head_dim_v, arch, device, backend)
    except NattenKernelError as e:
        return e.message
    status = lib.natten_fna_supports(ctypes.byref(pr))
    if status == STATUS_SUCCESS:
        return None
    return _error(lib, status, "natten_fna_supports").message


class PreparedFnaForward:
    """A forward call marshalled once (validated, struct built) and relaunched on new tensors.

    The caller guarantees that every launch passes tensors with the shapes, strides, dtypes and
    device of the tensors it was prepared with (natten's call-plan cache keys on exactly those), so
    a launch costs a struct copy, six field writes and the ctypes call.
    """

    __slots__ = ("_template", "_index")

    def __init__(self, q: Any, k: Any, v: Any, out: Any, lse: Any, kernel_size: Any, stride: Any,
                 dilation: Any, is_causal: Any, scale: float, q_tile: Any = None,
                 kv_tile: Any = None, backend: Optional[str] = None, global_shape: Any = None,
                 q_origin: Any = None, kv_origin: Any = None, kernel_schedule: Optional[str] = None) -> None:
        _get()
        if _torch is None:
            _import_torch()
        self._template, self._index = _marshal(q, k, v, out, lse, kernel_size, stride, dilation,
                                               is_causal, scale, q_tile, kv_tile, backend,
                                               global_shape, q_origin, kv_origin, kernel_schedule)

    def launch(self, q: Any, k: Any, v: Any, out: Any, lse: Any) -> None:
        p = FnaForwardParams.from_buffer_copy(self._template)
        p.q = q.data_ptr()
        p.k = k.data_ptr()
        p.v = v.data_ptr()
        p.out = out.data_ptr()
        p.lse = None if lse is None else lse.data_ptr()
        p.stream = _stream_for(self._index)
        status = _lib.natten_fna_forward(ctypes.byref(p))  # type: ignore[union-attr]
        if status:
            raise _error(_lib, status, "natten_fna_forward")


# ------------------------------------------------------------------------------------------------
# Backward (ABI 1.1)
# ------------------------------------------------------------------------------------------------


def has_backward() -> bool:
    """True if the library is available and has natten_fna_backward (ABI >= 1.1). Never raises."""
    try:
        lib = _get()
    except Exception:
        return False
    return int(lib.natten_abi_version()) % 1000 >= 1 and hasattr(lib, "natten_fna_backward")


_BWD_TEMPLATES: Dict[Any, Tuple[bytes, int, int]] = {}


def _bwd_invalid(message: str) -> NattenInvalidArgumentError:
    return NattenInvalidArgumentError(STATUS_INVALID_ARGUMENT, message, "natten_fna_backward")


def supports_kv_splits() -> bool:
    """Whether the loaded library takes ``kv_splits`` in the backward (ABI >= 1.3)."""
    return abi_version()[1] >= KV_SPLITS_MIN_ABI_MINOR


def _marshal_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, kernel_size, stride, dilation,
                      is_causal, scale, q_tile, kv_tile, backend, deterministic, global_shape=None, q_origin=None,
                      kv_origin=None, kv_splits=None):
    """(struct bytes without pointers / stream / workspace, device index, workspace bytes)."""
    if lse is None:
        raise _bwd_invalid("lse (the forward's logsumexp) is required by the backward")
    if kv_splits is not None and not supports_kv_splits():
        major, minor = abi_version()
        raise NattenUnsupportedError(
            STATUS_UNSUPPORTED,
            f"the loaded natten-kernels (ABI {major}.{minor}) does not take kv_splits (backward_kv_splits); "
            f"it needs ABI >= {major}.{KV_SPLITS_MIN_ABI_MINOR}: {_install_hint()}",
            "natten_fna_backward",
        )
    if global_shape is not None and not supports_backward_slabs():
        major, minor = abi_version()
        raise NattenUnsupportedError(
            STATUS_UNSUPPORTED,
            f"the loaded natten-kernels (ABI {major}.{minor}) has no backward for query/key slabs of a larger grid "
            f"(global_shape, q_origin, kv_origin); it needs ABI >= {major}.{BACKWARD_SLABS_MIN_ABI_MINOR}: "
            f"{_install_hint()}",
            "natten_fna_backward",
        )
    fwd_bytes, index = _marshal(q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale, q_tile,
                                kv_tile, backend, global_shape, q_origin, kv_origin)
    f = FnaForwardParams.from_buffer_copy(fwd_bytes)
    torch = _torch
    rank = f.rank
    for name, t, like in (("d_out", d_out, out), ("d_q", d_q, q), ("d_k", d_k, k), ("d_v", d_v, v)):
        if t.dtype != like.dtype:
            raise _bwd_invalid(f"{name} has dtype {t.dtype} but expected {like.dtype}")
        if t.device != q.device:
            raise _bwd_invalid(f"{name} is on {t.device} but q is on {q.device}")
        if tuple(t.shape) != tuple(like.shape):
            raise _bwd_invalid(f"{name} has shape {tuple(t.shape)}; expected {tuple(like.shape)}")
    if d_lse is not None:
        if d_lse.dtype != torch.float32:
            raise _bwd_invalid(f"d_lse must be float32, got {d_lse.dtype}")
        if d_lse.device != q.device:
            raise _bwd_invalid(f"d_lse is on {d_lse.device} but q is on {q.device}")
        if tuple(d_lse.shape) != tuple(lse.shape):
            raise _bwd_invalid(f"d_lse has shape {tuple(d_lse.shape)}; expected {tuple(lse.shape)}")
    p = FnaBackwardParams()
    p.struct_size = FNA_BACKWARD_PARAMS_SIZE
    for name in ("dtype", "rank", "batch", "heads", "heads_kv", "head_dim", "head_dim_v", "scale", "backend",
                 "device"):
        setattr(p, name, getattr(f, name))
    for name in ("shape", "q_stride", "k_stride", "v_stride", "out_stride", "lse_stride", "kernel_size", "stride",
                 "dilation", "is_causal", "q_tile", "kv_tile", "global_shape", "q_origin", "kv_origin", "kv_shape"):
        getattr(p, name)[:] = list(getattr(f, name))  # slab fields: zero without global_shape
    n = rank + 3
    p.d_out_stride[:n] = d_out.stride()
    p.d_q_stride[:n] = d_q.stride()
    p.d_k_stride[:n] = d_k.stride()
    p.d_v_stride[:n] = d_v.stride()
    if d_lse is not None:
        p.d_lse_stride[: n - 1] = d_lse.stride()
    p.deterministic = 1 if deterministic else 0
    if kv_splits is not None:
        p.kv_splits[:rank] = _per_axis(kv_splits, rank, "kv_splits")
    # Workspace size (validates the struct; fake aligned pointers stand in for the tensors).
    lib = _get()
    probe = FnaBackwardParams.from_buffer_copy(bytes(p))
    fake = 1 << 40
    probe.q = probe.k = probe.v = probe.out = probe.lse = probe.d_out = fake
    probe.d_q = probe.d_k = probe.d_v = fake
    if d_lse is not None:
        probe.d_lse = fake
    nbytes = ctypes.c_uint64(0)
    status = lib.natten_fna_backward_workspace_size(ctypes.byref(probe), ctypes.byref(nbytes))
    if status:
        raise _error(lib, status, "natten_fna_backward_workspace_size")
    return bytes(p), index, int(nbytes.value)


def fna_backward_workspace_size(
    q: Any, k: Any, v: Any, out: Any, lse: Any, d_out: Any, d_lse: Any, d_q: Any, d_k: Any, d_v: Any,
    kernel_size: Any, stride: Any, dilation: Any, is_causal: Any, scale: float, q_tile: Any = None,
    kv_tile: Any = None, backend: Optional[str] = None, global_shape: Optional[Sequence[int]] = None,
    q_origin: Optional[Sequence[int]] = None, kv_origin: Optional[Sequence[int]] = None,
    kv_splits: Optional[Sequence[int]] = None,
) -> int:
    """Bytes of device workspace :func:`fna_backward` needs for these tensors (validates them)."""
    _get()
    if _torch is None:
        _import_torch()
    return _marshal_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, kernel_size, stride, dilation,
                             is_causal, scale, q_tile, kv_tile, backend, False, global_shape, q_origin,
                             kv_origin, kv_splits)[2]


def _backward_ready() -> Any:
    """The loaded library, with torch imported; KernelsUnavailableError if it has no backward."""
    lib = _lib if _lib is not None else _get()
    if not has_backward():
        raise KernelsUnavailableError(
            f"the loaded natten-kernels library (ABI {abi_version()[0]}.{abi_version()[1]}) has no backward; "
            f"it needs ABI 1.1: {_install_hint()}"
        )
    if _torch is None:
        _import_torch()
    return lib


class PreparedFnaBackward:
    """:func:`fna_backward` with its argument struct marshalled (and validated) once, for repeated
    calls on tensors of the same shapes, strides, dtypes and device as those given here: each
    :meth:`launch` only fills in the pointers, the workspace and the stream. The prepared training
    path of ``cutlass-fna`` / ``hopper-fna`` uses it (the host time of a small training step is
    most of its cost). ``d_lse`` is not taken: calls with a logsumexp gradient use
    :func:`fna_backward`."""

    __slots__ = ("_template", "_index", "_ws_bytes")

    def __init__(self, q: Any, k: Any, v: Any, out: Any, lse: Any, d_out: Any, d_q: Any, d_k: Any, d_v: Any,
                 kernel_size: Any, stride: Any, dilation: Any, is_causal: Any, scale: float, q_tile: Any = None,
                 kv_tile: Any = None, backend: Optional[str] = None, deterministic: bool = False,
                 global_shape: Any = None, q_origin: Any = None, kv_origin: Any = None,
                 kv_splits: Any = None) -> None:
        _backward_ready()
        self._template, self._index, self._ws_bytes = _marshal_backward(
            q, k, v, out, lse, d_out, None, d_q, d_k, d_v, kernel_size, stride, dilation, is_causal, scale, q_tile,
            kv_tile, backend, deterministic, global_shape, q_origin, kv_origin, kv_splits)

    def launch(self, q: Any, k: Any, v: Any, out: Any, lse: Any, d_out: Any, d_q: Any, d_k: Any, d_v: Any) -> None:
        _launch_backward(_lib, self._template, self._index, self._ws_bytes, q, k, v, out, lse, d_out, None, d_q,
                         d_k, d_v, None)


def _launch_backward(lib: Any, template: bytes, index: int, ws_bytes: int, q: Any, k: Any, v: Any, out: Any, lse: Any,
                     d_out: Any, d_lse: Any, d_q: Any, d_k: Any, d_v: Any, workspace: Any) -> None:
    """natten_fna_backward from a marshalled struct: the tensors' pointers, the workspace (the
    caller's, or one from torch's caching allocator) and the stream of the struct's device."""
    p = FnaBackwardParams.from_buffer_copy(template)
    p.q = q.data_ptr()
    p.k = k.data_ptr()
    p.v = v.data_ptr()
    p.out = out.data_ptr()
    p.lse = lse.data_ptr()
    p.d_out = d_out.data_ptr()
    p.d_lse = None if d_lse is None else d_lse.data_ptr()
    p.d_q = d_q.data_ptr()
    p.d_k = d_k.data_ptr()
    p.d_v = d_v.data_ptr()
    ws = workspace
    if ws_bytes > 0:
        if ws is None:  # caching allocator: 512-byte aligned, stream-ordered reuse
            ws = _torch.empty(ws_bytes, dtype=_torch.uint8, device=q.device)
            p.workspace_bytes = ws_bytes
        else:
            p.workspace_bytes = int(ws.shape[0]) * ws.dtype.itemsize  # a 1-D buffer
        p.workspace = ws.data_ptr()
    p.stream = _stream_for(index)
    status = lib.natten_fna_backward(ctypes.byref(p))
    if status:
        raise _error(lib, status, "natten_fna_backward")
    del ws  # returned to the caching allocator; stream-ordered reuse keeps it valid for the launch


def fna_backward(
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    d_out: Any,
    d_lse: Any,
    d_q: Any,
    d_k: Any,
    d_v: Any,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int]],
    dilation: Union[int, Sequence[int]],
    is_causal: Union[bool, Sequence[bool]],
    scale: float,
    q_tile: Optional[Sequence[int]] = None,
    kv_tile: Optional[Sequence[int]] = None,
    backend: Optional[str] = None,
    deterministic: bool = False,
    workspace: Any = None,
    global_shape: Optional[Sequence[int]] = None,
    q_origin: Optional[Sequence[int]] = None,
    kv_origin: Optional[Sequence[int]] = None,
    kv_splits: Optional[Sequence[int]] = None,
) -> None:
    """Fused neighborhood-attention backward into ``d_q``, ``d_k``, ``d_v``.

    q, k, v, out, lse: the forward's tensors (lse required); d_out like out; d_lse like lse or
    None; d_q / d_k / d_v like q / k / v (written; d_k / d_v summed over the query heads of each
    kv head). The window parameters, scale, tiles and slab fields must be the forward's.
    ``workspace``: a 16-byte aligned device buffer of at least :func:`fna_backward_workspace_size`
    bytes, or None to take one from torch's caching allocator. Launches on torch's current stream
    of q's device.

    Slabs (``global_shape``, ``q_origin``, ``kv_origin``; needs :func:`supports_backward_slabs`):
    as in :func:`fna_forward`; the gradients are those of the slab's forward w.r.t. its inputs
    (keys of the key slab that no query of the slab attends get d_k = d_v = 0).

    ``kv_splits`` (needs :func:`supports_kv_splits`): KV parallelism of the dK / dV kernel, CTAs
    per axis sharing the key tiles of each (batch, kv head, dilation group), each between 1 and the
    key tiles along that axis; None = one CTA per key tile. The gradients do not depend on it.

    Raises like :func:`fna_forward` (NattenUnsupportedError for slabs with a library older than
    ABI 1.2, or kv_splits with one older than 1.3); KernelsUnavailableError if the library predates
    ABI 1.1.
    """
    lib = _backward_ready()

    def meta(t):
        return None if t is None else (t.shape, t.stride(), t.dtype, t.device)

    try:
        key: Any = (
            meta(q), meta(k), meta(v), meta(out), meta(lse), meta(d_out), meta(d_lse), meta(d_q), meta(d_k),
            meta(d_v), _key(kernel_size), _key(stride), _key(dilation), _key(is_causal), scale, _key(q_tile),
            _key(kv_tile), backend, bool(deterministic), _key(global_shape), _key(q_origin), _key(kv_origin),
            _key(kv_splits),
        )
        entry = _BWD_TEMPLATES.get(key)
    except TypeError:
        key, entry = None, None
    if entry is None:
        entry = _marshal_backward(q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, kernel_size, stride, dilation,
                                  is_causal, scale, q_tile, kv_tile, backend, deterministic, global_shape, q_origin,
                                  kv_origin, kv_splits)
        if key is not None:
            if len(_BWD_TEMPLATES) >= _MAX_TEMPLATES:
                _BWD_TEMPLATES.clear()
            _BWD_TEMPLATES[key] = entry
    template, index, ws_bytes = entry
    _launch_backward(lib, template, index, ws_bytes, q, k, v, out, lse, d_out, d_lse, d_q, d_k, d_v, workspace)
