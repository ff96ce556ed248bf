"""compute-sanitizer case for the Hopper forward's ping-pong turns carried across work tiles.

The default (pingpong) schedule orders its two consumer warpgroups' GEMM issue with two named turn
barriers. Until 2026-11-29 they were balanced per work tile, and a warpgroup that finished a tile
first could complete the other's barrier alone: a hang on problems of many short key walks per
persistent CTA (sm90/mainloop_consumer.cuh, ``turns_open`` / ``turns_close``). This case runs such
problems (head dims 32, 64 and 128, dilation, causal, rank 1-3, both schedules, two calls each)
with ``NATTEN_HOPPER_PERSISTENT=2`` (read once per process, hence its own process), so that two CTAs
walk every work tile and the whole barrier sequence runs under the sanitizer in a few seconds of
GPU time. Run by ci/gpu.sh once with ``--check`` (no sanitizer: the Hopper forward kernel must have
run, not a fallback) and under ``compute-sanitizer --tool memcheck|racecheck``. Outputs are poisoned
and checked against the float64 oracle; exit status 1 when one is off or a check fails.
"""

import os
import sys

os.environ["NATTEN_HOPPER_PERSISTENT"] = "2"  # before natten-kernels' first Hopper launch

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "natten", "tests"))

import natten  # noqa: E402
from natten import ops  # noqa: E402
from oracle import na_oracle  # noqa: E402

# shape, kernel, stride, dilation, causal, B, H, H_kv, D, schedule
CASES = [
    ((24, 24), (7, 7), (1, 1), (1, 1), (False, False), 4, 2, 2, 32, "pingpong"),  # nat-small-like
    ((24, 24), (7, 7), (1, 1), (1, 1), (False, False), 4, 2, 2, 32, "cooperative"),
    ((32, 32), (13, 13), (1, 1), (2, 2), (False, False), 2, 2, 1, 64, "pingpong"),  # dilated-like, GQA
    ((512,), (9,), (1,), (1,), (False,), 6, 2, 2, 32, "pingpong"),  # 1-D, two key tiles per work tile
    ((300,), (130,), (1,), (1,), (True,), 2, 2, 2, 128, "pingpong"),  # causal: uneven walks
    ((6, 8, 10), (3, 4, 5), (1, 2, 1), (1, 1, 2), (True, False, False), 2, 2, 1, 64, "pingpong"),
]
TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def main() -> int:
    if torch.cuda.get_device_capability() != (9, 0):
        print("ping-pong turns: skipped, needs compute capability 9.0")
        return 0
    check = "--check" in sys.argv
    bad = 0
    ops.set_poison_outputs(True)  # NaN-filled outputs: an unwritten tile shows
    for shape, ks, st, dl, ca, b, h, hkv, d, sched in CASES:
        for dt in (torch.float16, torch.bfloat16):
            gen = torch.Generator(device="cuda").manual_seed(7)
            q = torch.randn(b, *shape, h, d, device="cuda", dtype=dt, generator=gen)
            k = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dt, generator=gen)
            v = torch.randn(b, *shape, hkv, d, device="cuda", dtype=dt, generator=gen)
            op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]

            def run():
                return op(q, k, v, ks, st, dl, ca, backend="hopper-fna", return_lse=True, kernel_schedule=sched)

            if check:  # the Hopper forward kernel must be what ran (profiled only without a sanitizer)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    run()
                    torch.cuda.synchronize()
                names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                if not any("fna_sm90_forward_kernel" in n for n in names):
                    print(f"ping-pong turns {shape} D={d}: the Hopper forward kernel did not run: {sorted(set(names))}")
                    bad += 1
            for _ in range(2):  # back to back: the second call's CTAs start as the first's drain
                out, lse = run()
            torch.cuda.synchronize()
            ro, rl = na_oracle(q.double(), k.double(), v.double(), ks, st, dl, ca)
            err = max((out.double() - ro).abs().max().item(), (lse.double() - rl).abs().max().item())
            ok = err <= TOL[dt]  # NaN (an unwritten element) compares False
            bad += not ok
            print(f"ping-pong turns {shape} k={ks} d={dl} c={ca} B={b} H={h}/{hkv} D={d} {sched} {dt}: "
                  f"max err {err:.2e} {'ok' if ok else 'FAIL'}")
    print("ping-pong turns:", "FAILED" if bad else "all ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
