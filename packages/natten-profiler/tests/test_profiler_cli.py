"""The command line: argument errors, output formats, dry-run, optimize, end to end on CPU."""

import csv
import io
import json

import pytest

import natten
from natten_profiler import __version__, best_configs
from natten_profiler.cli import build_profile_parser, build_sim_parser

# Fast measurement options for tiny use cases.
FAST = ["--warmup-steps", "0", "--reps", "1", "--device", "cpu"]
TINY = ["-i", "8", "8", "-w", "3", "3", "-n", "2", "-d", "16"]


# ---------------------------------------------------------------------------------------------
# Argument errors: exit status 2, the option and the values named.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,expected",
    [
        (["-i", "8", "8", "-w", "9", "7"],
         ["-w/--window-size", "window size 9 is larger than the input size 8", "axis 0 (X)"]),
        (["-i", "8", "8", "-w", "7", "7", "7"],
         ["-w/--window-size", "expected 2 values", "got 3: 7 7 7"]),
        (["-i", "8", "8", "-w", "3", "-s", "1", "1", "1"], ["-s/--stride", "expected 2 values"]),
        (["-i", "8", "8", "-w", "3", "-c", "1", "0", "1"], ["-c/--causal", "expected 2 values"]),
        (["-i", "1", "2", "3", "4"], ["-i/--input-size", "1, 2 or 3 values", "got 4"]),
        (["-i", "8", "8", "-w", "3", "-n", "6", "--heads-kv", "4"],
         ["--heads-kv", "-n/--heads 6", "divisible", "(4)"]),
        (["--backend", "nope"], ["--backend", "invalid choice: 'nope'"]),
        (["-c", "maybe"], ["-c/--causal", "invalid boolean value 'maybe'"]),
        (["-i", "16", "-w", "5", "-s", "6"], ["-s/--stride", "stride 6", "window size 5"]),
        (["-i", "16", "-w", "5", "--dilation", "4"], ["--dilation", "5 x 4 = 20", "(16)"]),
        (["-i", "16", "-w", "1"], ["-w/--window-size", ">= 2"]),
        (["-i", "16", "-w", "5", "--q-tile", "8"], ["--q-tile/--kv-tile", "both"]),
        (["-i", "16", "-w", "5", "--q-tile", "8", "8", "--kv-tile", "8", "8"],
         ["--q-tile", "expected 1 value", "got 2"]),
        (["--dry-run", "--optimize"], ["--dry-run", "--optimize"]),
        (["--save-best", "x.json"], ["--save-best", "--optimize"]),
        (["-b", "0"], ["-b/--batch-size", ">= 1"]),
        (["--json", "--csv"], ["--csv", "not allowed with argument --json"]),
        (["-i", "16", "16", "-w", "5", "5", "--backprop", "--backward-kv-splits", "2"],
         ["--backward-kv-splits", "expected 2 values", "got 1"]),
        (["-i", "16", "-w", "5", "--backprop", "--backward-kv-splits", "0"],
         ["--backward-kv-splits", "values must be positive", "got 0"]),
        (["-i", "16", "-w", "5", "--backward-kv-splits", "2"], ["--backward-kv-splits", "--backprop"]),
    ],
)
def test_argument_errors(cli, args, expected):
    rc, out, err = cli(*args, "--device", "cpu")
    assert rc == 2
    assert out == ""
    assert "natten-profiler: error: argument" in err
    for e in expected:
        assert e in err, (e, err)


def test_gpu_only_backend_on_cpu_says_why_and_what_can(cli):
    rc, _, err = cli("--backend", "cutlass-fna", "--device", "cpu")
    assert rc == 2
    assert "'cutlass-fna' cannot run this use case on cpu" in err
    assert "CUDA" in err  # the backend's own reason
    q = __import__("torch").empty(1, 32, 32, 2, 32)
    for name in natten.get_compatible_backends(q, q, q):
        assert name in err
    assert "baselines that can: " in err and "math" in err


@pytest.mark.parametrize("baseline", ["cudnn", "flash", "mem-efficient"])
def test_gpu_baseline_on_cpu(cli, baseline):
    rc, _, err = cli("--baseline", baseline, "--device", "cpu")
    assert rc == 2 and f"'{baseline}' cannot run here" in err and "CUDA device" in err
    assert "math" in err


def test_dry_run_rejects_baseline_backend(cli):
    rc, _, err = cli("--backend", "math", "--dry-run", "--device", "cpu")
    assert rc == 2 and "natten backends" in err


def test_help_mentions_options_and_sim():
    text = build_profile_parser().format_help()
    for opt in ["-i", "--input-size", "-b", "--batch-size", "-n", "--heads", "--heads-kv", "-d",
                "--dim", "--dim-value", "-w", "--window-size", "-s", "--stride", "--dilation",
                "-c", "--causal", "--dtype", "--backprop", "--add-kv", "--backend",
                "--fmha-backend", "--q-tile", "--kv-tile", "--backward-q-tile",
                "--backward-kv-tile", "--backward-kv-splits", "--schedule", "--persistent", "--compile",
                "--warmup-steps", "--dry-run", "--max-configs", "--optimize", "--save-best",
                "--baseline", "--json", "--csv", "--output", "sim"]:
        assert opt in text, opt
    assert "--sweep" in build_sim_parser().format_help()


# ---------------------------------------------------------------------------------------------
# Profiling a tiny use case on the CPU
# ---------------------------------------------------------------------------------------------


def test_profile_json_in_process(cli):
    rc, out, err = cli(*TINY, *FAST, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["tool"] == "natten-profiler" and res["version"] == __version__
    assert res["device"]["type"] == "cpu"
    assert res["backend"] == "reference"  # natten's choice on the CPU
    assert res["use_case"]["input_size"] == [8, 8] and res["use_case"]["dtype"] == "fp32"
    assert res["runtime_ms"] > 0 and res["tflops"] > 0
    spec = natten.window.WindowSpec((8, 8), (3, 3), (1, 1), (1, 1), (False, False))
    assert res["flops"] == 2 * spec.num_pairs() * (16 + 16) * 1 * 2
    assert res["kernels"], "no operators recorded"
    assert any(k["framework"] == "ATen" for k in res["kernels"])
    assert {"framework", "category", "operation", "calls", "time_us"} <= set(res["kernels"][0])
    assert res["kernel_total_us"] == pytest.approx(sum(k["time_us"] for k in res["kernels"]))
    assert res["baseline"]["name"] == "math" and res["baseline"]["runtime_ms"] > 0
    assert res["speedup"] == pytest.approx(res["baseline"]["runtime_ms"] / res["runtime_ms"])


def test_profile_records_backward_kv_splits(cli):
    # The reference backend runs the problem (kv splits are a cutlass-fna knob); the option is
    # validated, passed to the operation and recorded with the run.
    rc, out, err = cli(*TINY, *FAST, "--json", "--backprop", "--backward-kv-splits", "1", "2")
    assert rc == 0, err
    assert json.loads(out)["options"]["backward_kv_splits"] == [1, 2]


def test_profile_csv_parses(cli):
    rc, out, err = cli(*TINY, *FAST, "--csv", "--backprop")
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0].keys() >= {"kind", "framework", "category", "operation", "calls", "time_us"}
    kinds = {r["kind"] for r in rows}
    assert {"kernel", "total", "metric"} <= kinds
    metrics = {r["operation"]: r["value"] for r in rows if r["kind"] == "metric"}
    assert float(metrics["runtime_ms"]) > 0 and float(metrics["speedup"]) > 0
    assert metrics["baseline"] == "math"


def test_profile_text_and_output_file(cli, tmp_path):
    out_file = tmp_path / "report.txt"
    rc, out, err = cli(*TINY, *FAST, "--output", str(out_file), "--baseline", "reference",
                       "-s", "2", "--dilation", "1", "2", "-c", "1", "0")
    assert rc == 0, err
    assert out == ""
    text = out_file.read_text()
    for s in ["Kernels (torch.profiler", "Framework", "Category", "Operation", "Calls", "Total",
              "effective ", "FLOP/s", "Baseline reference", "speedup", "causal 1x0",
              "dilation 1x2"]:
        assert s in text, s


def test_profile_baselines_gqa_add_kv(cli):
    args = ["-i", "6", "6", "-w", "3", "-n", "4", "--heads-kv", "2", "-d", "8", "--dim-value", "4",
            "--add-kv", "3", *FAST, "--json"]
    import torch

    flex_on_cpu = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6)
    for baseline in ("math", "plain-flex"):
        rc, out, err = cli(*args, "--baseline", baseline)
        assert rc == 0, err
        res = json.loads(out)
        if baseline == "plain-flex" and not flex_on_cpu and res["baseline"]["error"]:
            continue  # older torch: eager FlexAttention may not run on the CPU; reported, not fatal
        assert res["baseline"]["error"] is None, res["baseline"]
        assert res["speedup"] > 0
    rc, out, err = cli(*args, "--backend", "math", "--baseline", "none")
    assert rc == 0, err
    res = json.loads(out)
    assert res["backend"] == "math" and res["flops_kind"] == "dense" and res["baseline"] is None


def test_default_baseline_falls_back(cli, monkeypatch):
    """Without --baseline, a baseline that cannot run the problem gives way to the next one."""
    monkeypatch.setattr("natten_profiler.cli._default_baselines", lambda uc, dev: ["cudnn", "math"])
    rc, out, err = cli(*TINY, *FAST, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["baseline"]["name"] == "math" and res["speedup"] > 0
    assert res["baseline"]["failed_before"][0]["name"] == "cudnn"
    assert "baseline cudnn failed" in err and "trying the next one" in err


def test_profile_self_attention_and_1d_3d(cli):
    for args in (["-i", "12"], ["-i", "4", "4", "4", "-w", "3", "2", "2", "-c", "0", "1", "0"]):
        rc, out, err = cli(*args, "-d", "8", *FAST, "--json", "--baseline", "none")
        assert rc == 0, err
        assert json.loads(out)["runtime_ms"] > 0


def test_module_subprocess_default_invocation(run_module):
    """`python -m natten_profiler` with no arguments: the small default use case, on the CPU."""
    r = run_module()
    assert r.returncode == 0, r.stderr
    assert "Use case: 2-D 32x32, window 7x7" in r.stdout
    assert "Backend: reference" in r.stdout and "Total" in r.stdout
    assert "speedup" in r.stdout
    assert "USDT" not in r.stderr  # profiler chatter is filtered


def test_module_subprocess_json(run_module):
    r = run_module(*TINY, *FAST, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["use_case"]["window_size"] == [3, 3]


def test_module_subprocess_error(run_module):
    r = run_module("-i", "8", "8", "-w", "9", "9")
    assert r.returncode == 2
    assert "argument -w/--window-size" in r.stderr and r.stdout == ""


def test_console_script_declared():
    import pathlib

    tomllib = pytest.importorskip("tomllib")

    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    meta = tomllib.loads(pyproject.read_text())["project"]
    assert meta["scripts"]["natten-profiler"] == "natten_profiler.cli:main"
    assert meta["version"] == __version__
    deps = meta["dependencies"]
    assert any(d.replace(" ", "").startswith("natten>=0.21,<0.22") for d in deps)
    assert not any(d.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip() == "torch"
                   for d in deps), "torch must come only through natten"


# ---------------------------------------------------------------------------------------------
# Dry run and optimize
# ---------------------------------------------------------------------------------------------


def _flex_available():
    from natten.backends import flex
    import torch

    q = torch.empty(1, 8, 8, 2, 16)
    spec = natten.window.WindowSpec((8, 8), (3, 3), (1, 1), (1, 1), (False, False))
    return flex.can_run_fna(q, q, q, spec) is None


def test_dry_run_text(cli):
    rc, out, err = cli(*TINY, "--dry-run", "--device", "cpu", "--max-configs", "3")
    assert rc == 0, err
    assert "Backend cutlass-fna: not available: " in out
    assert "Backend hopper-fna: not available: " in out
    assert "Backend blackwell-fna: not available: " in out
    assert "Backend reference: compatible; 1 configuration (no tiles)" in out
    assert "Compatible backends:" in out and "reference" in out.splitlines()[-1]
    if _flex_available():
        assert "Backend flex-fna: compatible" in out
    else:
        assert "Backend flex-fna: not available: " in out


def test_dry_run_json(cli):
    rc, out, err = cli("-i", "32", "32", "-w", "7", "--dry-run", "--device", "cpu", "--json",
                       "--max-configs", "0")
    assert rc == 0, err
    data = json.loads(out)
    by = {b["backend"]: b for b in data["backends"]}
    assert set(by) == {"reference", "cutlass-fna", "hopper-fna", "blackwell-fna", "flex-fna"}
    assert by["reference"]["available"] and len(by["reference"]["configs"]) == 1
    assert not by["cutlass-fna"]["available"] and by["cutlass-fna"]["reason"]
    if by["flex-fna"]["available"]:
        tiles = [c for c in by["flex-fna"]["configs"] if c["q_tile_shape"]]
        assert tiles and all(c["tile_bound"] > 0 for c in tiles)
        assert all(__import__("math").prod(c["q_tile_shape"]) in (64, 128) for c in tiles)
    else:
        assert by["flex-fna"]["reason"]


def test_dry_run_csv_single_backend(cli):
    rc, out, err = cli(*TINY, "--dry-run", "--device", "cpu", "--csv", "--backend", "cutlass-fna")
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and rows[0]["backend"] == "cutlass-fna" and rows[0]["available"] == "no"


def test_optimize_saves_best_and_round_trips(cli, tmp_path, monkeypatch):
    monkeypatch.setattr("natten_profiler.progress.rich_available", lambda: False)
    path = tmp_path / "best.json"
    rc, out, err = cli(*TINY, *FAST, "--optimize", "--max-configs", "2",
                       "--optimize-warmup-steps", "0", "--save-best", str(path))
    assert rc == 0, err
    assert "[optimize] [" in err  # the plain progress line, on stderr
    assert "Best: " in out and f"Saved the best configuration to {path}" in out
    assert "Kernels (torch.profiler" in out  # the best configuration is profiled
    cfg = best_configs.load(path)
    assert len(cfg.entries) == 1
    from natten_profiler.optimize import use_case_signature
    from natten_profiler.problem import UseCase
    import torch

    uc = UseCase((8, 8), (3, 3), (1, 1), (1, 1), (False, False), 1, 2, 2, 16, 16, "fp32")
    hit = best_configs.lookup(use_case_signature(uc, torch.device("cpu"), False), str(path))
    assert hit is not None and hit["backend"] in ("reference", "flex-fna")
    # The same signature through natten-style tensors finds it as well.
    q = torch.empty(1, 8, 8, 2, 16)
    sig = best_configs.signature_from_tensors(q, q, q, 3)
    assert best_configs.lookup(sig, str(path))["backend"] == hit["backend"]


def test_optimize_json_lists_trials(cli):
    rc, out, err = cli(*TINY, *FAST, "--optimize", "--max-configs", "2", "--no-progress",
                       "--optimize-warmup-steps", "0", "--json")
    assert rc == 0, err
    data = json.loads(out)
    backends = {t["backend"] for t in data["trials"]}
    assert "reference" in backends
    if _flex_available():
        assert "flex-fna" in backends
    assert all(t["runtime_ms"] > 0 for t in data["trials"] if t["error"] is None)
    assert data["best"]["runtime_ms"] == min(
        t["runtime_ms"] for t in data["trials"] if t["runtime_ms"] is not None)
    skipped = {s["backend"] for s in data["skipped"]}
    assert {"cutlass-fna", "hopper-fna", "blackwell-fna"} <= skipped
    assert data["profile"]["runtime_ms"] > 0


def test_optimize_when_flex_is_unavailable(cli, monkeypatch):
    """flex-fna may be missing (or refuse the problem): optimize skips it and carries on."""
    from natten.backends import flex

    monkeypatch.setattr(flex, "can_run_fna", lambda *a, **k: "FlexAttention is not here (test)")
    rc, out, err = cli(*TINY, *FAST, "--optimize", "--no-progress", "--optimize-warmup-steps", "0")
    assert rc == 0, err
    assert "Skipped flex-fna: not available: FlexAttention is not here (test)" in out
    assert "Best: reference (no tiles)" in out
    # Asking for it by name is an argument error that says why.
    rc, out, err = cli(*TINY, *FAST, "--optimize", "--backend", "flex-fna")
    assert rc == 2 and "FlexAttention is not here (test)" in err


def test_optimize_with_user_tiles(cli):
    if not _flex_available():
        pytest.skip("flex-fna is not available here")
    rc, out, err = cli(*TINY, *FAST, "--optimize", "--backend", "flex-fna", "--no-progress",
                       "--q-tile", "4", "4", "--kv-tile", "4", "4", "--json",
                       "--optimize-warmup-steps", "0")
    assert rc == 0, err
    data = json.loads(out)
    assert [t["q_tile_shape"] for t in data["trials"]] == [[4, 4]]


# ---------------------------------------------------------------------------------------------
# sim
# ---------------------------------------------------------------------------------------------


def test_sim_text(cli):
    rc, out, err = cli("sim", "--use-case", "hunyuan-gna", "--q-tile", "2", "8", "8")
    assert rc == 0, err
    assert "FLOP bound 11.11x" in out
    assert "11.11x" in out and "yes" in out


def test_sim_json_and_csv(cli):
    rc, out, err = cli("sim", "-i", "30", "48", "80", "-w", "18", "24", "24", "--json", "--top", "0")
    assert rc == 0, err
    data = json.loads(out)
    case = data["cases"][0]
    assert round(case["flop_bound"], 1) == 11.1
    assert len(case["configs"]) == case["num_configs"]
    bounds = [c["tile_bound"] for c in case["configs"]]
    assert bounds == sorted(bounds, reverse=True)
    assert case["configs"][0]["block_sparse_strides"] is not None
    rc, out, err = cli("sim", "--use-case", "flux-4k", "--q-tile", "16", "8", "--kv-tile", "16",
                       "8", "--csv")
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and round(float(rows[0]["tile_bound"]), 1) == 7.5
    assert rows[0]["block_sparse"] == "0"


def test_sim_sweep(cli):
    rc, out, err = cli("sim", "--use-case", "flux-4k", "--sweep", "--strides", "1", "16x16",
                       "--windows", "80x80", "--top", "2", "--json", "--tile-sizes", "128")
    assert rc == 0, err
    data = json.loads(out)
    assert [c["stride"] for c in data["cases"]] == [[1, 1], [16, 16]]
    assert all(len(c["configs"]) == 2 for c in data["cases"])
    best_gna = data["cases"][1]["configs"][0]
    assert best_gna["block_sparse"] and round(best_gna["tile_bound"], 1) == 10.2


def test_sim_errors(cli):
    rc, _, err = cli("sim", "-i", "8", "-w", "9")
    assert rc == 2 and "-w/--window-size" in err
    rc, _, err = cli("sim", "-i", "8", "8", "-w", "3", "--q-tile", "2")
    assert rc == 2 and "--q-tile" in err
    rc, _, err = cli("sim", "-i", "8", "8", "-w", "3", "--strides", "2x2")
    assert rc == 2 and "--sweep" in err
    rc, _, err = cli("sim", "-i", "8", "8", "-w", "3", "--sweep", "--strides", "2x2x2")
    assert rc == 2 and "--strides" in err


def test_sim_plot(cli, tmp_path):
    png = tmp_path / "bounds.png"
    rc, out, err = cli("sim", "-i", "32", "32", "-w", "7", "--plot", str(png), "--top", "4")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert rc == 2
        assert "matplotlib is not installed" in err and "pip install matplotlib" in err
        assert not png.exists()
    else:
        assert rc == 0, err
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
