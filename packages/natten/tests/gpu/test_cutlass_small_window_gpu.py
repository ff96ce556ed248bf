"""The SM80 small-window forward kernel (natten-kernels 1.3.7, ``sm80/small_window_*``) on the GPU
against the float64 oracle.

`cutlass-fna` runs it for problems whose windows are small (a 16-query patch sees at most 128 keys)
at head dims up to 64 when the caller leaves the tiles to the library and it computes at most 0.45x
the (query, key) pairs of the tiled kernel; ``NATTEN_SM80_SMALL=1`` forces it wherever it can run
(dropping the pairs test), ``=0`` turns it off. Fresh random problems every run (seed printed on
failure), outputs poisoned with NaN before each launch, and torch.profiler confirms which kernel
ran.
"""

import os
import random

import pytest
import torch

from helpers import SweepFailures, assert_close, assert_grads_close
from oracle import na_oracle

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import natten  # noqa: E402
from natten import _libnatten, ops  # noqa: E402

if not _libnatten.is_available():
    pytest.fail(f"natten-kernels is not loadable: {_libnatten.unavailable_reason()}", pytrace=False)

NUM_PROBLEMS = int(os.environ.get("NATTEN_GPU_SMALL_SWEEP", "400"))
SEED = int(os.environ.get("NATTEN_GPU_SEED", str(random.SystemRandom().randrange(1 << 30))))
OPS = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}
TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
KERNEL_NAME = "sw_forward_kernel"


def _kernels_launched(fn) -> list:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    return result, names


def _small_ran(names) -> bool:
    return any(KERNEL_NAME in n for n in names)


def _problem(rng: random.Random):
    rank = rng.choice([1, 2, 2, 3])
    hi = {1: 400, 2: 48, 3: 14}[rank]
    kmax = {1: 100, 2: 9, 3: 5}[rank]
    shape = [rng.randint(2, hi) for _ in range(rank)]
    ks = [rng.randint(1, min(n, kmax)) for n in shape]
    ks = [max(k, 2) if n >= 2 else k for k, n in zip(ks, shape)]
    dl = [rng.randint(1, max(1, n // k)) if rng.random() < 0.3 else 1 for n, k in zip(shape, ks)]
    st = [rng.randint(1, k) if rng.random() < 0.4 else 1 for k in ks]
    ca = [rng.random() < 0.3 for _ in ks]
    hkv = rng.choice([1, 2])
    h = hkv * rng.choice([1, 2, 3])
    d = rng.choice([8, 16, 24, 32, 32, 40, 48, 56, 64, 64])
    dv = d if rng.random() < 0.7 else rng.choice([8, 16, 32, 48, 64])
    dtype = rng.choice([torch.float16, torch.bfloat16])
    b = rng.randint(1, 3)
    return rank, shape, ks, st, dl, ca, b, h, hkv, d, dv, dtype


@pytest.fixture
def force_small(monkeypatch):
    monkeypatch.setenv("NATTEN_SM80_SMALL", "1")
    ops.set_poison_outputs(True)
    yield
    ops.set_poison_outputs(False)


def test_small_window_random_sweep(force_small):
    rng = random.Random(SEED)
    failures = SweepFailures()
    ran = checked = 0
    for case in range(NUM_PROBLEMS):
        rank, shape, ks, st, dl, ca, b, h, hkv, d, dv, dtype = _problem(rng)
        g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
        q = torch.randn(b, *shape, h, d, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(b, *shape, hkv, dv, device="cuda", dtype=dtype, generator=g)
        # The default scale mostly; sometimes another positive one or a negative one (folded into Q's
        # sign by the kernel). The C ABI refuses a zero scale.
        scale = rng.choice([None] * 6 + [0.37, -d ** -0.5, -1.3])
        desc = (f"case {case} seed {SEED}: shape={shape} kernel={ks} stride={st} dilation={dl} causal={ca} "
                f"B={b} H={h} Hkv={hkv} D={d} Dv={dv} {dtype} scale={scale}")
        try:
            (out, lse), names = _kernels_launched(
                lambda: OPS[rank](q, k, v, ks, st, dl, ca, scale=scale, backend="cutlass-fna", return_lse=True))
            ran += _small_ran(names)
            ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, dl, ca, scale=scale)
            assert_close(out, ref_out, atol=TOL[dtype], rtol=0, what=f"{desc} out")
            assert_close(lse, ref_lse, atol=TOL[dtype], rtol=0, what=f"{desc} lse")
            checked += 1
        except AssertionError as e:
            failures.add(str(e))
        if failures.full:
            break
    failures.check()
    # Windows of up to 9 per axis (100 in 1-D) nearly always fit the kernel's 128-key patch boxes.
    assert ran >= 0.8 * checked, f"the small-window kernel ran for only {ran} of {checked} problems (seed {SEED})"


def test_small_window_nat_small_and_training(monkeypatch):
    """nat-small's problem (56x56, 7x7, D 32) takes the kernel without forcing; a training step
    (forward on this kernel, the library's backward) matches float64 autograd."""
    monkeypatch.delenv("NATTEN_SM80_SMALL", raising=False)
    ops.set_poison_outputs(True)
    g = torch.Generator(device="cuda").manual_seed(SEED)
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = (torch.randn(2, 56, 56, 4, 32, device="cuda", dtype=dtype, generator=g) for _ in range(3))
        (out, lse), names = _kernels_launched(
            lambda: natten.na2d(q, k, v, 7, backend="cutlass-fna", return_lse=True))
        assert _small_ran(names), f"nat-small did not take the small-window kernel: {names}"
        ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), 7)
        assert_close(out, ref_out, atol=TOL[dtype], rtol=0, what=f"nat-small {dtype} out")
        assert_close(lse, ref_lse, atol=TOL[dtype], rtol=0, what=f"nat-small {dtype} lse")

        qg, kg, vg = (t[:1, :23, :30].clone().requires_grad_(True) for t in (q, k, v))
        go = torch.randn_like(qg)
        o = natten.na2d(qg, kg, vg, (5, 6), stride=(1, 2), is_causal=(False, True), backend="cutlass-fna")
        o.backward(go)
        q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (qg, kg, vg))
        ro, _ = na_oracle(q64, k64, v64, (5, 6), (1, 2), 1, (False, True))
        ro.backward(go.double())
        assert_close(o, ro, atol=TOL[dtype], rtol=0, what=f"training {dtype} out")
        assert_grads_close((qg.grad, kg.grad, vg.grad), (q64.grad, k64.grad, v64.grad), 1e-2 if dtype == torch.float16 else 5e-2,
                           what=f"training {dtype}")
    ops.set_poison_outputs(False)


def test_small_window_off_switch(monkeypatch):
    monkeypatch.setenv("NATTEN_SM80_SMALL", "0")
    q, k, v = (torch.randn(1, 20, 20, 2, 32, device="cuda", dtype=torch.float16) for _ in range(3))
    _, names = _kernels_launched(lambda: natten.na2d(q, k, v, 5, backend="cutlass-fna"))
    assert not _small_ran(names), names


def test_small_window_not_taken_for_large_windows(monkeypatch):
    """A 1-D window of 65 keys: a 16-query patch sees 80 keys, more pairs than 64-token tiles, so
    the automatic choice keeps the tiled kernel."""
    monkeypatch.delenv("NATTEN_SM80_SMALL", raising=False)
    q, k, v = (torch.randn(1, 1000, 2, 32, device="cuda", dtype=torch.float16) for _ in range(3))
    _, names = _kernels_launched(lambda: natten.na1d(q, k, v, 65, backend="cutlass-fna"))
    assert not _small_ran(names), names


def test_small_window_explicit_tiles_use_tiled_kernel(force_small):
    """Tiles given by the caller always run the tiled kernel they name."""
    q, k, v = (torch.randn(1, 20, 20, 2, 32, device="cuda", dtype=torch.float16) for _ in range(3))
    _, names = _kernels_launched(
        lambda: natten.na2d(q, k, v, 5, backend="cutlass-fna", q_tile_shape=(8, 8), kv_tile_shape=(8, 8)))
    assert not _small_ran(names), names
