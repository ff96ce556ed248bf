"""hopper-fna (sm_90a TMA + wgmma forward) on an H100 / H200 against the float64 oracle.

Fixed cases per rank / dtype / head dim (extents that are not multiples of the tile, per-axis
causal, stride, even kernels, GQA/MQA, rank 3 with batch > 1 for the batch folded into X), a random
sweep with outputs poisoned (NaN) before each launch, every tile configuration of a rank, and the
fall-backs (grad, dilation, head dims). Seed printed on failure (NATTEN_GPU_SEED to replay).
"""

import math
import os
import random
import subprocess
import sys

import pytest
import torch

from helpers import (SweepFailures, assert_close, assert_grads_close, check_window_rows_1d, qkv_over_2_31_elements,
                     random_slabs)
from oracle import dense_attention, na_oracle, na_region_oracle

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
if torch.cuda.get_device_capability() != (9, 0):
    pytest.skip("hopper-fna needs compute capability 9.0 (H100 / H200)", allow_module_level=True)

import natten  # noqa: E402
from natten import _libnatten, ops  # noqa: E402
from natten.backends import hopper  # noqa: E402
from natten.window import WindowSpec  # noqa: E402

if not _libnatten.is_available():
    pytest.fail(f"natten-kernels is not loadable: {_libnatten.unavailable_reason()}", pytrace=False)
if _libnatten.fna_supports(torch.float16, 1, 64, device=torch.cuda.current_device(), backend="hopper-fna"):
    pytest.fail("the loaded natten-kernels has no usable hopper-fna (build it with NATTEN_CUDA_ARCHS including 90a)",
                pytrace=False)

NUM_PROBLEMS = int(os.environ.get("NATTEN_GPU_SWEEP", "1000"))  # per kernel schedule (#5: >= 1,000)
NUM_FMHA = int(os.environ.get("NATTEN_GPU_FMHA_SWEEP", "150"))
SEED = int(os.environ.get("NATTEN_GPU_SEED", str(random.SystemRandom().randrange(1 << 30))))
OPS = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}
GPU_TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


SCHEDULES = ["cooperative", "pingpong"]


def _check(shape, ks, st, ca, b, h, hkv, d, dtype, q_tile=None, kv_tile=None, seed=0, what="", schedule=None,
           scale=None, dilation=1, dv=None):
    rank = len(shape)
    dv = d if dv is None else dv
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, *shape, h, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b, *shape, hkv, dv, device="cuda", dtype=dtype, generator=g)
    ops.set_poison_outputs(True)
    try:
        out, lse = OPS[rank](q, k, v, ks, st, dilation, ca, backend="hopper-fna", return_lse=True,
                             q_tile_shape=q_tile, kv_tile_shape=kv_tile, kernel_schedule=schedule, scale=scale)
    finally:
        ops.set_poison_outputs(False)
    ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, dilation, ca, scale=scale)
    desc = (f"{what} shape={shape} kernel={ks} stride={st} dilation={dilation} causal={ca} B={b} H={h} "
            f"Hkv={hkv} D={d} Dv={dv} {dtype} "
            f"tiles={q_tile}/{kv_tile} schedule={schedule} scale={scale}")
    tol = GPU_TOL[dtype]
    assert_close(out, ref_out, atol=tol, rtol=0, what=f"{desc} out")
    assert_close(lse, ref_lse, atol=tol, rtol=0, what=f"{desc} lse")


FIXED = [
    # shape, kernel, stride, causal, B, H, Hkv, D
    ((128,), (7,), (1,), (False,), 1, 1, 1, 64),
    ((300,), (33,), (1,), (False,), 2, 2, 1, 128),
    ((1000,), (1000,), (1,), (True,), 1, 1, 1, 128),  # full causal self attention, 8 key tiles
    ((517,), (64,), (64,), (False,), 1, 3, 3, 64),  # blocked: every tile full or cut by the grid end
    ((37, 29), (7, 6), (1, 1), (False, False), 1, 2, 2, 64),  # even kernel, partial tiles
    ((40, 48), (9, 12), (2, 3), (True, False), 2, 4, 2, 128),  # causal x, stride, GQA
    ((64, 64), (64, 64), (1, 1), (False, True), 1, 4, 1, 64),  # MQA, whole-grid window
    ((10, 11, 13), (3, 4, 5), (1, 2, 1), (False, True, False), 2, 2, 1, 64),  # rank 3, batch folded
    ((9, 16, 16), (5, 8, 8), (1, 1, 1), (False, False, False), 3, 1, 1, 128),  # X not a tile multiple
    ((6, 20, 24), (3, 5, 6), (2, 4, 3), (True, True, True), 2, 2, 2, 64),
    ((300,), (33,), (1,), (True,), 2, 2, 1, 32),  # D 32: 64-byte swizzle, one head-dim chunk
    ((13, 11, 9), (5, 4, 3), (1, 2, 1), (False, True, False), 2, 4, 2, 32),
    # D 256: 64-token key tiles, no intra-warpgroup overlap
    ((300,), (33,), (1,), (True,), 2, 2, 1, 256),
    ((1000,), (1000,), (1,), (True,), 1, 1, 1, 256),
    ((37, 29), (7, 6), (2, 1), (False, True), 1, 2, 2, 256),
    ((6, 20, 24), (3, 5, 6), (2, 4, 3), (True, True, True), 2, 2, 2, 256),
    # head dims between the kernels: zero-filled by TMA up to 32 / 64 / 128 / 256
    ((300,), (33,), (1,), (False,), 2, 2, 1, 8),
    ((40, 48), (9, 12), (2, 3), (True, False), 2, 4, 2, 40),
    ((10, 11, 13), (3, 4, 5), (1, 2, 1), (False, True, False), 2, 2, 1, 96),
    ((517,), (64,), (64,), (False,), 1, 3, 3, 136),
    ((37, 29), (7, 6), (1, 1), (False, False), 1, 2, 2, 200),
]

# D != Dv (both zero-filled up to the kernel of the larger): shape, kernel, stride, causal, B, H,
# Hkv, D, Dv
UNEQUAL = [
    ((300,), (33,), (1,), (True,), 2, 2, 1, 128, 64),
    ((300,), (33,), (1,), (False,), 1, 2, 2, 32, 128),  # Q/K boxes past D: whole chunk zero-filled
    ((37, 29), (7, 6), (2, 1), (False, True), 2, 4, 2, 64, 256),
    ((10, 11, 13), (3, 4, 5), (1, 2, 1), (False, True, False), 2, 2, 1, 256, 96),
    ((40, 48), (9, 12), (2, 3), (True, False), 1, 2, 1, 48, 16),
]


@pytest.mark.parametrize("schedule", [None] + SCHEDULES, ids=["default"] + SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", FIXED, ids=[f"r{len(c[0])}-{'x'.join(map(str, c[0]))}-d{c[7]}" for c in FIXED])
def test_fixed_cases(case, dtype, schedule):
    shape, ks, st, ca, b, h, hkv, d = case
    _check(shape, ks, st, ca, b, h, hkv, d, dtype, seed=1, schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", UNEQUAL, ids=[f"d{c[7]}-dv{c[8]}-r{len(c[0])}" for c in UNEQUAL])
def test_unequal_head_dims(case, dtype, schedule):
    shape, ks, st, ca, b, h, hkv, d, dv = case
    assert hopper.can_run_fna(torch.empty(1, *shape, h, d, device="cuda", dtype=dtype),
                              torch.empty(1, *shape, hkv, d, device="cuda", dtype=dtype),
                              torch.empty(1, *shape, hkv, dv, device="cuda", dtype=dtype), None) is None
    _check(shape, ks, st, ca, b, h, hkv, d, dtype, seed=3, schedule=schedule, dv=dv)


# Short walks (1 and 2 key tiles: the software pipeline's prologue / epilogue only, and the
# ping-pong barrier counts with T = 1, 2) and a negative softmax scale (the kernel takes the row
# minimum of the raw scores then).
SHORT = [
    ((100,), (5,), (1,), (False,), 1, 2, 1, 128, None),   # 1 query tile, 1 key tile
    ((128,), (128,), (1,), (False,), 1, 1, 1, 64, None),  # 1 key tile, every key attended (full tile)
    ((256,), (3,), (1,), (False,), 2, 1, 1, 128, None),   # 2 query tiles, walks of 1-2 key tiles
    ((200,), (130,), (1,), (True,), 1, 1, 1, 64, None),   # causal, walks of 1-2 tiles
    ((16, 8), (3, 3), (1, 1), (False, False), 1, 1, 1, 128, None),  # 2-D, one tile each
    ((300,), (33,), (1,), (False,), 1, 2, 2, 128, -0.125),  # negative scale
    ((20, 24), (5, 7), (1, 2), (True, False), 1, 2, 1, 64, -0.3),
]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", SHORT, ids=[f"short{i}" for i in range(len(SHORT))])
def test_short_walks_and_negative_scale(case, schedule):
    shape, ks, st, ca, b, h, hkv, d, scale = case
    for dtype in (torch.float16, torch.bfloat16):
        _check(shape, ks, st, ca, b, h, hkv, d, dtype, seed=2, schedule=schedule, scale=scale)


# More work tiles than an H100 / H200 has SMs (132): the persistent CTAs run several work tiles
# each, reusing the one Q buffer and carrying the K/V ring positions from tile to tile; causal and
# border tiles make the key walks uneven, a one-tile walk (blocked, stride = window) releases Q
# after its only S GEMM.
PERSISTENT = [
    # shape, kernel, stride, causal, B, H, Hkv, D
    ((2048,), (255,), (1,), (True,), 2, 8, 2, 128),  # 16 query tiles x 16 = 256 work tiles
    ((4096,), (64,), (64,), (False,), 2, 8, 8, 64),  # 512 work tiles, one key tile each
    ((48, 48), (13, 17), (2, 1), (False, True), 1, 12, 4, 64),  # 18 x 12 = 216
    ((8, 16, 24), (3, 5, 7), (1, 1, 2), (True, False, False), 2, 4, 4, 128),  # 24 x 8 = 192
]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", PERSISTENT, ids=[f"p{i}" for i in range(len(PERSISTENT))])
def test_persistent_ctas_run_several_work_tiles(case, schedule):
    shape, ks, st, ca, b, h, hkv, d = case
    for dtype in (torch.float16, torch.bfloat16):
        _check(shape, ks, st, ca, b, h, hkv, d, dtype, seed=SEED + 5, what="persistent", schedule=schedule)


def _run_script_ok(script: str, timeout: float, env=None) -> None:
    """Runs ``script`` in a fresh Python process (for per-process settings, and so that a hang
    fails by ``timeout`` instead of stalling the suite) with the tests directory as its argv[1];
    it must exit 0 and print "ok" last."""
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", script, tests_dir], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stdout[-2000:], r.stderr[-4000:])


_ONE_CTA_SCRIPT = r"""
import sys, torch, natten
sys.path.insert(0, sys.argv[1])
from oracle import na_oracle
cases = [  # shape, kernel, stride, causal, B, H, Hkv, D, schedule
    ((512,), (3,), (1,), (False,), 1, 1, 1, 64, "cooperative"),
    ((512,), (64,), (64,), (False,), 1, 2, 1, 128, "pingpong"),  # one key tile per work tile
    ((300,), (130,), (1,), (True,), 2, 2, 2, 128, "cooperative"),
    ((20, 24), (5, 7), (1, 2), (True, False), 2, 3, 1, 64, "pingpong"),
    ((300,), (130,), (1,), (True,), 1, 3, 1, 64, "pingpong"),  # odd batch * heads: no head pairs
]
for shape, ks, st, ca, b, h, hkv, d, sched in cases:
    for dt, tol in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
        q = torch.randn(b, *shape, h, d, device="cuda", dtype=dt)
        k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dt)
        v = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dt)
        op = {1: natten.na1d, 2: natten.na2d}[len(shape)]
        out, lse = op(q, k, v, ks, st, 1, ca, backend="hopper-fna", return_lse=True, kernel_schedule=sched)
        ro, rl = na_oracle(q.double(), k.double(), v.double(), ks, st, 1, ca)
        err = max((out.double() - ro).abs().max().item(), (lse.double() - rl).abs().max().item())
        assert err <= tol, (shape, ks, st, ca, b, h, hkv, d, sched, dt, err)
print("ok")
"""


@pytest.mark.parametrize("order", ["static", "dynamic"])
def test_one_persistent_cta_runs_every_work_tile(order):
    """NATTEN_HOPPER_PERSISTENT=1 (read once per process, so in a subprocess): a single CTA walks
    every work tile of the problem - the Q handshake and the K/V ring positions carry across many
    work tiles, both schedules, uneven (causal) walks, with the static work order and the dynamic
    one (NATTEN_HOPPER_SCHEDULE: work counter, index published through shared memory). A hang
    fails by the timeout."""
    _run_script_ok(_ONE_CTA_SCRIPT, 120, dict(os.environ, NATTEN_HOPPER_PERSISTENT="1", NATTEN_HOPPER_SCHEDULE=order))


_SHORT_WALKS_SCRIPT = r"""
import sys, torch, natten
from natten import ops
sys.path.insert(0, sys.argv[1])
from oracle import na_oracle
cases = [  # shape, kernel, B, H, D, calls: thousands of work tiles of a few key tiles each
    ((56, 56), (7, 7), 64, 4, 32, 3),      # the suite's nat-small row (7,168 work tiles)
    ((64, 64), (13, 13), 16, 8, 64, 10),   # the suite's dilated row without its dilation
    ((2048,), (9,), 48, 4, 32, 3),          # 1-D: two key tiles per work tile
]
ops.set_poison_outputs(True)  # NaN-filled outputs: an unwritten tile shows
for shape, ks, b, h, d, calls in cases:
    for dt, tol in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
        for sched in ("pingpong", "cooperative"):
            q, k, v = (torch.randn(b, *shape, h, d, device="cuda", dtype=dt) for _ in range(3))
            op = {1: natten.na1d, 2: natten.na2d}[len(shape)]
            for _ in range(calls):  # back to back: later calls start while earlier CTAs drain
                out, lse = op(q, k, v, ks, backend="hopper-fna", return_lse=True, kernel_schedule=sched)
            torch.cuda.synchronize()
            assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(lse).all()), (shape, dt, sched, "unwritten")
            for i in (0, b // 2, b - 1):  # batch entries are independent problems
                ro, rl = na_oracle(q[i:i + 1].double(), k[i:i + 1].double(), v[i:i + 1].double(), ks)
                err = max((out[i:i + 1].double() - ro).abs().max().item(), (lse[i:i + 1].double() - rl).abs().max().item())
                assert err <= tol, (shape, ks, b, h, d, dt, sched, i, err)
print("ok")
"""


def test_many_short_walks_per_cta_terminate():
    """Persistent CTAs of thousands of work tiles with short key walks at head dims 32 and 64, with
    the default (pingpong) and cooperative schedules, several calls back to back: the ping-pong turn
    barriers must stay matched across a CTA's work tiles (until 2026-11-29 the consumer warpgroup
    that finished a tile first could complete the other's turn barrier twice, and this hung: the
    benchmark suite's nat-small row on every call). In a subprocess, so that a hang fails by the
    timeout; outputs poisoned, three batch entries of each against the float64 oracle."""
    _run_script_ok(_SHORT_WALKS_SCRIPT, 150)


DYNAMIC_CASES = [  # shape, kernel, stride, causal, B, H, Hkv, D: more work tiles than SMs (132 on an H100)
    ((2000,), (300,), (1,), (True,), 2, 8, 2, 128),           # 2 x 8 x 16 = 256 work tiles, causal
    ((2000,), (129,), (7,), (False,), 2, 8, 8, 64),           # non-causal, stride
    ((40, 48), (9, 11), (1, 2), (True, False), 2, 8, 4, 128),  # causal x: reversed query-tile order
    ((12, 16, 20), (5, 7, 6), (1, 1, 2), (False, True, True), 2, 6, 3, 64),
    ((1500,), (1500,), (1,), (True,), 3, 8, 1, 256),         # dense causal, head dim 256
    ((700,), (200,), (1,), (True,), 1, 5, 5, 64),            # odd batch * heads (no head pairs), 30 tiles
]


@pytest.mark.parametrize("sched", SCHEDULES)
@pytest.mark.parametrize("case", range(len(DYNAMIC_CASES)))
def test_dynamic_work_order_is_exact(monkeypatch, case, sched):
    """The forward's dynamic work order (natten-kernels >= 1.3.4: tiles from a zeroed global counter,
    query tiles of causal axes in descending order, two (batch, head) pairs interleaved when their
    count is even; automatic on causal problems with more work
    tiles than SMs, NATTEN_HOPPER_SCHEDULE=static / dynamic read per call) computes every tile
    exactly as the static order does: the outputs are bit-identical, and match float64."""
    shape, ks, st, ca, b, h, hkv, d = DYNAMIC_CASES[case]
    # Bitwise comparison of the two work orders: the static order's split tail (whose merge adds in
    # another order) is tested on its own below.
    monkeypatch.setenv("NATTEN_HOPPER_SPLIT_TAIL", "0")
    g = torch.Generator(device="cuda").manual_seed(SEED + case)  # fresh inputs each run (seed printed on failure)
    q = torch.randn(b, *shape, h, d, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(b, *shape, hkv, d, device="cuda", dtype=torch.float16, generator=g)
    outs = {}
    for order in ("static", "dynamic", None):
        if order is None:
            monkeypatch.delenv("NATTEN_HOPPER_SCHEDULE", raising=False)
        else:
            monkeypatch.setenv("NATTEN_HOPPER_SCHEDULE", order)
        ops.set_poison_outputs(True)
        try:
            outs[order] = OPS[len(shape)](q, k, v, ks, st, 1, ca, backend="hopper-fna", return_lse=True,
                                          kernel_schedule=sched)
        finally:
            ops.set_poison_outputs(False)
    ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, 1, ca)
    assert_close(outs["dynamic"][0], ref_out, atol=1e-2, rtol=0, what=f"dynamic case {case} seed {SEED} out")
    assert_close(outs["dynamic"][1], ref_lse, atol=1e-2, rtol=0, what=f"dynamic case {case} seed {SEED} lse")
    for order in ("dynamic", None):
        assert torch.equal(outs[order][0], outs["static"][0]), f"case {case} {order}: out differs from static"
        assert torch.equal(outs[order][1], outs["static"][1]), f"case {case} {order}: lse differs from static"


SPLIT_CASES = [  # shape, kernel, stride, causal, Hkv per H, D, Dv, q tile, kv tile, B, dtype
    ((1280,), (1280,), (1,), (False,), 1, 128, 128, (128,), (128,), 1, torch.bfloat16),  # dense, 10 key tiles
    ((4000,), (1025,), (3,), (False,), 2, 64, 48, (128,), (128,), 1, torch.float16),  # stride, GQA, Dv < D
    ((1500,), (700,), (1,), (False,), 1, 256, 256, (128,), (64,), 1, torch.float16),  # head dim 256: 64-key tiles
    ((96, 100), (45, 37), (2, 1), (False, False), 1, 32, 32, (8, 16), (16, 8), 1, torch.bfloat16),
    ((20, 24, 28), (9, 11, 13), (1, 2, 1), (False, False, False), 1, 128, 96, (2, 8, 8), (4, 4, 8), 2,
     torch.float16),  # rank 3, batch folded into X
]


def _split_heads(tiles_per_head: int, batch: int, sms: int, kv_group: int) -> int:
    """Smallest head count (a multiple of kv_group) whose work-tile count exceeds the SM count by a
    remainder of at most a quarter of the SMs (the split tail's domain)."""
    for h in range(kv_group, 64 * kv_group, kv_group):
        n = batch * h * tiles_per_head
        if n > sms and 0 < n % sms <= sms // 4:
            return h
    raise AssertionError(f"no head count gives a split tail for {tiles_per_head} tiles per head")


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", range(len(SPLIT_CASES)))
def test_split_tail_matches_oracle(monkeypatch, case, schedule):
    """The static work order's split tail (natten-kernels >= 1.3.7): with T = F G + r work tiles on
    G persistent CTAs (F >= 1, small r), the last round's r tiles are cut into key-walk chunks whose
    fp32 partials a combine kernel merges. The combine kernel must have run (torch.profiler), and
    the outputs (poisoned before each launch) match float64 and the unsplit launch
    (NATTEN_HOPPER_SPLIT_TAIL=0), and are bit-identical across runs."""
    shape, ks, st, ca, kv_group, d, dv, qt, kt, b, dtype = SPLIT_CASES[case]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tph = math.prod(-(-n // t) for n, t in zip(shape, qt))
    h = _split_heads(tph, b, sms, kv_group)
    hkv = h // kv_group
    g = torch.Generator(device="cuda").manual_seed(SEED + 31 * case)
    q = torch.randn(b, *shape, h, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b, *shape, hkv, dv, device="cuda", dtype=dtype, generator=g)
    op = OPS[len(shape)]

    def run(split: bool, profile: bool = False):
        monkeypatch.setenv("NATTEN_HOPPER_SPLIT_TAIL", "1" if split else "0")
        ops.set_poison_outputs(True)
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                res = op(q, k, v, ks, st, 1, ca, backend="hopper-fna", return_lse=True, q_tile_shape=qt,
                         kv_tile_shape=kt, kernel_schedule=schedule)
                torch.cuda.synchronize()
        finally:
            ops.set_poison_outputs(False)
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return res, names

    (out, lse), names = run(True)
    desc = f"case {case} seed {SEED}: shape={shape} H={h} Hkv={hkv} B={b} D={d} Dv={dv} {dtype} {schedule}"
    assert any("split_combine" in n for n in names), f"{desc}: no combine kernel ran ({sorted(set(names))})"
    ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, 1, ca)
    assert_close(out, ref_out, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} out")
    assert_close(lse, ref_lse, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} lse")
    (out2, lse2), _ = run(True)
    assert torch.equal(out, out2) and torch.equal(lse, lse2), f"{desc}: split results differ between runs"
    (out0, lse0), names0 = run(False)
    assert not any("split_combine" in n for n in names0), f"{desc}: NATTEN_HOPPER_SPLIT_TAIL=0 still split"
    assert_close(out, out0, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} split vs unsplit out")
    assert_close(lse, lse0, atol=1e-3, rtol=0, what=f"{desc} split vs unsplit lse")


CLUSTER_CASES = [  # shape, kernel, stride, causal, B, H, Hkv, D, Dv, q tile, kv tile, dtype
    # 2-D grouped (flux-4k-gna's tiling): pairs on axis 0 (8-row tiles in 16-row stride groups), 384 tiles
    ((64, 64), (40, 40), (16, 16), (False, False), 1, 12, 12, 128, 128, (8, 16), (8, 16), torch.float16),
    # 1-D stride 256 (1d-32k-s256's shape, smaller), GQA, batch 2: 512 tiles
    ((4096,), (1024,), (256,), (False,), 2, 8, 2, 128, 128, (128,), (128,), torch.bfloat16),
    # partial groups and tiles (48 x 80, stride 16 x 8), Dv 96 < D: pairs on axis 0 only
    ((48, 80), (24, 40), (16, 8), (False, False), 1, 6, 3, 128, 96, (8, 16), (8, 16), torch.float16),
    # rank 3 with batch 2 (folded into X): pairs on axis 0 (2-deep tiles in 4-deep groups)
    ((8, 16, 16), (4, 8, 8), (4, 8, 8), (False, False, False), 2, 4, 4, 128, 128, (2, 8, 8), (2, 8, 8),
     torch.bfloat16),
    # causal axis (not the pairs' axis) with the static order forced
    ((64, 48), (32, 16), (16, 16), (False, True), 1, 8, 8, 128, 128, (8, 16), (8, 16), torch.float16),
    # H None: the head count that gives the launch a split tail (_split_heads): pairs, then each CTA's
    # chunk item unpaired
    ((64, 64), (40, 40), (16, 16), (False, False), 1, None, None, 128, 128, (8, 16), (8, 16), torch.bfloat16),
    ((2048,), (1024,), (256,), (False,), 1, None, None, 128, 64, (128,), (128,), torch.float16),
]


def _is_cluster_kernel(name: str) -> bool:
    """The forward kernel's last template flag (kCluster) from its demangled name."""
    return name.split("(")[0].strip().rstrip(">").split(",")[-1].strip() == "true"


def _forward_kernels(fn, combine: bool = False):
    """fn()'s result and the names of the forward kernels it ran (with combine: and the split tail's
    combine kernels)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        res = fn()
        torch.cuda.synchronize()
    keys = ("fna_sm90_forward_kernel", "split_combine") if combine else ("fna_sm90_forward_kernel",)
    return res, [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                 and any(k in e.name for k in keys)]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", range(len(CLUSTER_CASES)))
def test_cluster_pairs_match_oracle(monkeypatch, case, schedule):
    """Cluster pairs (NATTEN_HOPPER_CLUSTER=1 runs them wherever they fit; read per call): two CTAs
    of a cluster run query tiles 2 j and 2 j + 1 of one axis, which walk the same key tiles, and
    share every K / V load by TMA multicast; with a split tail each CTA then runs its chunk item
    unpaired. The cluster kernel must have run (its last template flag; the combine kernel too where
    the launch splits), and its outputs (poisoned first) match float64 and the plain kernel's
    (NATTEN_HOPPER_CLUSTER=0): bit for bit where both run the same tiles whole."""
    shape, ks, st, ca, b, h, hkv, d, dv, qt, kt, dtype = CLUSTER_CASES[case]
    split = h is None
    if split:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        h = hkv = _split_heads(math.prod(-(-n // t) for n, t in zip(shape, qt)), b, sms, 1)
    monkeypatch.setenv("NATTEN_HOPPER_SCHEDULE", "static")
    g = torch.Generator(device="cuda").manual_seed(SEED + 47 * case)
    q = torch.randn(b, *shape, h, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b, *shape, hkv, dv, device="cuda", dtype=dtype, generator=g)
    op = OPS[len(shape)]

    def run(cluster: bool):
        monkeypatch.setenv("NATTEN_HOPPER_CLUSTER", "1" if cluster else "0")
        ops.set_poison_outputs(True)
        try:
            return _forward_kernels(lambda: op(q, k, v, ks, st, 1, ca, backend="hopper-fna", return_lse=True,
                                               q_tile_shape=qt, kv_tile_shape=kt, kernel_schedule=schedule),
                                    combine=True)
        finally:
            ops.set_poison_outputs(False)

    desc = f"case {case} seed {SEED}: shape={shape} k={ks} s={st} H={h} Hkv={hkv} B={b} Dv={dv} {dtype} {schedule}"
    (out, lse), names = run(True)
    fwd = [n for n in names if "split_combine" not in n]
    assert fwd and all(_is_cluster_kernel(n) for n in fwd), f"{desc}: the cluster kernel did not run ({names})"
    did_split = any("split_combine" in n for n in names)
    assert did_split or not split, f"{desc}: no split tail ({names})"
    ref_out, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, 1, ca)
    assert_close(out, ref_out, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} out")
    assert_close(lse, ref_lse, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} lse")
    (out0, lse0), names0 = run(False)
    assert names0 and not any(_is_cluster_kernel(n) for n in names0 if "split_combine" not in n), \
        f"{desc}: NATTEN_HOPPER_CLUSTER=0 still ran the cluster kernel"
    assert any("split_combine" in n for n in names0) == did_split, f"{desc}: the split differs ({names0})"
    if not did_split or len(shape) == 1:
        # The same tiles whole and the same tail chunks (1-D pairs are consecutive tiles): same bits.
        assert torch.equal(out, out0) and torch.equal(lse, lse0), f"{desc}: cluster and plain kernels differ"
    else:
        # The tail is the last pairs' tiles (ordered_tile), not the last tiles: other tiles run in
        # chunks, so the two agree as split and unsplit results do (test_split_tail_matches_oracle).
        assert_close(out, out0, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} cluster vs plain out")
        assert_close(lse, lse0, atol=1e-3, rtol=0, what=f"{desc} cluster vs plain lse")


def test_cluster_pairs_skip_problems_without_equal_walks(monkeypatch):
    """Stride 1 (neighbouring query tiles walk shifted windows) and odd tile counts never pair."""
    monkeypatch.setenv("NATTEN_HOPPER_CLUSTER", "1")
    monkeypatch.setenv("NATTEN_HOPPER_SCHEDULE", "static")
    for shape, ks, st, qt in (((64, 64), (17, 17), (1, 1), (8, 16)), ((640,), (256,), (128,), (128,))):
        q = torch.randn(1, *shape, 4, 128, device="cuda", dtype=torch.float16)
        (out, ), names = _forward_kernels(lambda: (OPS[len(shape)](q, q, q, ks, st, backend="hopper-fna",
                                                                   q_tile_shape=qt, kv_tile_shape=qt), ))
        assert names and not any(_is_cluster_kernel(n) for n in names), \
            f"{shape} {ks} {st}: paired without equal walks ({names})"
        ref, _ = na_oracle(q.double(), q.double(), q.double(), ks, st, 1, (False,) * len(shape))
        assert_close(out, ref, atol=1e-2, rtol=0, what=f"{shape} {ks} {st}")


def test_unknown_schedule_is_refused():
    q = torch.randn(1, 64, 1, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="kernel_schedule"):
        natten.na1d(q, q, q, 7, backend="hopper-fna", kernel_schedule="bogus")


def _problem(rng: random.Random):
    rank = rng.choice([1, 2, 2, 3, 3])
    hi = {1: 600, 2: 40, 3: 14}[rank]
    shape = [rng.randint(2, hi) for _ in range(rank)]
    ks = [rng.randint(2, n) for n in shape]
    st = [rng.randint(1, k) if rng.random() < 0.5 else 1 for k in ks]
    ca = [rng.random() < 0.3 for _ in ks]
    hkv = rng.choice([1, 2, 3])
    h = hkv * rng.choice([1, 1, 2, 4])
    d = _head_dim(rng)
    dv = d if rng.random() < 0.7 else _head_dim(rng)
    dtype = rng.choice([torch.float16, torch.bfloat16])
    b = rng.randint(1, 3)
    return shape, ks, st, ca, b, h, hkv, d, dv, dtype


def _head_dim(rng: random.Random) -> int:
    """The kernels' head dims, or any multiple of 8 up to 256 (zero-filled up to the next kernel)."""
    return rng.choice([32, 64, 128, 256, 8 * rng.randint(1, 32)])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_random_sweep(schedule):
    rng = random.Random(SEED + (0 if schedule == "cooperative" else 1))
    failures = SweepFailures()
    for case in range(NUM_PROBLEMS):
        shape, ks, st, ca, b, h, hkv, d, dv, dtype = _problem(rng)
        tiles = (None, None)
        if rng.random() < 0.3:
            configs = natten.get_configs_for_cutlass_hopper_fna(
                torch.empty(1, *shape, 1, d, device="cuda", dtype=dtype),
                torch.empty(1, *shape, 1, d, device="cuda", dtype=dtype),
                torch.empty(1, *shape, 1, dv, device="cuda", dtype=dtype))
            tiles = rng.choice(configs)
        with failures.case():
            _check(shape, ks, st, ca, b, h, hkv, d, dtype, tiles[0], tiles[1], seed=rng.randrange(1 << 30),
                   what=f"case {case} seed {SEED}", schedule=schedule, dv=dv)
        if failures.full:
            break
    failures.check()


@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_every_tile_config_runs(rank, d):
    shape = {1: (300,), 2: (37, 29), 3: (11, 9, 13)}[rank]
    ks = {1: (31,), 2: (7, 6), 3: (3, 4, 5)}[rank]
    q = torch.empty(1, *shape, 1, d, device="cuda", dtype=torch.float16)
    configs = natten.get_configs_for_cutlass_hopper_fna(q, q, q)
    # 128-token query boxes; key boxes of 128 tokens, or 64 at head dim 256
    assert len(configs) == ({1: 1, 2: 64, 3: 1296} if d <= 128 else {1: 1, 2: 56, 3: 1008})[rank]
    assert all(math.prod(kt) == (128 if d <= 128 else 64) and math.prod(qt) == 128 for qt, kt in configs)
    rng = random.Random(SEED)
    # rank 3 has 1296 (1008) pairs: all query shapes with a random key shape each, plus the pairs
    # with the key box inside the query box.
    if rank == 3:
        shapes = sorted({qt for qt, _ in configs})
        kshapes = sorted({kt for _, kt in configs})
        inside = [(qt, kt) for qt in shapes for kt in kshapes if all(b <= a for a, b in zip(qt, kt))]
        configs = [rng.choice([c for c in inside if c[0] == qt]) for qt in shapes] + [
            (qt, rng.choice(kshapes)) for qt in shapes]
    for qt, kt in configs:
        _check(shape, ks, (1,) * rank, (False,) * rank, 2, 1, 1, d, torch.float16, qt, kt, seed=7)


def test_default_tiles_match_an_explicit_config():
    shape, ks = (30, 48, 40), (9, 12, 12)
    q = torch.randn(1, *shape, 2, 128, device="cuda", dtype=torch.float16)
    a = natten.na3d(q, q, q, ks, backend="hopper-fna")
    configs = natten.get_configs_for_cutlass_hopper_fna(q, q, q)
    b = natten.na3d(q, q, q, ks, backend="hopper-fna", q_tile_shape=configs[0][0], kv_tile_shape=configs[0][1])
    ref = natten.na3d(q, q, q, ks, backend="cutlass-fna")
    assert_close(a, ref, atol=1e-2, rtol=0, what="default tiles vs cutlass-fna")
    assert_close(b, ref, atol=1e-2, rtol=0, what="explicit tiles vs cutlass-fna")


def test_reasons_and_fallback():
    q = torch.randn(1, 16, 16, 2, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    spec = natten.window.WindowSpec((16, 16), (5, 5), (1, 1), (1, 1), (False, False))
    # training: the Hopper forward, the SM80 backward kernels (test_cutlass_fna_backward_gpu.py
    # sweeps it against the float64 oracle); the automatic choice takes it for head dims > 32
    assert hopper.can_run_fna(q, q, q, spec) is None
    assert natten.backends.choose_fna_backend(None, q, q, q, spec, False)[0] == "hopper-fna"
    out = natten.na2d(q, q, q, 5)
    out.float().sum().backward()
    g_auto = q.grad.clone()
    q.grad = None
    natten.na2d(q, q, q, 5, backend="cutlass-fna").float().sum().backward()
    assert_close(g_auto, q.grad, atol=2e-2, rtol=0, what="dq: hopper-fna forward + SM80 backward vs cutlass-fna")
    x = q.detach()
    # dilation runs when every dilated axis splits into equal groups (16 / 2); 15 / 2 does not
    assert hopper.can_run_fna(x, x, x, natten.window.WindowSpec((16, 16), (5, 5), (1, 1), (2, 1),
                                                                (False, False))) is None
    x15 = x[:, :15]
    assert "multiple of its dilation" in hopper.can_run_fna(
        x15, x15, x15, natten.window.WindowSpec((15, 16), (5, 5), (1, 1), (2, 1), (False, False)))
    y = torch.randn(1, 16, 16, 2, 264, device="cuda", dtype=torch.float16)
    assert "multiples of 8 up to 256" in hopper.can_run_fna(y, y, y, spec)
    v64 = torch.randn(1, 16, 16, 2, 64, device="cuda", dtype=torch.float16)
    q32 = torch.randn(1, 16, 16, 2, 32, device="cuda", dtype=torch.float16)
    assert hopper.can_run_fna(q32, q32, v64, spec) is None  # D != Dv: the 64 kernel, Q/K zero-filled
    ref, _ = na_oracle(q32.double(), q32.double(), v64.double(), (5, 5))
    for backend in (None, "hopper-fna"):
        out = natten.na2d(q32, q32, v64, 5, backend=backend)
        assert_close(out, ref, atol=1e-2, rtol=0, what=f"D 32 / Dv 64 on {backend}")
    q24 = torch.randn(1, 16, 16, 2, 24, device="cuda", dtype=torch.float16)
    assert "head dim <= 32" in hopper.auto_reason(q24, q24, q24, spec)
    assert hopper.auto_reason(q32, q32, v64, spec) is None
    assert hopper.can_run_fna(q32, q32, q32, spec) is None
    assert hopper.can_run_fna(x, x, x, spec) is None


def test_noncontiguous_rank3_batch_is_copied_for_folding():
    base = torch.randn(2, 7, 10, 9, 2, 128, device="cuda", dtype=torch.float16)
    q = base[:, :, 1:9]  # batch stride != X * x stride
    out = natten.na3d(q, q, q, (3, 3, 3), backend="hopper-fna")
    ref = natten.na3d(q, q, q, (3, 3, 3), backend="cutlass-fna")
    assert_close(out, ref, atol=1e-2, rtol=0, what="strided rank 3")


def _random_dense_problem(rng: random.Random, max_keys: int, q_multiples, max_batch: int):
    """A random hopper-fmha problem ``(nq, nk, causal, h, hkv, d, dv, dtype, b)``: N_kv up to
    ``max_keys``; N_q a multiple of N_kv (from ``q_multiples``) or, three times in ten, any length up
    to ``max(q_multiples)`` N_kv (query slabs); GQA / MQA; head dims as ``_head_dim``, D != Dv three
    times in ten; batch up to ``max_batch``."""
    nk = rng.choice([rng.randint(2, 300), rng.randint(300, max_keys)])
    nq = nk * rng.choice(q_multiples) if rng.random() < 0.7 else rng.randint(1, max(q_multiples) * nk)
    causal = rng.random() < 0.5
    hkv = rng.choice([1, 2])
    h = hkv * rng.choice([1, 2, 3])
    d = _head_dim(rng)
    dv = d if rng.random() < 0.7 else _head_dim(rng)
    dtype = rng.choice([torch.float16, torch.bfloat16])
    return nq, nk, causal, h, hkv, d, dv, dtype, rng.randint(1, max_batch)


def test_hopper_fmha_random_sweep():
    """natten.attention on hopper-fmha (the hopper-fna kernel with a window covering every key):
    dense and causal (top-left), N_q = m * N_kv and any other N_q (query slabs), GQA/MQA, batch > 1, extents that are not
    multiples of the 128-token tile, outputs poisoned (NaN) before each launch."""
    rng = random.Random(SEED + 7)
    failures = SweepFailures()
    ops.set_poison_outputs(True)
    try:
        for case in range(NUM_FMHA):
            nq, nk, causal, h, hkv, d, dv, dtype, b = _random_dense_problem(rng, 3000, [1, 1, 1, 2, 3], 3)
            g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
            q = torch.randn(b, nq, h, d, device="cuda", dtype=dtype, generator=g)
            k = torch.randn(b, nk, hkv, d, device="cuda", dtype=dtype, generator=g)
            v = torch.randn(b, nk, hkv, dv, device="cuda", dtype=dtype, generator=g)
            desc = (f"case {case} seed {SEED}: nq={nq} nk={nk} causal={causal} B={b} H={h} Hkv={hkv} D={d} Dv={dv} "
                    f"{dtype}")
            with failures.case():
                assert hopper.can_run_fmha(q, k, v, causal) is None, desc
                out, lse = natten.attention(q, k, v, is_causal=causal, backend="hopper-fmha", return_lse=True)
                mask = None
                if causal:
                    mask = torch.arange(nk, device="cuda")[None, :] <= torch.arange(nq, device="cuda")[:, None]
                ref, ref_lse = dense_attention(q.double(), k.double(), v.double(), mask=mask)
                assert_close(out, ref, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} out")
                assert_close(lse, ref_lse, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} lse")
            if failures.full:
                break
    finally:
        ops.set_poison_outputs(False)
    failures.check()


def test_hopper_fmha_dispatch_and_reasons():
    q = torch.randn(2, 1000, 4, 128, device="cuda", dtype=torch.float16)
    assert natten.backends.choose_fmha_backend(None, q, q, q, False, False, False)[0] == "hopper-fmha"
    short = q[:, :300]
    assert hopper.can_run_fmha(short, q, q) is None  # a query slab of the dense window
    assert natten.backends.choose_fmha_backend(None, short, q, q, False, False, False)[0] == "hopper-fmha"
    out = natten.attention(short, q, q)
    ref, _ = dense_attention(short.double(), q.double(), q.double())
    assert_close(out, ref, atol=1e-2, rtol=0, what="N_q < N_kv")
    g = q.detach().clone().requires_grad_(True)
    assert hopper.can_run_fmha(g, g, g) is None  # trains (the SM90 backward kernels)
    assert natten.backends.choose_fmha_backend(None, g, g, g, True, False, False)[0] == "hopper-fmha"
    d96 = torch.randn(1, 64, 2, 96, device="cuda", dtype=torch.float16)
    assert hopper.can_run_fmha(d96, d96, d96) is None  # the 128 kernel, zero-filled
    assert_close(natten.attention(d96, d96, d96, backend="hopper-fmha"),
                 dense_attention(d96.double(), d96.double(), d96.double())[0], atol=1e-2, rtol=0, what="fmha D 96")
    d100 = torch.randn(1, 64, 2, 100, device="cuda", dtype=torch.float16)
    assert "head_dim" in hopper.can_run_fmha(d100, d100, d100)


def test_hopper_fmha_training_sweep():
    """hopper-fmha trains: fresh random dense / causal problems (N_q = m * N_kv and query slabs, GQA,
    D != Dv, head dims up to 256, batch > 1), outputs and gradients poisoned (NaN) before each
    launch; out, lse and dQ / dK / dV (through a loss on out, and on lse for a third of the cases)
    against float64 autograd of dense attention."""
    rng = random.Random(SEED + 11)
    failures, checked = SweepFailures(), 0
    ops.set_poison_outputs(True)
    try:
        for case in range(max(10, NUM_FMHA // 3)):
            nq, nk, causal, h, hkv, d, dv, dtype, b = _random_dense_problem(rng, 2000, [1, 1, 2], 2)
            with_lse = rng.random() < 0.33
            g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
            q = torch.randn(b, nq, h, d, device="cuda", dtype=dtype, generator=g)
            k = torch.randn(b, nk, hkv, d, device="cuda", dtype=dtype, generator=g)
            v = torch.randn(b, nk, hkv, dv, device="cuda", dtype=dtype, generator=g)
            dout = torch.randn(b, nq, h, dv, device="cuda", dtype=dtype, generator=g)
            dlse = torch.randn(b, nq, h, device="cuda", dtype=torch.float32, generator=g)
            desc = (f"case {case} seed {SEED}: nq={nq} nk={nk} causal={causal} B={b} H={h} Hkv={hkv} D={d} Dv={dv} "
                    f"{dtype} lse-loss={with_lse}")
            with failures.case():
                leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
                assert hopper.can_run_fmha(*leaves, causal) is None, desc
                out, lse = natten.attention(*leaves, is_causal=causal, backend="hopper-fmha", return_lse=True)
                x64 = [t.double().requires_grad_(True) for t in (q, k, v)]
                mask = None
                if causal:
                    mask = torch.arange(nk, device="cuda")[None, :] <= torch.arange(nq, device="cuda")[:, None]
                ref, ref_lse = dense_attention(*x64, mask=mask)
                assert_close(out, ref, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} out")
                assert_close(lse, ref_lse, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} lse")
                outs, grads = [out], [dout]
                ref_outs, ref_grads = [ref], [dout.double()]
                if with_lse:
                    outs.append(lse)
                    grads.append(dlse)
                    ref_outs.append(ref_lse)
                    ref_grads.append(dlse.double())
                got = torch.autograd.grad(outs, leaves, grads)
                want = torch.autograd.grad(ref_outs, x64, ref_grads)
                assert_grads_close(got, want, 1e-2, desc)
                checked += 1
            if failures.full:
                break
    finally:
        ops.set_poison_outputs(False)
    print(f"hopper-fmha training sweep seed {SEED}: {checked} problems checked")
    failures.check()


def test_hopper_fmha_varlen_runs():
    """Variable-length packs on hopper-fmha: natten.attention runs each run of consecutive
    equal-length sequences as one batched call; mixed lengths, D != Dv, causal; gradients."""
    from oracle import attention_oracle

    g = torch.Generator(device="cuda").manual_seed(4)
    lens_q, lens_kv = [37, 300, 300, 5, 128, 128, 128], [37, 300, 300, 70, 128, 128, 128]
    for dtype in (torch.float16, torch.bfloat16):
        q = torch.randn(1, sum(lens_q), 4, 64, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(1, sum(lens_kv), 2, 64, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(1, sum(lens_kv), 2, 96, device="cuda", dtype=dtype, generator=g)
        assert hopper.can_run_fmha(q, k, v, False, True) is None
        for causal in (False, True):
            assert natten.backends.choose_fmha_backend(None, q, k, v, causal, True, False)[0] == "hopper-fmha"
            out, lse = natten.attention(q, k, v, is_causal=causal, backend="hopper-fmha", return_lse=True,
                                        seqlens_Q=torch.tensor(lens_q), seqlens_KV=torch.tensor(lens_kv))
            ref, ref_lse = attention_oracle(q.double(), k.double(), v.double(), is_causal=causal,
                                            seqlens_Q=lens_q, seqlens_KV=lens_kv)
            assert_close(out, ref, atol=GPU_TOL[dtype], rtol=0, what=f"varlen {dtype} causal={causal} out")
            assert_close(lse, ref_lse, atol=GPU_TOL[dtype], rtol=0, what=f"varlen {dtype} causal={causal} lse")
        # training: one differentiable call per run, gradients summed by autograd over the runs
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = natten.attention(*leaves, is_causal=True, backend="hopper-fmha",
                               seqlens_Q=torch.tensor(lens_q), seqlens_KV=torch.tensor(lens_kv))
        x64 = [t.double().requires_grad_(True) for t in (q, k, v)]
        ref, _ = attention_oracle(*x64, is_causal=True, seqlens_Q=lens_q, seqlens_KV=lens_kv)
        dout = torch.randn(out.shape, device="cuda", dtype=dtype, generator=g)
        got = torch.autograd.grad(out, leaves, dout)
        want = torch.autograd.grad(ref, x64, dout.double())
        assert_grads_close(got, want, 1e-2, f"varlen {dtype}")


def test_tma_descriptor_cache_is_exact(monkeypatch):
    """The per-thread cache of encoded TMA descriptors (`tma_host.cpp`) returns exactly what an
    encode would: in NATTEN_HOPPER_TMA_CACHE=verify mode every cache hit is re-encoded and
    compared byte for byte (a difference fails the launch), and outputs, logsumexp and gradients
    are bit-identical with the cache on, off (=0) and verifying, over problems whose tensors reuse
    freed addresses with other shapes and head dims and that need more descriptors than the cache
    holds (16 entries). (The hits themselves are shown by the host-time A/B in
    benchmarks/NOTES.md, twenty-seventh session.)"""
    problems = [((300,), 64, 1, 64, 64), ((300,), 33, 1, 64, 64), ((24, 20), (7, 5), 1, 128, 128),
                ((24, 20), (7, 5), 2, 128, 64), ((6, 10, 12), (3, 5, 5), 1, 128, 128), ((301,), 63, 2, 32, 32)]

    def run(shape, ks, st, d, dv, seed):
        gg = torch.Generator(device="cuda").manual_seed(seed)
        q = torch.randn(2, *shape, 2, d, device="cuda", dtype=torch.float16, generator=gg).requires_grad_(True)
        k = torch.randn(2, *shape, 2, d, device="cuda", dtype=torch.float16, generator=gg).requires_grad_(True)
        v = torch.randn(2, *shape, 2, dv, device="cuda", dtype=torch.float16, generator=gg).requires_grad_(True)
        out, lse = OPS[len(shape)](q, k, v, ks, st, backend="hopper-fna", return_lse=True)
        grads = torch.autograd.grad((out.float() * 0.5).sum(), (q, k, v))  # the prepared backward
        with torch.no_grad():
            out2 = OPS[len(shape)](q, k, v, ks, st, backend="hopper-fna")
        return [t.detach().clone() for t in (out, lse, out2, *grads)]

    results = {}
    for rnd in range(2):  # the second round's tensors land on blocks the first round freed
        for mode in ("0", "1", "verify"):
            monkeypatch.setenv("NATTEN_HOPPER_TMA_CACHE", mode)
            for i, (shape, ks, st, d, dv) in enumerate(problems):
                results[(rnd, mode, i)] = run(shape, ks, st, d, dv, seed=i + 10 * rnd)
                torch.cuda.synchronize()
    for (rnd, mode, i), got in results.items():
        if mode != "0":
            want = results[(rnd, "0", i)]
            for name, a, b in zip(("out", "lse", "out (no grad)", "dq", "dk", "dv"), want, got):
                assert torch.equal(a, b), f"problem {i} round {rnd}: {name} differs with the cache mode {mode}"


def test_tensors_over_2_31_elements():
    """64-bit offsets: q/k/v/out of more than 2^31 elements; rows at both ends checked against
    the float64 window computed on a slice (a 1-D window only sees its neighbours)."""
    q, k, v = qkv_over_2_31_elements(192)
    n = q.shape[1]
    ops.set_poison_outputs(True)
    try:
        out, lse = natten.na1d(q, k, v, 16, backend="hopper-fna", return_lse=True)
    finally:
        ops.set_poison_outputs(False)
    check_window_rows_1d(q, k, v, out, lse, (0, 1, n // 2, n - 130, n - 2, n - 1), 16)
    assert not torch.isnan(out[:, -300:]).any(), "unwritten rows at the far end"


def test_dilation_random_sweep():
    """Dilation on hopper-fna: the dilation groups folded into the batch (extents that are multiples
    of the dilation), rank 1-3, stride, causal, GQA, both head dims and dtypes, outputs poisoned;
    against the float64 oracle of the dilated problem."""
    rng = random.Random(SEED + 11)
    failures = SweepFailures()
    for case in range(max(1, NUM_PROBLEMS // 5)):
        rank = rng.randint(1, 3)
        dl = tuple(rng.choice([1, 2, 3, 4]) for _ in range(rank))
        if all(d == 1 for d in dl):
            dl = (2,) + dl[1:]
        top = {1: 300, 2: 40, 3: 14}[rank]
        ext = [rng.randint(2, top) for _ in range(rank)]
        # the float64 oracle builds a dense N x N score matrix: keep N <= 4096 tokens
        while math.prod(e * d for e, d in zip(ext, dl)) > 4096:
            i = max(range(rank), key=lambda a: ext[a] * dl[a])
            ext[i] = max(2, ext[i] * 3 // 4)
        ext = tuple(ext)
        shape = tuple(e * d for e, d in zip(ext, dl))
        ks = tuple(rng.randint(2, min(e, 33)) for e in ext)
        st = tuple(rng.randint(1, k) if rng.random() < 0.5 else 1 for k in ks)
        ca = tuple(rng.random() < 0.3 for _ in range(rank))
        hkv = rng.choice([1, 2])
        h = hkv * rng.choice([1, 2])
        d = _head_dim(rng)
        dtype = rng.choice([torch.float16, torch.bfloat16])
        with failures.case():
            _check(shape, ks, st, ca, rng.randint(1, 2), h, hkv, d, dtype, seed=rng.randrange(1 << 30),
                   what=f"case {case} seed {SEED}", dilation=dl)
        if failures.full:
            break
    failures.check()


# ---- slabs of a larger grid (global_shape, q_origin, kv_origin) -----------------------------------


def _slab_problem(rng: random.Random):
    """A random dilation-1 problem on a global grid with random query / key slabs (random_slabs)."""
    rank = rng.choice([1, 2, 2, 3, 3])
    hi = {1: 700, 2: 40, 3: 14}[rank]
    shape = [rng.randint(2, hi) for _ in range(rank)]
    ks = [rng.randint(2, min(n, 40 if rank == 1 else 13)) for n in shape]
    st = [rng.randint(1, k) if rng.random() < 0.4 else 1 for k in ks]
    ca = [rng.random() < 0.3 for _ in ks]
    spec = WindowSpec(tuple(shape), tuple(ks), tuple(st), (1,) * rank, tuple(ca))
    qo, qs, ko, kvs = random_slabs(rng, spec)
    hkv = rng.choice([1, 2])
    h = hkv * rng.choice([1, 2])
    d = _head_dim(rng)
    dtype = rng.choice([torch.float16, torch.bfloat16])
    return spec, qo, qs, ko, kvs, rng.randint(1, 2), h, hkv, d, dtype


def test_slab_random_sweep():
    """Query/key slabs of a larger grid on hopper-fna (windows in global coordinates, clamped at
    the global borders; TMA boxes over each slab's own extents), rank 1-3, stride, causal, GQA,
    views into whole-grid tensors or copies; against the float64 region oracle, outputs poisoned."""
    rng = random.Random(SEED + 13)
    failures = SweepFailures()
    for case in range(max(1, NUM_PROBLEMS // 4)):
        spec, qo, qs, ko, kvs, b, h, hkv, d, dtype = _slab_problem(rng)
        g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
        full = list(spec.shape)
        qg, kg, vg = (torch.randn(b, *full, n, d, device="cuda", dtype=dtype, generator=g) for n in (h, hkv, hkv))
        qsl = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(qo, qs))
        ksl = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(ko, kvs))
        q, k, v = qg[qsl], kg[ksl], vg[ksl]
        if rng.random() < 0.5:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        kw = dict(kernel_size=spec.kernel_size, stride=spec.stride, is_causal=spec.is_causal)
        desc = (f"slab case {case} seed {SEED}: global={full} q={qo}+{qs} kv={ko}+{kvs} kernel={list(spec.kernel_size)} "
                f"stride={list(spec.stride)} causal={list(spec.is_causal)} B={b} H={h} Hkv={hkv} D={d} {dtype} "
                f"contiguous={q.is_contiguous()}")
        with failures.case():
            ops.set_poison_outputs(True)
            try:
                out, lse = OPS[len(qs)](q, k, v, **kw, backend="hopper-fna", return_lse=True,
                                        global_shape=spec.shape, q_origin=qo, kv_origin=ko)
            finally:
                ops.set_poison_outputs(False)
            ref_out, ref_lse = na_region_oracle(q.double(), k.double(), v.double(), spec.shape, qo, ko, **kw)
            assert_close(out, ref_out, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} out")
            assert_close(lse, ref_lse, atol=GPU_TOL[dtype], rtol=0, what=f"{desc} lse")
        if failures.full:
            break
    failures.check()


def test_fmha_queries_not_a_multiple_of_keys():
    """hopper-fmha with fewer queries than keys, or a remainder slice: query slabs of the dense
    window (top-left causal), against dense float64 attention."""
    for nq, nk, causal in ((100, 300, False), (100, 300, True), (700, 300, False), (700, 300, True)):
        g = torch.Generator(device="cuda").manual_seed(nq + nk)
        q = torch.randn(2, nq, 4, 128, device="cuda", dtype=torch.float16, generator=g)
        k = torch.randn(2, nk, 2, 128, device="cuda", dtype=torch.float16, generator=g)
        v = torch.randn(2, nk, 2, 128, device="cuda", dtype=torch.float16, generator=g)
        assert hopper.can_run_fmha(q, k, v, causal) is None
        out, lse = natten.attention(q, k, v, is_causal=causal, backend="hopper-fmha", return_lse=True)
        mask = torch.arange(nk, device="cuda")[None, :] <= torch.arange(nq, device="cuda")[:, None] if causal else None
        ref, ref_lse = dense_attention(q.double(), k.double(), v.double(), mask=mask)
        assert_close(out, ref, atol=1e-2, rtol=0, what=f"nq={nq} nk={nk} causal={causal} out")
        assert_close(lse, ref_lse, atol=1e-2, rtol=0, what=f"nq={nq} nk={nk} causal={causal} lse")


GRAPH_CASES = [
    # rank, shape, kernel, stride, causal, heads (q / kv), dtype
    (1, (1000,), (257,), (1,), (False,), 2, 1, torch.float16),
    (2, (24, 40), (9, 12), (4, 1), (False, True), 2, 2, torch.bfloat16),  # causal: dynamic order (counter memset)
    (3, (8, 12, 20), (5, 7, 9), (1, 2, 1), (False, False, False), 2, 2, torch.float16),
]


# torch warns that w's AccumulateGrad node was created on the warm-up stream; autograd.grad never
# accumulates into w.grad here, and the replay is checked against the eager step below.
@pytest.mark.filterwarnings("ignore:The AccumulateGrad node's stream")
@pytest.mark.parametrize("pdl", ["1", "0"])
@pytest.mark.parametrize("case", range(len(GRAPH_CASES)))
def test_cuda_graph_training_step_matches_eager(monkeypatch, case, pdl):
    """A training step captured in a CUDA graph (q / k / v from a projection GEMM, the hopper-fna
    forward, autograd.grad of out and lse) replays bit for bit as the same step run eagerly, with the
    forward and backward kernels launched as programmatic dependents (NATTEN_HOPPER_PDL unset /
    "1") and without ("0"); outputs and gradients also against the float64 oracle. Replayed after
    new inputs are copied into the captured tensors, as a training loop does."""
    monkeypatch.setenv("NATTEN_HOPPER_PDL", pdl)
    rank, shape, ks, st, ca, h, hkv, dtype = GRAPH_CASES[case]
    d = 64 if rank == 3 else 128
    n = math.prod(shape)
    g = torch.Generator(device="cuda").manual_seed(500 + case)
    x = torch.randn(n, 96, device="cuda", dtype=dtype, generator=g)
    w = (torch.randn(96, (h + 2 * hkv) * d, device="cuda", dtype=dtype, generator=g) / 10).requires_grad_(True)
    d_out = torch.randn(1, *shape, h, d, device="cuda", dtype=dtype, generator=g)
    d_lse = torch.randn(1, *shape, h, device="cuda", dtype=torch.float32, generator=g)

    def split(qkv):  # the projection's columns -> q, k, v
        return (qkv[:, : h * d].reshape(1, *shape, h, d), qkv[:, h * d : (h + hkv) * d].reshape(1, *shape, hkv, d),
                qkv[:, (h + hkv) * d :].reshape(1, *shape, hkv, d))

    def step():
        out, lse = OPS[rank](*split(x @ w), ks, st, 1, ca, backend="hopper-fna", return_lse=True)
        (dw,) = torch.autograd.grad((out, lse), (w,), (d_out, d_lse))
        return out, lse, dw

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph requires
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for trial in range(2):
        if trial == 1:  # new inputs into the captured tensors
            x.copy_(torch.randn(x.shape, device="cuda", dtype=dtype, generator=g))
            d_out.copy_(torch.randn(d_out.shape, device="cuda", dtype=dtype, generator=g))
        for t in captured:
            t.fill_(float("nan"))  # a replay that writes nothing shows
        graph.replay()
        eager = step()
        for name, a, b in zip(("out", "lse", "dw"), captured, eager):
            assert torch.equal(a, b), f"case {case} PDL={pdl} trial {trial}: {name} differs between replay and eager"
        # the step against float64 (the projection and attention in float64, the same d_out / d_lse)
        w64 = w.detach().double().requires_grad_(True)
        out64, lse64 = na_oracle(*split(x.double() @ w64), ks, st, 1, ca)
        (dw64,) = torch.autograd.grad((out64, lse64), (w64,), (d_out.double(), d_lse.double()))
        tol = 1e-2 if dtype == torch.float16 else 5e-2
        assert_close(captured[0], out64, atol=tol, rtol=0, what=f"case {case} PDL={pdl} out")
        assert_close(captured[1], lse64, atol=tol, rtol=0, what=f"case {case} PDL={pdl} lse")
        scale = max(1.0, float(dw64.abs().max()))
        assert_close(captured[2], dw64, atol=tol * scale, rtol=0, what=f"case {case} PDL={pdl} dw")
