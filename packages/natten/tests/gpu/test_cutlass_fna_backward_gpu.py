"""cutlass-fna fused backward on the GPU against autograd on the float64 oracle.

Fresh random problems every run (the seed is printed on failure; NATTEN_GPU_SEED fixes it,
NATTEN_GPU_BWD_SWEEP sets the count), gradient outputs poisoned with NaN before each launch so
unwritten elements show. Covers ranks 1-3, stride, dilation, per-axis causal, even kernels,
GQA/MQA, Dv != D, fp16/bf16, head dims 8-256, and the gradient through the logsumexp output.

Gradients are compared in absolute terms after scaling: the upstream gradients are drawn with
unit-order entries of the *result* (d_out ~ N(0, 1/Dv), d_lse ~ N(0, 1)), and the tolerance is
tol * max(1, max |reference gradient|), tol = 1e-2 (fp16) / 5e-2 (bf16) as for the forward.

Query/key slabs of a larger grid (natten-kernels ABI >= 1.2; NATTEN_GPU_BWD_REGION_SWEEP sets the
count): out, lse, dQ, dK, dV against the reference backend in float64 on the same region; the key
slab is exactly the query slab's key range, wider (keys no slab query attends: dK = dV = 0, written
over the NaN poison) or the whole axis. cutlass-fna has no float32 kernel, so fp16 / bf16 only.
"""

import os
import random
import re

import pytest
import torch

from helpers import SweepFailures, assert_close, assert_grads_close
from oracle import na_oracle

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import natten  # noqa: E402
from natten import _libnatten, ops  # noqa: E402
from natten.backends import BackendNotSupportedError  # noqa: E402

if not _libnatten.is_available():
    pytest.fail(f"natten-kernels is not loadable: {_libnatten.unavailable_reason()}", pytrace=False)
if not _libnatten.has_backward():
    pytest.fail(f"natten-kernels {_libnatten.abi_version()} has no fused backward (needs ABI 1.1)", pytrace=False)

NUM_PROBLEMS = int(os.environ.get("NATTEN_GPU_BWD_SWEEP", "1000"))  # per backend (#4 / #5: >= 1,000)
NUM_REGION_PROBLEMS = int(os.environ.get("NATTEN_GPU_BWD_REGION_SWEEP", "150"))
SEED = int(os.environ.get("NATTEN_GPU_SEED", str(random.SystemRandom().randrange(1 << 30))))
# Debugging a failure: NATTEN_GPU_ONLY_CASE=k runs only case k of a sweep (the earlier cases are
# still drawn, so the problem is the same for the same seed); NATTEN_GPU_VERBOSE=1 prints each case
# before it runs (with CUDA_LAUNCH_BLOCKING=1 the last line names a case whose kernel faults).
ONLY_CASE = int(os.environ.get("NATTEN_GPU_ONLY_CASE", "-1"))
VERBOSE = os.environ.get("NATTEN_GPU_VERBOSE", "0") not in ("", "0")
OPS = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}
GPU_TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4}  # fp32: CUDA-core kernels
DIMS = [32, 64, 128, 256, 40, 96, 160]

BACKENDS = ["cutlass-fna", "hopper-fna"]
HOPPER = torch.cuda.get_device_capability() == (9, 0)


def _backend_or_skip(backend: str) -> None:
    # hopper-fna trains with its sm_90a forward and the SM80 backward kernels: H100 / H200 only.
    if backend == "hopper-fna" and not HOPPER:
        pytest.skip("hopper-fna needs compute capability 9.0 (H100 / H200)")


def _for_hopper(shape, dl, dtype):
    """hopper-fna's limits on a drawn problem: float16 / bfloat16, dilated axes that are multiples of
    their dilation (the groups are folded into the batch)."""
    shape = [n - n % d for n, d in zip(shape, dl)]
    return shape, (dtype if dtype != torch.float32 else torch.float16)


def _problem(rng: random.Random):
    rank = rng.choice([1, 2, 2, 3, 3])
    hi = {1: 200, 2: 20, 3: 10}[rank]
    shape = [rng.randint(2, hi) for _ in range(rank)]
    ks = [rng.randint(2, n) for n in shape]
    if rng.random() < 0.3:  # even kernels
        ks = [k - (k % 2) if k > 2 else k for k in ks]
    dl = [rng.randint(1, max(1, n // k)) if rng.random() < 0.4 else 1 for n, k in zip(shape, ks)]
    st = [rng.randint(1, k) if rng.random() < 0.5 else 1 for k in ks]
    ca = [rng.random() < 0.3 for _ in ks]
    hkv = rng.choice([1, 2, 3])
    h = hkv * rng.choice([1, 1, 2, 4])
    d = rng.choice(DIMS + [8 * rng.randint(1, 32)])
    dv = d if rng.random() < 0.6 else rng.choice(DIMS + [8 * rng.randint(1, 32)])
    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    b = rng.randint(1, 2)
    with_lse_grad = rng.random() < 0.5
    return rank, shape, ks, st, dl, ca, b, h, hkv, d, dv, dtype, with_lse_grad


def _inputs(b, shape, h, hkv, d, dv, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, *shape, h, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b, *shape, hkv, dv, device="cuda", dtype=dtype, generator=g)
    d_out = (torch.randn(b, *shape, h, dv, device="cuda", dtype=torch.float32, generator=g) / dv**0.5).to(dtype)
    d_lse = torch.randn(b, *shape, h, device="cuda", dtype=torch.float32, generator=g)
    return q, k, v, d_out, d_lse


def _draw(rng: random.Random, backend: str, case: int):
    """A problem of the random sweeps (hopper-fna's limits applied), its tensors and a description:
    ((rank, kernel, stride, dilation, causal, dtype, lse_grad), (q, k, v, d_out, d_lse), desc)."""
    rank, shape, ks, st, dl, ca, b, h, hkv, d, dv, dtype, with_lse = _problem(rng)
    if backend == "hopper-fna":
        shape, dtype = _for_hopper(shape, dl, dtype)
    tensors = _inputs(b, shape, h, hkv, d, dv, dtype, rng.randrange(1 << 30))
    desc = (f"case {case} seed {SEED}: shape={shape} kernel={ks} stride={st} dilation={dl} "
            f"causal={ca} B={b} H={h} Hkv={hkv} D={d} Dv={dv} {dtype}")
    return (rank, ks, st, dl, ca, dtype, with_lse), tensors, desc


def _grads(fn, q, k, v, d_out, d_lse):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out, lse = fn(q, k, v)
    outs, grads = [out], [d_out.to(out.dtype)]
    if d_lse is not None:
        outs.append(lse)
        grads.append(d_lse.to(lse.dtype))
    dq, dk, dv = torch.autograd.grad(outs, (q, k, v), grads)
    return out, lse, dq, dk, dv


@pytest.mark.parametrize("backend", BACKENDS)
def test_fna_backward_random_sweep(backend):
    _backend_or_skip(backend)
    rng = random.Random(SEED + (0 if backend == "cutlass-fna" else 17))
    ops.set_poison_outputs(True)
    failures = SweepFailures()
    checked = 0
    try:
        for case in range(NUM_PROBLEMS):
            (rank, ks, st, dl, ca, dtype, with_lse), (q, k, v, d_out, d_lse), desc = _draw(rng, backend, case)
            desc += f" lse_grad={with_lse}"
            try:
                got = _grads(lambda q_, k_, v_: OPS[rank](q_, k_, v_, ks, st, dl, ca, backend=backend,
                                                          return_lse=True),
                             q, k, v, d_out, d_lse if with_lse else None)
                ref = _grads(lambda q_, k_, v_: na_oracle(q_, k_, v_, ks, st, dl, ca),
                             q.double(), k.double(), v.double(), d_out.double(),
                             d_lse.double() if with_lse else None)
                tol = GPU_TOL[dtype]
                assert_close(got[0], ref[0], atol=tol, rtol=0, what=f"{desc} out")
                assert_grads_close(got[2:], ref[2:], tol, desc)
                checked += 1
            except (NotImplementedError, BackendNotSupportedError) as e:
                failures.add(f"{desc}: unexpectedly unsupported: {e}")
            except AssertionError as e:
                failures.add(str(e))
            if failures.full:
                break
    finally:
        ops.set_poison_outputs(False)
    print(f"{backend} backward sweep: {checked} problems checked against the float64 oracle (seed {SEED})")
    failures.check()
    assert checked == NUM_PROBLEMS


@pytest.mark.parametrize(
    "rank, shape, ks, st, dl, ca, h, hkv, d, dv, dtype",
    [
        (1, [300], [13], [1], [1], [False], 4, 4, 64, 64, torch.float16),  # several kv tiles, masked + full
        (1, [257], [64], [4], [2], [True], 8, 1, 128, 64, torch.bfloat16),  # MQA, causal, stride, dilation
        (2, [33, 47], [8, 6], [2, 3], [2, 1], [False, True], 6, 2, 256, 256, torch.float16),  # hdim 256 split
        (2, [24, 24], [24, 24], [1, 1], [1, 1], [False, False], 2, 1, 32, 96, torch.bfloat16),  # full attention
        (3, [9, 10, 11], [3, 4, 5], [3, 1, 2], [2, 2, 1], [True, False, False], 4, 2, 40, 160, torch.float16),
        (2, [16, 16], [4, 4], [4, 4], [1, 1], [False, False], 3, 3, 8, 8, torch.float16),  # blocked, head dim 8
    ],
    ids=["1d", "1d_mqa_causal", "2d_hdim256", "2d_full", "3d_mixed", "2d_blocked_hd8"],
)
def test_fna_backward_fixed(rank, shape, ks, st, dl, ca, h, hkv, d, dv, dtype):
    q, k, v, d_out, d_lse = _inputs(2, shape, h, hkv, d, dv, dtype, 1234)
    ops.set_poison_outputs(True)
    try:
        got = _grads(lambda q_, k_, v_: OPS[rank](q_, k_, v_, ks, st, dl, ca, backend="cutlass-fna", return_lse=True),
                     q, k, v, d_out, d_lse)
    finally:
        ops.set_poison_outputs(False)
    ref = _grads(lambda q_, k_, v_: na_oracle(q_, k_, v_, ks, st, dl, ca),
                 q.double(), k.double(), v.double(), d_out.double(), d_lse.double())
    assert_grads_close(got[2:], ref[2:], GPU_TOL[dtype], f"{rank}d {shape}")


WALK_CASES = [
    # rank, shape, kernel, stride, causal, B, H, Hkv, D, dtype
    (1, [2048], [1024], [256], [False], 1, 2, 2, 128, torch.float16),  # stride groups: boxes on the key-tile grid
    (1, [1500], [333], [1], [False], 2, 2, 1, 64, torch.bfloat16),  # stride 1, GQA: boxes off the grid
    (2, [40, 52], [17, 23], [4, 1], [False, True], 1, 2, 2, 128, torch.bfloat16),  # rank 2, a causal axis
    (3, [12, 20, 28], [5, 7, 9], [2, 3, 1], [True, False, False], 1, 2, 2, 64, torch.float16),  # dynamic order
]


@pytest.mark.parametrize("case", range(len(WALK_CASES)))
def test_hopper_walk_orders_match_oracle(monkeypatch, case):
    """hopper-fna's key walks rotated on axis 0 (NATTEN_HOPPER_WALK=rotated, the default on launches of
    at most 8 rounds; forward and dQ kernels) and plain: outputs (poisoned first), LSE and dQ / dK /
    dV of both against float64, and against each other (the same values up to the summation order)."""
    backend = "hopper-fna"
    _backend_or_skip(backend)
    rank, shape, ks, st, ca, b, h, hkv, d, dtype = WALK_CASES[case]
    q, k, v, d_out, d_lse = _inputs(b, shape, h, hkv, d, d, dtype, 4321 + case)
    ref = _grads(lambda q_, k_, v_: na_oracle(q_, k_, v_, ks, st, 1, ca),
                 q.double(), k.double(), v.double(), d_out.double(), d_lse.double())
    tol = GPU_TOL[dtype]
    got = {}
    for walk in ("rotated", "plain"):
        monkeypatch.setenv("NATTEN_HOPPER_WALK", walk)
        ops.set_poison_outputs(True)
        try:
            got[walk] = _grads(lambda q_, k_, v_: OPS[rank](q_, k_, v_, ks, st, 1, ca, backend=backend,
                                                            return_lse=True), q, k, v, d_out, d_lse)
        finally:
            ops.set_poison_outputs(False)
        desc = (f"{backend} case {case} walk={walk}: shape={shape} kernel={ks} stride={st} causal={ca} H={h} "
                f"Hkv={hkv} {dtype}")
        assert_close(got[walk][0], ref[0], atol=tol, rtol=0, what=f"{desc} out")
        assert_close(got[walk][1], ref[1], atol=tol, rtol=0, what=f"{desc} lse")
        assert_grads_close(got[walk][2:], ref[2:], tol, desc)
    what = f"{backend} case {case}: rotated vs plain"
    assert_close(got["rotated"][0], got["plain"][0], atol=tol, rtol=0, what=f"{what} out")
    assert_grads_close(got["rotated"][2:], got["plain"][2:], tol, what)


def _dq_key_tile(fn, q, k, v, d_out):
    """The key tile (64 or 128 tokens) of the SM90 dQ kernel one backward of fn ran, from its name."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _grads(fn, q, k, v, d_out, None)
        torch.cuda.synchronize()
    names = {e.name for e in prof.events() if "bwd_dq_kernel" in e.name}
    assert len(names) == 1, f"expected one SM90 dQ kernel, got {names}"
    name = names.pop()  # ...DqTraits<T, head dim, key tile>..., demangled or mangled (ILi128ELi64EE)
    m = re.search(r"DqTraits<[^<>]*?,\s*128,\s*(64|128)>", name) or re.search(r"DqTraits.*?Li128ELi(64|128)E", name)
    assert m is not None, f"cannot read the key tile from {name}"
    return int(m.group(1))


DQ_KEY_TILE_CASES = [
    # rank, shape, kernel, stride, causal, automatic key tile of the dQ kernel at head dim 128
    (1, [4096], [1024], [256], [False], 128),  # windows on the tile grid: no mask, equal pairs
    (2, [96, 96], [48, 48], [16, 16], [False, False], 128),  # GNA-like: whole tiles
    (3, [30, 48, 80], [18, 24, 24], [1, 1, 1], [False] * 3, 64),  # hunyuan's windows: masked, more pairs at 128
    (3, [16, 44, 80], [8, 16, 16], [1, 1, 1], [True, False, False], 64),  # causal-video: mostly masked
]


@pytest.mark.parametrize("case", range(len(DQ_KEY_TILE_CASES)))
def test_hopper_dq_key_tile_rule(monkeypatch, case):
    """hopper-fna's dQ kernel takes 128-token key tiles at head dim 128 where they visit no more pairs
    and few masked ones (sm90/bwd_dq.cpp), else 64; NATTEN_HOPPER_BWD_DQ_KV forces either. Read from
    the launched kernel's name (torch.profiler); the gradients of both agree."""
    _backend_or_skip("hopper-fna")
    rank, shape, ks, st, ca, want = DQ_KEY_TILE_CASES[case]
    q, k, v, d_out, _ = _inputs(1, shape, 1, 1, 128, 128, torch.float16, 99 + case)
    fn = lambda q_, k_, v_: OPS[rank](q_, k_, v_, ks, st, 1, ca, backend="hopper-fna", return_lse=True)  # noqa: E731
    monkeypatch.delenv("NATTEN_HOPPER_BWD_DQ_KV", raising=False)
    assert _dq_key_tile(fn, q, k, v, d_out) == want, f"case {case}: automatic key tile"
    grads = {}
    for tile in (64, 128):
        monkeypatch.setenv("NATTEN_HOPPER_BWD_DQ_KV", str(tile))
        assert _dq_key_tile(fn, q, k, v, d_out) == tile, f"case {case}: forced {tile}"
        grads[tile] = _grads(fn, q, k, v, d_out, None)[2]
    assert_close(grads[128], grads[64], atol=1e-2 * max(1.0, float(grads[64].abs().max())), rtol=0,
                 what=f"case {case}: dq with 128- vs 64-token key tiles")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fna_backward_over_2_31_elements(backend):
    """64-bit offsets in the backward: q, k, v, out, d_out and the gradients of more than 2^31
    elements each (1-D, 8 heads, D 128, window 16, fp16; ~36 GiB in all), gradients poisoned.
    d_out is nonzero only on a few rows at both ends of the grid and in its middle, so the
    gradients are nonzero only within a window of them: there they must match float64 autograd
    on a 256-token slice around them (whose windows equal the grid's at those rows), and
    everywhere else they must be exactly 0 (written, not left poisoned)."""
    _backend_or_skip(backend)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.fail(f"needs ~40 GiB free GPU memory, has {free / 2**30:.1f}")
    h, d, w = 8, 128, 16
    n = (1 << 31) // (h * d) + 333
    g = torch.Generator(device="cuda").manual_seed(31)
    q, k, v = (torch.randn(1, n, h, d, device="cuda", dtype=torch.float16, generator=g) for _ in range(3))
    assert q.numel() > 2**31
    slices = [(0, 256), (n // 2 - 128, n // 2 + 128), (n - 256, n)]
    rows = [0, 1, 100, n // 2, n - 130, n - 2, n - 1]  # each >= 2 windows from any interior cut of a slice
    d_out = torch.zeros_like(q)
    d_out[:, rows] = torch.randn(1, len(rows), h, d, device="cuda", dtype=torch.float32, generator=g).half()
    ops.set_poison_outputs(True)
    try:
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = natten.na1d(*leaves, w, backend=backend)
        grads = torch.autograd.grad(out, leaves, d_out)
    finally:
        ops.set_poison_outputs(False)
    del out, leaves
    names = ("dq", "dk", "dv")
    inside = [0, 0, 0]
    for a, b in slices:
        x64 = [t[:, a:b].double().requires_grad_(True) for t in (q, k, v)]
        ref_out, _ = na_oracle(*x64, (w,))
        ref = torch.autograd.grad(ref_out, x64, d_out[:, a:b].double())
        for i, (name, got, want) in enumerate(zip(names, grads, ref)):
            scale = max(1.0, float(want.abs().max()))
            assert_close(got[:, a:b], want, atol=1e-2 * scale, rtol=0, what=f"{backend} {name} tokens [{a}, {b})")
            inside[i] += int((got[:, a:b] != 0).sum())
    for name, got, cnt in zip(names, grads, inside):
        assert bool(torch.isfinite(got).all()), f"{backend} {name}: non-finite (unwritten) elements"
        total = int((got != 0).sum())
        assert total == cnt and cnt > 0, f"{backend} {name}: {total - cnt} nonzero elements outside the rows' windows"


def test_fna_backward_strided_views():
    # q/k/v as views into one packed tensor (non-contiguous heads, odd head offsets).
    base = torch.randn(1, 30, 30, 6, 64, device="cuda", dtype=torch.float16)
    q, k, v = base[:, 2:28, 3:29, 0:2], base[:, 2:28, 3:29, 2:4], base[:, 2:28, 3:29, 4:6]
    d_out = torch.randn(1, 26, 26, 2, 64, device="cuda", dtype=torch.float16) / 8
    got = _grads(lambda a, b_, c: natten.na2d(a, b_, c, (7, 9), backend="cutlass-fna", return_lse=True),
                 q, k, v, d_out, None)
    ref = _grads(lambda a, b_, c: na_oracle(a, b_, c, (7, 9)), q.double(), k.double(), v.double(),
                 d_out.double(), None)
    assert_grads_close(got[2:], ref[2:], 1e-2, "strided views")


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepared_paths_unpoisoned(backend):
    """The sweeps poison outputs, which routes the prepared launchers' allocations through
    NaN-filled tensors; this runs the unpoisoned allocations (empty_like / empty, as in a user's
    process) on fresh random problems: a training step whose loss uses only the output (the
    prepared backward) and a forward without grad, each twice through the plan cache, equal to
    the poisoned run bit for bit and to the float64 oracle within tolerance."""
    _backend_or_skip(backend)
    rng = random.Random(SEED + (3 if backend == "cutlass-fna" else 29))
    checked = 0
    for case in range(12):
        (rank, ks, st, dl, ca, dtype, _), (q, k, v, d_out, _), desc = _draw(rng, backend, case)
        fn = lambda q_, k_, v_: OPS[rank](q_, k_, v_, ks, st, dl, ca, backend=backend, return_lse=True)  # noqa: E731
        runs = {}
        for poison in (False, True):
            ops.set_poison_outputs(poison)
            try:
                for _ in range(2):  # the second call runs the plan's prepared launcher
                    train = _grads(fn, q, k, v, d_out, None)
                    with torch.no_grad():
                        plain = fn(q, k, v)
            finally:
                ops.set_poison_outputs(False)
            runs[poison] = [*train, *plain]
        for name, a, c in zip(("out", "lse", "dq", "dk", "dv", "out (no grad)", "lse (no grad)"), runs[False],
                              runs[True]):
            assert torch.equal(a, c), f"{desc}: {name} differs between unpoisoned and poisoned runs"
        ref = _grads(lambda q_, k_, v_: na_oracle(q_, k_, v_, ks, st, dl, ca), q.double(), k.double(), v.double(),
                     d_out.double(), None)
        assert_close(runs[False][0], ref[0], atol=GPU_TOL[dtype], rtol=0, what=f"{desc} out")
        assert_grads_close(runs[False][2:5], ref[2:], GPU_TOL[dtype], desc)
        checked += 1
    assert checked == 12


@pytest.mark.parametrize("backend", BACKENDS)
def test_fna_backward_deterministic_bit_identical(backend):
    # GQA with many query heads per kv head and large windows: where an atomics-based reduction
    # would differ between runs. hopper-fna: dQ on the SM90 kernel on an H100 / H200.
    _backend_or_skip(backend)
    q, k, v, d_out, d_lse = _inputs(2, [40, 40], 8, 1, 64, 64, torch.bfloat16, 7)
    fn = lambda a, b_, c: natten.na2d(a, b_, c, (13, 13), stride=(2, 1), backend=backend,  # noqa: E731
                                      return_lse=True)
    natten.use_deterministic_algorithms(True)
    try:
        runs = [_grads(fn, q, k, v, d_out, d_lse)[2:] for _ in range(3)]
    finally:
        natten.use_deterministic_algorithms(False)
    runs.append(_grads(fn, q, k, v, d_out, d_lse)[2:])  # the default path: also deterministic here
    for r in runs[1:]:
        for a, b in zip(r, runs[0]):
            assert torch.equal(a, b), "backward is not bit-identical across runs"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fna_backward_kv_splits_bit_identical(dtype):
    """backward_kv_splits (KV parallelism of the dK / dV kernel, ABI >= 1.3) and
    use_kv_parallelism_in_fused_na(False) give bit-identical gradients to the default (one CTA per
    key tile); a split count past the key tiles of an axis is a clear error naming the bound."""
    if not _libnatten.supports_kv_splits():
        pytest.fail(f"the library under test (ABI {_libnatten.abi_version()}) has no kv_splits")
    shape, ks, dl, kt = [40, 44], (9, 7), (2, 1), (8, 8)
    # key tiles per axis of the dK / dV walk: ceil(largest dilation group / key tile)
    tiles = [-(-(-(-n // d)) // t) for n, d, t in zip(shape, dl, kt)]
    assert tiles == [3, 6]
    q, k, v, d_out, d_lse = _inputs(2, shape, 6, 2, 40, 72, dtype, 11)

    def grads(**kw):
        fn = lambda a, b_, c: natten.na2d(a, b_, c, ks, dilation=dl, is_causal=(True, False),  # noqa: E731
                                          backend="cutlass-fna", return_lse=True, backward_q_tile_shape=kt,
                                          backward_kv_tile_shape=kt, **kw)
        return _grads(fn, q, k, v, d_out, d_lse)[2:]

    ref = grads()
    runs = [grads(backward_kv_splits=s) for s in ((1, 1), (2, 3), (3, 6), (1, 5))]
    natten.use_kv_parallelism_in_fused_na(False)
    try:
        runs.append(grads())
    finally:
        natten.use_kv_parallelism_in_fused_na(True)
    for r in runs:
        for name, a, b in zip(("dq", "dk", "dv"), r, ref):
            assert torch.equal(a, b), f"{name} differs with kv_splits"
    oracle = _grads(lambda a, b_, c: na_oracle(a, b_, c, ks, (1, 1), dl, (True, False)), q.double(), k.double(),
                    v.double(), d_out.double(), d_lse.double())[2:]
    assert_grads_close(ref, oracle, GPU_TOL[dtype], f"kv_splits reference {dtype}")
    with pytest.raises(ValueError, match=r"kv_splits\[0\] is 4, but the dK / dV kernel has 3 key tiles along "
                                         r"axis 0 \(kv_tile\[0\] = 8\); use 1 to 3"):
        grads(backward_kv_splits=(4, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fna_backward_stages_bit_identical(dtype, monkeypatch):
    """The SM80 backward kernels' single-buffered (NATTEN_SM80_BWD_STAGES=1, A100's choice at head
    dim 128) and double-buffered (2, the choice on H100) pipelines run the same arithmetic in the
    same order, so their gradients must be bit-identical; both must match the float64 oracle. Fresh
    random problems (ranks 1-3, GQA, D != Dv, causal, stride, dilation, all head-dim buckets,
    several visits per key tile and several key tiles per query tile)."""
    rng = random.Random(SEED + 17)
    failures = SweepFailures()
    for case in range(12):
        rank, shape, ks, st, dl, ca, b, h, hkv, d, dv, _, with_lse_grad = _problem(rng)
        shape = [max(n, 2 * k) for n, k in zip(shape, ks)]  # several tiles per axis
        seed = rng.randrange(1 << 30)
        q, k, v, d_out, d_lse = _inputs(b, shape, h, hkv, d, dv, dtype, seed)
        d_lse = d_lse if with_lse_grad else None
        fn = lambda a, b_, c: OPS[rank](a, b_, c, ks, st, dl, ca, backend="cutlass-fna",  # noqa: E731
                                        return_lse=True)
        desc = (f"seed {SEED} case {case}: rank {rank} shape {shape} ks {ks} st {st} dl {dl} ca {ca} "
                f"b {b} h {h}/{hkv} d {d}/{dv} {dtype}: ")
        runs = {}
        for stages in ("1", "2"):
            monkeypatch.setenv("NATTEN_SM80_BWD_STAGES", stages)
            runs[stages] = _grads(fn, q, k, v, d_out, d_lse)[2:]
        monkeypatch.delenv("NATTEN_SM80_BWD_STAGES")
        with failures.case(desc):
            for name, a, c in zip(("dq", "dk", "dv"), runs["1"], runs["2"]):
                assert torch.equal(a, c), f"{name} differs between 1 and 2 stages"
            oracle = _grads(lambda a, b_, c: na_oracle(a, b_, c, ks, st, dl, ca), q.double(), k.double(),
                            v.double(), d_out.double(), None if d_lse is None else d_lse.double())[2:]
            assert_grads_close(runs["2"], oracle, GPU_TOL[dtype], desc)
    failures.check()


def test_fna_backward_torch_compile_training_step():
    g = torch.Generator(device="cuda").manual_seed(0)
    q0 = torch.randn(2, 19, 23, 4, 64, device="cuda", dtype=torch.float16, generator=g)
    k0 = torch.randn(2, 19, 23, 2, 64, device="cuda", dtype=torch.float16, generator=g)
    v0 = torch.randn(2, 19, 23, 2, 32, device="cuda", dtype=torch.float16, generator=g)
    w = (torch.randn(2, 19, 23, 4, 32, device="cuda", generator=g) / 8).to(torch.float16)
    wl = torch.randn(2, 19, 23, 4, device="cuda", generator=g)

    def loss_fn(q, k, v):
        out, lse = natten.na2d(q, k, v, (5, 8), stride=(1, 2), dilation=(2, 1), is_causal=(False, True),
                               backend="cutlass-fna", return_lse=True)
        return (out * w).float().sum() + (lse * wl).sum()

    def grads(fn):
        q, k, v = (t.clone().requires_grad_(True) for t in (q0, k0, v0))
        loss = fn(q, k, v)
        loss.backward()
        return loss.detach(), q.grad, k.grad, v.grad

    eager = grads(loss_fn)
    compiled = grads(torch.compile(loss_fn, fullgraph=True))
    for a, b in zip(compiled[1:], eager[1:]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-2, rtol=1e-3)  # reduction order may differ
    ref = _grads(lambda a, b_, c: na_oracle(a, b_, c, (5, 8), (1, 2), (2, 1), (False, True)),
                 q0.double(), k0.double(), v0.double(), w.double(), wl.double())
    assert_grads_close(eager[1:], ref[2:], 1e-2, "compiled training step")


def test_cutlass_fna_accepts_training_inputs():
    from natten.backends import cutlass

    q = torch.randn(1, 16, 16, 2, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    assert cutlass.can_run_fna(q, q, q, None) is None


# ---- slabs of a larger grid (natten-kernels ABI >= 1.2) -------------------------------------------


def _needs_backward_slabs():
    if not _libnatten.supports_backward_slabs():
        pytest.fail(f"natten-kernels {_libnatten.abi_version()} has no fused backward for slabs (needs ABI 1.2)",
                    pytrace=False)


def _region_problem(rng: random.Random, dilation: bool = True):
    """A random problem on a global grid, a random (uneven) query slab, and a key slab that is
    exactly the query slab's key range, wider than it, or the whole axis (dilation 1 everywhere
    unless `dilation`)."""
    from natten.window import WindowSpec, key_range

    rank = rng.choice([1, 2, 2, 3, 3])
    hi = {1: 200, 2: 22, 3: 10}[rank]
    shape = [rng.randint(2, hi) for _ in range(rank)]
    ks = [rng.randint(2, min(n, 13 if rank > 1 else 40)) for n in shape]
    if rng.random() < 0.3:  # even kernels
        ks = [k - (k % 2) if k > 2 else k for k in ks]
    dl = [rng.randint(1, max(1, n // k)) if rng.random() < 0.4 else 1 for n, k in zip(shape, ks)]
    if not dilation:
        dl = [1] * rank
    st = [rng.randint(1, k) if rng.random() < 0.5 else 1 for k in ks]
    ca = [rng.random() < 0.3 for _ in ks]
    spec = WindowSpec(tuple(shape), tuple(ks), tuple(st), tuple(dl), tuple(ca))
    qo, qs = [], []
    for n in shape:
        mode = rng.random()
        if mode < 0.15:  # the whole axis
            a, b = 0, n
        elif mode < 0.4:  # a thin slab (a few rows of a sequence / context-parallel split)
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 4))
        else:  # uneven: anywhere, any extent
            a = rng.randrange(n)
            b = rng.randint(a + 1, n)
        qo.append(a)
        qs.append(b - a)
    ko, kvs, kv_mode = [], [], []
    for (lo, end), n in zip(key_range(spec, qo, qs), shape):
        mode = rng.random()
        if mode < 0.15:
            lo, end, m = 0, n, "whole"
        elif mode < 0.55:
            lo, end, m = max(0, lo - rng.randint(0, 4)), min(n, end + rng.randint(0, 4)), "wider"
        else:
            m = "minimal"
        ko.append(lo)
        kvs.append(end - lo)
        kv_mode.append(m)
    hkv = rng.choice([1, 2, 3])
    h = hkv * rng.choice([1, 1, 2, 4])
    d = rng.choice(DIMS + [8 * rng.randint(1, 32)])
    dv = d if rng.random() < 0.6 else rng.choice(DIMS + [8 * rng.randint(1, 32)])
    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    b = rng.randint(1, 2)
    with_lse_grad = rng.random() < 0.5
    return spec, qo, qs, ko, kvs, kv_mode, b, h, hkv, d, dv, dtype, with_lse_grad


def _region_inputs(rng: random.Random, spec, qo, qs, ko, kvs, b, h, hkv, d, dv, dtype):
    """Whole-grid q/k/v, the slices of the query and key slabs, and the upstream gradients of the
    query slab."""
    g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
    full = list(spec.shape)
    qg = torch.randn(b, *full, h, d, device="cuda", dtype=dtype, generator=g)
    kg = torch.randn(b, *full, hkv, d, device="cuda", dtype=dtype, generator=g)
    vg = torch.randn(b, *full, hkv, dv, device="cuda", dtype=dtype, generator=g)
    qsl = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(qo, qs))
    ksl = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(ko, kvs))
    d_out = (torch.randn(b, *qs, h, dv, device="cuda", dtype=torch.float32, generator=g) / dv**0.5).to(dtype)
    d_lse = torch.randn(b, *qs, h, device="cuda", dtype=torch.float32, generator=g)
    return (qg, kg, vg), (qsl, ksl, ksl), d_out, d_lse


def _slab_grads(fn, whole, slices, d_out, d_lse, strided):
    """(out, lse, dq, dk, dv) of fn on the slabs. strided: q/k/v are views into the whole-grid
    tensors (the kernels read them in place, forward and backward); else contiguous copies."""
    if strided:
        leaves = [t.detach().requires_grad_(True) for t in whole]
        xs = [t[sl] for t, sl in zip(leaves, slices)]
    else:
        xs = [t[sl].detach().contiguous().requires_grad_(True) for t, sl in zip(whole, slices)]
    out, lse = fn(*xs)
    outs, grads = [out], [d_out.to(out.dtype)]
    if d_lse is not None:
        outs.append(lse)
        grads.append(d_lse.to(lse.dtype))
    return (out, lse, *torch.autograd.grad(outs, xs, grads))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fna_backward_region_random_sweep(backend):
    """Fused backward on query/key slabs against the float64 reference backend on the same region,
    gradient outputs poisoned with NaN. hopper-fna: its forward takes slabs with dilation 1 only, so
    its problems are drawn without dilation."""
    _needs_backward_slabs()
    _backend_or_skip(backend)
    rng = random.Random(SEED + (2 if backend == "cutlass-fna" else 19))
    ops.set_poison_outputs(True)
    failures = SweepFailures()
    checked = 0
    try:
        for case in range(NUM_REGION_PROBLEMS):
            spec, qo, qs, ko, kvs, kv_mode, b, h, hkv, d, dv, dtype, with_lse = _region_problem(
                rng, dilation=backend == "cutlass-fna")
            if backend == "hopper-fna" and dtype == torch.float32:
                dtype = torch.float16
            whole, slices, d_out, d_lse = _region_inputs(rng, spec, qo, qs, ko, kvs, b, h, hkv, d, dv, dtype)
            strided = rng.random() < 0.5
            kw = dict(kernel_size=spec.kernel_size, stride=spec.stride, dilation=spec.dilation,
                      is_causal=spec.is_causal, return_lse=True, global_shape=spec.shape, q_origin=qo,
                      kv_origin=ko)
            op = OPS[spec.rank]
            desc = (f"region case {case} seed {SEED}: global={list(spec.shape)} q={qo}+{qs} kv={ko}+{kvs} "
                    f"({','.join(kv_mode)}) kernel={list(spec.kernel_size)} stride={list(spec.stride)} "
                    f"dilation={list(spec.dilation)} causal={list(spec.is_causal)} B={b} H={h} Hkv={hkv} D={d} "
                    f"Dv={dv} {dtype} lse_grad={with_lse} strided={strided}")
            dl = d_lse if with_lse else None
            if ONLY_CASE >= 0 and case != ONLY_CASE:
                checked += 1
                continue
            if VERBOSE:
                print(desc, flush=True)
            try:
                got = _slab_grads(lambda q_, k_, v_: op(q_, k_, v_, backend=backend, **kw),
                                  whole, slices, d_out, dl, strided)
                ref = _slab_grads(lambda q_, k_, v_: op(q_, k_, v_, backend="reference", **kw),
                                  [t.double() for t in whole], slices, d_out.double(),
                                  None if dl is None else dl.double(), False)
                tol = GPU_TOL[dtype]
                assert_close(got[0], ref[0], atol=tol, rtol=0, what=f"{desc} out")
                assert_close(got[1], ref[1], atol=tol, rtol=0, what=f"{desc} lse")
                for name, t in zip(("dq", "dk", "dv"), got[2:]):
                    assert bool(torch.isfinite(t).all()), f"{desc} {name}: non-finite (unwritten?) elements"
                assert tuple(got[2].shape) == (b, *qs, h, d) and tuple(got[3].shape) == (b, *kvs, hkv, d)
                assert_grads_close(got[2:], ref[2:], tol, desc)
                checked += 1
            except (NotImplementedError, BackendNotSupportedError) as e:
                failures.add(f"{desc}: unexpectedly unsupported: {e}")
            except (AssertionError, ValueError, RuntimeError) as e:
                failures.add(f"{desc}: {type(e).__name__}: {e}")
            if failures.full:
                break
    finally:
        ops.set_poison_outputs(False)
    print(f"{backend} backward region sweep: {checked} problems checked against the float64 reference "
          f"backend (seed {SEED})")
    failures.check()
    assert checked == NUM_REGION_PROBLEMS


def test_fna_backward_region_equals_global_rows_and_compiles():
    """A slab whose key slab holds the whole grid: d_q equals the matching rows of the global
    problem's d_q when the upstream gradient is zero outside the slab; keys no slab query attends
    get exactly 0; a compiled training step on the slab equals eager bit for bit."""
    _needs_backward_slabs()
    glob, qo, qs = (40, 23), (17, 3), (9, 12)
    kw = dict(kernel_size=(7, 6), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
    g = torch.Generator(device="cuda").manual_seed(3)
    qg = torch.randn(2, *glob, 4, 64, device="cuda", dtype=torch.float16, generator=g)
    kg = torch.randn(2, *glob, 2, 64, device="cuda", dtype=torch.float16, generator=g)
    vg = torch.randn(2, *glob, 2, 32, device="cuda", dtype=torch.float16, generator=g)
    wg = torch.zeros(2, *glob, 4, 32, device="cuda", dtype=torch.float16)
    sl = (slice(None), slice(qo[0], qo[0] + qs[0]), slice(qo[1], qo[1] + qs[1]))
    wg[sl] = (torch.randn(2, *qs, 4, 32, device="cuda", generator=g) / 8).to(torch.float16)
    q = qg[sl].contiguous()

    def slab_loss(q_, k_, v_):
        out = natten.na2d(q_, k_, v_, **kw, backend="cutlass-fna", global_shape=glob, q_origin=qo, kv_origin=(0, 0))
        return (out * wg[sl]).float().sum()

    def global_loss(q_, k_, v_):
        return (natten.na2d(q_, k_, v_, **kw, backend="cutlass-fna") * wg).float().sum()

    def grads(fn, *xs):
        xs = [t.clone().requires_grad_(True) for t in xs]
        fn(*xs).backward()
        return [x.grad for x in xs]

    ops.set_poison_outputs(True)
    try:
        slab = grads(slab_loss, q, kg, vg)
        whole = grads(global_loss, qg, kg, vg)
        compiled = grads(torch.compile(slab_loss, fullgraph=True), q, kg, vg)
    finally:
        ops.set_poison_outputs(False)
    assert_close(slab[0], whole[0][sl], atol=1e-2, rtol=0, what="slab d_q vs global rows")
    assert_close(slab[1], whole[1], atol=1e-2, rtol=0, what="slab d_k vs global d_k")
    assert_close(slab[2], whole[2], atol=1e-2, rtol=0, what="slab d_v vs global d_v")
    assert slab[1][:, :8].abs().max() == 0 and slab[2][:, 30:].abs().max() == 0  # keys no slab query attends
    for a, b in zip(compiled, slab):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
