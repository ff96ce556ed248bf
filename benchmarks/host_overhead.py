"""Host time of one fused forward call, on top of the bare kernel launch.

CPU wall clock per call on a tiny problem (the GPU never becomes the bottleneck), synchronizing
only at the end, for:
  * the bare launch: one ctypes call into natten-kernels with a prepared parameter struct and
    preallocated outputs (the floor: what any caller of the library pays);
  * the registered torch operator `torch.ops.natten.fna_forward` (what torch.compile traces);
  * the public API `natten.na2d(..., backend="cutlass-fna")` and with automatic backend choice.
Reports each one's overhead above the bare launch.
"""

import time

import torch

import natten
from natten import _libnatten, ops  # noqa: F401  (ops registers torch.ops.natten)

N = 3000


def per_call_us(fn) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
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
    prepared = _libnatten.PreparedFnaForward(q, k, v, out, lse, ks, st, dl, ca, 0.125)
    rows = [
        ("bare launch (prepared struct, ctypes)", lambda: prepared.launch(q, k, v, out, lse)),
        ("_libnatten.fna_forward (marshal each call)",
         lambda: _libnatten.fna_forward(q, k, v, out, lse, ks, st, dl, ca, 0.125)),
        ("torch.ops.natten.fna_forward",
         lambda: torch.ops.natten.fna_forward(q, k, v, ks, st, dl, ca, 0.125, [], [])),
        ("natten.na2d(backend='cutlass-fna')", lambda: natten.na2d(q, k, v, 3, backend="cutlass-fna")),
        ("natten.na2d(auto backend)", lambda: natten.na2d(q, k, v, 3)),
    ]
    with torch.no_grad():
        times = [(name, per_call_us(fn)) for name, fn in rows]
    bare = times[0][1]
    for name, t in times:
        print(f"{name:45s} {t:7.1f} us/call  (+{t - bare:5.1f} us over the bare launch)")


if __name__ == "__main__":
    main()
