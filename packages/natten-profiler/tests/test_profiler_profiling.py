"""Timing, kernel-table classification, use-case arithmetic, progress reporting."""

import io
import math

import pytest
import torch

from natten.window import WindowSpec
from natten_profiler import profiling
from natten_profiler.output import render_table
from natten_profiler.problem import UseCase
from natten_profiler.progress import Progress
from natten_profiler.runners import RunOptions, build_natten_step, build_step


def uc(**kw):
    base = dict(input_size=(8, 8), window_size=(3, 3), stride=(1, 1), dilation=(1, 1),
                causal=(False, False), batch=1, heads=2, heads_kv=2, dim=16, dim_value=16,
                dtype="fp32")
    base.update(kw)
    return UseCase(**base)


def test_flops_follow_semantics():
    u = uc(input_size=(10, 12), window_size=(3, 5), stride=(2, 1), causal=(True, False),
           batch=2, heads=4, heads_kv=2, dim=16, dim_value=8, add_kv=3)
    pairs = WindowSpec((10, 12), (3, 5), (2, 1), (1, 1), (True, False)).num_pairs() + 120 * 3
    assert u.pairs() == pairs
    assert u.flops() == 2 * pairs * (16 + 8) * 2 * 4
    assert u.flops(backprop=True) == pytest.approx(3.5 * u.flops())
    assert u.flops(dense=True) == 2 * 120 * 123 * 24 * 2 * 4


def test_cpu_categories():
    c = profiling.cpu_framework
    assert c("aten::bmm") == ("ATen", "gemm")
    assert c("aten::_softmax") == ("ATen", "softmax")
    assert c("aten::amax") == ("ATen", "reduction")
    assert c("aten::index_add_") == ("ATen", "memory")
    assert c("aten::exp") == ("ATen", "elementwise")
    assert c("aten::_scaled_dot_product_flash_attention_for_cpu") == ("ATen", "attention")
    assert c(profiling.STEP_LABEL) == ("Python", "host overhead")
    assert c("autograd::engine::evaluate_function: MulBackward0")[0] == "autograd"


def test_cuda_classification_and_names():
    fw, cat = profiling.cuda_classify(
        "void cutlass::fna::kernel::Sm90FnaFwdKernel<cute::tuple<int>>(Params)")
    assert (fw, cat) == ("CUTLASS", "attention")
    assert profiling.cuda_classify("cudnn_generated_fort_native_sdpa_sm90_flash_fprop")[0] == "cuDNN"
    assert profiling.cuda_classify("sm90_xmma_gemm_f16f16_f16f32")[1] == "gemm"
    assert profiling.cuda_classify("triton_tem_fused_flex_attention_0")[0] == "Triton"
    assert profiling.cuda_classify("Memset (Device)") == ("CUDA", "memory")
    assert profiling.short_kernel_name(
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int)"
    ) == "vectorized_elementwise_kernel"


def test_time_and_profile_step_on_cpu():
    step = build_natten_step(uc(), "reference", torch.device("cpu"), RunOptions())
    times = profiling.time_step(step, torch.device("cpu"), warmup=1, reps=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    rows = profiling.profile_step(step, torch.device("cpu"))
    names = {r.operation for r in rows}
    assert any(n.startswith("aten::") for n in names)
    assert profiling.STEP_LABEL in names
    assert all(r.time_us > 0 and r.calls >= 1 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r.time_us)


def test_backprop_steps_run_for_every_cpu_runner():
    dev = torch.device("cpu")
    u = uc(heads=4, heads_kv=2, add_kv=2)
    for name in ("reference", None, "math"):
        build_step(u, name, dev, RunOptions(backprop=True))()


def test_plain_flex_mask_is_the_neighborhood():
    from natten_profiler.runners import plain_na_mask_mod

    u = uc(input_size=(6, 5), window_size=(3, 2), stride=(2, 1), dilation=(1, 2),
           causal=(True, False), add_kv=2)
    mm = plain_na_mask_mod(u, torch.device("cpu"))
    N = 30
    qi = torch.arange(N)[:, None].expand(N, N + 2)
    ki = torch.arange(N + 2)[None, :].expand(N, N + 2)
    got = mm(None, None, qi, ki)
    from natten.window import axis_window_bounds

    want = torch.zeros(N, N + 2, dtype=torch.bool)
    b = [axis_window_bounds(6, 3, 2, 1, True), axis_window_bounds(5, 2, 1, 2, False)]
    for q in range(N):
        for k in range(N + 2):
            if k >= N:
                want[q, k] = True
                continue
            ok = True
            for a, (qa, ka, d) in enumerate(((q // 5, k // 5, 1), (q % 5, k % 5, 2))):
                s, l = int(b[a][0][qa]), int(b[a][1][qa])
                ok &= s <= ka <= l and (ka - s) % d == 0
            want[q, k] = ok
    assert torch.equal(got, want)


def test_plain_progress_line():
    buf = io.StringIO()
    with Progress(3, "optimize", stream=buf, use_rich=False) as p:
        for i in range(3):
            p.advance(f"cfg {i}")
    text = buf.getvalue()
    assert "[optimize]" in text and "3/3 cfg 2" in text and "0/3" in text


def test_rich_progress_if_installed():
    pytest.importorskip("rich")
    buf = io.StringIO()
    with Progress(2, "optimize", stream=buf, use_rich=True) as p:
        p.advance("a")
        p.advance("b")
    assert "optimize" in buf.getvalue()


def test_render_table_alignment():
    t = render_table(["a", "n"], [["x", "1.5 ms"], ["yy", "10 ms"]], footer=["Total", "11.5 ms"])
    lines = t.splitlines()
    assert lines[0].startswith("a ") and lines[-1].endswith("11.5 ms")
    assert lines[2].endswith("1.5 ms") and len(lines[2]) == len(lines[3])
