"""compute-sanitizer case for the Hopper forward's cluster pairs (natten-kernels 1.3.7;
NATTEN_HOPPER_CLUSTER=1 runs them on every launch they fit): two CTAs of a cluster run query tiles
2 j and 2 j + 1 of an axis whose key walks are equal and share each K / V tile by TMA multicast
(sm90/fna_forward_kernel.cuh, kCluster); with a split tail, each CTA then runs its chunk item
unpaired. ``NATTEN_HOPPER_PERSISTENT=4`` (read once per process, hence its own process) keeps the
grid at 2 clusters, so each walks several pairs (ring positions and barrier phases carried across
tiles) in problems small enough for racecheck. Run by ci/gpu.sh, once with ``--check`` (no
sanitizer: the cluster kernel, and the combine kernel where a case splits, must have run, and the
outputs must equal the plain kernel's bit for bit where both run the same tiles whole) and under
``compute-sanitizer --tool memcheck|racecheck``. Exit status 1 when an output is off the float64
oracle or a check fails.
"""

import os
import sys

os.environ["NATTEN_HOPPER_PERSISTENT"] = "4"  # before natten-kernels' first Hopper launch
os.environ["NATTEN_HOPPER_SCHEDULE"] = "static"

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "natten", "tests"))

import natten  # noqa: E402
from natten import ops  # noqa: E402
from oracle import na_oracle  # noqa: E402

# B, shape, kernel, stride, causal, H, H_kv, D_v, q tile, kv tile, dtype, schedule, split: 24, 32, 10 and 6
# work tiles; the last two have split tails on 4 CTAs (4 or 2 pairs, then 2 tiles x 2 chunks unpaired)
CASES = [
    (1, (32, 32), (24, 24), (16, 16), (False, False), 3, 3, 128, (8, 16), (8, 16), torch.float16, "pingpong", False),
    (2, (1024,), (512,), (256,), (False,), 2, 1, 96, (128,), (128,), torch.bfloat16, "cooperative", False),
    (1, (1280,), (1024,), (256,), (False,), 1, 1, 128, (128,), (128,), torch.float16, "pingpong", True),
    # 2-D, pairs on axis 0 with 3 query tiles after it: the tail (pair 2 = tiles 2 and 5) is not the
    # last two tiles of the plain order (ordered_tile)
    (1, (16, 48), (16, 48), (16, 16), (False, False), 1, 1, 128, (8, 16), (4, 32), torch.bfloat16, "cooperative",
     True),
]
TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def main() -> int:
    if torch.cuda.get_device_capability() != (9, 0):
        print("cluster pairs: skipped, needs compute capability 9.0")
        return 0
    check = "--check" in sys.argv
    bad = 0
    for b, shape, ks, st, ca, h, hkv, dv, qt, kt, dt, sched, split in CASES:
        gen = torch.Generator(device="cuda").manual_seed(5)
        q = torch.randn(b, *shape, h, 128, device="cuda", dtype=dt, generator=gen)
        k = torch.randn(b, *shape, hkv, 128, device="cuda", dtype=dt, generator=gen)
        v = torch.randn(b, *shape, hkv, dv, device="cuda", dtype=dt, generator=gen)
        op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]

        def run(cluster: str):
            os.environ["NATTEN_HOPPER_CLUSTER"] = cluster
            ops.set_poison_outputs(True)
            try:
                res = op(q, k, v, ks, st, 1, ca, backend="hopper-fna", return_lse=True, q_tile_shape=qt,
                         kv_tile_shape=kt, kernel_schedule=sched)
                torch.cuda.synchronize()
                return res
            finally:
                ops.set_poison_outputs(False)

        if check:  # the kernels the case must run (profiled only without a sanitizer)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                run("1")
            names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            fwd = [n for n in names if "fna_sm90_forward_kernel" in n]
            cluster = bool(fwd) and all(n.split("(")[0].strip().rstrip(">").split(",")[-1].strip() == "true"
                                        for n in fwd)
            did_split = any("split_combine" in n for n in names)
            if not cluster or did_split != split:
                print(f"cluster pairs {shape}: expected the cluster kernel (split {split}), ran {sorted(set(names))}")
                bad += 1
        out, lse = run("1")
        ro, rl = na_oracle(q.double(), k.double(), v.double(), ks, st, 1, ca)
        err = max((out.double() - ro).abs().max().item(), (lse.double() - rl).abs().max().item())
        ok = err <= TOL[dt]
        same, compared = True, check and not (split and len(shape) > 1)  # 2-D tails: another order (ordered_tile)
        if compared:
            out0, lse0 = run("0")
            same = torch.equal(out, out0) and torch.equal(lse, lse0)
        print(f"cluster pairs {shape} k={ks} s={st} B={b} H={h}/{hkv} Dv={dv} {dt} {sched}: max error {err:.2e}"
              + (f", bit-identical to the plain kernel: {same}" if compared else ""))
        bad += int(not ok or not same)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
