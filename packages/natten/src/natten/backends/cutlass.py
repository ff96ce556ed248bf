"""``cutlass-fna`` / ``cutlass-fmha``: fused kernels for SM80 and newer from natten-kernels.

float16 / bfloat16 run on tensor cores (mma.sync); float32 runs on CUDA cores in full fp32
precision (natten-kernels >= 1.3), with the same tiles, window math and features.

Fused neighborhood-attention forward (with logsumexp), including query/key slabs of a larger
grid (``global_shape``, ``q_origin``, ``kv_origin``; natten-kernels ABI >= 1.1), and, with
natten-kernels ABI >= 1.1, the fused backward (dQ, dK, dV, including the gradient through the
logsumexp; on slabs with ABI >= 1.2): training runs through an autograd.Function whose forward
saves q, k, v, out and lse and whose backward calls the ``natten::fna_backward`` operator. With an
older library (no backward, or slabs that require grad with ABI 1.1), ``can_run_fna`` refuses and
says why, so automatic selection falls back to another backend. ``cutlass-fmha`` is not in this
release yet.
"""

from __future__ import annotations

import math

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _libnatten

SUPPORTS_VARLEN = False

_DTYPES = (torch.float16, torch.bfloat16)  # the tensor-core kernels (hopper-fna imports this)
# cutlass-fna also runs float32 (CUDA-core kernels, natten-kernels >= 1.3; the loaded library is
# asked through fna_supports, so an older one refuses with its own reason).
_FNA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


_KERNEL_REASONS: Dict[tuple, Optional[str]] = {}


# Both checks query the C library; torch.compile evaluates them once at trace time and bakes the
# answer into the graph instead of tracing ctypes.
@torch.compiler.assume_constant_result
def _library_reason() -> Optional[str]:
    return _libnatten.unavailable_reason()


@torch.compiler.assume_constant_result
def _slabs_reason() -> Optional[str]:
    if _libnatten.supports_slabs():
        return None
    major, minor = _libnatten.abi_version()
    return (
        f"the loaded natten-kernels (ABI {major}.{minor}) does not take query/key slabs of a larger "
        f"grid (global_shape, q_origin, kv_origin); they need ABI >= {major}."
        f"{_libnatten.SLABS_MIN_ABI_MINOR}: upgrade natten-kernels"
    )


def _region_args(spec: object) -> Tuple[List[int], List[int], List[int]]:
    """(global_shape, q_origin, kv_origin) for the kernel: empty lists for the whole grid."""
    if not getattr(spec, "is_partial", False):
        return [], [], []
    return list(spec.shape), list(spec.q_origin), list(spec.kv_origin)  # type: ignore[attr-defined]


@torch.compiler.assume_constant_result
def _kernel_reason(dtype: torch.dtype, rank: int, head_dim: int, head_dim_v: int, device: int) -> Optional[str]:
    key = (dtype, rank, head_dim, head_dim_v, device)
    if key not in _KERNEL_REASONS:
        _KERNEL_REASONS[key] = _libnatten.fna_supports(dtype, rank, head_dim, head_dim_v, device=device)
    return _KERNEL_REASONS[key]


@torch.compiler.assume_constant_result
def _backward_reason() -> Optional[str]:
    if _libnatten.has_backward():
        return None
    return (
        "its fused backward needs natten-kernels ABI >= 1.1 (the loaded library has no "
        "natten_fna_backward; inputs require grad); upgrade natten-kernels or use "
        "backend='reference' for training"
    )


@torch.compiler.assume_constant_result
def _backward_slabs_reason() -> Optional[str]:
    if _libnatten.supports_backward_slabs():
        return None
    major, minor = _libnatten.abi_version()
    return (
        f"its fused backward does not take query/key slabs of a larger grid with the loaded "
        f"natten-kernels (ABI {major}.{minor}; inputs require grad); slabs need ABI >= {major}."
        f"{_libnatten.BACKWARD_SLABS_MIN_ABI_MINOR}: upgrade natten-kernels, or train on slabs with "
        f"flex-fna or reference"
    )


def _training_reason(spec: object) -> Optional[str]:
    """Why the loaded library cannot run the fused backward of this problem (None: it can): no
    backward at all, or none for slabs of a larger grid. Shared by cutlass-fna and hopper-fna (whose
    backward is the library's)."""
    reason = _backward_reason()
    if reason is None and getattr(spec, "is_partial", False):
        reason = _backward_slabs_reason()
    return reason


def _deterministic() -> bool:
    """Whether the backward must be bit-identical across runs (natten's or PyTorch's flag). Every
    backward kernel of natten-kernels 1.1 is deterministic, so this only reaches the C ABI's
    ``deterministic`` field; compiled graphs always ask for it."""
    if torch.compiler.is_compiling():
        return True
    from ..context import are_deterministic_algorithms_enabled

    return are_deterministic_algorithms_enabled()


class _FnaFunction(torch.autograd.Function):
    """Fused forward + fused backward of cutlass-fna (differentiable in out and lse).

    ``fwd_backend`` / ``fwd_schedule``: the C ABI backend and kernel schedule of the forward (1 =
    the SM80 kernel; hopper-fna passes 2: its forward on the sm_90a kernel, the backward through
    the library's choice: dQ on the sm_90a kernel where it runs, dK / dV on the SM80 kernels, which
    take any forward's out and lse)."""

    @staticmethod
    def forward(ctx, query, key, value, kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile,
                bwd_q_tile, bwd_kv_tile, deterministic, global_shape, q_origin, kv_origin,
                kv_splits, fwd_backend=1, fwd_schedule=0):  # type: ignore[override]
        from .. import ops

        # global_shape / q_origin / kv_origin: the slab (empty lists = the whole grid).
        region = (global_shape, q_origin, kv_origin)
        args = (kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile, *region, fwd_backend, fwd_schedule)
        if torch.compiler.is_compiling():
            out, lse = ops.fna_forward(query, key, value, *args)
        else:
            out, lse = ops.fna_forward_eager(query, key, value, *args)
        ctx.save_for_backward(query, key, value, out, lse)
        if not torch.compiler.is_compiling():  # eager: an unused output's gradient stays None (no zeros)
            ctx.set_materialize_grads(False)
        ctx.window = (kernel_size, stride, dilation, is_causal, scale, bwd_q_tile, bwd_kv_tile, deterministic)
        ctx.region = region
        ctx.kv_splits = kv_splits  # [] = one CTA per key tile
        ctx.bwd_backend = _bwd_backend(fwd_backend)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):  # type: ignore[override]
        from .. import ops

        query, key, value, out, lse = ctx.saved_tensors
        d_out = _grad_out(d_out, out)
        kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile, deterministic = ctx.window
        # Eager: the implementation itself (the dispatcher round trip costs ~25-50 us per call);
        # compiled graphs trace the registered operator.
        bwd = ops.fna_backward if torch.compiler.is_compiling() else ops.fna_backward_eager
        d_q, d_k, d_v = bwd(
            query, key, value, out, lse, d_out, d_lse, kernel_size, stride, dilation, is_causal, scale,
            q_tile, kv_tile, deterministic, *ctx.region, ctx.kv_splits, ctx.bwd_backend,
        )
        return (d_q, d_k, d_v) + (None,) * 16


def _grad_out(d_out: Optional[Tensor], out: Tensor) -> Tensor:
    """The backward's ``d_out`` when autograd does not materialize unused outputs' gradients
    (``ctx.set_materialize_grads(False)``): zeros where only the logsumexp was used (the kernels
    take ``d_lse`` as None when only the output was: no zero-filled tensor, no read of it)."""
    if d_out is None:
        return torch.zeros_like(out)
    return d_out


def _bwd_backend(fwd_backend: int) -> int:
    """The C ABI backend of the backward after a forward on ``fwd_backend``: cutlass-fna trains on
    the SM80 kernels only; hopper-fna lets the library pick (AUTO: the SM90 kernels where they run,
    natten-kernels >= 1.3.1; older libraries: SM80)."""
    if fwd_backend == _libnatten.BACKEND_CUTLASS_FNA_SM80:
        return _libnatten.BACKEND_CUTLASS_FNA_SM80
    return _libnatten.BACKEND_AUTO


def _out_like_query(query: Tensor, out: Tensor) -> bool:
    """Whether a plan's output has its query's shape and dtype (head_dim_v == head_dim). A plan's
    calls all have the query's shape and dtype (the plan cache keys on them), so the prepared
    launchers then allocate each output as ``torch.empty_like(q, memory_format=contiguous)``: the
    same tensor as ``torch.empty(shape, dtype=, device=)`` for less host time (see
    ``ops.new_grads``)."""
    return tuple(out.shape) == tuple(query.shape) and out.dtype == query.dtype


class _PreparedTraining:
    """The training path of one call plan (eager calls only; natten's plan cache guarantees the
    shapes, strides, dtypes and device it was prepared with): the forward launches through a
    marshalled struct (:class:`natten._libnatten.PreparedFnaForward`), and the backward gets its
    arguments ready-made, through :class:`_PreparedFnaFunction` (an autograd.Function of three
    tensors and this plan). It computes exactly what :class:`_FnaFunction` does; only the per-call
    host work differs (the 1-D rows of the benchmark suite are host-bound: ~0.5 ms of host time per
    forward + backward call against ~0.35 ms of kernels)."""

    __slots__ = ("_ops", "_launch", "_out_shape", "_lse_shape", "_dtype", "_device", "_bwd_window", "_bwd_tail",
                 "_slow", "_out_stride", "_bwd_prepared", "_out_like_q")

    def __init__(self, query: Tensor, key: Tensor, value: Tensor, spec, scale: float,
                 fwd_tiles: Tuple[List[int], List[int]], bwd_tiles: Tuple[List[int], List[int]],
                 kv_splits: List[int], fwd_backend: int, schedule: Optional[str], slow: Callable) -> None:
        from .. import ops

        out, lse = ops.new_outputs(query, value)
        global_shape, q_origin, kv_origin = _region_args(spec)
        prepared = _libnatten.PreparedFnaForward(
            query, key, value, out, lse, list(spec.kernel_size), list(spec.stride), list(spec.dilation),
            list(spec.is_causal), float(scale), q_tile=fwd_tiles[0] or None, kv_tile=fwd_tiles[1] or None,
            global_shape=global_shape or None, q_origin=q_origin or None, kv_origin=kv_origin or None,
            backend=fwd_backend, kernel_schedule=schedule,
        )
        self._launch = prepared.launch
        self._out_shape, self._lse_shape = list(out.shape), list(lse.shape)
        self._out_like_q = _out_like_query(query, out)
        self._dtype, self._device = out.dtype, out.device
        # natten::fna_backward's arguments after (query ... d_lse) and before / after `deterministic`
        self._bwd_window = (list(spec.kernel_size), list(spec.stride), list(spec.dilation), list(spec.is_causal),
                            float(scale), list(bwd_tiles[0]), list(bwd_tiles[1]))
        self._bwd_tail = (global_shape, q_origin, kv_origin, list(kv_splits), _bwd_backend(fwd_backend))
        self._slow = slow
        self._ops = ops  # the operator module, without an import statement per call
        self._out_stride = out.stride()
        # PreparedFnaBackward per deterministic flag, made by the first backward that can use it
        self._bwd_prepared: Dict[bool, Any] = {}

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        if q.data_ptr() % 16 or k.data_ptr() % 16 or v.data_ptr() % 16:
            return self._slow(q, k, v)
        return _PreparedFnaFunction.apply(q, k, v, self)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        if self._ops._POISON_OUTPUTS:  # tests: NaN-filled, so unwritten elements show
            out, lse = self._ops.new_outputs(q, v)
        else:
            out = (torch.empty_like(q, memory_format=torch.contiguous_format) if self._out_like_q
                   else torch.empty(self._out_shape, dtype=self._dtype, device=self._device))
            lse = torch.empty(self._lse_shape, dtype=torch.float32, device=self._device)
        self._launch(q, k, v, out, lse)
        return out, lse

    def backward(self, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, d_out: Tensor,
                 d_lse: Optional[Tensor], deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
        ops = self._ops
        # The usual case, a training step's output gradient laid out like out (which this plan
        # made) and no logsumexp gradient, launches through a struct marshalled once per plan and
        # deterministic flag; q, k, v have the plan's layout (natten's plan cache keys on it) and
        # the gradients are fresh contiguous tensors (NaN-filled while poisoning is on, as the
        # general path's). Anything else takes the general path.
        if d_lse is None and d_out.stride() == self._out_stride and d_out.data_ptr() % 16 == 0:
            prepared = self._bwd_prepared.get(deterministic)
            d_q, d_k, d_v = ops.new_grads(q, k, v)
            if prepared is None:
                kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile = self._bwd_window
                global_shape, q_origin, kv_origin, kv_splits, backend = self._bwd_tail
                prepared = _libnatten.PreparedFnaBackward(
                    q, k, v, out, lse, d_out, d_q, d_k, d_v, kernel_size, stride, dilation, is_causal, scale,
                    q_tile=q_tile or None, kv_tile=kv_tile or None, backend=int(backend),
                    deterministic=deterministic, global_shape=global_shape or None, q_origin=q_origin or None,
                    kv_origin=kv_origin or None, kv_splits=list(kv_splits) or None)
                self._bwd_prepared[deterministic] = prepared
            prepared.launch(q, k, v, out, lse, d_out, d_q, d_k, d_v)
            return d_q, d_k, d_v
        return ops.fna_backward_eager(q, k, v, out, lse, d_out, d_lse, *self._bwd_window, deterministic,
                                      *self._bwd_tail)


class _PreparedFnaFunction(torch.autograd.Function):
    """:class:`_FnaFunction` for a prepared plan (eager only): the same forward and backward
    kernels with four arguments instead of nineteen."""

    @staticmethod
    def forward(ctx, query, key, value, plan):  # type: ignore[override]
        out, lse = plan.forward(query, key, value)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.set_materialize_grads(False)  # eager only: d_lse stays None when lse is unused
        ctx.plan = plan
        ctx.deterministic = _deterministic()
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):  # type: ignore[override]
        query, key, value, out, lse = ctx.saved_tensors
        d_out = _grad_out(d_out, out)
        d_q, d_k, d_v = ctx.plan.backward(query, key, value, out, lse, d_out, d_lse, ctx.deterministic)
        return d_q, d_k, d_v, None


def _prepare_training(query: Tensor, key: Tensor, value: Tensor, spec, scale: float,
                      q_tile_shape: Optional[Tuple[int, ...]], kv_tile_shape: Optional[Tuple[int, ...]],
                      options: Dict, fwd_backend: int, slow: Callable) -> Callable:
    """The plan runner of a call whose inputs require grad: a :class:`_PreparedTraining` where it
    applies, else ``slow`` (which raises the errors of an invalid request, or takes the copies a
    layout needs)."""
    from .. import ops

    if torch.compiler.is_compiling() or _training_reason(spec) is not None:
        return slow
    if (q_tile_shape is None) != (kv_tile_shape is None):
        return slow
    bq, bkv = options.get("backward_q_tile_shape"), options.get("backward_kv_tile_shape")
    if (bq is None) != (bkv is None):
        return slow
    if not all(ops.is_kernel_ready(t) for t in (query, key, value)):
        return slow
    try:
        kv_splits = _kv_splits(options.get("backward_kv_splits"), query.dim() - 3)
    except NotImplementedError:
        return slow
    fwd_tiles = (list(q_tile_shape or ()), list(kv_tile_shape or ()))
    sm80 = fwd_backend == _libnatten.BACKEND_CUTLASS_FNA_SM80
    if bq is not None:
        bwd_tiles = (list(bq), list(bkv))
    else:  # cutlass-fna: the forward's tiles where they are backward tiles (64 tokens), else the library's
        bwd_tiles = _backward_tiles_from_forward(*fwd_tiles) if sm80 else ([], [])
    schedule = None if sm80 else options.get("kernel_schedule")
    return _PreparedTraining(query, key, value, spec, scale, fwd_tiles, bwd_tiles, kv_splits, fwd_backend,
                             schedule, slow)


def _kv_splits(splits: Optional[Tuple[int, ...]], rank: int) -> List[int]:
    """KV parallelism of the dK / dV kernel for the C ABI: ``backward_kv_splits`` if given (each
    between 1 and the key tiles along that axis; the library says so otherwise, when the backward
    runs), else ``[1] * rank`` while :func:`natten.use_kv_parallelism_in_fused_na` is off (with a
    library that takes it, ABI >= 1.3), else ``[]`` = one CTA per key tile."""
    if splits is not None:
        if not _kv_splits_supported():
            major, minor = _libnatten.abi_version()
            raise NotImplementedError(
                f"cutlass-fna: backward_kv_splits needs natten-kernels ABI >= {major}."
                f"{_libnatten.KV_SPLITS_MIN_ABI_MINOR}; the loaded library is ABI {major}.{minor}: upgrade "
                f"natten-kernels or leave backward_kv_splits unset"
            )
        return list(splits)
    from ..context import is_kv_parallelism_in_fused_na_enabled

    if not is_kv_parallelism_in_fused_na_enabled() and _kv_splits_supported():
        return [1] * rank
    return []


@torch.compiler.assume_constant_result
def _kv_splits_supported() -> bool:
    return _libnatten.supports_kv_splits()


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def can_run_fna(
    query: Tensor, key: Tensor, value: Tensor, spec: object, torch_compile: bool = False
) -> Optional[str]:
    """None if ``cutlass-fna`` can run this problem here, else the reason."""
    if query.device.type != "cuda":
        return f"it needs CUDA tensors, got tensors on {query.device}"
    reason = _library_reason()
    if reason is not None:
        return reason
    if query.dtype not in _FNA_DTYPES:
        return f"it supports float16, bfloat16 and float32, got {query.dtype}"
    if getattr(spec, "is_partial", False):
        reason = _slabs_reason()
        if reason is not None:
            return reason
    if _needs_grad(query, key, value):
        reason = _training_reason(spec)
        if reason is not None:
            return reason
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    return _kernel_reason(
        query.dtype, query.dim() - 3, int(query.shape[-1]), int(value.shape[-1]), index
    )


def can_run_fmha(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool = False,
    is_varlen: bool = False,
    torch_compile: bool = False,
) -> Optional[str]:
    """None if ``cutlass-fmha`` can run this dense-attention problem here, else the reason.

    Dense attention runs on the fused neighborhood-attention kernel as a 1-D window that covers
    every key (see :func:`fmha`)."""
    if query.device.type != "cuda":
        return f"it needs CUDA tensors, got tensors on {query.device}"
    if query.dim() != 4:
        return f"it takes [batch, seqlen, heads, head_dim] tensors, got {query.dim()} dims"
    return _fmha_parts_reason(can_run_fna, query, key, value, is_causal, torch_compile)


def _fmha_parts_reason(can_run: Callable, query: Tensor, key: Tensor, value: Tensor, is_causal: bool,
                       torch_compile: bool) -> Optional[str]:
    """Dense attention on a fused NA kernel: None if ``can_run`` (the backend's ``can_run_fna``)
    accepts every NA problem of :func:`_fmha_parts`, else the first reason."""
    nq, nk = int(query.shape[1]), int(key.shape[1])
    if nk < 2:
        return f"it needs at least 2 keys (the fused kernel's window has >= 2 tokens), got {nk}"
    for part, spec in _fmha_parts(nq, nk, bool(is_causal)):
        reason = can_run(query[:, part], key, value, spec, torch_compile)
        if reason is not None:
            return reason
    return None


def _fmha_parts(nq: int, nk: int, is_causal: bool) -> List[Tuple[slice, "WindowSpec"]]:
    """Dense attention of ``nq`` queries over ``nk`` keys as fused 1-D NA problems.

    A window of ``nk`` tokens on a grid of ``nk`` tokens covers every key; causal (top-left
    aligned: query ``i`` attends keys ``j <= i``) is the causal window of that size. Fewer queries
    than keys is the slab of the first ``nq`` queries; queries past the last key (``nq > nk``)
    attend every key and run in slices of ``nk`` queries (non-causal)."""
    from ..window import Region, WindowSpec

    def spec(n_q: int, causal: bool) -> "WindowSpec":
        region = None if n_q == nk else Region((0,), (n_q,), (0,), (nk,))
        return WindowSpec((nk,), (nk,), (1,), (1,), (causal,), region)

    parts: List[Tuple[slice, "WindowSpec"]] = []
    start = 0
    while start < nq:
        n_q = min(nk, nq - start)
        parts.append((slice(start, start + n_q), spec(n_q, is_causal and start == 0)))
        start += n_q
    return parts


def fna(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    spec,
    scale: float,
    q_tile_shape: Optional[Tuple[int, ...]] = None,
    kv_tile_shape: Optional[Tuple[int, ...]] = None,
    **options,
) -> Tuple[Tensor, Tensor]:
    """Fused forward (differentiable through the fused backward when inputs require grad);
    returns ``(out, lse)``."""
    from .. import ops

    if (q_tile_shape is None) != (kv_tile_shape is None):
        raise ValueError(
            "`q_tile_shape` and `kv_tile_shape` must be given together for cutlass-fna "
            f"(got {q_tile_shape} and {kv_tile_shape}); see natten.get_configs_for_cutlass_fna."
        )
    args = (
        list(spec.kernel_size), list(spec.stride), list(spec.dilation), list(spec.is_causal),
        float(scale), list(q_tile_shape or ()), list(kv_tile_shape or ()), *_region_args(spec),
    )
    if _needs_grad(query, key, value):
        reason = _training_reason(spec)
        if reason is not None:
            raise NotImplementedError(f"cutlass-fna cannot train here: {reason}")
        bq, bkv = options.get("backward_q_tile_shape"), options.get("backward_kv_tile_shape")
        if (bq is None) != (bkv is None):
            raise ValueError(
                "`backward_q_tile_shape` and `backward_kv_tile_shape` must be given together for "
                f"cutlass-fna (got {bq} and {bkv})."
            )
        if bq is None:  # the forward's tiles where they are backward tiles, else the library's choice
            bwd_tiles = _backward_tiles_from_forward(args[5], args[6])
        else:
            bwd_tiles = (list(bq), list(bkv))
        kv_splits = _kv_splits(options.get("backward_kv_splits"), query.dim() - 3)
        return _FnaFunction.apply(query, key, value, *args[:7], *bwd_tiles, _deterministic(), *args[7:],
                                  kv_splits)
    if torch.compiler.is_compiling():
        return ops.fna_forward(query, key, value, *args)
    return ops.fna_forward_eager(query, key, value, *args)


def prepare_fna(query: Tensor, key: Tensor, value: Tensor, spec, scale: float,
                q_tile_shape: Optional[Tuple[int, ...]] = None,
                kv_tile_shape: Optional[Tuple[int, ...]] = None, **options) -> Callable:
    """A fast launcher for repeated calls with tensors of these shapes, strides, dtypes and
    device (natten's call-plan cache guarantees that): marshals once, then each call only
    allocates the outputs and launches; inputs that require grad get :class:`_PreparedTraining`
    (the same kernels with less host work per call)."""
    from .. import ops

    def slow(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        return fna(q, k, v, spec, scale, q_tile_shape, kv_tile_shape, **options)

    if _needs_grad(query, key, value):
        return _prepare_training(query, key, value, spec, scale, q_tile_shape, kv_tile_shape, options,
                                 _libnatten.BACKEND_CUTLASS_FNA_SM80, slow)
    if not (ops.is_kernel_ready(query) and ops.is_kernel_ready(key) and ops.is_kernel_ready(value)):
        return slow
    out, lse = ops.new_outputs(query, value)  # the query slab's grid
    global_shape, q_origin, kv_origin = _region_args(spec)
    prepared = _libnatten.PreparedFnaForward(
        query, key, value, out, lse, list(spec.kernel_size), list(spec.stride),
        list(spec.dilation), list(spec.is_causal), float(scale),
        q_tile=q_tile_shape, kv_tile=kv_tile_shape, global_shape=global_shape or None,
        q_origin=q_origin or None, kv_origin=kv_origin or None, backend="cutlass-fna",
    )
    return _prepared_runner(
        prepared, query, out, lse, options.get("return_lse", True),
        lambda q, k, v: fna(q, k, v, spec, scale, q_tile_shape, kv_tile_shape),
    )


def _prepared_runner(prepared: "_libnatten.PreparedFnaForward", query: Tensor, out: Tensor, lse: Tensor,
                     with_lse: bool, slow: Callable) -> Callable:
    """The per-call part of a prepared launch (cutlass-fna and hopper-fna): allocate the outputs
    and launch; ``slow`` takes calls the prepared struct cannot (misaligned pointers, poisoned
    outputs in tests)."""
    from .. import ops

    launch = prepared.launch
    out_shape, lse_shape = list(out.shape), list(lse.shape)
    dtype, device = out.dtype, out.device
    empty, empty_like, cf = torch.empty, torch.empty_like, torch.contiguous_format
    f32 = torch.float32
    like_q = _out_like_query(query, out)

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        if q.data_ptr() % 16 or k.data_ptr() % 16 or v.data_ptr() % 16 or ops._POISON_OUTPUTS:
            return slow(q, k, v)
        o = empty_like(q, memory_format=cf) if like_q else empty(out_shape, dtype=dtype, device=device)
        # Without return_lse the kernel skips the logsumexp (a null pointer at the ABI).
        l = empty(lse_shape, dtype=f32, device=device) if with_lse else None
        launch(q, k, v, o, l)
        return o, l

    return run


def fmha(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool,
    scale: float,
    q_tile_shape: Optional[Tuple[int, ...]] = None,
    kv_tile_shape: Optional[Tuple[int, ...]] = None,
    **options,
) -> Tuple[Tensor, Tensor]:
    """Dense (optionally causal, top-left aligned) attention on ``[B, N, H, D]`` tensors through
    the fused neighborhood-attention kernel (forward, logsumexp and, where the fused backward
    runs, gradients); returns ``(out, lse)``. Tile sizes (``attention(q_tile_size=...)``) arrive
    as 1-D tile shapes.

    Every tile of a window that covers all keys is "full", so the kernel computes no mask except
    on the diagonal tiles of causal attention and never visits a tile above the diagonal."""
    if options.get("offsets") is not None:
        raise NotImplementedError(
            "cutlass-fmha has no variable-length kernel; natten.attention runs packed sequences "
            "on it as one batch per run of consecutive sequences with equal lengths"
        )
    bwd = {k: options[k] for k in ("backward_q_tile_shape", "backward_kv_tile_shape", "backward_kv_splits")
           if options.get(k)}
    return _fmha_on_fna(fna, query, key, value, is_causal, scale, q_tile_shape, kv_tile_shape, **bwd)


def _fmha_on_fna(fna_fn: Callable, query: Tensor, key: Tensor, value: Tensor, is_causal: bool,
                 scale: float, q_tile_shape: Optional[Tuple[int, ...]],
                 kv_tile_shape: Optional[Tuple[int, ...]], **options) -> Tuple[Tensor, Tensor]:
    """Dense attention as the 1-D NA problems of :func:`_fmha_parts`, each run by ``fna_fn`` (a
    backend's ``fna``), outputs and logsumexps concatenated along the queries."""
    parts = _fmha_parts(int(query.shape[1]), int(key.shape[1]), bool(is_causal))
    results = [
        fna_fn(query[:, sl], key, value, spec, scale, q_tile_shape, kv_tile_shape, **options)
        for sl, spec in parts
    ]
    if len(results) == 1:
        return results[0]
    return torch.cat([r[0] for r in results], dim=1), torch.cat([r[1] for r in results], dim=1)


def get_configs_for_cutlass_fna(query: Tensor, key: Tensor, value: Tensor) -> List[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """Valid ``(q_tile_shape, kv_tile_shape)`` pairs of ``cutlass-fna`` for these tensors here: boxes of
    64 query and 64 key tokens, and with natten-kernels >= 1.3.6 at head dim 128 (the larger of
    ``head_dim`` and ``head_dim_v``, rounded up to 32 / 64 / 128 / 256) in fp16 / bf16 also 128-token
    query boxes with 64-token key boxes. The backward keeps 64-token tiles: after a forward on
    128-token query tiles it runs the library's choice unless ``backward_q_tile_shape`` /
    ``backward_kv_tile_shape`` are given."""
    return _listed_configs("cutlass-fna", can_run_fna(query, key, value, None), query, key, value,
                           query.dim() - 3)


def _listed_configs(name: str, reason: Optional[str], query: Tensor, key: Tensor, value: Tensor,
                    rank: int) -> List[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """The library's tile pairs at ``rank`` for these tensors, or ValueError with ``reason`` (the
    backend's refusal; a refusal only for lack of a backward does not stop the listing)."""
    if reason is not None and (not _needs_grad(query, key, value) or _backward_reason() is None):
        raise ValueError(f"{name} cannot run these tensors: {reason}")
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    configs = _libnatten.query_configs(query.dtype, rank, int(query.shape[-1]), int(value.shape[-1]), device=index)
    return [(c["q_tile"], c["kv_tile"]) for c in configs]


def _backward_configs(name: str, configs: list, tokens: Callable) -> list:
    """The configurations whose query and key tiles hold the backward kernels' tile tokens."""
    reason = _backward_reason()
    if reason is not None:
        raise NotImplementedError(f"{name} has no fused backward here: {reason}")
    return [(q, kv) for q, kv in configs() if tokens(q) == _BWD_TILE_TOKENS and tokens(kv) == _BWD_TILE_TOKENS]


def get_bwd_configs_for_cutlass_fna(
    query: Tensor, key: Tensor, value: Tensor
) -> List[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """Valid ``(backward_q_tile_shape, backward_kv_tile_shape)`` pairs of the fused backward of
    ``cutlass-fna`` for these tensors here (natten-kernels >= 1.1).

    The backward kernels of natten-kernels 1.1 are compiled for 64-token query and key tiles, so
    these are the forward's configurations with 64 tokens per tile.

    Raises:
        NotImplementedError: the loaded natten-kernels has no fused backward.
        ValueError: ``cutlass-fna`` cannot run these tensors here (the message says why).
    """
    return _backward_configs("cutlass-fna", lambda: get_configs_for_cutlass_fna(query, key, value), math.prod)


_BWD_TILE_TOKENS = 64  # the backward kernels' compiled CTA tile (natten-kernels 1.1)


def _backward_tiles_from_forward(q_tile: List[int], kv_tile: List[int]) -> Tuple[List[int], List[int]]:
    """The backward's default tiles for a forward run with ``(q_tile, kv_tile)``: the same shapes
    when both are 64-token boxes (the backward's compiled tile), else ``([], [])`` (the library
    chooses; e.g. the forward's 128-token query tiles of natten-kernels >= 1.3.6)."""
    if q_tile and kv_tile and math.prod(q_tile) == _BWD_TILE_TOKENS and math.prod(kv_tile) == _BWD_TILE_TOKENS:
        return list(q_tile), list(kv_tile)
    return [], []


def get_configs_for_cutlass_fmha(query: Tensor, key: Tensor, value: Tensor) -> List[Tuple[int, int]]:
    """Valid ``(q_tile_size, kv_tile_size)`` of ``cutlass-fmha`` (the ``q_tile_size`` /
    ``kv_tile_size`` arguments of :func:`natten.attention`) for these ``[batch, seqlen, heads,
    head_dim]`` tensors here: dense attention runs on the fused NA kernel as a 1-D problem, so
    these are its 1-D tiles.

    Raises:
        ValueError: ``cutlass-fmha`` cannot run these tensors here (the message says why).
    """
    configs = _listed_configs("cutlass-fmha", can_run_fmha(query, key, value), query, key, value, 1)
    return [(int(q[0]), int(kv[0])) for q, kv in configs]


def get_bwd_configs_for_cutlass_fmha(query: Tensor, key: Tensor, value: Tensor) -> List[Tuple[int, int]]:
    """Valid ``(backward_q_tile_size, backward_kv_tile_size)`` of ``cutlass-fmha``'s fused backward
    for these tensors here (the forward's 1-D tiles the backward kernels are built for).

    Raises:
        NotImplementedError: the loaded natten-kernels has no fused backward.
        ValueError: ``cutlass-fmha`` cannot run these tensors here (the message says why).
    """
    return _backward_configs("cutlass-fmha", lambda: get_configs_for_cutlass_fmha(query, key, value), int)
