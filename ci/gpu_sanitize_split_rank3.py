"""compute-sanitizer case for the Hopper forward's split tail on a rank-3 problem (natten-kernels >= 1.3.7).

The configuration of the largest split-tail test case (rank 3, batch 2 folded into X, stride (1, 2, 1),
head dim 32, pingpong, q tile 2x8x8, kv tile 4x4x8, fp16) on a shape small enough for racecheck: 48
work tiles on 22 persistent CTAs (``NATTEN_HOPPER_PERSISTENT=22``, read once per process, hence its own
process) leave a last round of 4 tiles that the split tail cuts into 2 key-walk chunks each, merged by
the combine kernel. Run by ci/gpu.sh, once with ``--check-split`` (no sanitizer: torch.profiler must
see the combine kernel) and under ``compute-sanitizer --tool memcheck|racecheck``. Exit status 1 when
the result is off the float64 oracle or (with ``--check-split``) the launch was not split.
"""

import os
import sys

os.environ["NATTEN_HOPPER_PERSISTENT"] = "22"  # before natten-kernels' first Hopper launch

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "natten", "tests"))

import natten  # noqa: E402
from natten import ops  # noqa: E402
from oracle import na_oracle  # noqa: E402


def main() -> int:
    if torch.cuda.get_device_capability() != (9, 0):
        print("split rank 3: skipped, needs compute capability 9.0 (hopper-fna)")
        return 0
    shape, ks, st, ca, b, h, d = (6, 16, 16), (5, 11, 13), (1, 2, 1), (False,) * 3, 2, 2, 32
    g = torch.Generator(device="cuda").manual_seed(5)
    q, k, v = (torch.randn(b, *shape, h, d, device="cuda", dtype=torch.float16, generator=g) for _ in range(3))

    def call():
        return natten.na3d(q, k, v, ks, st, 1, ca, backend="hopper-fna", return_lse=True, kernel_schedule="pingpong",
                           q_tile_shape=(2, 8, 8), kv_tile_shape=(4, 4, 8))

    ops.set_poison_outputs(True)  # unwritten elements show as NaN
    if "--check-split" in sys.argv:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out, lse = call()
            torch.cuda.synchronize()
        names = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
        if not any("split_combine" in n for n in names):
            print(f"split rank 3: FAIL, the launch was not split (kernels: {sorted(names)})")
            return 1
    else:
        out, lse = call()
    ref, ref_lse = na_oracle(q.double().cpu(), k.double().cpu(), v.double().cpu(), ks, st, 1, ca)
    err = max((out.double().cpu() - ref).abs().max().item(), (lse.double().cpu() - ref_lse).abs().max().item())
    ok = err <= 1e-2
    print(f"split rank 3 {shape} k={ks} s={st} B={b} H={h} D={d} fp16 pingpong, 48 tiles on 22 CTAs: "
          f"max err {err:.2e} {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
