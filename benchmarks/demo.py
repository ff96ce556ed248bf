"""Run neighborhood attention on a default use case and report time and effective throughput.

Uses the GPU kernels when a GPU and natten-kernels are present, else the CPU reference backend.
    python benchmarks/demo.py [--shape 64 64] [--window 7 7] [--heads 4] [--dim 32]
"""

from __future__ import annotations

import argparse
import time

import torch

import natten
from natten.window import WindowSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs="+", default=[64, 64])
    p.add_argument("--window", type=int, nargs="+", default=[7, 7])
    p.add_argument("--stride", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    a = p.parse_args()
    rank = len(a.shape)
    if len(a.window) != rank:
        p.error(f"--window needs {rank} values (one per axis of --shape), got {len(a.window)}")
    stride = tuple(a.stride) if a.stride else (1,) * rank
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    q, k, v = (torch.randn(a.batch, *a.shape, a.heads, a.dim, device=device, dtype=dtype,
                           requires_grad=True) for _ in range(3))
    op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[rank]
    backends = natten.get_compatible_backends(q, k, v)
    print(f"device: {device}, dtype: {dtype}, compatible backends: {backends}")
    print(f"problem: batch {a.batch}, grid {tuple(a.shape)}, heads {a.heads}, head_dim {a.dim}, "
          f"window {tuple(a.window)}, stride {stride}")
    spec = WindowSpec(tuple(a.shape), tuple(a.window), stride, (1,) * rank, (False,) * rank)
    flops = 4.0 * spec.num_pairs() * a.dim * a.batch * a.heads

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    out = op(q, k, v, tuple(a.window), stride)  # warm-up
    out.sum().backward()
    fwd = bwd = 0.0
    for _ in range(a.iters):
        sync(); t0 = time.perf_counter()
        out = op(q, k, v, tuple(a.window), stride)
        sync(); t1 = time.perf_counter()
        out.sum().backward()
        sync(); t2 = time.perf_counter()
        fwd += t1 - t0
        bwd += t2 - t1
    fwd /= a.iters
    bwd /= a.iters
    print(f"forward  {fwd * 1e3:9.2f} ms  {flops / fwd / 1e9:8.2f} GFLOP/s effective")
    print(f"backward {bwd * 1e3:9.2f} ms  {2.5 * flops / bwd / 1e9:8.2f} GFLOP/s effective")
    dense_pairs = 1
    for n in a.shape:
        dense_pairs *= n * n
    print(f"attended pairs: {spec.num_pairs()} of {dense_pairs} ({dense_pairs / spec.num_pairs():.1f}x fewer than dense)")


if __name__ == "__main__":
    main()
