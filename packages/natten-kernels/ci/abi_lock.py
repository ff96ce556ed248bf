#!/usr/bin/env python3
"""ABI lock: a hash of the normalized C header stored with the ABI version it belongs to.

The C ABI (csrc/include/natten_kernels.h) may only change together with an ABI version bump
(NATTEN_ABI_VERSION_MINOR for additive changes, NATTEN_ABI_VERSION_MAJOR for breaking ones; see
docs/abi.md). abi_lock.json records {abi_version, sha256 of the normalized header}; the test
tests/test_abi_lock.py recomputes it and fails when the header changed but the version did not.

Normalization removes comments and every whitespace run that does not separate two identifier
characters, so reformatting or re-commenting the header does not count as a change.

    python ci/abi_lock.py            # print the current hash and version
    python ci/abi_lock.py --check    # exit 1 if abi_lock.json is stale (same logic as the test)
    python ci/abi_lock.py --update   # rewrite abi_lock.json (after bumping the version!)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "include", "natten_kernels.h")
LOCK = os.path.join(ROOT, "abi_lock.json")

_COMMENT_OR_STRING = re.compile(
    r'"(?:\\.|[^"\\\n])*"'      # string literal (kept)
    r"|'(?:\\.|[^'\\\n])*'"     # char literal (kept)
    r"|/\*.*?\*/"                 # block comment (dropped)
    r"|//[^\n]*",                  # line comment (dropped)
    re.S,
)
_CODE_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|\w+|\s+|.', re.S)


def _strip_comments(text: str) -> str:
    def repl(m):
        tok = m.group(0)
        return tok if tok[0] in "\"'" else " "

    return _COMMENT_OR_STRING.sub(repl, text)


def _compact(code: str) -> str:
    """Drop whitespace except where it separates two identifier/number tokens."""
    out = []
    pending = False
    for m in _CODE_TOKEN.finditer(code):
        tok = m.group(0)
        if tok.isspace():
            pending = True
            continue
        if pending and out and _is_word(out[-1][-1]) and _is_word(tok[0]):
            out.append(" ")
        out.append(tok)
        pending = False
    return "".join(out)


def normalize(text: str) -> str:
    """Comments removed; preprocessor lines kept one per line with single spaces (so `#define A (x)`
    and `#define A(x)` stay different); other code compacted."""
    text = _strip_comments(text).replace("\\\n", " ")
    out = []
    code = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if code:
                out.append(_compact(" ".join(code)))
                code = []
            out.append(re.sub(r"\s+", " ", stripped))
        elif stripped:
            code.append(stripped)
    if code:
        out.append(_compact(" ".join(code)))
    return "\n".join(x for x in out if x)


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def header_version(text: str):
    major = re.search(r"#define\s+NATTEN_ABI_VERSION_MAJOR\s+(\d+)", text)
    minor = re.search(r"#define\s+NATTEN_ABI_VERSION_MINOR\s+(\d+)", text)
    if not (major and minor):
        raise ValueError("natten_kernels.h has no NATTEN_ABI_VERSION_MAJOR/MINOR")
    return int(major.group(1)), int(minor.group(1))


def current(header: str = HEADER) -> dict:
    with open(header, encoding="utf-8") as f:
        text = f.read()
    major, minor = header_version(text)
    digest = hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()
    return {"abi_version": f"{major}.{minor}", "header": "csrc/include/natten_kernels.h", "normalized_sha256": digest}


def load_lock(path: str = LOCK) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check(header: str = HEADER, lock_path: str = LOCK):
    """Returns None if the lock is up to date, else a message saying what to do."""
    cur = current(header)
    lock = load_lock(lock_path)
    if cur["normalized_sha256"] == lock.get("normalized_sha256") and cur["abi_version"] == lock.get("abi_version"):
        return None
    if cur["abi_version"] == lock.get("abi_version"):
        return (
            f"natten_kernels.h changed but NATTEN_ABI_VERSION is still {cur['abi_version']}: bump "
            "NATTEN_ABI_VERSION_MINOR (additive change: new function, enum value, or field appended to a "
            "struct that has struct_size) or NATTEN_ABI_VERSION_MAJOR (anything else), bump the package "
            "version in pyproject.toml to match, then run `python ci/abi_lock.py --update` "
            f"(locked {lock.get('normalized_sha256')}, now {cur['normalized_sha256']})"
        )
    return (
        f"ABI version is {cur['abi_version']} but abi_lock.json records {lock.get('abi_version')}: run "
        "`python ci/abi_lock.py --update` and commit abi_lock.json (and update docs/abi.md, CHANGELOG.md)"
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--update" in argv:
        cur = current()
        with open(LOCK, "w", encoding="utf-8") as f:
            json.dump(cur, f, indent=2)
            f.write("\n")
        print(json.dumps(cur, indent=2))
        return 0
    if "--check" in argv:
        msg = check()
        if msg:
            print(msg, file=sys.stderr)
            return 1
        print("abi_lock.json is up to date")
        return 0
    print(json.dumps(current(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
