"""Benchmark of the FlexAttention backend (flex-fna) on the BENCHMARKS.md rows, on one GPU.

    python benchmarks/bench_flex.py --out DIR [--dtype bf16] [--rows flux-4k hunyuan ...]
        [--no-bwd] [--no-plain] [--plain-bwd] [--secondary] [--variants] [--budget-s 215]

For every row, in the same process and on the same tensors (heads-last ``[B, *grid, H, D]``):

* ``cudnn``: ``scaled_dot_product_attention`` restricted to cuDNN (dense baseline; the
  ``[B, H, N, D]`` views of the heads-last tensors, no copies);
* ``flex-fna``: ``natten.naXd(..., backend="flex-fna")`` end to end: token permutation into tiles,
  compiled FlexAttention with a tile-aware block mask, permutation back (logsumexp computed too);
* ``perm``: the token permutation alone (q, k, v into tiles and the output back), included above;
* ``plain``: compiled FlexAttention on the row-major flattened tokens with an ordinary NA
  ``mask_mod`` and 128x128 blocks (the "plain-mask" FlexAttention of PERF-NOTES.md).

Times are medians of ``triton.testing.do_bench(..., return_mode="median")`` after a warm-up call
that also compiles (its time is reported as "compile s"). Speedup = cuDNN time / time, forward and
forward+backward. Effective TFLOP/s counts useful FLOPs only (SEMANTICS.md). A global time budget
(``--budget-s``) keeps the whole suite under 4 minutes on an H100: forward of every primary row
first, then forward+backward, then the optional parts; whatever does not fit is listed as skipped.
Writes DIR/bench_flex.json and DIR/bench_flex.md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

try:
    import natten
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages",
                                    "natten", "src"))
    import natten
from natten.backends import flex
from natten.window import WindowSpec

# id: (batch, grid, heads, heads_kv, head_dim, window, stride, dilation, causal)
PRIMARY = {
    "1d-32k": (1, (32768,), 1, 1, 128, (2048,), (1,), (1,), (False,)),
    "1d-32k-s256": (1, (32768,), 1, 1, 128, (2048,), (256,), (1,), (False,)),
    "flux-4k": (1, (256, 256), 24, 24, 128, (80, 80), (1, 1), (1, 1), (False, False)),
    "flux-4k-gna": (1, (256, 256), 24, 24, 128, (80, 80), (16, 16), (1, 1), (False, False)),
    "hunyuan": (1, (30, 48, 80), 24, 24, 128, (18, 24, 24), (1, 1, 1), (1, 1, 1),
                (False, False, False)),
    "hunyuan-gna": (1, (30, 48, 80), 24, 24, 128, (18, 24, 24), (16, 8, 8), (1, 1, 1),
                    (False, False, False)),
}
SECONDARY = {
    "nat-small": (64, (56, 56), 4, 4, 32, (7, 7), (1, 1), (1, 1), (False, False)),
    "dilated": (16, (64, 64), 8, 8, 64, (13, 13), (1, 1), (2, 2), (False, False)),
    "causal-video": (1, (16, 44, 80), 32, 32, 128, (8, 16, 16), (1, 1, 1), (1, 1, 1),
                     (True, False, False)),
    "gqa": (1, (256, 256), 24, 4, 128, (80, 80), (1, 1), (1, 1), (False, False)),
}
# Extra tile configurations (--variants): 64-token query tiles raise the tile bound (PERF-NOTES).
VARIANTS = {
    "hunyuan": [((2, 8, 4), (2, 4, 8)), ((2, 8, 8), (2, 8, 8))],
    "flux-4k": [((8, 8), (8, 8)), ((16, 8), (16, 8))],
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
OPS = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}
# --cpu-smoke (a CPU dry run of this script's logic on tiny rows; numbers meaningless)
SMOKE_ROWS = {
    "tiny-1d": (1, (300,), 2, 2, 32, (33,), (1,), (1,), (False,)),
    "tiny-2d": (1, (24, 20), 2, 2, 32, (7, 5), (2, 1), (1, 1), (False, True)),
    "tiny-dil": (2, (20, 18), 2, 1, 16, (5, 4), (1, 1), (2, 3), (False, False)),
}
DEV = "cuda"
SDPA_BACKEND = "CUDNN_ATTENTION"


class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def do_bench(fn: Callable[[], Any], rep_ms: float, grad_to_none=None) -> float:
    if DEV == "cpu":  # --cpu-smoke
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    from triton.testing import do_bench as tdb

    return float(tdb(fn, warmup=max(1.0, rep_ms / 4), rep=rep_ms, grad_to_none=grad_to_none,
                     return_mode="median"))


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed_first_call(fn: Callable[[], Any]) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------
# Plain-mask FlexAttention: row-major tokens, ordinary mask_mod, 128-token blocks
# ------------------------------------------------------------------------------------------------


def plain_na_mask_mod(shape, ks, st, dl, ca):
    """The SEMANTICS.md rule on row-major flat indices (original coordinates, dilation inside)."""
    rank = len(shape)
    axes = []
    for a in range(rank):
        axes.append((math.prod(shape[a + 1:]), shape[a], ks[a], st[a], dl[a], ca[a]))

    def mask_mod(b, h, q_idx, kv_idx):
        res = None
        for a, (stride_a, n, K, s, d, causal) in enumerate(axes):
            qa = q_idx // stride_a if stride_a > 1 else q_idx
            ka = kv_idx // stride_a if stride_a > 1 else kv_idx
            if a > 0:
                qa = qa % n
                ka = ka % n
            if d > 1:
                g = qa % d
                same = (ka % d) == g
                i, j = qa // d, ka // d
                ng = (n - g + d - 1) // d
            else:
                same = None
                i, j, ng = qa, ka, n
            if causal:
                leader = s * (i // s) + s - 1
                leader = torch.minimum(leader, ng - 1) if d > 1 else torch.clamp(leader, max=n - 1)
                ok = (j <= i) & (leader - j < K)
            else:
                left, right = K // 2, K // 2 + K % 2 - 1
                leader = s * (i // s) + s // 2
                if d > 1:
                    c = torch.clamp(torch.minimum(leader, ng - 1 - right), min=left)
                else:
                    c = torch.clamp(leader, min=left, max=n - 1 - right)
                ok = (j >= c - left) & (j <= c + right)
            if same is not None:
                ok = ok & same
            res = ok if res is None else res & ok
        return res

    return mask_mod


def plain_block_mask(mask_mod, N: int, device, block: int = 128, rows: int = 2048):
    """Exact partial/full block mask of ``mask_mod`` over ``N x N`` tokens, evaluated in row
    chunks (bounded memory; the dense ``create_mask`` would need N^2 bytes at once)."""
    nb = -(-N // block)
    any_b = torch.zeros(nb, nb, dtype=torch.bool, device=device)
    all_b = torch.zeros(nb, nb, dtype=torch.bool, device=device)
    kv = torch.arange(nb * block, device=device)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    for r0 in range(0, nb * block, rows):
        r1 = min(nb * block, r0 + rows)
        q = torch.arange(r0, r1, device=device)
        m = mask_mod(zero, zero, q[:, None], kv[None, :])
        valid = (q[:, None] < N) & (kv[None, :] < N)
        m = m & valid
        blk = m.reshape((r1 - r0) // block, block, nb, block)
        any_b[r0 // block: r1 // block] = blk.any(3).any(1)
        # a block is full if every in-range element is attended
        full = (m | ~valid).reshape((r1 - r0) // block, block, nb, block).all(3).all(1)
        all_b[r0 // block: r1 // block] = full & any_b[r0 // block: r1 // block]
    partial = any_b & ~all_b
    num, idx = flex._dense_to_ordered(partial[None, None].cpu())
    fnum, fidx = flex._dense_to_ordered(all_b[None, None].cpu())
    bm = flex.BlockMask.from_kv_blocks(num, idx, fnum, fidx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                       seq_lengths=(N, N))
    return bm.to(device)


# ------------------------------------------------------------------------------------------------
# One row
# ------------------------------------------------------------------------------------------------


def row_flops(spec: WindowSpec, B: int, H: int, D: int, Dv: int) -> float:
    return 2.0 * spec.num_pairs() * (D + Dv) * B * H


def make_tensors(row, dtype):
    B, shape, H, Hkv, D = row[:5]
    g = torch.Generator(device=DEV).manual_seed(0)
    q = torch.randn(B, *shape, H, D, device=DEV, dtype=dtype, generator=g)
    k = torch.randn(B, *shape, Hkv, D, device=DEV, dtype=dtype, generator=g)
    v = torch.randn(B, *shape, Hkv, D, device=DEV, dtype=dtype, generator=g)
    return q, k, v


def flat_views(q, k, v):
    B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
    qt = q.reshape(B, -1, H, D).transpose(1, 2)
    kt = k.reshape(B, -1, k.shape[-2], D).transpose(1, 2)
    vt = v.reshape(B, -1, v.shape[-2], v.shape[-1]).transpose(1, 2)
    return qt, kt, vt


def measure(name: str, fn_fwd, leaves, backward: bool, rep_ms: float, res: Dict, key: str) -> None:
    """Compile/warm ``fn_fwd``, then time fwd (and fwd+bwd); results under ``key``."""
    try:
        if not backward:
            with torch.no_grad():
                res[f"{key}_compile_s"] = timed_first_call(fn_fwd)
                res[f"{key}_fwd_ms"] = do_bench(fn_fwd, rep_ms)
        else:
            for t in leaves:
                t.requires_grad_(True)
            out0 = fn_fwd()
            dout = torch.randn_like(out0)
            del out0

            def fb():
                fn_fwd().backward(dout)

            res[f"{key}_bwd_compile_s"] = timed_first_call(fb)
            res[f"{key}_fwdbwd_ms"] = do_bench(fb, rep_ms, grad_to_none=list(leaves))
            for t in leaves:
                t.requires_grad_(False)
                t.grad = None
    except Exception as e:  # report and go on with the other measurements
        res[f"{key}{'_fwdbwd' if backward else '_fwd'}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        for t in leaves:
            t.requires_grad_(False)
            t.grad = None
        if DEV == "cuda":
            torch.cuda.empty_cache()


def run_row(rid: str, row, dtype, args, budget: Budget, backward: bool, res: Dict,
            tiles=None) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    B, shape, H, Hkv, D, ks, st, dl, ca = row
    spec = WindowSpec(shape, ks, st, dl, ca)
    q, k, v = make_tensors(row, dtype)
    op = OPS[len(shape)]
    qtile, kvtile = tiles if tiles is not None else flex.choose_tile_shapes(shape, ks, st, dl, ca)
    res.setdefault("tiles", f"{'x'.join(map(str, qtile))}/{'x'.join(map(str, kvtile))}")
    kw = dict(kernel_size=ks, stride=st, dilation=dl, is_causal=ca, backend="flex-fna",
              q_tile_shape=qtile, kv_tile_shape=kvtile)
    rep = args.rep_ms
    sfx = "fwdbwd" if backward else "fwd"

    # cuDNN dense baseline (the [B, H, N, D] views are taken inside the timed call: free)
    if f"cudnn_{sfx}_ms" not in res:
        gqa = Hkv != H
        kd, vd = k, v
        if gqa:  # GQA through cuDNN if it takes it, else on expanded (pre-copied) K/V
            try:
                qt, kt, vt = flat_views(q, k, v)
                with sdpa_kernel([getattr(SDPBackend, SDPA_BACKEND)]):
                    sdpa(qt[:, :, :256], kt[:, :, :256], vt[:, :, :256], enable_gqa=True)
            except Exception:
                kd = k.repeat_interleave(H // Hkv, dim=-2)
                vd = v.repeat_interleave(H // Hkv, dim=-2)
                gqa = False
                res["cudnn_note"] = "GQA on expanded K/V"

        def cudnn():
            qt, kt, vt = flat_views(q, kd, vd)
            with sdpa_kernel([getattr(SDPBackend, SDPA_BACKEND)]):
                return sdpa(qt, kt, vt, enable_gqa=gqa)

        measure("cudnn", cudnn, (q, kd, vd), backward, rep, res, "cudnn")

    # natten flex-fna, end to end
    def ours():
        return op(q, k, v, **kw)

    flex.GUARD_SKIP_REFUSALS.clear()
    measure("flex-fna", ours, (q, k, v), backward, rep, res, "flex")
    if flex.GUARD_SKIP_REFUSALS:  # prepared calls that kept dynamo's guards (host time), and why
        res[f"flex_{sfx}_guards_note"] = "; ".join(
            f"{n} calls: {why}" for why, n in flex.GUARD_SKIP_REFUSALS.items())

    # token permutation alone (forward only)
    if not backward and "perm_ms" not in res:
        plan = flex._get_na_plan(spec, tuple(qtile), tuple(kvtile), q.device)
        out_like = torch.empty_like(q)

        ql = flex._TileLayout(tuple(shape), tuple(qtile), plan.q_ext, dl, plan.q_front)
        kl = flex._TileLayout(tuple(shape), tuple(kvtile), plan.kv_ext, dl, plan.kv_front)
        y = ql.to_tiles(torch.empty_like(q))

        def perm():  # what a call pays: q, k, v into tiles, the output back
            return ql.to_tiles(q), kl.to_tiles(k), kl.to_tiles(v), ql.from_tiles(y, B)

        def perm_generic():  # the same copies on the data's own element type (before widening)
            return (ql._to_tiles_copy(q), kl._to_tiles_copy(k), kl._to_tiles_copy(v),
                    ql._from_tiles_copy(y, B))

        with torch.no_grad():
            res["perm_ms"] = do_bench(perm, rep)
            res["perm_generic_ms"] = do_bench(perm_generic, rep)
        moved = 2 * sum(t.numel() * t.element_size() for t in (q, k, v, q))
        res["perm_TBps"] = moved / (res["perm_ms"] * 1e-3) / 1e12
        res["perm_generic_TBps"] = moved / (res["perm_generic_ms"] * 1e-3) / 1e12
        bq, bk = plan.block_size
        bm = plan.block_mask
        nfull = 0 if bm.full_kv_num_blocks is None else int(bm.full_kv_num_blocks.sum())
        npart = int(bm.kv_num_blocks.sum())
        res["blocks_full"], res["blocks_partial"] = nfull, npart
        res["tile_bound"] = (math.prod(shape) ** 2 / plan.groups) / ((nfull + npart) * bq * bk) \
            if plan.groups == 1 else None

    # plain-mask FlexAttention (row-major, 128x128 blocks), and "NATTEN-style": what NATTEN's flex
    # backend runs when no tile shapes are given (row-major tokens, an NA mask_mod, 64x64 blocks,
    # kernel options BLOCK_M = BLOCK_N = 64 and the non-decoding kernel: NATTEN's legacy
    # FORCE_USE_FLEX_ATTENTION, which BACKEND="TRITON" supersedes). Both block masks are
    # built here in row chunks; NATTEN builds its one with create_block_mask over N x N at once.
    plain_variants = (
        ("plain", 128, {"BACKEND": "TRITON"}),
        ("nattenstyle", 64, {"BACKEND": "TRITON", "BLOCK_M": 64, "BLOCK_N": 64}),
    )
    if tiles is None and not args.no_plain and (not backward or args.plain_bwd):
        for key, block, plain_opts in plain_variants:
            if f"_{key}_bm" not in res:
                t = time.perf_counter()
                mm = plain_na_mask_mod(shape, ks, st, dl, ca)
                res[f"_{key}_bm"] = plain_block_mask(mm, math.prod(shape), q.device, block=block)
                res[f"{key}_mask_build_s"] = time.perf_counter() - t
            bm = res[f"_{key}_bm"]
            compiled = flex._compiled_flex()
            from torch.nn.attention.flex_attention import AuxRequest

            def plain(bm=bm, plain_opts=plain_opts):
                qt, kt, vt = flat_views(q, k, v)
                out, aux = compiled(qt, kt, vt, block_mask=bm, enable_gqa=Hkv != H,
                                    kernel_options=plain_opts, return_aux=AuxRequest(lse=True))
                return out

            measure(key, plain, (q, k, v), backward, rep, res, key)
    elif backward and tiles is None and not args.no_plain:
        res["plain_fwdbwd_error"] = "skipped (pass --plain-bwd)"

    flops = row_flops(spec, B, H, D, D) * (3.5 if backward else 1.0)
    for key in ("cudnn", "flex", "plain", "nattenstyle"):
        ms = res.get(f"{key}_{sfx}_ms")
        if ms:
            res[f"{key}_{sfx}_tflops"] = flops / ms / 1e9
    base = res.get(f"cudnn_{sfx}_ms")
    for key in ("flex", "plain", "nattenstyle"):
        ms = res.get(f"{key}_{sfx}_ms")
        if ms and base:
            res[f"{key}_{sfx}_speedup"] = base / ms
    res["flop_bound"] = math.prod(n * n for n in shape) / spec.num_pairs()
    del q, k, v
    if DEV == "cuda":
        torch.cuda.empty_cache()


def run_fmha(args, dtype, backward: bool, res: Dict) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    B, N, H, D = (4, 8192, 16, 128) if DEV == "cuda" else (1, 256, 2, 32)
    g = torch.Generator(device=DEV).manual_seed(0)
    q, k, v = (torch.randn(B, N, H, D, device=DEV, dtype=dtype, generator=g) for _ in range(3))
    sfx = "fwdbwd" if backward else "fwd"

    def cudnn():
        with sdpa_kernel([getattr(SDPBackend, SDPA_BACKEND)]):
            return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    measure("cudnn", cudnn, (q, k, v), backward, args.rep_ms, res, "cudnn")
    measure("flex-fmha", lambda: natten.attention(q, k, v, backend="flex-fmha"), (q, k, v),
            backward, args.rep_ms, res, "flex")
    flops = 4.0 * N * N * D * B * H * (3.5 if backward else 1.0)
    for key in ("cudnn", "flex"):
        ms = res.get(f"{key}_{sfx}_ms")
        if ms:
            res[f"{key}_{sfx}_tflops"] = flops / ms / 1e9
    if res.get(f"flex_{sfx}_ms") and res.get(f"cudnn_{sfx}_ms"):
        res[f"flex_{sfx}_speedup"] = res[f"cudnn_{sfx}_ms"] / res[f"flex_{sfx}_ms"]
    res["flop_bound"] = 1.0
    res["tiles"] = "128/128"


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def markdown(results: List[Dict], meta: Dict) -> str:
    lines = [
        f"flex-fna on {meta['device']}, {meta['dtype']}, torch {meta['torch']} ({meta['date']}); "
        f"speedup = cuDNN SDPA time / time (same process, same tensors); flex-fna includes the "
        f"token permutation (also shown alone as perm ms, with its bandwidth, and the same copies on the "
        f"data's own element type: generic). plain: row-major tokens, NA mask_mod, 128x128 blocks; "
        f"NATTEN-style: the same with 64x64 blocks and NATTEN's flex kernel options (its default "
        f"without tile shapes).",
        "",
        "| row | tiles Q/KV | FLOP bound | tile bound | cuDNN fwd ms | flex-fna fwd ms | perm ms "
        "| perm TB/s (generic) | **flex-fna fwd x** | plain fwd x | NATTEN-style fwd x | flex TFLOP/s | cuDNN fwd+bwd ms | flex-fna fwd+bwd ms "
        "| **flex-fna fwd+bwd x** | plain fwd+bwd x | compile s (fwd/bwd) | notes |",
        "|" + "---|" * 18,
    ]
    for r in results:
        notes = [f"{k}: {v}" for k, v in r.items()
                 if k.endswith("_error") or k.endswith("_note") or k == "skipped"]
        lines.append(
            "| " + " | ".join([
                r["id"], r.get("tiles", "-"), _f(r.get("flop_bound"), "{:.1f}x"),
                _f(r.get("tile_bound"), "{:.1f}x"), _f(r.get("cudnn_fwd_ms"), "{:.3f}"),
                _f(r.get("flex_fwd_ms"), "{:.3f}"), _f(r.get("perm_ms"), "{:.3f}"),
                f"{_f(r.get('perm_TBps'), '{:.2f}')} ({_f(r.get('perm_generic_TBps'), '{:.2f}')})",
                _f(r.get("flex_fwd_speedup"), "**{:.2f}x**"), _f(r.get("plain_fwd_speedup"), "{:.2f}x"),
                _f(r.get("nattenstyle_fwd_speedup"), "{:.2f}x"),
                _f(r.get("flex_fwd_tflops"), "{:.0f}"), _f(r.get("cudnn_fwdbwd_ms"), "{:.3f}"),
                _f(r.get("flex_fwdbwd_ms"), "{:.3f}"), _f(r.get("flex_fwdbwd_speedup"), "**{:.2f}x**"),
                _f(r.get("plain_fwdbwd_speedup"), "{:.2f}x"),
                f"{_f(r.get('flex_compile_s'), '{:.0f}')}/{_f(r.get('flex_bwd_compile_s'), '{:.0f}')}",
                "; ".join(notes).replace("|", "/").replace("\n", " ")[:400] or "",
            ]) + " |"
        )
    lines.append("")
    lines.append(f"Total wall time {meta['wall_s']:.0f} s (budget {meta['budget_s']:.0f} s).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for bench_flex.json / bench_flex.md")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--rows", nargs="*", default=None,
                   help=f"subset of {list(PRIMARY) + list(SECONDARY) + ['dense-fmha']}")
    p.add_argument("--secondary", action="store_true", help="also run the secondary rows (fwd)")
    p.add_argument("--no-bwd", action="store_true", help="forward only")
    p.add_argument("--no-plain", action="store_true", help="skip plain-mask FlexAttention")
    p.add_argument("--plain-bwd", action="store_true", help="also fwd+bwd of plain-mask flex")
    p.add_argument("--variants", action="store_true", help="extra tile shapes (fwd) for some rows")
    p.add_argument("--rep-ms", type=float, default=60.0, help="do_bench rep (ms)")
    p.add_argument("--budget-s", type=float, default=215.0,
                   help="stop starting new measurements after this many seconds")
    p.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    global DEV, SDPA_BACKEND
    if args.cpu_smoke:  # dry run of the script's logic on CPU (FlexAttention eager / "eager" compile)
        DEV, SDPA_BACKEND = "cpu", "MATH"
        flex._COMPILE_BACKEND, flex._ALLOW_COMPILE_ON_CPU = "eager", True
        PRIMARY.clear()
        PRIMARY.update(SMOKE_ROWS)
        SECONDARY.clear()
        args.dtype = "fp32"
        DTYPES["fp32"] = torch.float32
    elif not torch.cuda.is_available():
        sys.exit("bench_flex.py needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    dtype = DTYPES[args.dtype]
    natten.allow_flex_compile(True, backprop=True)
    budget = Budget(args.budget_s)

    all_rows = dict(PRIMARY, **SECONDARY)
    if args.rows:
        names = list(args.rows)
    else:
        names = list(PRIMARY) + (list(SECONDARY) + ["dense-fmha"] if args.secondary else [])
    unknown = [n for n in names if n not in all_rows and n != "dense-fmha"]
    if unknown:
        p.error(f"unknown rows {unknown}")
    results: Dict[str, Dict] = {n: {"id": n} for n in names}
    plan: List[Tuple[str, str, Optional[tuple]]] = [(n, "fwd", None) for n in names]
    if not args.no_bwd:
        # fwd+bwd of the primary rows, the largest last
        order = sorted(names, key=lambda n: math.prod(all_rows[n][1]) * all_rows[n][2]
                       if n in all_rows else 0)
        plan += [(n, "fwdbwd", None) for n in order]
    if args.variants:
        for n in names:
            for t in VARIANTS.get(n, []):
                vid = f"{n} [{'x'.join(map(str, t[0]))}/{'x'.join(map(str, t[1]))}]"
                results[vid] = {"id": vid}
                plan.append((vid, "fwd", t))

    stage_s: Dict[str, float] = {}
    for rid, what, tiles in plan:
        res = results[rid]
        # fwd+bwd costs about 2.5x its row's forward stage (compiles and timing)
        predicted = 2.5 * stage_s.get(rid, 0.0) if what == "fwdbwd" else 0.0
        if budget.left() <= 0 or predicted > budget.left():
            res.setdefault("skipped", "")
            res["skipped"] = (res["skipped"] + f" {what} (time budget)").strip()
            continue
        base = rid.split(" [")[0]
        print(f"[{budget.elapsed():6.1f}s] {rid} {what}", flush=True)
        t_stage = time.perf_counter()
        if base == "dense-fmha":
            run_fmha(args, dtype, what == "fwdbwd", res)
        else:
            run_row(base, all_rows[base], dtype, args, budget, what == "fwdbwd", res, tiles)
        if what == "fwd":
            stage_s[rid] = time.perf_counter() - t_stage

    ordered = [results[k] for k in results]
    for r in ordered:
        for key in [k for k in r if k.startswith("_")]:  # block masks kept between passes
            r.pop(key)
    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)",
        torch=torch.__version__, dtype=args.dtype,
        wall_s=budget.elapsed(), budget_s=args.budget_s, rep_ms=args.rep_ms,
    )
    md = markdown(ordered, meta)
    with open(os.path.join(args.out, "bench_flex.json"), "w") as f:
        json.dump({"meta": meta, "rows": ordered}, f, indent=2, default=str)
    with open(os.path.join(args.out, "bench_flex.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
