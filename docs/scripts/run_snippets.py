#!/usr/bin/env python3
"""Run every ```python block of the given Markdown pages, so the docs' examples cannot rot.

A block whose first line contains "does not run" is skipped (e.g. old NATTEN 0.17 code shown for
comparison). Each block runs in a fresh namespace, on the CPU. Run by ``nox -s docs``.

    python docs/scripts/run_snippets.py docs/*.md
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def main(paths) -> int:
    ran = skipped = failed = 0
    for path in paths:
        text = open(path, encoding="utf-8").read()
        for n, m in enumerate(BLOCK.finditer(text)):
            code = m.group(1)
            line = text[: m.start()].count("\n") + 2
            if "does not run" in code.splitlines()[0]:
                skipped += 1
                continue
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(code, f"{path}:{line}", "exec"), {"__name__": "__snippet__"})
            except Exception as e:  # report every failing block, then fail
                failed += 1
                print(f"FAILED {path}:{line}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            ran += 1
            print(f"ok {path}:{line} ({time.perf_counter() - t0:.1f} s)")
    print(f"{ran} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or not ran else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
