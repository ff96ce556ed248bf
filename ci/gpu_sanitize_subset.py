"""A representative subset of fused-kernel problems, small enough for compute-sanitizer.

Run under `compute-sanitizer --tool memcheck|racecheck` by ci/gpu.sh; also checks the results
against the float64 oracle so a silent out-of-bounds write that corrupts output is caught too.

    python3 ci/gpu_sanitize_subset.py [all|forward|backward]

`forward` runs the forward cases (cutlass-fna, hopper-fna, hopper-fmha, slabs), `backward` the
backward ones (cutlass-fna whole grids and slabs, backward_kv_splits, hopper-fna training); ci/gpu.sh
runs the two halves in processes of their own at the same time (default `all`: both, one after the
other).

The slab cases pass key/value tensors of exactly the keys the query slab attends, each in its own
allocation (no caching allocator), so a read before kv_origin or past the key slab is reported.
"""

import os
import sys

PART = sys.argv[1] if len(sys.argv) > 1 else "all"
if PART not in ("all", "forward", "backward") or len(sys.argv) > 2:
    sys.exit(f"usage: gpu_sanitize_subset.py [all|forward|backward]; got {sys.argv[1:]!r}")
FORWARD, BACKWARD = PART in ("all", "forward"), PART in ("all", "backward")

os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")  # one cudaMalloc per tensor

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "packages", "natten", "tests"))

import natten  # noqa: E402
from natten import ops  # noqa: E402
from natten.window import WindowSpec, key_range  # noqa: E402
from oracle import na_oracle, na_region_oracle  # noqa: E402

import gpu_sanitize_hopper_bwd  # noqa: E402  (also the shared gradient check)
from gpu_sanitize_hopper_bwd import grad_errors  # noqa: E402

CASES = [
    # shape, kernel, stride, dilation, causal, H, Hkv, D, dtype
    ((37,), (6,), (1,), (1,), (False,), 2, 1, 64, torch.float16),
    ((50,), (7,), (3,), (2,), (True,), 2, 2, 32, torch.bfloat16),
    ((13, 11), (4, 5), (1, 2), (2, 1), (False, True), 4, 2, 128, torch.float16),
    ((9, 17), (9, 8), (3, 8), (1, 2), (False, False), 2, 1, 256, torch.bfloat16),
    ((5, 7, 9), (3, 4, 5), (1, 1, 2), (1, 1, 1), (True, False, False), 2, 1, 64, torch.float16),
    ((6, 6, 10), (2, 3, 4), (2, 3, 1), (2, 1, 2), (False, True, True), 3, 3, 96, torch.bfloat16),
    # float32: the CUDA-core kernels (same tiles; 32-wide head-dim chunks, a partial last chunk)
    ((21, 13), (5, 4), (2, 1), (1, 2), (True, False), 4, 2, 40, torch.float32),
    ((5, 6, 9), (3, 2, 4), (1, 2, 1), (1, 2, 1), (False, False, True), 3, 1, 136, torch.float32),
]
TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4}
ops.set_poison_outputs(True)
bad = 0
for shape, ks, st, dl, ca, h, hkv, d, dt in (CASES if FORWARD else []):
    q = torch.randn(2, *shape, h, d, device="cuda", dtype=dt)
    k = torch.randn(2, *shape, hkv, d, device="cuda", dtype=dt)
    v = torch.randn(2, *shape, hkv, d, device="cuda", dtype=dt)
    op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
    try:
        out, lse = op(q, k, v, ks, st, dl, ca, backend="cutlass-fna", return_lse=True)
    except NotImplementedError as e:
        print(f"unsupported {shape} D={d}: {e}")
        continue
    ref, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, dl, ca)
    err = max((out.double() - ref).abs().max().item(), (lse.double() - ref_lse).abs().max().item())
    tol = TOL[dt]
    ok = err <= tol
    bad += not ok
    print(f"{shape} k={ks} s={st} d={dl} c={ca} H={h}/{hkv} D={d} {dt}: max err {err:.2e} {'ok' if ok else 'FAIL'}")

# hopper-fna (sm_90a TMA + wgmma forward; H100 / H200 only): batch 2 at rank 3 exercises the batch
# folded into X in its TMA descriptors, 13 x 11 x 9 partial tiles the out-of-grid keys/rows.
# Last column: kernel_schedule (None = default; one case per explicit schedule, each with several
# key tiles per query tile and partial tiles, so the ping-pong turn barriers run many rounds).
HOPPER_CASES = [
    ((300,), (33,), (1,), (1,), (False,), 2, 1, 128, torch.float16, None),
    ((37, 29), (7, 6), (2, 1), (1, 1), (True, False), 4, 2, 64, torch.bfloat16, None),
    ((13, 11, 9), (5, 4, 3), (1, 2, 1), (1, 1, 1), (False, True, False), 2, 1, 64, torch.float16, None),
    ((700,), (300,), (1,), (1,), (False,), 2, 2, 128, torch.float16, "cooperative"),
    ((700,), (300,), (1,), (1,), (True,), 2, 1, 128, torch.bfloat16, "pingpong"),
    # dilation: groups folded into the batch (24 / 2, 18 / 3)
    ((24, 18), (5, 4), (1, 2), (2, 3), (False, True), 2, 1, 64, torch.float16, None),
    # persistent CTAs (one per SM, 132 on an H100): 2 x 40 heads x 2 query tiles = 160 work tiles,
    # so some CTAs run two, reusing the Q buffer and carrying the K/V rings (causal: uneven walks;
    # since natten-kernels 1.3.4 causal problems with more work tiles than SMs take the dynamic work
    # order: a global counter, next index published through shared memory)
    ((256,), (65,), (1,), (1,), (True,), 40, 8, 64, torch.float16, "cooperative"),
    ((256,), (65,), (1,), (1,), (True,), 40, 8, 64, torch.bfloat16, "pingpong"),
    # head dim 32: 64-byte swizzle, one head-dim chunk per box
    ((19, 21), (5, 8), (2, 1), (1, 1), (True, False), 2, 1, 32, torch.float16, None),
    # head dim 256: 64-token key tiles, 2 stages, no intra-warpgroup overlap (both schedules)
    ((13, 11, 9), (5, 4, 3), (1, 2, 1), (1, 1, 1), (False, True, False), 2, 1, 256, torch.float16, "pingpong"),
    ((700,), (300,), (1,), (1,), (True,), 2, 1, 256, torch.bfloat16, "cooperative"),
    # head dims between the kernels and D != Dv (TMA zero-fills past D / Dv; Dv stored columns)
    ((37, 29), (7, 6), (2, 1), (1, 1), (True, False), 4, 2, (40, 40), torch.float16, None),
    ((300,), (33,), (1,), (1,), (False,), 2, 1, (32, 128), torch.bfloat16, None),
    ((24, 18), (5, 4), (1, 2), (1, 1), (False, True), 2, 2, (200, 72), torch.float16, None),
    # split tail of the static work order (natten-kernels 1.3.7; 132 SMs): 2 x 7 x 10 = 140 work tiles
    # of 10 key tiles (the last 8 cut into 10 chunks each, merged by the combine kernel), and
    # 2 x 8 x 9 = 144 with stride, GQA and Dv < D (the last 12 cut into 9 chunks)
    ((1280,), (1280,), (1,), (1,), (False,), 7, 7, 128, torch.float16, None),
    ((1100,), (1025,), (3,), (1,), (False,), 8, 4, (64, 48), torch.bfloat16, "cooperative"),
]
if FORWARD and torch.cuda.get_device_capability() == (9, 0):
    for shape, ks, st, dl, ca, h, hkv, d, dt, sched in HOPPER_CASES:
        d, dv = d if isinstance(d, tuple) else (d, d)
        q = torch.randn(2, *shape, h, d, device="cuda", dtype=dt)
        k = torch.randn(2, *shape, hkv, d, device="cuda", dtype=dt)
        v = torch.randn(2, *shape, hkv, dv, device="cuda", dtype=dt)
        op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
        out, lse = op(q, k, v, ks, st, dl, ca, backend="hopper-fna", return_lse=True, kernel_schedule=sched)
        ref, ref_lse = na_oracle(q.double(), k.double(), v.double(), ks, st, dl, ca)
        err = max((out.double() - ref).abs().max().item(), (lse.double() - ref_lse).abs().max().item())
        tol = TOL[dt]
        ok = err <= tol
        bad += not ok
        print(f"hopper-fna {shape} k={ks} s={st} c={ca} H={h}/{hkv} D={d} Dv={dv} {dt} {sched or 'default'}: max err "
              f"{err:.2e} "
              f"{'ok' if ok else 'FAIL'}")

# hopper-fmha (natten.attention on the hopper-fna kernel, window = every key): non-causal with
# N_q = 2 N_kv (two query slices) and causal, both with a partial last key tile.
if FORWARD and torch.cuda.get_device_capability() == (9, 0):
    from oracle import dense_attention

    for nq, nk, causal, dt in ((600, 300, False, torch.float16), (333, 333, True, torch.bfloat16)):
        q = torch.randn(2, nq, 2, 128, device="cuda", dtype=dt)
        k = torch.randn(2, nk, 1, 128, device="cuda", dtype=dt)
        v = torch.randn(2, nk, 1, 128, device="cuda", dtype=dt)
        out, lse = natten.attention(q, k, v, is_causal=causal, backend="hopper-fmha", return_lse=True)
        mask = None
        if causal:
            mask = torch.arange(nk, device="cuda")[None, :] <= torch.arange(nq, device="cuda")[:, None]
        ref, ref_lse = dense_attention(q.double(), k.double(), v.double(), mask=mask)
        err = max((out.double() - ref).abs().max().item(), (lse.double() - ref_lse).abs().max().item())
        tol = TOL[dt]
        ok = err <= tol
        bad += not ok
        print(f"hopper-fmha nq={nq} nk={nk} causal={causal} {dt}: max err {err:.2e} {'ok' if ok else 'FAIL'}")

# Slabs of a larger grid: global shape, query slab (origin, extent), window parameters, H, Hkv, D, Dv.
SLAB_CASES = [
    ((50,), (20,), (11,), (7,), (3,), (2,), (True,), 2, 1, 64, 64, torch.float16),
    ((13, 11), (3, 2), (5, 6), (4, 5), (1, 2), (2, 1), (False, True), 4, 2, 128, 64, torch.bfloat16),
    ((6, 6, 10), (1, 2, 3), (3, 2, 5), (2, 3, 4), (2, 3, 1), (2, 1, 2), (False, True, True), 2, 1, 32, 32,
     torch.float16),
    ((13, 11), (3, 2), (5, 6), (4, 5), (1, 2), (2, 1), (False, True), 2, 1, 72, 48, torch.float32),
]
SLAB_RUNS = [(case, "cutlass-fna") for case in SLAB_CASES]
if torch.cuda.get_device_capability() == (9, 0):
    # hopper-fna: TMA boxes over each slab's own extents (rank 3, batch 2: q and k/v folded with
    # different X), dilation 1, D == Dv in {64, 128}
    SLAB_RUNS += [
        (((300,), (100,), (90,), (33,), (1,), (1,), (True,), 2, 1, 128, 128, torch.float16), "hopper-fna"),
        (((40, 37), (5, 0), (9, 37), (7, 6), (2, 1), (1, 1), (False, True), 4, 2, 64, 64, torch.bfloat16),
         "hopper-fna"),
        (((12, 9, 20), (4, 1, 0), (3, 7, 20), (5, 3, 7), (1, 2, 1), (1, 1, 1), (False, False, True), 2, 1, 64, 64,
          torch.float16), "hopper-fna"),
    ]
for (glob, qo, qs, ks, st, dl, ca, h, hkv, d, dv, dt), backend in (SLAB_RUNS if FORWARD else []):
    kr = key_range(WindowSpec(glob, ks, st, dl, ca), qo, qs)
    ko, kvs = [lo for lo, _ in kr], [hi - lo for lo, hi in kr]
    q = torch.randn(2, *qs, h, d, device="cuda", dtype=dt)
    k = torch.randn(2, *kvs, hkv, d, device="cuda", dtype=dt)
    v = torch.randn(2, *kvs, hkv, dv, device="cuda", dtype=dt)
    op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(glob)]
    out, lse = op(q, k, v, ks, st, dl, ca, backend=backend, return_lse=True, global_shape=glob,
                  q_origin=qo, kv_origin=ko)
    ref, ref_lse = na_region_oracle(q.double(), k.double(), v.double(), glob, qo, ko, ks, st, dl, ca)
    err = max((out.double() - ref).abs().max().item(), (lse.double() - ref_lse).abs().max().item())
    tol = TOL[dt]
    ok = err <= tol
    bad += not ok
    print(f"{backend} slab {glob} q {qo}+{qs} kv {ko}+{kvs} k={ks} s={st} d={dl} c={ca} H={h}/{hkv} D={d}/{dv} {dt}: "
          f"max err {err:.2e} {'ok' if ok else 'FAIL'}")
# Fused backward (natten-kernels ABI >= 1.1): dQ, dK, dV (with the logsumexp gradient) vs autograd
# on the oracle.
if BACKWARD and natten._libnatten.has_backward():
    for shape, ks, st, dl, ca, h, hkv, d, dt in CASES:
        g = [torch.randn(2, *shape, h, d, device="cuda", dtype=dt),
             torch.randn(2, *shape, hkv, d, device="cuda", dtype=dt),
             torch.randn(2, *shape, hkv, d, device="cuda", dtype=dt)]
        d_out = (torch.randn(2, *shape, h, d, device="cuda") / d**0.5).to(dt)
        d_lse = torch.randn(2, *shape, h, device="cuda")
        op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
        errs, finite = grad_errors(
            lambda a, b_, c: op(a, b_, c, ks, st, dl, ca, backend="cutlass-fna", return_lse=True),
            lambda a, b_, c: na_oracle(a, b_, c, ks, st, dl, ca), g, d_out, d_lse)
        ok = max(errs) <= TOL[dt] and finite
        bad += not ok
        print(f"backward {shape} k={ks} s={st} d={dl} c={ca} H={h}/{hkv} D={d} {dt}: "
              f"scaled max err dq/dk/dv {errs[0]:.2e}/{errs[1]:.2e}/{errs[2]:.2e} {'ok' if ok else 'FAIL'}")
elif BACKWARD:
    print("natten-kernels has no backward (ABI < 1.1): backward cases skipped")
# Fused backward on slabs (natten-kernels ABI >= 1.2): key/value tensors of exactly the keys the
# query slab attends plus one extra key on each side where the grid allows (keys no slab query
# attends: their dK / dV must be written as 0), each tensor in its own allocation.
BWD_SLAB_CASES = [
    # global shape, query slab (origin, extent), kernel, stride, dilation, causal, H, Hkv, D, Dv, dtype
    ((17, 15), (7, 6), (5, 6), (4, 5), (1, 2), (2, 1), (False, True), 4, 2, 64, 32, torch.float16),
    ((60,), (29,), (6,), (7,), (3,), (2,), (True,), 2, 1, 256, 256, torch.bfloat16),  # head dim 256: split dK/dV
    ((17, 15), (7, 6), (5, 6), (4, 5), (1, 2), (2, 1), (False, True), 4, 2, 64, 96, torch.float32),
    # key slab = the whole grid (last field): most key tiles have no visiting query tile and write
    # dK = dV = 0 straight away
    ((300,), (130,), (20,), (9,), (2,), (1,), (False,), 2, 1, 40, 40, torch.float32, True),
    ((300,), (130,), (20,), (9,), (2,), (1,), (True,), 2, 2, 64, 64, torch.float16, True),
]
if BACKWARD and natten._libnatten.has_backward() and natten._libnatten.supports_backward_slabs():
    for glob, qo, qs, ks, st, dl, ca, h, hkv, d, dv, dt, *whole in BWD_SLAB_CASES:
        kr = key_range(WindowSpec(glob, ks, st, dl, ca), qo, qs)
        ko = [max(0, lo - 1) for lo, _ in kr]
        kvs = [min(n, hi + 1) - o for (_, hi), o, n in zip(kr, ko, glob)]
        if whole:
            ko, kvs = [0] * len(glob), list(glob)
        g = [torch.randn(2, *qs, h, d, device="cuda", dtype=dt),
             torch.randn(2, *kvs, hkv, d, device="cuda", dtype=dt),
             torch.randn(2, *kvs, hkv, dv, device="cuda", dtype=dt)]
        d_out = (torch.randn(2, *qs, h, dv, device="cuda") / dv**0.5).to(dt)
        d_lse = torch.randn(2, *qs, h, device="cuda")
        op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(glob)]
        region = dict(global_shape=glob, q_origin=qo, kv_origin=ko)
        errs, finite = grad_errors(
            lambda a, b_, c: op(a, b_, c, ks, st, dl, ca, backend="cutlass-fna", return_lse=True, **region),
            lambda a, b_, c: na_region_oracle(a, b_, c, glob, qo, ko, ks, st, dl, ca), g, d_out, d_lse)
        ok = max(errs) <= TOL[dt] and finite
        bad += not ok
        print(f"backward slab {glob} q {qo}+{qs} kv {ko}+{kvs} k={ks} s={st} d={dl} c={ca} H={h}/{hkv} D={d}/{dv} "
              f"{dt}: scaled max err dq/dk/dv {errs[0]:.2e}/{errs[1]:.2e}/{errs[2]:.2e} {'ok' if ok else 'FAIL'}")
elif BACKWARD:
    print("natten-kernels has no backward for slabs (ABI < 1.2): backward slab cases skipped")
# backward_kv_splits (ABI >= 1.3): CTAs of the dK / dV kernel that run several key tiles in turn
# (shared memory reused across tiles), fp16 and fp32; gradients bit-identical to the default.
if BACKWARD and natten._libnatten.has_backward() and natten._libnatten.supports_kv_splits():
    for dt in (torch.float16, torch.float32):
        g = [torch.randn(1, 24, 20, 4, 64, device="cuda", dtype=dt) for _ in range(3)]
        d_out = torch.randn(1, 24, 20, 4, 64, device="cuda").to(dt)
        results = []
        for splits in (None, (1, 2)):
            xs = [t.detach().requires_grad_(True) for t in g]
            out = natten.na2d(*xs, (5, 7), dilation=(2, 1), backend="cutlass-fna", backward_q_tile_shape=(8, 8),
                              backward_kv_tile_shape=(8, 8), backward_kv_splits=splits)
            results.append(torch.autograd.grad(out, xs, d_out))
        ok = all(torch.equal(a, b) for a, b in zip(*results))
        bad += not ok
        print(f"backward kv_splits (1, 2) {dt}: bit-identical to the default {'ok' if ok else 'FAIL'}")
# hopper-fna training (its forward and the SM90 backward kernels): ci/gpu_sanitize_hopper_bwd.py,
# also runnable alone (racecheck of the whole subset takes minutes).
if BACKWARD:
    bad += gpu_sanitize_hopper_bwd.run(TOL)
torch.cuda.synchronize()
sys.exit(1 if bad else 0)
