"""The C header may only change together with an ABI version bump (abi_lock.json), and the package
version must be <ABI major>.<ABI minor>.<patch>."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from conftest import PKG

sys.path.insert(0, str(PKG / "ci"))
import abi_lock  # noqa: E402

HEADER = PKG / "csrc" / "include" / "natten_kernels.h"


def test_header_matches_lock():
    msg = abi_lock.check()
    assert msg is None, msg


def test_lock_file_format():
    lock = json.loads((PKG / "abi_lock.json").read_text())
    assert set(lock) == {"abi_version", "header", "normalized_sha256"}
    assert re.fullmatch(r"\d+\.\d+", lock["abi_version"])
    assert re.fullmatch(r"[0-9a-f]{64}", lock["normalized_sha256"])
    assert (PKG / lock["header"]).resolve() == HEADER.resolve()


def test_package_version_is_abi_version():
    text = (PKG / "pyproject.toml").read_text()
    version = re.search(r'^version = "(\d+)\.(\d+)\.(\d+)"', text, re.M)
    assert version, "pyproject.toml needs a static version = \"X.Y.Z\""
    major, minor = abi_lock.header_version(HEADER.read_text())
    assert (int(version.group(1)), int(version.group(2))) == (major, minor)
    changelog = (PKG / "CHANGELOG.md").read_text()
    assert f"## [{version.group(1)}.{version.group(2)}.{version.group(3)}]" in changelog


def _with_header(tmp_path, text):
    h = tmp_path / "natten_kernels.h"
    h.write_text(text)
    lock = tmp_path / "abi_lock.json"
    shutil.copy(PKG / "abi_lock.json", lock)
    return abi_lock.check(str(h), str(lock))


def test_comment_and_whitespace_changes_do_not_count(tmp_path):
    text = HEADER.read_text()
    text = text.replace("int32_t rank;", "int32_t   rank ;   /* reworded */")
    text = "/* a new banner */\n" + text.replace("\n\n", "\n\n\n")
    assert _with_header(tmp_path, text) is None


def _version(text):
    return "%d.%d" % abi_lock.header_version(text)


def test_real_change_without_bump_fails(tmp_path):
    # Rename a struct field (same layout, different API): still an ABI change.
    text, n = re.subn(r"int32_t kernel_schedule;(\s+/\*[^*]*\*/\s+void\* stream;)", r"int32_t flags;\1",
                      HEADER.read_text())
    assert n == 1
    msg = _with_header(tmp_path, text)
    assert msg and f"changed but NATTEN_ABI_VERSION is still {_version(text)}" in msg
    assert "NATTEN_ABI_VERSION_MINOR" in msg and "NATTEN_ABI_VERSION_MAJOR" in msg


def test_macro_change_without_bump_fails(tmp_path):
    text = HEADER.read_text().replace("#define NATTEN_MAX_RANK 3", "#define NATTEN_MAX_RANK 4")
    assert "bump" in _with_header(tmp_path, text)


def test_bump_without_lock_update_fails(tmp_path):
    major, minor = abi_lock.header_version(HEADER.read_text())
    text = HEADER.read_text().replace(f"#define NATTEN_ABI_VERSION_MINOR {minor}",
                                      f"#define NATTEN_ABI_VERSION_MINOR {minor + 1}")
    msg = _with_header(tmp_path, text)
    assert msg and "--update" in msg and f"{major}.{minor + 1}" in msg


def test_appending_a_field_needs_a_bump(tmp_path):
    # A field appended to a struct with struct_size (a minor change) still changes the hash.
    # (the first match: the forward params' last field)
    text, n = re.subn(r"(int64_t kv_shape\[NATTEN_MAX_RANK\];[^\n]*\n)", r"\1  int32_t future_flag;\n",
                      HEADER.read_text(), count=1)
    assert n == 1
    assert "bump" in _with_header(tmp_path, text)


def test_normalize_keeps_macro_shape():
    assert abi_lock.normalize("#define A (x)") != abi_lock.normalize("#define A(x)")
    assert abi_lock.normalize("int  f( int a ) ; // c") == abi_lock.normalize("int f(int a);")
    assert abi_lock.normalize('const char* s = "a  /* b */";') != abi_lock.normalize('const char* s = "a b";')
