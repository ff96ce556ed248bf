"""Plain-text tables, JSON and CSV output."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from typing import Any, Iterable, List, Optional, Sequence, TextIO


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    footer: Optional[Sequence[Any]] = None,
    title: Optional[str] = None,
    align: Optional[str] = None,
) -> str:
    """A fixed-width table. ``align``: one char per column, 'l' or 'r' (default: text left,
    numbers right)."""
    body = [[("" if c is None else str(c)) for c in r] for r in rows]
    foot = [("" if c is None else str(c)) for c in footer] if footer else None
    every = [list(headers)] + body + ([foot] if foot else [])
    ncol = len(headers)
    widths = [max(len(r[i]) for r in every if i < len(r)) for i in range(ncol)]
    if align is None:
        align = ""
        for i in range(ncol):
            vals = [r[i] for r in body if i < len(r) and r[i] not in ("", "-")]
            numeric = bool(vals) and all(_looks_numeric(v) for v in vals)
            align += "r" if numeric else "l"

    def line(cells: Sequence[str]) -> str:
        out = []
        for i in range(ncol):
            c = cells[i] if i < len(cells) else ""
            out.append(c.rjust(widths[i]) if align[i] == "r" else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = []
    if title:
        lines.append(title)
    lines += [line(headers), rule] + [line(r) for r in body]
    if foot:
        lines += [rule, line(foot)]
    return "\n".join(lines)


def _looks_numeric(s: str) -> bool:
    s = s.strip().rstrip("x%").replace(",", "")
    for unit in (" us", " ms", " s"):
        if s.endswith(unit):
            s = s[: -len(unit)]
    try:
        float(s)
        return True
    except ValueError:
        return False


def _clean(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def to_json(obj: Any) -> str:
    """Indented JSON; lists of numbers stay on one line."""
    from .best_configs import dumps

    return dumps(_clean(obj))


def to_csv(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    for r in rows:
        w.writerow(["" if c is None else c for c in r])
    return buf.getvalue()


def emit(text: str, output: Optional[str], stream: Optional[TextIO] = None) -> None:
    """Write ``text`` to the file ``output`` or to stdout."""
    if not text.endswith("\n"):
        text += "\n"
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        (stream or sys.stdout).write(text)
        (stream or sys.stdout).flush()


def fmt_shape(t: Optional[Sequence[Any]]) -> str:
    if t is None:
        return "-"
    return "x".join(str(int(v)) for v in t)


def fmt_flops(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}FLOP"
    return f"{x:.0f} FLOP"


def fmt_count(x: int) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.2f}G"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}K"
    return str(x)


def warn(msg: str) -> None:
    sys.stderr.write(f"natten-profiler: warning: {msg}\n")
    sys.stderr.flush()


def info(msg: str) -> None:
    sys.stderr.write(f"natten-profiler: {msg}\n")
    sys.stderr.flush()


def lines(*parts: str) -> str:
    return "\n".join(p for p in parts if p is not None)


__all__: List[str] = [
    "emit", "fmt_count", "fmt_flops", "fmt_shape", "info", "render_table", "to_csv", "to_json",
    "warn",
]
