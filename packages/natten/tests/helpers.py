"""Shared helpers for the natten CPU test suite (no natten logic in here)."""

import contextlib
import math
import random
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from oracle import na_oracle

TOL = {
    torch.float64: dict(atol=1e-9, rtol=1e-7),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}

# The logsumexp is specified as float32; when the inputs are float64 we accept a float32 LSE at
# float32 precision, or a float64 LSE at float64 precision.
LSE_TOL_F32 = dict(atol=2e-5, rtol=2e-5)


def assert_close(got: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float, what: str = ""):
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != expected {tuple(ref.shape)}"
    got64 = got.detach().to(torch.float64)
    ref64 = ref.detach().to(torch.float64)
    assert torch.isfinite(got64).all(), f"{what}: non-finite values"
    diff = (got64 - ref64).abs()
    bound = atol + rtol * ref64.abs()
    bad = diff > bound
    if bad.any():
        idx = tuple(int(x) for x in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements mismatch; max abs diff "
            f"{diff.max().item():.3e} (atol={atol}, rtol={rtol}); first bad index {idx}: "
            f"got {got64[idx].item():.8g}, expected {ref64[idx].item():.8g}"
        )


def assert_grads_close(got, ref, tol: float, what: str = "") -> None:
    """dQ, dK, dV against the reference's: absolute tolerance ``tol`` times the reference's largest
    magnitude (at least 1), per gradient."""
    for name, a, b in zip(("dq", "dk", "dv"), got, ref):
        scale = max(1.0, float(b.abs().max()))
        assert_close(a, b, atol=tol * scale, rtol=0, what=f"{what} {name} (scale {scale:.3g})")


def assert_lse_close(lse: torch.Tensor, ref: torch.Tensor, in_dtype: torch.dtype, what="lse"):
    assert lse.shape == ref.shape, f"{what}: shape {tuple(lse.shape)} != {tuple(ref.shape)}"
    if in_dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert lse.dtype == torch.float32, f"{what}: expected float32 logsumexp, got {lse.dtype}"
    else:
        assert lse.dtype in (torch.float32, torch.float64), f"{what}: dtype {lse.dtype}"
    if in_dtype == torch.float64:
        tol = TOL[torch.float64] if lse.dtype == torch.float64 else LSE_TOL_F32
    else:
        tol = TOL[in_dtype]
    assert_close(lse, ref, what=what, **tol)


def randn(shape, gen: torch.Generator, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def to64(t: Optional[torch.Tensor], requires_grad=True) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return t.detach().to(torch.float64).requires_grad_(requires_grad)


def leaf(t: Optional[torch.Tensor], requires_grad=True) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return t.detach().clone().requires_grad_(requires_grad)


def check_na_against_oracle(
    natten_fn,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    na_kwargs: Dict,
    gen: torch.Generator,
    additional_keys: Optional[torch.Tensor] = None,
    additional_values: Optional[torch.Tensor] = None,
    backward: bool = True,
    backend: Optional[str] = "reference",
    tol: Optional[Dict] = None,
    grad_tol: Optional[Dict] = None,
    what: str = "",
):
    """Runs natten_fn (na1d/na2d/na3d) with return_lse=True, compares out, lse and (optionally)
    grads of q, k, v, additional k/v with the float64 oracle (autograd on the oracle)."""
    dtype = q.dtype
    tol = tol or TOL[dtype]
    grad_tol = grad_tol or tol
    has_add = additional_keys is not None

    ql, kl, vl = leaf(q, backward), leaf(k, backward), leaf(v, backward)
    akl, avl = leaf(additional_keys, backward), leaf(additional_values, backward)
    kwargs = dict(na_kwargs)
    if backend is not None:
        kwargs["backend"] = backend
    if has_add:
        kwargs["additional_keys"] = akl
        kwargs["additional_values"] = avl
    res = natten_fn(ql, kl, vl, return_lse=True, **kwargs)
    assert isinstance(res, tuple) and len(res) == 2, f"{what}: return_lse=True must give (out, lse)"
    out, lse = res
    assert out.dtype == dtype, f"{what}: output dtype {out.dtype} != input dtype {dtype}"
    assert out.device == q.device

    oracle_kw = {k_: v_ for k_, v_ in na_kwargs.items() if k_ in ("kernel_size", "stride", "dilation", "is_causal", "scale")}
    q64, k64, v64 = to64(q, backward), to64(k, backward), to64(v, backward)
    ak64, av64 = to64(additional_keys, backward), to64(additional_values, backward)
    ref_out, ref_lse = na_oracle(
        q64, k64, v64, additional_keys=ak64, additional_values=av64, **oracle_kw
    )
    assert_close(out, ref_out, what=f"{what} out", **tol)
    assert_lse_close(lse, ref_lse, dtype, what=f"{what} lse")

    if not backward:
        return
    dout = randn(out.shape, gen, dtype)
    out.backward(dout)
    ref_out.backward(dout.to(torch.float64))
    pairs = [("dq", ql, q64), ("dk", kl, k64), ("dv", vl, v64)]
    if has_add:
        pairs += [("d_add_k", akl, ak64), ("d_add_v", avl, av64)]
    for name, mine, ref in pairs:
        assert mine.grad is not None, f"{what}: {name} is None"
        assert mine.grad.dtype == dtype, f"{what}: {name} dtype {mine.grad.dtype}"
        assert_close(mine.grad, ref.grad, what=f"{what} {name}", **grad_tol)


class SweepFailures:
    """The assertion messages of a random sweep: ``with failures.case(): ...`` records a failing
    case and goes on; ``failures.full`` says when to stop (``limit`` failures); ``check()`` fails
    the test with all of them."""

    def __init__(self, limit: int = 10) -> None:
        self.messages: List[str] = []
        self.limit = limit

    @contextlib.contextmanager
    def case(self, prefix: str = "") -> Iterator[None]:
        try:
            yield
        except AssertionError as e:
            self.messages.append(f"{prefix}{e}")

    def add(self, message: str) -> None:
        self.messages.append(message)

    def __len__(self) -> int:  # so ``assert not failures`` also means "no failure"
        return len(self.messages)

    @property
    def full(self) -> bool:
        return len(self.messages) >= self.limit

    def check(self) -> None:
        assert not self.messages, "\n".join(self.messages)


def check_window_rows_1d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, rows: Sequence[int], window: int,
                         atol: float = 1e-2) -> None:
    """Rows of a 1-D neighborhood attention (stride 1, dilation 1, non-causal) against float64
    computed on the row's own window only: usable on tensors far too large for the oracle (e.g.
    over 2^31 elements, where the rows near the end exercise 64-bit offsets)."""
    n, d = q.shape[1], q.shape[-1]
    for i in rows:
        lo = min(max(i - window // 2, 0), n - window)
        sl = slice(lo, lo + window)
        qs, ks, vs = q[:, i : i + 1].double(), k[:, sl].double(), v[:, sl].double()
        s = torch.einsum("bqhd,bkhd->bhqk", qs, ks) / math.sqrt(d)
        ref = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vs)
        assert_close(out[:, i : i + 1], ref, atol=atol, rtol=0, what=f"row {i}")
        assert_close(lse[:, i], s.logsumexp(-1)[..., 0], atol=atol, rtol=0, what=f"lse row {i}")


def qkv_over_2_31_elements(extra_tokens: int, heads: int = 8, head_dim: int = 128):
    """fp16 q, k, v ``[1, N, heads, head_dim]`` of more than 2^31 elements each (about 4 GiB
    each) on the current CUDA device; fails (not skips) without ~24 GiB of free memory."""
    import pytest

    torch.cuda.empty_cache()  # blocks cached by earlier tests count as used in mem_get_info
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.fail(f"needs ~24 GiB free GPU memory, has {free / 2**30:.1f}")
    n = (1 << 31) // (heads * head_dim) + extra_tokens
    q = torch.randn(1, n, heads, head_dim, device="cuda", dtype=torch.float16)
    assert q.numel() > 2**31
    return q, torch.randn_like(q), torch.randn_like(q)


def random_slabs(rng: random.Random, spec) -> Tuple[List[int], List[int], List[int], List[int]]:
    """A random query slab of ``spec``'s grid (per axis: the whole axis, a thin slab of 1-4 rows as
    in a context-parallel split, or a random range) and a key slab holding its keys (exactly, with a
    random margin, or the whole axis): ``(q_origin, q_shape, kv_origin, kv_shape)``."""
    from natten.window import key_range

    qo, qs = [], []
    for n in spec.shape:
        if rng.random() < 0.2:  # the whole axis
            a, b = 0, n
        elif rng.random() < 0.3:  # a thin slab (a few rows of a sequence/context-parallel split)
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 4))
        else:
            a = rng.randrange(n)
            b = rng.randint(a + 1, n)
        qo.append(a)
        qs.append(b - a)
    ko, kvs = [], []
    for (lo, end), n in zip(key_range(spec, qo, qs), spec.shape):
        mode = rng.random()
        if mode < 0.15:
            lo, end = 0, n
        elif mode < 0.6:
            lo, end = max(0, lo - rng.randint(0, 3)), min(n, end + rng.randint(0, 3))
        ko.append(lo)
        kvs.append(end - lo)
    return qo, qs, ko, kvs
