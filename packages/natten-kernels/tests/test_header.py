"""natten_kernels.h is pure C, includable from C and C++, and the ctypes mirrors (tests/abi_ctypes.py
and natten/_libnatten.py) match the C compiler's layout byte for byte. The C example of docs/abi.md
compiles, links against the library and runs."""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
import sys

import pytest

import abi_ctypes as A
from conftest import PKG, REPO

HEADER = PKG / "csrc" / "include" / "natten_kernels.h"
INCLUDE = HEADER.parent
DOC = REPO / "docs" / "abi.md"

STRUCTS = {
    "natten_fna_forward_params": A.FnaForwardParams,
    "natten_fna_backward_params": A.FnaBackwardParams,
    "natten_fna_problem": A.FnaProblem,
    "natten_tile_config": A.TileConfig,
}


def _compiler(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found")
    return path


def _compile(cc, args, tmp_path, src_text, suffix, extra=()):
    src = tmp_path / f"t{suffix}"
    src.write_text(src_text)
    out = tmp_path / "a.out"
    cmd = [cc, *args, f"-I{INCLUDE}", str(src), "-o", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return out


@pytest.mark.parametrize(
    "cc, std, suffix",
    [("gcc", "-std=c99", ".c"), ("gcc", "-std=c11", ".c"), ("g++", "-std=c++11", ".cpp"), ("g++", "-std=c++17", ".cpp")],
)
def test_header_compiles_strictly(tmp_path, cc, std, suffix):
    cc = _compiler(cc)
    src = '#include "natten_kernels.h"\n#include "natten_kernels.h"\nint main(void) { natten_fna_forward_params p; natten_fna_forward_params_init(&p); return (int)(p.struct_size != sizeof(p)); }\n'
    exe = _compile(cc, [std, "-Wall", "-Wextra", "-Wpedantic", "-Werror"], tmp_path, src, suffix)
    assert subprocess.run([str(exe)]).returncode == 0


def _c_layout(tmp_path):
    """{struct: (sizeof, {field: (offset, size)})} from the C compiler."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "natten_kernels.h"', "int main(void) {"]
    for sname, cls in STRUCTS.items():
        lines.append(f'  printf("S {sname} %zu\\n", sizeof({sname}));')
        for fname, _ in cls._fields_:
            lines.append(
                f'  printf("F {sname} {fname} %zu %zu\\n", offsetof({sname}, {fname}), sizeof((({sname}*)0)->{fname}));'
            )
    lines += ["  return 0;", "}"]
    exe = _compile(_compiler("gcc"), ["-std=c99"], tmp_path, "\n".join(lines) + "\n", ".c")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    layout = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "S":
            layout.setdefault(parts[1], [0, {}])[0] = int(parts[2])
        else:
            layout.setdefault(parts[1], [0, {}])[1][parts[2]] = (int(parts[3]), int(parts[4]))
    return layout


def _header_fields(struct_name):
    text = HEADER.read_text()
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (struct_name, struct_name), text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = []
    for decl in body.split(";"):
        decl = decl.strip()
        if decl:
            names.append(re.match(r".*?(\w+)\s*(\[[^\]]*\])?$", decl, re.S).group(1))
    return names


def _check_mirror(cls, sname, layout):
    size, fields = layout[sname]
    assert ctypes.sizeof(cls) == size, (sname, ctypes.sizeof(cls), size)
    assert [f for f, _ in cls._fields_] == _header_fields(sname), sname
    for fname, _ in cls._fields_:
        desc = getattr(cls, fname)
        assert (desc.offset, desc.size) == fields[fname], (sname, fname, (desc.offset, desc.size), fields[fname])


def test_test_mirror_matches_c_layout(tmp_path):
    layout = _c_layout(tmp_path)
    for sname, cls in STRUCTS.items():
        _check_mirror(cls, sname, layout)
    assert layout["natten_fna_forward_params"][0] == 544  # NATTEN_FNA_FORWARD_PARAMS_SIZE_V1_1
    # ABI 1.1 appended its fields right after the 1.0 layout (448 bytes).
    assert layout["natten_fna_forward_params"][1]["global_shape"][0] == 448
    assert layout["natten_fna_problem"][0] == 48
    assert layout["natten_fna_backward_params"][0] == 856  # NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_3
    # ABI 1.2 appended the backward's slab fields right after its 1.1 layout (744 bytes).
    assert layout["natten_fna_backward_params"][1]["global_shape"][0] == 744
    # ABI 1.3 appended kv_splits right after the 1.2 layout (840 bytes).
    assert layout["natten_fna_backward_params"][1]["kv_splits"][0] == 840
    assert layout["natten_tile_config"][0] == 40


def test_natten_libnatten_mirror_matches_c_layout(tmp_path):
    """natten/_libnatten.py (the production binding) mirrors the header exactly."""
    path = REPO / "packages" / "natten" / "src" / "natten" / "_libnatten.py"
    if not path.is_file():
        pytest.skip("packages/natten not present")
    # Load the module on its own (natten/__init__ imports torch); it only needs natten._version.
    version_path = path.parent / "_version.py"
    pkg = type(sys)("_natten_probe")
    pkg.__path__ = [str(path.parent)]
    sys.modules["_natten_probe"] = pkg
    try:
        for name, p in (("_version", version_path), ("_libnatten", path)):
            spec = importlib.util.spec_from_file_location(f"_natten_probe.{name}", p)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
        L = sys.modules["_natten_probe._libnatten"]
        layout = _c_layout(tmp_path)
        _check_mirror(L.FnaForwardParams, "natten_fna_forward_params", layout)
        _check_mirror(L.FnaProblem, "natten_fna_problem", layout)
        _check_mirror(L.FnaBackwardParams, "natten_fna_backward_params", layout)
        _check_mirror(L.TileConfig, "natten_tile_config", layout)
        text = HEADER.read_text()
        for name, value in re.findall(r"\b(NATTEN_(?:STATUS|DTYPE|BACKEND)_\w+) = (\d+)", text):
            short = name[len("NATTEN_"):]
            if short == "DTYPE_INVALID":
                continue
            assert getattr(L, short) == int(value), name
    finally:
        for k in [k for k in sys.modules if k.startswith("_natten_probe")]:
            del sys.modules[k]


def test_enum_values_in_test_mirror():
    text = HEADER.read_text()
    values = dict((n, int(v)) for n, v in re.findall(r"\b(NATTEN_\w+) = (\d+)", text))
    assert values["NATTEN_DTYPE_FP16"] == A.FP16 and values["NATTEN_DTYPE_BF16"] == A.BF16
    assert values["NATTEN_DTYPE_FP32"] == A.FP32
    for code, name in A.STATUS_NAMES.items():
        assert values[name] == code
    assert values["NATTEN_BACKEND_CUTLASS_FNA_SM80"] == 1


def test_docs_example_compiles_links_and_runs(tmp_path, library_path):
    text = DOC.read_text()
    m = re.search(r"<!-- example:begin -->\s*```c\n(.*?)```\s*<!-- example:end -->", text, re.S)
    assert m, "docs/abi.md has no example block"
    exe = _compile(
        _compiler("gcc"),
        ["-std=c99", "-Wall", "-Wextra", "-Werror"],
        tmp_path,
        m.group(1),
        ".c",
        extra=[f"-L{library_path.parent}", f"-l:{library_path.name}", f"-Wl,-rpath,{library_path.parent}", "-lm"],
    )
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "natten-kernels" in proc.stdout
    assert "NULL q -> NATTEN_STATUS_INVALID_ARGUMENT" in proc.stdout
    assert "tile configurations" in proc.stdout
    assert "q is NULL" in proc.stderr


def test_docs_cover_the_header():
    """Every function, struct field, enum constant and macro of the header is documented."""
    header = HEADER.read_text()
    doc = DOC.read_text()
    names = set(re.findall(r"\b(natten_\w+)\s*\(", header))
    names |= set(re.findall(r"\b(NATTEN_[A-Z0-9_]+)\b", header)) - {"NATTEN_KERNELS_H_", "NATTEN_KERNELS_BUILDING"}
    missing = sorted(n for n in names if n not in doc)
    for sname in STRUCTS:  # fields as `name` or `name[...]` in a table or code block
        missing += sorted(
            f"{sname}.{f}" for f in _header_fields(sname) if f"`{f}" not in doc and f" {f};" not in doc
        )
    assert not missing, f"docs/abi.md does not mention: {missing}"
