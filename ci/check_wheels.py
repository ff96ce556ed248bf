#!/usr/bin/env python3
"""Check the built wheels and sdists before they are released.

    python ci/check_wheels.py [dist] [--skip-install]

1. `python ci/matrix.py check`: versions, ABI range, extras and changelogs agree.
2. `twine check --strict` on every file.
3. Contents: every wheel and sdist holds what it must, and nothing stray (no __pycache__/.pyc,
   no tests in wheels, no build trees, caches, objects or VCS files).
4. natten-kernels: the wheel name matches the CUDA version it was built with
   (natten_kernels/_build_config.py), the version is <ABI major>.<ABI minor>.<patch> of
   natten_kernels.h, the library exports only `natten_*` symbols (`nm -D --defined-only`),
   needs no libcuda/libcudart (DT_NEEDED, via readelf) and ships none, and `auditwheel show`
   reports a manylinux tag (the one in the file name).
5. Install test: a fresh venv, torch==$TORCH_VERSION (default 2.13.0) installed first, then the
   three wheels from this folder only (`--no-index`), then ci/smoke_test.py.

Exit status 0 only if everything passed; every failure is listed.
"""

from __future__ import annotations

import argparse
import email.parser
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from typing import Dict, List

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ci"))
import matrix  # noqa: E402

STRAY = [
    (re.compile(r"(^|/)__pycache__/|\.py[co]$"), "bytecode cache"),
    (re.compile(r"(^|/)\.(pytest_cache|benchmarks|mypy_cache|ruff_cache|nox|git|github)(/|$)"), "tool cache / VCS"),
    (re.compile(r"(^|/)(build|_skbuild|dist|\.deps)/"), "build tree"),
    (re.compile(r"\.(o|obj|a|log|orig|rej|swp)$|~$|(^|/)\.DS_Store$"), "build/editor leftover"),
    (re.compile(r"\.egg-info/"), "egg-info"),
]
# Only these may appear in DT_NEEDED of libnatten_kernels.so (the CUDA runtime is static).
ALLOWED_NEEDED = re.compile(
    r"^(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux-x86-64|ld-linux-aarch64)\.so"
)
EXPECTED = {
    "natten": ["natten/__init__.py", "natten/_version.py", "natten/functional.py",
               "natten/backends/reference.py"],
    "natten_profiler": ["natten_profiler/__init__.py"],
    "natten_kernels": ["natten_kernels/__init__.py", "natten_kernels/_build_config.py",
                       "natten_kernels/include/natten_kernels.h"],
}

failures: List[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print("FAIL:", msg, flush=True)


def ok(msg: str) -> None:
    print("ok:  ", msg, flush=True)


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def dist_of(path: pathlib.Path) -> str:
    d = path.name.split("-")[0].lower()
    return "natten_kernels" if d.startswith("natten_kernels") else d


def check_members(path: pathlib.Path, names: List[str], is_wheel: bool) -> None:
    stray = []
    for n in names:
        for pat, why in STRAY:
            if pat.search(n):
                stray.append(f"{n} ({why})")
        if is_wheel and re.search(r"(^|/)tests?/", n):
            stray.append(f"{n} (tests in a wheel)")
    if stray:
        fail(f"{path.name}: stray files: " + ", ".join(stray[:10]) + (" ..." if len(stray) > 10 else ""))
    else:
        ok(f"{path.name}: {len(names)} files, nothing stray")


def check_wheel(path: pathlib.Path) -> Dict[str, str]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode()) if meta_name else None
    check_members(path, names, True)
    dist = dist_of(path)
    for want in EXPECTED.get(dist, []):
        if want not in names:
            fail(f"{path.name}: missing {want}")
    if meta is None:
        fail(f"{path.name}: no METADATA")
        return {}
    return {"name": meta["Name"], "version": meta["Version"],
            "requires": "\n".join(meta.get_all("Requires-Dist") or [])}


def check_sdist(path: pathlib.Path) -> None:
    with tarfile.open(path) as t:
        names = [m.name.split("/", 1)[1] if "/" in m.name else m.name for m in t.getmembers()
                 if m.isfile()]
    check_members(path, names, False)
    for need in ("pyproject.toml", "PKG-INFO"):
        if need not in names:
            fail(f"{path.name}: missing {need}")
    for want in ("README.md", "CHANGELOG.md"):
        if want not in names:
            fail(f"{path.name}: missing {want}")


def check_kernel_wheel(path: pathlib.Path, meta: Dict[str, str]) -> None:
    major, minor = matrix.abi_version()
    if not re.fullmatch(rf"{major}\.{minor}\.\d+", meta.get("version", "")):
        fail(f"{path.name}: version {meta.get('version')} is not {major}.{minor}.<patch> (ABI of "
             "natten_kernels.h)")
    else:
        ok(f"{path.name}: version {meta['version']} = ABI {major}.{minor} + patch")
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(path) as z:
            z.extractall(tmp)
        tmp_p = pathlib.Path(tmp)
        libs = [p for p in tmp_p.rglob("*.so*") if p.is_file()]
        cuda_libs = [p.name for p in libs if re.match(r"lib(cuda|cudart|nvrtc|cublas)", p.name)]
        if cuda_libs:
            fail(f"{path.name}: ships CUDA libraries {cuda_libs}")
        main = [p for p in libs if p.name.startswith("libnatten_kernels")]
        if len(main) != 1:
            fail(f"{path.name}: expected one libnatten_kernels*.so, found {[p.name for p in libs]}")
            return
        lib = main[0]
        extra = [p.relative_to(tmp_p).as_posix() for p in libs if p != lib]
        if extra:
            fail(f"{path.name}: unexpected shared libraries {extra} (auditwheel grafted them?)")
        # Exported symbols.
        nm = sh(["nm", "-D", "--defined-only", lib])
        if nm.returncode:
            fail(f"nm failed on {lib.name}: {nm.stderr.strip()}")
        syms = [line.split()[-1] for line in nm.stdout.splitlines() if line.strip()]
        bad = [s for s in syms if not s.startswith("natten_")]
        if bad or not syms:
            fail(f"{lib.name}: exports {len(bad)} non-natten_ symbols: {bad[:10]}" if bad
                 else f"{lib.name}: exports nothing")
        else:
            ok(f"{lib.name}: exports only natten_* ({len(syms)} symbols: {', '.join(sorted(syms))})")
        # Dynamic dependencies.
        dyn = sh(["readelf", "-d", lib]).stdout
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
        unexpected = [n for n in needed if not ALLOWED_NEEDED.match(n)]
        if unexpected:
            fail(f"{lib.name}: DT_NEEDED has {unexpected} (allowed: libc/libm/libdl/libpthread/"
                 "librt/libstdc++/libgcc_s)")
        else:
            ok(f"{lib.name}: DT_NEEDED {needed} (no libcuda/libcudart: static CUDA runtime)")
        # Build config: the name must match the toolkit it was built with.
        cfg_path = next(tmp_p.rglob("_build_config.py"), None)
        if cfg_path is not None:
            cfg: Dict[str, object] = {}
            exec(cfg_path.read_text(), cfg)
            cuda = str(cfg.get("CUDA_VERSION", ""))
            tag = "cu" + "".join(cuda.split(".")[:2])
            if meta["name"].lower().replace("_", "-") != f"natten-kernels-{tag}":
                fail(f"{path.name}: named {meta['name']} but built with CUDA {cuda} ({tag})")
            else:
                ok(f"{path.name}: built with CUDA {cuda}, archs {cfg.get('CUDA_ARCHS')}, ABI "
                   f"{cfg.get('ABI_VERSION')}")
            if tuple(cfg.get("ABI_VERSION", ())) != (major, minor):
                fail(f"{path.name}: _build_config ABI_VERSION {cfg.get('ABI_VERSION')} != header "
                     f"{(major, minor)}")
    # manylinux tag.
    show = sh(["auditwheel", "show", path])
    text = " ".join((show.stdout + show.stderr).split())
    m = re.search(r'consistent with the following platform tag: "([^"]+)"', text)
    if show.returncode or not m or not m.group(1).startswith("manylinux"):
        fail(f"auditwheel show {path.name}: no manylinux tag ({text[:400]})")
    elif m.group(1) not in path.name:
        fail(f"{path.name}: auditwheel reports {m.group(1)} but the file name does not carry it")
    else:
        ok(f"{path.name}: auditwheel show -> {m.group(1)}")


def check_natten_wheel(path: pathlib.Path, meta: Dict[str, str]) -> None:
    sup_major, min_minor = matrix.natten_supported_abi()
    for w in matrix.KERNEL_WHEELS:
        want = f"natten-kernels-{w['tag']}<{sup_major + 1},>={sup_major}.{min_minor}"
        alt = f"natten-kernels-{w['tag']}>={sup_major}.{min_minor},<{sup_major + 1}"
        req = meta.get("requires", "").replace(" ", "")
        if want not in req and alt not in req:
            fail(f"{path.name}: Requires-Dist lacks natten-kernels-{w['tag']} in "
                 f"[{sup_major}.{min_minor}, {sup_major + 1}) (has: {req!r})")
    if "torch>=2.5" not in meta.get("requires", "").replace(" ", ""):
        fail(f"{path.name}: torch requirement is not `torch>=2.5` (a pinned torch would drag a CUDA "
             "build onto CPU machines)")
    ok(f"{path.name}: requires torch>=2.5 and natten-kernels ABI {sup_major}.x (x >= {min_minor})")


def install_test(dist: pathlib.Path, wheels: List[pathlib.Path]) -> None:
    """One fresh venv per kernel wheel (cu130 and cu128 both provide `natten_kernels`)."""
    kernels = [w for w in wheels if dist_of(w) == "natten_kernels"]
    others = [w for w in wheels if dist_of(w) != "natten_kernels"]
    for kw in kernels:
        install_one(dist, others + [kw])


def install_one(dist: pathlib.Path, wheels: List[pathlib.Path]) -> None:
    torch_version = os.environ.get("TORCH_VERSION", "2.13.0")
    index = os.environ.get("TORCH_INDEX_URL")  # the release workflow: PyTorch's CPU wheels
    with tempfile.TemporaryDirectory(prefix="natten-install-") as tmp:
        venv = pathlib.Path(tmp) / "venv"
        t0 = time.perf_counter()
        if sh([sys.executable, "-m", "venv", venv]).returncode:
            fail("could not create a venv")
            return
        py = venv / "bin" / "python"
        # torch first, pinned: a bare `torch` would pull a multi-GB CUDA build.
        r = sh([py, "-m", "pip", "install", "-q", f"torch=={torch_version}",
                *(["--index-url", index] if index else [])])
        if r.returncode:
            fail(f"pip install torch=={torch_version}: {r.stderr[-1500:]}")
            return
        t1 = time.perf_counter()
        # Only the wheels just built (and what is already installed): nothing from an index.
        names = [w.name for w in wheels]
        r = sh([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", dist, *wheels])
        if r.returncode:
            fail(f"pip install {names} from {dist}: {r.stderr[-1500:]}")
            return
        t2 = time.perf_counter()
        print(f"install test: venv + torch=={torch_version} {t1 - t0:.1f} s, wheels {t2 - t1:.1f} s",
              flush=True)
        r = subprocess.run([str(py), str(ROOT / "ci" / "smoke_test.py")], cwd=tmp, text=True,
                           capture_output=True)
        print(r.stdout, end="")
        if r.returncode:
            fail(f"smoke test in a fresh venv: {r.stderr[-3000:]}")
        else:
            ok(f"smoke test in a fresh venv with torch=={torch_version} and {names}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dist", nargs="?", type=pathlib.Path, default=ROOT / "dist")
    p.add_argument("--skip-install", action="store_true")
    a = p.parse_args()
    dist = a.dist.resolve()
    files = sorted(f for f in dist.iterdir() if f.suffix == ".whl" or f.name.endswith(".tar.gz"))
    wheels = [f for f in files if f.suffix == ".whl"]
    sdists = [f for f in files if f.name.endswith(".tar.gz")]
    print(f"checking {len(wheels)} wheels and {len(sdists)} sdists in {dist}")

    for problem in matrix.check():
        fail(f"matrix check: {problem}")
    for want in ("natten", "natten_profiler", "natten_kernels"):
        if not any(dist_of(w) == want for w in wheels):
            fail(f"no {want} wheel in {dist}")
        if not any(dist_of(s) == want for s in sdists):
            fail(f"no {want} sdist in {dist}")

    r = sh([sys.executable, "-m", "twine", "check", "--strict", *files])
    if r.returncode:
        fail("twine check --strict:\n" + r.stdout + r.stderr)
    else:
        ok(f"twine check --strict: {len(files)} files")

    for w in wheels:
        meta = check_wheel(w)
        if dist_of(w) == "natten_kernels":
            check_kernel_wheel(w, meta)
        elif dist_of(w) == "natten":
            check_natten_wheel(w, meta)
    for s in sdists:
        check_sdist(s)

    if not a.skip_install:
        if failures:
            print("skipping the install test: fix the failures above first")
        else:
            install_test(dist, wheels)

    print()
    if failures:
        print(f"{len(failures)} wheel check(s) failed:")
        for f in failures:
            print("  -", f.splitlines()[0])
        return 1
    print(f"all wheel checks passed ({len(wheels)} wheels, {len(sdists)} sdists)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
