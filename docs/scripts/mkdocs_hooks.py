"""mkdocs hooks of the natten site (mkdocs.yml: ``hooks:``).

Pages hold markers that are filled at build time from files elsewhere in the repository, so the
site never goes stale against them:

- ``<!-- natten:wheel-table -->``: the wheel / torch matrix tables from ``ci/matrix.py``.
- ``<!-- natten:include PATH [shift=N] [notitle] -->``: a Markdown file of the repository (a
  README, a changelog), without its first-line title if ``notitle``, headings shifted N (default 1)
  levels down and repository-relative links turned into paths. A missing file
  is a warning (so ``--strict`` fails) and the page says what is missing.
- ``<!-- natten:results -->``: ``benchmarks/RESULTS.md`` if present (it must state the date and the
  card; otherwise a warning), else a plain "no GPU measurements recorded yet".
- ``<!-- natten:backend-reasons -->``: what each backend's ``can_run_fna`` / ``can_run_fmha``
  answers in the natten being documented.
- ``<!-- natten:backend-status -->``: the status table from ``BACKEND_STATUS`` below, checked
  against those answers: a backend declared unavailable that says it can run (or the reverse) is
  a warning, so the page cannot silently contradict the code.
- ``<!-- natten:feature-probe -->``: every feature run on the CPU through each backend that runs
  there, compared with the reference backend; the table shows what actually happened.

``docs/abi.md`` is written by the natten-kernels authors; if it is absent the nav entry gets a
placeholder page and a warning (so ``--strict`` fails until it exists).
"""

from __future__ import annotations

import importlib.util
import logging
import pathlib
import re
from typing import List, Optional

log = logging.getLogger("mkdocs.plugins.natten")

ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!--\s*natten:([a-z-]+)(?:\s+(\S+))?(?:\s+shift=(\d))?(\s+notitle)?\s*-->")
CARDS = re.compile(r"\b(H100|H200|H20|GH200|B200|B100|GB200|A100|A10G?|A40|L40S?|L4|RTX ?\d{4}\w*)\b")
DATE = re.compile(r"\b(20\d\d-[01]\d-[0-3]\d)\b")


def _matrix():
    spec = importlib.util.spec_from_file_location("natten_ci_matrix", ROOT / "ci" / "matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _shift_headings(text: str, by: int = 1) -> str:
    out: List[str] = []
    fence: Optional[str] = None
    for line in text.splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)[0] * 3
            elif line.strip().startswith(fence):
                fence = None
        elif fence is None and re.match(r"^#{1,5}\s", line):
            line = "#" * by + line
        out.append(line)
    return "\n".join(out)


def _relink(text: str, source: pathlib.Path) -> str:
    """Links relative to an included file point outside the site: show them as repo paths."""

    def repl(m: re.Match) -> str:
        bang, label, target = m.group(1), m.group(2), m.group(3)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return m.group(0)
        path = (source.parent / target.split("#")[0]).resolve()
        try:
            rel = path.relative_to(ROOT).as_posix()
        except ValueError:
            rel = target
        if bang:
            return f"*(image `{rel}` in the repository)*"
        return f"{label} (`{rel}`)"

    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", repl, text)


def _include(arg: str, page_src: str, shift: int = 1, notitle: bool = False) -> str:
    path = ROOT / arg
    if not path.is_file():
        log.warning(f"{page_src}: `{arg}` does not exist yet, so it is not included")
        return (
            f'!!! warning "Not written yet"\n    `{arg}` is not in the repository yet; this '
            "section will show it once it is."
        )
    text = path.read_text(encoding="utf-8")
    if notitle:  # included under a section of its own: its title would repeat the section's
        text = re.sub(r"\A\s*# [^\n]*\n", "", text)
    return f"<!-- included from {arg} -->\n\n" + _shift_headings(_relink(text, path), shift)


def _results(page_src: str) -> str:
    path = ROOT / "benchmarks" / "RESULTS.md"
    if not path.is_file():
        return (
            '!!! note "No GPU measurements recorded yet"\n'
            "    No GPU measurements recorded yet: `benchmarks/RESULTS.md` does not exist in this "
            "revision. It is written by the GPU benchmark run (see below) and shown here, with "
            "its date and card, once it is committed."
        )
    text = path.read_text(encoding="utf-8")
    date, card = DATE.search(text), CARDS.search(text)
    if not date or not card:
        log.warning(
            f"{page_src}: benchmarks/RESULTS.md must state the date (YYYY-MM-DD) and the card "
            f"(found date={date.group(1) if date else None}, card={card.group(1) if card else None})"
        )
    head = (
        f'!!! info "Measured on {date.group(1) if date else "an unstated date"}, '
        f'{card.group(1) if card else "an unstated card"}"\n'
        "    Included verbatim from `benchmarks/RESULTS.md`; speeds are ratios against cuDNN "
        "dense attention measured in the same process.\n\n"
    )
    return head + _shift_headings(_relink(text, path), 2)


class _CudaLike:
    """A meta tensor that claims to live on cuda:0, to ask backends what they'd say on a GPU."""

    def __init__(self, t):
        import torch

        self._t = t
        self.is_cuda = True
        self.device = torch.device("cuda", 0)

    def __getattr__(self, name):
        return getattr(self._t, name)


def _backend_reasons(page_src: str) -> str:
    try:
        import torch

        import natten
        from natten.backends import FMHA_BACKENDS, FNA_BACKENDS
        from natten.window import WindowSpec
    except Exception as e:  # pragma: no cover - docs env always has natten
        log.warning(f"{page_src}: cannot import natten to list backend reasons: {e}")
        return "*(natten could not be imported when these docs were built)*"

    spec, cpu, fake = _probe_tensors()

    def ask(fn, *args) -> str:
        try:
            r = fn(*args)
        except Exception as e:  # the backend needs a real GPU to answer
            return f"*(not answerable without a GPU: {type(e).__name__})*"
        return "**can run**" if r is None else r

    rows = [
        "| backend | on CPU tensors | on CUDA tensors (asked without a GPU) |",
        "|---|---|---|",
    ]
    for name, mod in FNA_BACKENDS.items():
        rows.append(
            f"| `{name}` | {ask(mod.can_run_fna, cpu, cpu, cpu, spec, False)} | "
            f"{ask(mod.can_run_fna, fake, fake, fake, spec, False)} |"
        )
    rows += ["", "| backend | on CPU tensors | on CUDA tensors (asked without a GPU) |",
             "|---|---|---|"]
    for name, mod in FMHA_BACKENDS.items():
        rows.append(
            f"| `{name}` | {ask(mod.can_run_fmha, cpu, cpu, cpu, False, False, False)} | "
            f"{ask(mod.can_run_fmha, fake, fake, fake, False, False, False)} |"
        )
    return (
        f"Generated when this site was built, from natten {natten.__version__}: each backend's "
        "own `can_run_fna` / `can_run_fmha` answer for a 16x16 fp16 problem (kernel 7x7). "
        "*can run* means the dispatcher may pick it; anything else is the reason it will not.\n\n"
        + "\n".join(rows)
    )


# A backend's own reason saying that it is not part of this build at all.
NOT_IN_RELEASE = re.compile(r"not (part of|in|implemented in) this release|not wired in", re.I)

# name -> (devices, forward, backward, status, available in this release). An available backend
# may still decline here (no GPU, no natten-kernels), but never with a "not in this release"
# reason; an unavailable one must decline everywhere.
BACKEND_STATUS = {
    "reference": ("any torch device (CPU, CUDA, ...)", "yes", "yes",
                  "**available**: exact; float64/32/16, bfloat16; default on CPU and wherever "
                  "nothing faster runs", True),
    "flex-fna": ("CUDA (compiled FlexAttention, needs Triton) and CPU (eager)", "yes",
                 "yes (on CPU through the reference backend)",
                 "**available**: exact masks, tiled token permutation; on CPU only when asked "
                 "for by name", True),
    "cutlass-fna": ("NVIDIA sm_80+ (needs a `natten-kernels` wheel)",
                    "yes: float16 / bfloat16, head dims 8-256",
                    "yes: fused dQ / dK / dV kernels, deterministic (natten-kernels >= 1.1)",
                    "**available**: fused CuTe kernels from `natten-kernels`. `cutlass-fmha` "
                    "(`natten.attention`) runs dense and causal attention on the same kernels "
                    "(a window covering every key; varlen: one launch per run of equal-length sequences)", True),
    "hopper-fna": ("H100 / H200 (sm_90a; needs a `natten-kernels` >= 1.2 wheel with sm_90a)",
                   "yes: float16 / bfloat16, head dim 32, 64 or 128 (= head_dim_v; at 32 the "
                   "automatic choice keeps `cutlass-fna`, measured faster); dilation where "
                   "each dilated axis is a multiple of it (groups folded into the batch); slabs "
                   "of a larger grid without dilation",
                   "not yet (inputs that require grad run on `cutlass-fna`)",
                   "**available** for inference: warp-specialized TMA + wgmma kernel; picked "
                   "before `cutlass-fna` on SM 9.0 when it supports the problem. `hopper-fmha` "
                   "(`natten.attention`, inference) runs dense and causal attention on the same "
                   "kernel (a window covering every key; any number of queries)",
                   True),
    "blackwell-fna": ("B200 (sm_100a)", "planned", "planned", "**not in this release**", False),
}


def _probe_tensors():
    import torch

    from natten.window import WindowSpec

    shape = (16, 16)
    spec = WindowSpec(shape, (7, 7), (1, 1), (1, 1), (False, False))
    cpu = torch.zeros(1, *shape, 2, 32, dtype=torch.float16)
    fake = _CudaLike(torch.zeros(1, *shape, 2, 32, dtype=torch.float16, device="meta"))
    return spec, cpu, fake


def _backend_status(page_src: str) -> str:
    from natten.backends import FNA_BACKENDS

    spec, cpu, fake = _probe_tensors()
    rows = ["| backend | devices | forward | backward | status |", "|---|---|---|---|---|"]
    for name in FNA_BACKENDS:
        if name not in BACKEND_STATUS:
            log.warning(f"{page_src}: backend {name!r} exists but BACKEND_STATUS in "
                        "docs/scripts/mkdocs_hooks.py does not describe it")
            continue
    for name, (devices, fwd, bwd, status, available) in BACKEND_STATUS.items():
        mod = FNA_BACKENDS.get(name)
        if mod is None:
            log.warning(f"{page_src}: BACKEND_STATUS lists {name!r}, which natten does not have")
            continue
        answers = []
        for t in (cpu, fake):
            try:
                answers.append(mod.can_run_fna(t, t, t, spec, False))
            except Exception as e:  # needs a real GPU to answer
                answers.append(f"({type(e).__name__})")
        runs = [a is None for a in answers]
        said_absent = [a for a in answers if a is not None and NOT_IN_RELEASE.search(a)]
        if available and said_absent:
            log.warning(f"{page_src}: the docs call {name!r} available, but it says: "
                        f"{said_absent[0]!r}; update BACKEND_STATUS")
        if not available and any(runs):
            log.warning(f"{page_src}: the docs call {name!r} unavailable, but its can_run_fna "
                        "says it can run; update BACKEND_STATUS and the pages")
        sib = name.replace("-fna", "-fmha") if name.endswith("-fna") else None
        label = f"`{name}`" + (f" / `{sib}`" if sib else "")
        rows.append(f"| {label} | {devices} | {fwd} | {bwd} | {status} |")
    return "\n".join(rows)


def _feature_probe(page_src: str) -> str:
    """Run each feature on the CPU through every backend that runs there; compare to reference."""
    import warnings

    import torch

    import natten
    from natten.backends import FNA_BACKENDS

    g = torch.Generator().manual_seed(0)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    def na(rank):
        return {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[rank]

    def case(rank=2, grid=None, H=2, Hkv=2, D=16, Dv=16, dtype=torch.float32, extra=0, **kw):
        grid = grid or {1: (24,), 2: (10, 10), 3: (6, 6, 6)}[rank]
        q, k, v = r(1, *grid, H, D, dtype=dtype), r(1, *grid, Hkv, D, dtype=dtype), r(1, *grid, Hkv, Dv, dtype=dtype)
        if extra:
            kw["additional_keys"] = r(1, extra, Hkv, D, dtype=dtype)
            kw["additional_values"] = r(1, extra, Hkv, Dv, dtype=dtype)
        kw.setdefault("kernel_size", 3 if rank == 3 else 5)
        return lambda backend, **more: na(rank)(q, k, v, backend=backend, **kw, **more)

    def slab_case():  # query rows [4, 8) of a 12x10 grid with the key rows [2, 10) they need
        q, k, v = r(1, 4, 10, 2, 16), r(1, 8, 10, 2, 16), r(1, 8, 10, 2, 16)
        return lambda backend, **more: natten.na2d(
            q, k, v, kernel_size=5, backend=backend, global_shape=(12, 10), q_origin=(4, 0),
            kv_origin=(2, 0), **more
        )

    features = [
        ("rank 1 / 2 / 3", [case(1), case(2), case(3)]),
        ("odd and even `kernel_size`", [case(2, kernel_size=5), case(2, kernel_size=4)]),
        ("`dilation`", [case(2, kernel_size=3, dilation=2)]),
        ("`stride`", [case(2, kernel_size=5, stride=2), case(2, kernel_size=4, stride=4)]),
        ("per-axis `is_causal`", [case(2, is_causal=(True, False)), case(1, is_causal=True)]),
        ("GQA / MQA", [case(2, H=4, Hkv=2), case(2, H=4, Hkv=1)]),
        ("`head_dim_v != head_dim`", [case(2, Dv=32)]),
        ("additional keys / values", [case(2, extra=7)]),
        ("float64", [case(2, dtype=torch.float64)]),
        ("float16", [case(2, dtype=torch.float16)]),
        ("bfloat16", [case(2, dtype=torch.bfloat16)]),
        ("slabs of a larger grid (`global_shape`, `q_origin`, `kv_origin`)", [slab_case()]),
    ]
    names = [n for n in FNA_BACKENDS if n in ("reference", "flex-fna")]
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}

    def verdict(name, fns) -> str:
        for fn in fns:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out, lse = fn(name, return_lse=True)
                    ref, ref_lse = fn("reference", return_lse=True)
            except Exception as e:
                return "no: " + str(e).split(". ")[0].replace("|", "/")[:120]
            t = tol[out.dtype]
            if not (torch.allclose(out.double(), ref.double(), atol=t, rtol=t)
                    and torch.allclose(lse.double(), ref_lse.double(), atol=t, rtol=t)):
                log.warning(f"{page_src}: {name} differs from reference in the feature probe")
                return "**wrong result**"
        return "yes"

    def grad_verdict(name) -> str:
        q = r(1, 10, 10, 2, 16).requires_grad_()
        try:
            natten.na2d(q, q, q, kernel_size=5, backend=name).sum().backward()
        except Exception as e:
            return "no: " + str(e).split(". ")[0][:120]
        return "yes" if q.grad is not None and torch.isfinite(q.grad).all() else "**no gradient**"

    head = "| feature (CPU, checked against `reference`) | " + " | ".join(f"`{n}`" for n in names) + " |"
    rows = [head, "|---" * (len(names) + 1) + "|"]
    for label, fns in features:
        rows.append(f"| {label} | " + " | ".join(verdict(n, fns) for n in names) + " |")
    rows.append("| `return_lse` | " + " | ".join(verdict(n, features[1][1]) for n in names) + " |")
    rows.append("| backward (autograd) | " + " | ".join(grad_verdict(n) for n in names) + " |")
    return "\n".join(rows)


def _flag_defaults(page_src: str) -> str:
    """The switches' values in a fresh interpreter (nothing in this process can have set them)."""
    import subprocess
    import sys

    code = (
        "import natten\n"
        "for f in ('are_deterministic_algorithms_enabled', 'is_kv_parallelism_in_fused_na_enabled',"
        " 'get_memory_usage_preference', 'is_flex_compile_allowed',"
        " 'is_flex_compile_backprop_allowed'):\n"
        "    print(f, getattr(natten, f)(), sep='|')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        log.warning(f"{page_src}: could not read the switches' defaults: {r.stderr[-300:]}")
        return "*(could not be read)*"
    rows = ["| getter | value by default |", "|---|---|"]
    for line in r.stdout.strip().splitlines():
        name, value = line.split("|", 1)
        rows.append(f"| `natten.{name}()` | `{value}` |")
    return "\n".join(rows)


def on_files(files, config):
    from mkdocs.structure.files import File

    if files.get_file_from_path("abi.md") is None:
        log.warning(
            "docs/abi.md (the C ABI reference, written with natten-kernels) does not exist yet; "
            "the nav shows a placeholder"
        )
        files.append(
            File.generated(
                config,
                "abi.md",
                content="# C ABI\n\nThis page (`docs/abi.md`) has not been written yet. The ABI "
                "itself is declared in `packages/natten-kernels/csrc/include/natten_kernels.h`.\n",
            )
        )
    return files


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri

    def repl(m: re.Match) -> str:
        kind, arg, shift, notitle = m.group(1), m.group(2), int(m.group(3) or 1), bool(m.group(4))
        if kind == "wheel-table":
            mat = _matrix()
            return mat.table() + "\n\n" + mat.torch_table()
        if kind == "include" and arg:
            return _include(arg, src, shift, notitle)
        if kind == "results":
            return _results(src)
        if kind == "backend-reasons":
            return _backend_reasons(src)
        if kind == "backend-status":
            return _backend_status(src)
        if kind == "flag-defaults":
            return _flag_defaults(src)
        if kind == "feature-probe":
            return _feature_probe(src)
        log.warning(f"{src}: unknown marker {m.group(0)}")
        return m.group(0)

    return MARKER.sub(repl, markdown)
