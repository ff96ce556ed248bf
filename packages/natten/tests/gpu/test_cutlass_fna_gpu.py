"""cutlass-fna forward on the GPU against the float64 oracle (run by ci/gpu.sh on the H100).

Fresh random problems every run (the seed is printed on failure), outputs poisoned with NaN before
each launch so unwritten elements show.
"""

import os
import random

import pytest
import torch

from helpers import (SweepFailures, assert_close, assert_grads_close, check_window_rows_1d, qkv_over_2_31_elements,
                     random_slabs)
from oracle import na_oracle, na_region_oracle

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import natten  # noqa: E402
from natten import _libnatten, ops  # noqa: E402
from natten.backends import BackendNotSupportedError  # noqa: E402
from natten.window import WindowSpec, key_range  # noqa: E402

if not _libnatten.is_available():
    pytest.fail(f"natten-kernels is not loadable: {_libnatten.unavailable_reason()}", pytrace=False)

NUM_PROBLEMS = int(os.environ.get("NATTEN_GPU_SWEEP", "1200"))
NUM_REGION_PROBLEMS = int(os.environ.get("NATTEN_GPU_REGION_SWEEP", "200"))
SEED = int(os.environ.get("NATTEN_GPU_SEED", str(random.SystemRandom().randrange(1 << 30))))
OPS = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}
GPU_TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4}  # fp32: CUDA-core kernels


def _problem(rng: random.Random):
    rank = rng.choice([1, 2, 2, 3, 3])
    hi = {1: 300, 2: 24, 3: 11}[rank]
    shape = [rng.randint(2, hi) for _ in range(rank)]
    ks = [rng.randint(2, n) for n in shape]
    dl = [rng.randint(1, max(1, n // k)) if rng.random() < 0.4 else 1 for n, k in zip(shape, ks)]
    st = [rng.randint(1, k) if rng.random() < 0.5 else 1 for k in ks]
    ca = [rng.random() < 0.3 for _ in ks]
    hkv = rng.choice([1, 2, 3])
    h = hkv * rng.choice([1, 1, 2, 4])
    d = rng.choice([32, 64, 128, 256, 40, 96, 160, 8 * rng.randint(4, 32)])
    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    b = rng.randint(1, 2)
    return rank, shape, ks, st, dl, ca, b, h, hkv, d, dtype


def test_fna_forward_random_sweep():
    rng = random.Random(SEED)
    ops.set_poison_outputs(True)
    failures = SweepFailures()
    checked = 0
    try:
        for case in range(NUM_PROBLEMS):
            rank, shape, ks, st, dl, ca, b, h, hkv, d, dtype = _problem(rng)
            g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
            q = torch.randn(b, *shape, h, d, device="cuda", dtype=dtype, generator=g)
            k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dtype, generator=g)
            v = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dtype, generator=g)
            # Mostly the default scale; sometimes another positive or a negative one (the kernels fold
            # the scale into the exponent and a negative sign into Q).
            scale = rng.choice([None] * 6 + [0.29, -d ** -0.5, -0.9])
            desc = (f"case {case} seed {SEED}: shape={shape} kernel={ks} stride={st} dilation={dl} "
                    f"causal={ca} B={b} H={h} Hkv={hkv} D={d} {dtype} scale={scale}")
            try:
                out, lse = OPS[rank](q, k, v, ks, st, dl, ca, scale=scale, backend="cutlass-fna", return_lse=True)
                ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, dl, ca, scale=scale)
                tol = GPU_TOL[dtype]
                assert_close(out, ref_out, atol=tol, rtol=0, what=f"{desc} out")
                assert_close(lse, ref_lse, atol=tol, rtol=0, what=f"{desc} lse")
                checked += 1
            except (NotImplementedError, BackendNotSupportedError) as e:  # unsupported: says so
                if d in (32, 64, 128, 256):
                    failures.add(f"{desc}: unexpectedly unsupported: {e}")
            except AssertionError as e:
                failures.add(str(e))
            if failures.full:
                break
    finally:
        ops.set_poison_outputs(False)
    print(f"cutlass-fna sweep: {checked} problems checked against the float64 oracle (seed {SEED})")
    failures.check()
    assert checked >= 0.8 * NUM_PROBLEMS, f"only {checked} of {NUM_PROBLEMS} problems ran"


def test_fna_forward_explicit_128_token_query_tiles():
    # natten-kernels >= 1.3.6 lists the forward's 128-token query tiles (64-token key tiles) at head
    # dim 128 in fp16 / bf16: every listed one of a sample of problems against the float64 oracle
    # (poisoned outputs), then training with one of them (the backward falls back to the library's
    # 64-token tiles) against float64 autograd.
    rng = random.Random(SEED)
    ops.set_poison_outputs(True)
    checked = 0
    try:
        for shape, ks, st, dl, ca, d, dv in [((1000,), (95,), (1,), (1,), (True,), 128, 128),
                                             ((23, 37), (9, 13), (2, 3), (1, 2), (False, True), 96, 128),
                                             ((6, 11, 13), (3, 5, 4), (1, 1, 2), (2, 1, 1), (False, False, True),
                                              128, 72)]:
            rank = len(shape)
            dtype = rng.choice([torch.float16, torch.bfloat16])
            g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
            q = torch.randn(1, *shape, 2, d, device="cuda", dtype=dtype, generator=g)
            k = torch.randn(1, *shape, 1, d, device="cuda", dtype=dtype, generator=g)
            v = torch.randn(1, *shape, 1, dv, device="cuda", dtype=dtype, generator=g)
            configs = natten.get_configs_for_cutlass_fna(q, k, v)
            big = [c for c in configs if _prod(c[0]) == 128]
            assert big and all(_prod(kv) == 64 for _, kv in big), (shape, len(configs))
            ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, dl, ca)
            for qt, kt in rng.sample(big, min(6, len(big))):
                out, lse = OPS[rank](q, k, v, ks, st, dl, ca, backend="cutlass-fna", q_tile_shape=qt,
                                     kv_tile_shape=kt, return_lse=True)
                what = f"seed {SEED} shape {shape} D {d}/{dv} {dtype} tiles {qt} {kt}"
                assert_close(out, ref_out, atol=GPU_TOL[dtype], rtol=0, what=f"{what} out")
                assert_close(lse, ref_lse, atol=GPU_TOL[dtype], rtol=0, what=f"{what} lse")
                checked += 1
            qt, kt = big[0]
            xs = [t.clone().requires_grad_(True) for t in (q, k, v)]
            out = OPS[rank](*xs, ks, st, dl, ca, backend="cutlass-fna", q_tile_shape=qt, kv_tile_shape=kt)
            d_out = torch.randn_like(out)
            grads = torch.autograd.grad(out, xs, d_out)
            rs = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
            ref, _ = na_oracle(*rs, ks, st, dl, ca)
            ref_grads = torch.autograd.grad(ref, rs, d_out.double())
            assert_grads_close(grads, ref_grads, GPU_TOL[dtype], f"seed {SEED} shape {shape} training on tiles {qt} {kt}")
    finally:
        ops.set_poison_outputs(False)
    print(f"cutlass-fna explicit 128-token query tiles: {checked} (problem, tiles) checked (seed {SEED})")


def _prod(t) -> int:
    n = 1
    for x in t:
        n *= x
    return n


def test_fna_forward_noncontiguous_and_large_offsets():
    # Views with odd strides (a slice of a larger tensor) must be handled (copied or addressed).
    base = torch.randn(1, 40, 40, 6, 64, device="cuda", dtype=torch.float16)
    q, k, v = base[:, 3:35, 5:37, 0:2], base[:, 3:35, 5:37, 2:4], base[:, 3:35, 5:37, 4:6]
    out = natten.na2d(q, k, v, (7, 9), backend="cutlass-fna")
    ref, _ = na_oracle(q.double(), k.double(), v.double(), (7, 9))
    assert_close(out, ref, atol=1e-2, rtol=0, what="strided views")


def test_fna_forward_over_2_31_elements():
    # q/k/v of 2^31 + elements each (fp16: 4 GiB each): 64-bit offsets.
    q, k, v = qkv_over_2_31_elements(64)
    n = q.shape[1]
    out, lse = natten.na1d(q, k, v, 16, backend="cutlass-fna", return_lse=True)
    # spot-check rows at both ends of the 64-bit range
    check_window_rows_1d(q, k, v, out, lse, (0, n // 2, n - 1), 16)


def test_torch_compile_fullgraph_matches_eager():
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 19, 23, 4, 64, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(2, 19, 23, 2, 64, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(2, 19, 23, 2, 64, device="cuda", dtype=torch.float16, generator=g)

    def f(q, k, v):
        return natten.na2d(q, k, v, (5, 8), stride=(1, 2), dilation=(2, 1), is_causal=(False, True),
                           backend="cutlass-fna", return_lse=True)

    with torch.no_grad():
        ref_out, ref_lse = f(q, k, v)
        out, lse = torch.compile(f, fullgraph=True)(q, k, v)
    torch.testing.assert_close(out, ref_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=0, rtol=0)


def test_plan_cache_reuses_launch_on_new_tensors():
    # Repeated calls hit the cached call plan; each must use its own tensors' data.
    for seed in range(3):
        g = torch.Generator(device="cuda").manual_seed(seed)
        q = torch.randn(1, 33, 3, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, 33, 3, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, 33, 3, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        with torch.no_grad():
            out = natten.na1d(q, k, v, 7, stride=2, backend="cutlass-fna")
        ref, _ = na_oracle(q.double(), k.double(), v.double(), 7, 2)
        assert_close(out, ref, atol=5e-2, rtol=0, what=f"call {seed}")


# ---- slabs of a larger grid (global_shape, q_origin, kv_origin) -----------------------------------


def _region_problem(rng: random.Random):
    """A random NA problem on a global grid, a random query slab and a key slab that holds the
    query slab's keys (exactly, with a random margin, or the whole grid)."""
    rank = rng.choice([1, 2, 2, 3, 3])
    hi = {1: 256, 2: 24, 3: 10}[rank]
    shape = [rng.randint(2, hi) for _ in range(rank)]
    ks = [rng.randint(2, min(n, 13 if rank > 1 else 40)) for n in shape]
    dl = [rng.randint(1, max(1, n // k)) if rng.random() < 0.4 else 1 for n, k in zip(shape, ks)]
    st = [rng.randint(1, k) if rng.random() < 0.5 else 1 for k in ks]
    ca = [rng.random() < 0.3 for _ in ks]
    spec = WindowSpec(tuple(shape), tuple(ks), tuple(st), tuple(dl), tuple(ca))
    qo, qs, ko, kvs = random_slabs(rng, spec)
    hkv = rng.choice([1, 2, 3])
    h = hkv * rng.choice([1, 1, 2, 4])
    d = rng.choice([32, 64, 128, 256, 8 * rng.randint(1, 32)])
    dv = d if rng.random() < 0.6 else 8 * rng.randint(1, 32)
    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    b = rng.randint(1, 2)
    return spec, qo, qs, ko, kvs, b, h, hkv, d, dv, dtype


def _region_tensors(rng: random.Random, spec, qo, qs, ko, kvs, b, h, hkv, d, dv, dtype):
    """q/k/v of the slabs: views into tensors of the whole grid (in-place strided reads) or
    contiguous copies."""
    g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
    full = list(spec.shape)
    qg = torch.randn(b, *full, h, d, device="cuda", dtype=dtype, generator=g)
    kg = torch.randn(b, *full, hkv, d, device="cuda", dtype=dtype, generator=g)
    vg = torch.randn(b, *full, hkv, dv, device="cuda", dtype=dtype, generator=g)
    qsl = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(qo, qs))
    ksl = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(ko, kvs))
    q, k, v = qg[qsl], kg[ksl], vg[ksl]
    if rng.random() < 0.5:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return q, k, v


def test_fna_forward_region_random_sweep():
    """Query/key slabs of a larger grid against the float64 region oracle, outputs poisoned."""
    rng = random.Random(SEED + 1)
    ops.set_poison_outputs(True)
    failures = SweepFailures()
    checked = 0
    try:
        for case in range(NUM_REGION_PROBLEMS):
            spec, qo, qs, ko, kvs, b, h, hkv, d, dv, dtype = _region_problem(rng)
            q, k, v = _region_tensors(rng, spec, qo, qs, ko, kvs, b, h, hkv, d, dv, dtype)
            kw = dict(kernel_size=spec.kernel_size, stride=spec.stride, dilation=spec.dilation,
                      is_causal=spec.is_causal)
            desc = (f"region case {case} seed {SEED}: global={list(spec.shape)} q={qo}+{qs} kv={ko}+{kvs} "
                    f"kernel={list(spec.kernel_size)} stride={list(spec.stride)} dilation={list(spec.dilation)} "
                    f"causal={list(spec.is_causal)} B={b} H={h} Hkv={hkv} D={d} Dv={dv} {dtype} "
                    f"contiguous={q.is_contiguous()}")
            try:
                out, lse = OPS[len(qs)](q, k, v, **kw, backend="cutlass-fna", return_lse=True,
                                        global_shape=spec.shape, q_origin=qo, kv_origin=ko)
                ref_out, ref_lse = na_region_oracle(q.double(), k.double(), v.double(), spec.shape, qo, ko, **kw)
                tol = GPU_TOL[dtype]
                assert_close(out, ref_out, atol=tol, rtol=0, what=f"{desc} out")
                assert_close(lse, ref_lse, atol=tol, rtol=0, what=f"{desc} lse")
                checked += 1
            except (AssertionError, NotImplementedError, BackendNotSupportedError, ValueError, RuntimeError) as e:
                failures.add(f"{desc}: {type(e).__name__}: {e}")
            if failures.full:
                break
    finally:
        ops.set_poison_outputs(False)
    print(f"cutlass-fna region sweep: {checked} problems checked against the float64 oracle (seed {SEED})")
    failures.check()
    assert checked == NUM_REGION_PROBLEMS


def test_region_plan_cache_and_torch_compile():
    """Repeated slab calls (cached call plan, prepared launch) use each call's data; a compiled
    function with slabs equals eager."""
    global_shape, qo, ko = (30, 17), (9, 0), (5, 0)
    kw = dict(kernel_size=(7, 5), stride=(2, 1), dilation=(1, 3), is_causal=(False, True))
    spec = WindowSpec(global_shape, (7, 5), (2, 1), (1, 3), (False, True))
    (lo, hi), _ = key_range(spec, qo, (6, 17))
    assert ko[0] <= lo and hi <= 5 + 14
    for seed in range(3):
        g = torch.Generator(device="cuda").manual_seed(seed)
        q = torch.randn(2, 6, 17, 4, 64, device="cuda", dtype=torch.float16, generator=g)
        k = torch.randn(2, 14, 17, 2, 64, device="cuda", dtype=torch.float16, generator=g)
        v = torch.randn(2, 14, 17, 2, 32, device="cuda", dtype=torch.float16, generator=g)
        with torch.no_grad():
            out, lse = natten.na2d(q, k, v, **kw, backend="cutlass-fna", return_lse=True,
                                   global_shape=global_shape, q_origin=qo, kv_origin=ko)
        ref, ref_lse = na_region_oracle(q.double(), k.double(), v.double(), global_shape, qo, ko, **kw)
        assert out.shape == (2, 6, 17, 4, 32) and lse.shape == (2, 6, 17, 4)
        assert_close(out, ref, atol=1e-2, rtol=0, what=f"call {seed}")
        assert_close(lse, ref_lse, atol=1e-2, rtol=0, what=f"lse call {seed}")

    def f(q, k, v):
        return natten.na2d(q, k, v, **kw, backend="cutlass-fna", return_lse=True, global_shape=global_shape,
                           q_origin=qo, kv_origin=ko)

    with torch.no_grad():
        ref_out, ref_lse = f(q, k, v)
        out, lse = torch.compile(f, fullgraph=True)(q, k, v)
    torch.testing.assert_close(out, ref_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=0, rtol=0)


def test_region_rejects_uncovered_key_slab():
    """A key slab that misses keys is refused before any launch (Python check, same rule as the
    library's)."""
    q = torch.randn(1, 4, 2, 32, device="cuda", dtype=torch.float16)
    k = torch.randn(1, 5, 2, 32, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="does not cover the keys"):
        natten.na1d(q, k, k, 5, backend="cutlass-fna", global_shape=(20,), q_origin=(8,), kv_origin=(8,))
