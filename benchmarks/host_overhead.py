"""Host time of one fused forward call, on top of the bare kernel launch.

Times (CPU wall clock per call, GPU kept busy-free with a tiny problem, synchronizing only at the
end) of: the bare ctypes launch into natten-kernels with preallocated outputs; the registered torch
op (`torch.ops.natten.fna_forward`); and the public `natten.na2d(..., backend="cutlass-fna")` call.
Reports each one's overhead over the bare launch.
"""

import time

import torch

import natten
from natten import _libnatten

N = 3000


def per_call_us(fn) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(N):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / N * 1e6)
    return best


def main() -> None:
    q = torch.randn(1, 16, 16, 1, 64, device="cuda", dtype=torch.float16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], device="cuda", dtype=torch.float32)
    ks, st, dl, ca = [3, 3], [1, 1], [1, 1], [False, False]
    bare = per_call_us(lambda: _libnatten.fna_forward(q, k, v, out, lse, ks, st, dl, ca, 0.125))
    op = per_call_us(lambda: torch.ops.natten.fna_forward(q, k, v, ks, st, dl, ca, 0.125, [], []))
    with torch.no_grad():
        api = per_call_us(lambda: natten.na2d(q, k, v, 3, backend="cutlass-fna"))
        api_auto = per_call_us(lambda: natten.na2d(q, k, v, 3))
    print(f"bare ctypes launch        {bare:7.1f} us/call")
    print(f"torch.ops.natten op       {op:7.1f} us/call  (+{op - bare:.1f} us over the bare launch)")
    print(f"natten.na2d(backend=...)  {api:7.1f} us/call  (+{api - bare:.1f} us over the bare launch)")
    print(f"natten.na2d(auto backend) {api_auto:7.1f} us/call  (+{api_auto - bare:.1f} us over the bare launch)")


if __name__ == "__main__":
    main()
