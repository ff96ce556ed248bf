"""compute-sanitizer subset for hopper-fna training on an H100 / H200: its forward, dQ on the SM90 dQ
kernel and dK / dV on the SM90 dK / dV kernel (max(D, Dv) 64 or 128; natten-kernels >= 1.3.1),
against autograd on the float64 oracle. Part of gpu_sanitize_subset.py; alone:

    compute-sanitizer --tool racecheck python3 ci/gpu_sanitize_hopper_bwd.py

Cases: rank 3 with batch 2 (the folded X axis), partial tiles, GQA, D != Dv, a causal 1-D case with
several query tiles per key tile.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "natten", "tests"))

import natten  # noqa: E402
from oracle import na_oracle  # noqa: E402

CASES = [  # shape, kernel, stride, causal, H, Hkv, D, Dv, dtype
    ((13, 11, 9), (5, 4, 3), (1, 2, 1), (False, True, False), 2, 1, 64, 64, torch.float16),
    ((300,), (130,), (1,), (True,), 4, 2, 128, 96, torch.bfloat16),
    ((37, 29), (7, 6), (2, 1), (True, False), 2, 2, 40, 128, torch.float16),
]


def grad_errors(run_op, oracle, g, d_out, d_lse):
    """Scaled max errors of dq / dk / dv from run_op(q, k, v) -> (out, lse) against autograd on
    oracle (in float64) for the upstream gradients (d_out, d_lse), and whether run_op's gradients
    are finite."""
    results = []
    for fn, cast in ((run_op, lambda t: t), (oracle, lambda t: t.double())):
        xs = [cast(t).detach().requires_grad_(True) for t in g]
        out, lse = fn(*xs)
        results.append(torch.autograd.grad((out, lse), xs, (cast(d_out), cast(d_lse))))
    errs = [(a.double() - b).abs().max().item() / max(1.0, b.abs().max().item()) for a, b in zip(*results)]
    return errs, all(bool(torch.isfinite(a).all()) for a in results[0])


def run(tol) -> int:
    """Runs the cases (H100 / H200 with a natten-kernels that trains); returns the number of failures."""
    bad = 0
    if torch.cuda.get_device_capability() != (9, 0) or not natten._libnatten.has_backward():
        print("hopper-fna backward cases skipped (needs compute capability 9.0 and natten-kernels >= 1.1)")
        return 0
    for shape, ks, st, ca, h, hkv, d, dv, dt in CASES:
        g = [torch.randn(2, *shape, h, d, device="cuda", dtype=dt),
             torch.randn(2, *shape, hkv, d, device="cuda", dtype=dt),
             torch.randn(2, *shape, hkv, dv, device="cuda", dtype=dt)]
        d_out = (torch.randn(2, *shape, h, dv, device="cuda") / dv**0.5).to(dt)
        d_lse = torch.randn(2, *shape, h, device="cuda")
        op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
        errs, finite = grad_errors(lambda a, b_, c: op(a, b_, c, ks, st, 1, ca, backend="hopper-fna", return_lse=True),
                                   lambda a, b_, c: na_oracle(a, b_, c, ks, st, 1, ca), g, d_out, d_lse)
        ok = max(errs) <= tol[dt] and finite
        bad += not ok
        print(f"hopper-fna backward {shape} k={ks} s={st} c={ca} H={h}/{hkv} D={d}/{dv} {dt}: scaled max err "
              f"dq/dk/dv {errs[0]:.2e}/{errs[1]:.2e}/{errs[2]:.2e} {'ok' if ok else 'FAIL'}")
    return bad


if __name__ == "__main__":
    n = run({torch.float16: 1e-2, torch.bfloat16: 5e-2})
    torch.cuda.synchronize()
    sys.exit(1 if n else 0)
