"""compute-sanitizer case for the ordered schedule of the Hopper dK / dV kernel (natten-kernels >= 1.3.7).

The dK / dV kernel takes its work tiles longest walk first, with each CTA's first two positions
mirror-paired, when its work is 1 to 4 rounds of the persistent grid and each (batch, kv head) has
at most 1,024 key tiles (sm90/bwd_dkdv_order.hpp; the rule and the order are checked on the CPU by
tests/sm90_dkdv_order_test.cpp). ``NATTEN_HOPPER_PERSISTENT=4`` (read once per process, hence its
own process) makes problems small enough for racecheck take that schedule: case 1 has 16 work
tiles (8 key tiles of 128 tokens x 2 kv heads) on 4 CTAs; case 2 (960 tokens, one head) took it on
an H200 on 2026-11-28, when the order still came from an extra block of the visit-table kernel
(its grid was one block larger than with ``NATTEN_HOPPER_BWD_ORDER=natural``). Run by ci/gpu.sh,
once with ``--check-order`` (no sanitizer: the gradients must be bit-identical to the natural
order's) and under ``compute-sanitizer --tool memcheck|racecheck``. Exit status 1 when a gradient
is off the float64 oracle or (with ``--check-order``) differs from the natural order's.
"""

import os
import sys

os.environ["NATTEN_HOPPER_PERSISTENT"] = "4"  # before natten-kernels' first Hopper launch

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "natten", "tests"))

import natten  # noqa: E402
from gpu_sanitize_hopper_bwd import grad_errors  # noqa: E402
from natten import ops  # noqa: E402
from oracle import na_oracle  # noqa: E402

# B, shape, kernel, stride, causal, H, H_kv, D, D_v, dtype: 16 work tiles (8 key tiles of 128 tokens
# x 2 kv heads) and case 2 (one head of 960 tokens; see above).
CASES = [
    (1, (1024,), (255,), (1,), (True,), 4, 2, 64, 64, torch.float16),
    (1, (24, 40), (13, 9), (2, 1), (False, False), 1, 1, 128, 96, torch.bfloat16),
]
TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def main() -> int:
    if torch.cuda.get_device_capability() != (9, 0) or not natten._libnatten.has_backward():
        print("dK / dV order: skipped, needs compute capability 9.0 and natten-kernels >= 1.1")
        return 0
    check = "--check-order" in sys.argv
    ops.set_poison_outputs(True)  # unwritten gradient elements show as NaN
    bad = 0
    for b, shape, ks, st, ca, h, hkv, d, dv, dt in CASES:
        gen = torch.Generator(device="cuda").manual_seed(11)
        g = [torch.randn(b, *shape, h, d, device="cuda", dtype=dt, generator=gen),
             torch.randn(b, *shape, hkv, d, device="cuda", dtype=dt, generator=gen),
             torch.randn(b, *shape, hkv, dv, device="cuda", dtype=dt, generator=gen)]
        d_out = (torch.randn(b, *shape, h, dv, device="cuda", generator=gen) / dv**0.5).to(dt)
        d_lse = torch.randn(b, *shape, h, device="cuda", generator=gen)
        op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]

        def run(x, y, z):
            return op(x, y, z, ks, st, 1, ca, backend="hopper-fna", return_lse=True)

        def grads():
            xs = [t.detach().requires_grad_(True) for t in g]
            out, lse = run(*xs)
            return torch.autograd.grad((out, lse), xs, (d_out, d_lse))

        note = ""
        ok = True
        if check:
            got = {}
            for mode in ("natural", "default"):
                os.environ["NATTEN_HOPPER_BWD_ORDER"] = mode
                got[mode] = grads()
            os.environ.pop("NATTEN_HOPPER_BWD_ORDER")
            ok = all(torch.equal(x, y) for x, y in zip(got["natural"], got["default"]))
            note = f"ordered == natural {ok}, "
        errs, finite = grad_errors(run, lambda x, y, z: na_oracle(x, y, z, ks, st, 1, ca), g, d_out, d_lse)
        ok = ok and finite and max(errs) <= TOL[dt]
        bad += not ok
        print(f"dK / dV order B={b} {shape} k={ks} s={st} c={ca} H={h}/{hkv} D={d}/{dv} {dt} on 4 CTAs: {note}"
              f"scaled max err dq/dk/dv {errs[0]:.2e}/{errs[1]:.2e}/{errs[2]:.2e} {'ok' if ok else 'FAIL'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
