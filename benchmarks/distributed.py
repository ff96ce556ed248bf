"""Context parallelism on several GPUs (NCCL): equality with one GPU, throughput, bytes moved.

    python -m torch.distributed.run --nproc_per_node 2 benchmarks/distributed.py --out DIR
        [--backend flex-fna] [--rows hunyuan] [--checks 24] [--iters 5]

1. Equality: random rank-1/2/3 float64 problems (stride, dilation, causal on the sharded axis,
   uneven slabs, GQA, D_v != D, additional keys/values) with the reference backend on the GPUs:
   each rank's output, logsumexp and gradients equal the single-GPU result (tolerance 1e-10),
   strategies "halo" and "ulysses".
2. Throughput: forward+backward of the benchmark rows (bf16) on one GPU (the whole grid on
   rank 0's GPU, same backend) and context-parallel over all ranks, sharded along time; speedup =
   one-GPU time / distributed time (the slowest rank), for each strategy.
3. Bytes: per rank and call, what the halo exchange and the all-to-alls receive, against the halo
   lower bound (remote keys/values some local query attends).
Writes DIR/distributed.json and DIR/distributed.md (rank 0) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time

import torch
import torch.distributed as dist

try:
    import natten
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "natten", "src"))
    import natten
import natten.distributed as nd

ROWS = {
    # id: (batch, grid, heads, heads_kv, head_dim, window, stride, dilation, causal)
    "hunyuan": (1, (30, 48, 80), 24, 24, 128, (18, 24, 24), (1, 1, 1), (1, 1, 1), (False,) * 3),
    "hunyuan-gna": (1, (30, 48, 80), 24, 24, 128, (18, 24, 24), (16, 8, 8), (1, 1, 1), (False,) * 3),
    "causal-video": (1, (16, 44, 80), 32, 32, 128, (8, 16, 16), (1, 1, 1), (1, 1, 1), (True, False, False)),
}


def log(*a):
    if dist.get_rank() == 0:
        print(*a, flush=True)


def equality_checks(n: int, device) -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "natten", "tests"))
    import test_distributed as T  # the CPU test's case generator and checker

    world, rank = dist.get_world_size(), dist.get_rank()
    done = worst = 0
    t0 = time.time()
    for seed in range(7000, 7000 + n):
        case = T.random_case(random.Random(seed), world)
        for strategy in ("halo", "ulysses"):
            if strategy == "ulysses" and (case["H"] % world or case["Hkv"] % world):
                continue
            T.check_case(case, seed, strategy, rank, world, device=device)
            done += 1
    return {"problems": n, "checks": done, "tolerance": T.TOL, "seconds": round(time.time() - t0, 1)}


def timed(fn, iters: int) -> float:
    fn()
    torch.cuda.synchronize()
    dist.barrier()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = torch.tensor([sorted(times)[len(times) // 2]], device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def throughput(row: str, backend: str, iters: int) -> dict:
    B, grid, H, Hkv, D, ks, st, dl, ca = ROWS[row]
    world, rank = dist.get_world_size(), dist.get_rank()
    g = torch.Generator(device="cuda").manual_seed(0)
    dt = torch.bfloat16
    full = [torch.randn(B, *grid, h, D, device="cuda", dtype=dt, generator=g) for h in (H, Hkv, Hkv)]
    dout = torch.randn(B, *grid, H, D, device="cuda", dtype=dt, generator=g)
    kw = dict(kernel_size=ks, stride=st, dilation=dl, is_causal=ca)
    op = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(grid)]
    dop = {1: nd.na1d, 2: nd.na2d, 3: nd.na3d}[len(grid)]
    leaves = [t.clone().requires_grad_() for t in full]

    def single():
        out = op(*leaves, **kw, backend=backend)
        out.backward(dout)

    res = {"row": row, "backend": backend, "world": world}
    res["one_gpu_ms"] = timed(single, iters) * 1e3
    sizes = nd.split_sizes(grid[0], world)
    local = [nd.shard(t, 0, sizes, rank).clone().requires_grad_() for t in full]
    ldout = nd.shard(dout, 0, sizes, rank).contiguous()
    plan = nd.make_plan(local[0], ks, st, dl, ca, 0, sizes)
    stats = nd.plan_exchange(plan, *local)
    res["bytes_per_rank"] = {
        "halo": stats.halo_bytes, "halo_lower_bound": stats.halo_lower_bound_bytes,
        "ulysses": stats.ulysses_bytes,
    }
    for strategy in ("halo", "ulysses"):
        def dist_step():
            out = dop(*local, **kw, backend=backend, shard_axis=0, shard_sizes=sizes, strategy=strategy)
            out.backward(ldout)
        try:
            ms = timed(dist_step, iters) * 1e3
            res[f"{strategy}_ms"] = ms
            res[f"{strategy}_speedup"] = res["one_gpu_ms"] / ms
        except Exception as e:  # noqa: BLE001 - report and go on
            res[f"{strategy}_error"] = f"{type(e).__name__}: {e}"[:300]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--backend", default="flex-fna")
    ap.add_argument("--rows", nargs="*", default=["hunyuan"])
    ap.add_argument("--checks", type=int, default=24)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    device = torch.device("cuda", local_rank)
    report = {
        "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "world": dist.get_world_size(),
    }
    log("equality checks on NCCL ...")
    report["equality"] = equality_checks(a.checks, device)
    log("equality:", report["equality"])
    report["throughput"] = []
    for row in a.rows:
        log(f"throughput {row} ...")
        r = throughput(row, a.backend, a.iters)
        log(json.dumps(r))
        report["throughput"].append(r)
    if dist.get_rank() == 0:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "distributed.json"), "w") as f:
            json.dump(report, f, indent=1)
        lines = [
            f"# Context parallelism, {report['world']} x {report['device']} ({report['date']}, torch {report['torch']}, CUDA {report['cuda']})",
            "",
            f"Equality vs one GPU (float64, NCCL, tolerance {report['equality']['tolerance']}): "
            f"{report['equality']['checks']} checks on {report['equality']['problems']} random problems passed.",
            "",
            "| row | backend | 1 GPU fwd+bwd ms | halo ms | halo speedup | ulysses ms | ulysses speedup | halo MB/rank | lower bound MB | ulysses MB/rank |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["throughput"]:
            b = r["bytes_per_rank"]
            fmt = lambda k: f"{r[k]:.1f}" if k in r else r.get(k.replace('_ms', '_error'), "-")
            sp = lambda k: f"{r[k]:.2f}x" if k in r else "-"
            lines.append(
                f"| {r['row']} | {r['backend']} | {r['one_gpu_ms']:.1f} | {fmt('halo_ms')} | {sp('halo_speedup')} | "
                f"{fmt('ulysses_ms')} | {sp('ulysses_speedup')} | {b['halo'] / 1e6:.1f} | "
                f"{b['halo_lower_bound'] / 1e6:.1f} | {(b['ulysses'] or 0) / 1e6:.1f} |"
            )
        with open(os.path.join(a.out, "distributed.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
