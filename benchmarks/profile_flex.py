"""Where the time of a flex-fna call goes: host time vs GPU kernels, next to plain-mask flex.

    python benchmarks/profile_flex.py [--rows 1d-32k 1d-32k-s256] [--dtype bf16] [--iters 50]

For every row (BENCHMARKS.md ids of ``bench_flex.py``) and variant it prints

* ``bench ms``: the do_bench median (what the benchmark table reports),
* ``wall ms``: host wall time per call in a loop that synchronizes only at the end,
* ``gpu ms``: the sum of the CUDA kernel times per call (torch.profiler),
* the kernels that make up ``gpu ms``.

Variants: ``natten`` (``naXd(..., backend="flex-fna")`` end to end), ``kernel`` (the compiled
FlexAttention call alone on pre-tiled tensors, with our block mask and kernel options), ``plain``
(row-major tokens, 128x128 blocks, ordinary mask_mod), ``kernel-noguard`` (``kernel`` with
dynamo's guard evaluation skipped: how much of the host time is guards). If ``bench ms`` is close to ``wall ms`` and
well above ``gpu ms`` the call is host-bound.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_flex as bf  # noqa: E402

from natten.backends import flex  # noqa: E402
from natten.window import WindowSpec  # noqa: E402


def profile(fn: Callable[[], Any], iters: int) -> Tuple[float, float, List[Tuple[str, float]]]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprof

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) * 1e3 / iters
    with tprof(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    per: Dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name[:90]] += ev.device_time / 1e3 / iters
    kernels = sorted(per.items(), key=lambda kv: -kv[1])
    return wall, sum(per.values()), kernels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="+", default=["1d-32k", "1d-32k-s256"])
    ap.add_argument("--dtype", default="bf16", choices=sorted(bf.DTYPES))
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--cprofile", action="store_true",
                    help="also print where the host time of the natten call goes (cProfile)")
    args = ap.parse_args()
    dtype = bf.DTYPES[args.dtype]
    from torch.nn.attention.flex_attention import AuxRequest

    rows = {**bf.PRIMARY, **bf.SECONDARY}
    for rid in args.rows:
        B, shape, H, Hkv, D, ks, st, dl, ca = rows[rid]
        spec = WindowSpec(shape, ks, st, dl, ca)
        q, k, v = bf.make_tensors(rows[rid], dtype)
        qtile, kvtile = flex.choose_tile_shapes(shape, ks, st, dl, ca)
        op = bf.OPS[len(shape)]
        kw = dict(kernel_size=ks, stride=st, dilation=dl, is_causal=ca, backend="flex-fna",
                  q_tile_shape=qtile, kv_tile_shape=kvtile)
        plan = flex._get_na_plan(spec, tuple(qtile), tuple(kvtile), q.device)
        opts = flex._plan_options(plan, D, dtype, True)
        qt = flex._to_tiles(q, qtile, plan.q_ext, dl).transpose(1, 2)
        kt = flex._to_tiles(k, kvtile, plan.kv_ext, dl).transpose(1, 2)
        vt = flex._to_tiles(v, kvtile, plan.kv_ext, dl).transpose(1, 2)
        compiled = flex._compiled_flex()

        def natten_call():
            return op(q, k, v, **kw)

        def kernel_call():
            return compiled(qt, kt, vt, block_mask=plan.block_mask, scale=D ** -0.5,
                            enable_gqa=H != Hkv, kernel_options=opts,
                            return_aux=AuxRequest(lse=True))

        def kernel_skipguard_call():  # the same with dynamo's guard evaluation skipped
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return kernel_call()

        mm = bf.plain_na_mask_mod(shape, ks, st, dl, ca)
        pbm = bf.plain_block_mask(mm, math.prod(shape), q.device)

        def plain_call():
            a, b, c = bf.flat_views(q, k, v)
            return compiled(a, b, c, block_mask=pbm, scale=D ** -0.5, enable_gqa=H != Hkv,
                            kernel_options={"BACKEND": "TRITON"}, return_aux=AuxRequest(lse=True))

        def cudnn_call():
            from torch.nn.attention import SDPBackend, sdpa_kernel
            a, b, c = bf.flat_views(q, k, v)
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(a, b, c)

        print(f"\n## {rid} ({args.dtype}) tiles {qtile}/{kvtile} block_size {plan.block_size} "
              f"options {opts}")
        bm = plan.block_mask
        print(f"   ours: partial blocks {int(bm.kv_num_blocks.sum())}, full "
              f"{0 if bm.full_kv_num_blocks is None else int(bm.full_kv_num_blocks.sum())}; "
              f"plain: partial {int(pbm.kv_num_blocks.sum())}, full "
              f"{0 if pbm.full_kv_num_blocks is None else int(pbm.full_kv_num_blocks.sum())}")
        with torch.no_grad():
            for name, fn in (("cudnn", cudnn_call), ("natten", natten_call),
                             ("kernel", kernel_call), ("kernel-noguard", kernel_skipguard_call),
                             ("plain", plain_call)):
                bench = bf.do_bench(fn, 200)
                wall, gpu, kernels = profile(fn, args.iters)
                print(f"   {name:14s} bench {bench:.4f} ms  wall {wall:.4f} ms  gpu {gpu:.4f} ms")
                for kname, ms in kernels[:6]:
                    print(f"            {ms:.4f} ms  {kname}")
            if args.cprofile:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
                for _ in range(200):
                    natten_call()
                torch.cuda.synchronize()
                prof.disable()
                print("   host time of 200 natten calls (cProfile, cumulative):")
                pstats.Stats(prof).sort_stats("cumulative").print_stats(28)


if __name__ == "__main__":
    main()
