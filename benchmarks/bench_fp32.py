"""fp32 on cutlass-fna (CUDA-core kernels) against flex-fna in fp32 and cutlass-fna in fp16.

    python benchmarks/bench_fp32.py      # prints a markdown table (CUDA device needed)

There is no cuDNN fp32 attention to compare with, so this is not part of run.py's suite. TF32 is
turned off so that flex-fna's fp32 matmuls are fp32 too. Times are triton.testing.do_bench medians;
fwd+bwd is the forward plus out.backward(randn). Useful FLOPs: 4 * B * H * N * prod(kernel) * D.
"""

import math

import torch
from triton.testing import do_bench

import natten

ROWS = [  # id, batch, token grid, heads, head dim, kernel
    ("nat-small", 16, (56, 56), 4, 32, (7, 7)),
    ("2d-64x64-k13", 4, (64, 64), 8, 64, (13, 13)),
    ("3d-16x32x32-k7", 1, (16, 32, 32), 8, 128, (7, 7, 7)),
    ("1d-8k-k513", 2, (8192,), 8, 64, (513,)),
]
RUNS = (("cutlass-fna", torch.float32), ("flex-fna", torch.float32), ("cutlass-fna", torch.float16))


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print("| row | backend | dtype | fwd ms | fwd+bwd ms | fwd TFLOP/s (useful) |")
    print("|---|---|---|---|---|---|")
    for name, b, shape, h, d, ks in ROWS:
        op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
        flops = 4 * b * h * math.prod(shape) * math.prod(ks) * d
        for backend, dt in RUNS:
            q, k, v = (torch.randn(b, *shape, h, d, device="cuda", dtype=dt) for _ in range(3))
            try:
                tf = do_bench(lambda: op(q, k, v, ks, backend=backend), rep=200)
                qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
                go = torch.randn_like(q)

                def fwd_bwd() -> None:
                    op(qg, kg, vg, ks, backend=backend).backward(go)

                tb = do_bench(fwd_bwd, rep=200)
                print(f"| {name} | {backend} | {str(dt)[6:]} | {tf:.3f} | {tb:.3f} | {flops / tf / 1e9:.1f} |",
                      flush=True)
            except Exception as e:  # a backend that cannot run a row says why in the table
                print(f"| {name} | {backend} | {str(dt)[6:]} | error: {type(e).__name__}: {str(e)[:120]} | | |",
                      flush=True)


if __name__ == "__main__":
    main()
