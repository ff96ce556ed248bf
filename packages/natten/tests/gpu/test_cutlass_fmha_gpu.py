"""cutlass-fmha (natten.attention on the fused kernel) on the GPU against the float64 oracle.

Fresh random problems every run (seed printed on failure): dense and causal (top-left), fewer /
more queries than keys, GQA, D_v != D, varlen through natten.attention; outputs poisoned with NaN
before each launch; gradients where the fused backward takes the problem.
"""

import os
import random

import pytest
import torch

from helpers import SweepFailures, assert_close, assert_grads_close
from oracle import attention_oracle, dense_attention

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import natten  # noqa: E402
from natten import _libnatten, ops  # noqa: E402
from natten.backends import cutlass  # noqa: E402

if not _libnatten.is_available():
    pytest.fail(f"natten-kernels is not loadable: {_libnatten.unavailable_reason()}", pytrace=False)

NUM_PROBLEMS = int(os.environ.get("NATTEN_GPU_FMHA_SWEEP", "150"))
SEED = int(os.environ.get("NATTEN_GPU_SEED", str(random.SystemRandom().randrange(1 << 30))))
TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4}  # fp32: CUDA-core kernels


def _rand(shape, dtype, g):
    return torch.randn(*shape, device="cuda", dtype=torch.float32, generator=g).to(dtype)


def test_cutlass_fmha_random_sweep():
    rng = random.Random(SEED)
    ops.set_poison_outputs(True)
    failures, fwd_checked, bwd_checked = SweepFailures(), 0, 0
    try:
        for case in range(NUM_PROBLEMS):
            nk = rng.choice([rng.randint(2, 300), rng.randint(300, 1500)])
            nq = rng.choice([nk, nk, rng.randint(1, nk), rng.randint(nk, 3 * nk)])
            causal = rng.random() < 0.5
            hkv = rng.choice([1, 2])
            h = hkv * rng.choice([1, 2, 3])
            d = rng.choice([32, 64, 128, 256, 8 * rng.randint(1, 32)])
            dv = d if rng.random() < 0.7 else rng.choice([32, 64, 128])
            dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
            b = rng.randint(1, 2)
            g = torch.Generator(device="cuda").manual_seed(rng.randrange(1 << 30))
            q = _rand((b, nq, h, d), dtype, g)
            k = _rand((b, nk, hkv, d), dtype, g)
            v = _rand((b, nk, hkv, dv), dtype, g)
            desc = (f"case {case} seed {SEED}: nq={nq} nk={nk} causal={causal} B={b} H={h} "
                    f"Hkv={hkv} D={d} Dv={dv} {dtype}")
            train = rng.random() < 0.5
            leaves = [t.clone().requires_grad_(train) for t in (q, k, v)]
            if train and cutlass.can_run_fmha(*leaves, is_causal=causal) is not None:
                train = False  # e.g. slabs (nq != nk) on a library whose backward refuses them
                leaves = [t.detach() for t in leaves]
            with failures.case():
                with torch.set_grad_enabled(train):
                    out, lse = natten.attention(*leaves, is_causal=causal, backend="cutlass-fmha",
                                                return_lse=True)
                q64, k64, v64 = (t.double().requires_grad_(train) for t in (q, k, v))
                mask = None
                if causal:  # top-left: key j visible to query i iff j <= i
                    mask = (torch.arange(nk, device="cuda")[None, :]
                            <= torch.arange(nq, device="cuda")[:, None])
                ref, ref_lse = dense_attention(q64, k64, v64, mask=mask)
                tol = TOL[dtype]
                assert_close(out, ref, atol=tol, rtol=0, what=f"{desc} out")
                assert_close(lse, ref_lse, atol=tol, rtol=0, what=f"{desc} lse")
                fwd_checked += 1
                if train:
                    dout = _rand(out.shape, dtype, g)
                    got = torch.autograd.grad(out, leaves, dout)
                    want = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
                    assert_grads_close(got, want, 1e-2, desc)
                    bwd_checked += 1
            if failures.full:
                break
    finally:
        ops.set_poison_outputs(False)
    print(f"cutlass-fmha sweep seed {SEED}: {fwd_checked} forward, {bwd_checked} backward checked")
    failures.check()
    assert fwd_checked >= NUM_PROBLEMS * 0.9


def test_cutlass_fmha_varlen_and_default():
    g = torch.Generator(device="cuda").manual_seed(1)
    lens = [37, 300, 5, 128]
    q = _rand((1, sum(lens), 4, 64), torch.float16, g)
    k = _rand((1, sum(lens), 2, 64), torch.float16, g)
    v = _rand((1, sum(lens), 2, 64), torch.float16, g)
    for causal in (False, True):
        out = natten.attention(q, k, v, is_causal=causal, backend="cutlass-fmha",
                               seqlens_Q=torch.tensor(lens), seqlens_KV=torch.tensor(lens))
        ref, _ = attention_oracle(q.double(), k.double(), v.double(), is_causal=causal,
                                  seqlens_Q=lens, seqlens_KV=lens)
        assert_close(out, ref, atol=1e-2, rtol=0, what=f"varlen causal={causal}")


def test_cutlass_fmha_varlen_uniform_runs_and_configs():
    """Runs of equal-length sequences (one batched launch each) in fp16 and fp32, with gradients,
    and the tile listing of cutlass-fmha: every listed (q_tile_size, kv_tile_size) runs."""
    g = torch.Generator(device="cuda").manual_seed(2)
    lens_q, lens_kv = [96, 96, 96, 40, 40, 96], [96, 96, 96, 70, 70, 96]
    for dtype in (torch.float16, torch.float32):
        q = _rand((1, sum(lens_q), 4, 64), dtype, g).requires_grad_(True)
        k = _rand((1, sum(lens_kv), 2, 64), dtype, g).requires_grad_(True)
        v = _rand((1, sum(lens_kv), 2, 64), dtype, g).requires_grad_(True)
        out = natten.attention(q, k, v, backend="cutlass-fmha", seqlens_Q=torch.tensor(lens_q),
                               seqlens_KV=torch.tensor(lens_kv))
        q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
        ref, _ = attention_oracle(q64, k64, v64, seqlens_Q=lens_q, seqlens_KV=lens_kv)
        tol = TOL[dtype]
        assert_close(out, ref, atol=tol, rtol=0, what=f"varlen runs {dtype}")
        dout = _rand(out.shape, dtype, g)
        got = torch.autograd.grad(out, (q, k, v), dout)
        want = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
        assert_grads_close(got, want, max(tol, 1e-4), f"varlen runs {dtype}")
        configs = natten.get_configs_for_cutlass_fmha(q.detach(), k.detach(), v.detach())
        assert configs and all(isinstance(a, int) and isinstance(b, int) for a, b in configs)
        for qt, kt in configs:
            o = natten.attention(q.detach(), k.detach(), v.detach(), backend="cutlass-fmha", q_tile_size=qt,
                                 kv_tile_size=kt)
            assert torch.isfinite(o).all()
        assert natten.get_bwd_configs_for_cutlass_fmha(q, k, v)
