"""hopper-fna against cutlass-fna across head dims: the four Hopper kernels (32, 64, 128, 256), the
head dims between them (zero-filled by TMA up to the next kernel) and head_dim != head_dim_v.

    python benchmarks/bench_head_dims.py     # prints a markdown table (H100 / H200 needed)

Forward, fp16, triton.testing.do_bench medians. Useful FLOPs: 2 * B * H * N * prod(kernel) * (D + Dv)
(the padded columns are not counted). Feeds the automatic choice between the two kernels on SM 9.0
(``natten.backends.hopper.auto_reason``).
"""

import math

import torch
from triton.testing import do_bench

import natten

PROBLEMS = [  # id, batch, token grid, heads, kernel
    ("2d-128x128-k33", 1, (128, 128), 8, (33, 33)),
    ("3d-16x48x48-k7x15x15", 1, (16, 48, 48), 8, (7, 15, 15)),
]
HEAD_DIMS = [(64, 64), (96, 96), (128, 128), (128, 64), (64, 128), (160, 160), (192, 192), (256, 256),
             (192, 128), (40, 40), (32, 32)]
BACKENDS = ("hopper-fna", "cutlass-fna")


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("| problem | D | Dv | hopper-fna ms | cutlass-fna ms | hopper / cutlass speedup | hopper TFLOP/s (useful) |")
    print("|---|---|---|---|---|---|---|")
    for name, b, shape, h, ks in PROBLEMS:
        op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
        for d, dv in HEAD_DIMS:
            q, k = (torch.randn(b, *shape, h, d, device="cuda", dtype=torch.float16) for _ in range(2))
            v = torch.randn(b, *shape, h, dv, device="cuda", dtype=torch.float16)
            flops = 2 * b * h * math.prod(shape) * math.prod(ks) * (d + dv)
            ms = {}
            for backend in BACKENDS:
                try:
                    ms[backend] = do_bench(lambda: op(q, k, v, ks, backend=backend), rep=100)
                except Exception as e:  # a backend that cannot run a row says why in the table
                    ms[backend] = f"{type(e).__name__}: {str(e)[:80]}"
            hp, cu = ms["hopper-fna"], ms["cutlass-fna"]
            ok = isinstance(hp, float) and isinstance(cu, float)
            fmt = lambda x: f"{x:.3f}" if isinstance(x, float) else x  # noqa: E731
            print(f"| {name} | {d} | {dv} | {fmt(hp)} | {fmt(cu)} | {cu / hp if ok else float('nan'):.2f}x | "
                  f"{flops / hp / 1e9 if isinstance(hp, float) else float('nan'):.0f} |", flush=True)


if __name__ == "__main__":
    main()
