#!/usr/bin/env python3
"""Draw the figures of docs/neighborhoods.md: which keys a query attends, for kernel size, stride,
dilation and causal masking.

Every mask comes from ``natten.window.axis_window_bounds`` (the code the reference backend uses)
and is checked, before drawing, against a brute-force transcription of the definition (one
``attends(i, j)`` test per pair), so a figure cannot show something the library does not do.

    python docs/scripts/window_figures.py [--out docs/figures]

Run by ``nox -s docs`` before ``mkdocs build``; docs/figures/ is generated and git-ignored.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from natten.window import axis_window_bounds  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "figures"

# cell values: 0 = not attended, 1 = attended key, 2 = the query itself (attended), 3 = the query
# itself when it is not among its own keys (drawn orange; the definition allows it with stride)
CMAP = ListedColormap(["#f4f4f4", "#4c8bf5", "#e8453c", "#f2b233"])


def attends(n: int, K: int, s: int, d: int, causal: bool, i: int, j: int) -> bool:
    """The per-axis rule, transcribed literally (independent of natten.window)."""
    g = i % d
    if j % d != g:
        return False
    ip, jp = i // d, j // d
    ng = -(-(n - g) // d)
    L, R = K // 2, K // 2 + K % 2 - 1
    if causal:
        leader = min(s * (ip // s) + s - 1, ng - 1)
        return jp <= ip and leader - jp < K
    leader = min(s * (ip // s) + s // 2, ng - 1)
    c = min(max(leader, L), ng - 1 - R)
    return c - L <= jp <= c + R


def axis_mask(n: int, K: int, s: int = 1, d: int = 1, causal: bool = False) -> np.ndarray:
    """[n, n] bool: query i (row) attends key j (column) on one axis, from natten.window."""
    start, last = axis_window_bounds(n, K, s, d, causal)
    start, last = start.numpy()[:, None], last.numpy()[:, None]
    j = np.arange(n)[None, :]
    mask = (j >= start) & (j <= last) & ((j - start) % d == 0)
    brute = np.array([[attends(n, K, s, d, causal, i, jj) for jj in range(n)] for i in range(n)])
    if not np.array_equal(mask, brute):
        raise AssertionError(f"natten.window disagrees with the definition for n={n} K={K} s={s} "
                             f"d={d} causal={causal}")
    if not causal and not (mask.sum(1) == K).all():
        raise AssertionError("a non-causal window must hold exactly kernel_size keys")
    return mask


def stride_group(n: int, s: int, d: int, i: int) -> List[int]:
    """Queries that share query i's window on one axis (same dilation group, same stride group)."""
    g, ip = i % d, i // d
    return [q for q in range(n) if q % d == g and (q // d) // s == ip // s]


def _grid(ax, rows: int, cols: int) -> None:
    ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)


def figure_1d(out: pathlib.Path) -> pathlib.Path:
    n = 16
    panels = [
        ("kernel_size=5", dict(K=5)),
        ("kernel_size=4 (even: 2 left, 1 right)", dict(K=4)),
        ("kernel_size=5, dilation=2", dict(K=5, d=2)),
        ("kernel_size=5, stride=3", dict(K=5, s=3)),
        ("kernel_size=5, stride=5 (blocked)", dict(K=5, s=5)),
        ("kernel_size=5, is_causal=True", dict(K=5, causal=True)),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11.5, 8.0))
    for ax, (title, kw) in zip(axes.flat, panels):
        m = axis_mask(n, **kw).astype(int)
        m[np.arange(n), np.arange(n)] = np.where(m[np.arange(n), np.arange(n)] == 1, 2, 3)
        ax.imshow(m, cmap=CMAP, vmin=0, vmax=3)
        _grid(ax, n, n)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
        ax.set_xticks(range(0, n, 3))
        ax.set_yticks(range(0, n, 3))
    fig.suptitle("One axis of length 16: row i shows the keys query i attends "
                 "(blue; red = the query's own position)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = out / "window_1d.png"
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)
    return path


def _mask_2d(shape: Tuple[int, int], K, s, d, causal, query: Tuple[int, int]) -> np.ndarray:
    rows = [axis_mask(shape[a], K[a], s[a], d[a], causal[a])[query[a]] for a in range(2)]
    return rows[0][:, None] & rows[1][None, :]  # a key is attended iff attended on every axis


def figure_2d(out: pathlib.Path) -> pathlib.Path:
    shape = (13, 13)
    one = (1, 1)
    panels = [
        ("kernel 5x5, query at the centre", (5, 5), one, one, (False, False), (6, 6)),
        ("kernel 5x5, query at a corner:\nthe window shifts inward", (5, 5), one, one,
         (False, False), (0, 1)),
        ("kernel 5x5, dilation 2x2", (5, 5), one, (2, 2), (False, False), (6, 6)),
        ("kernel 5x5, stride 3x3: the 3x3 group (frame)\nshares its centre's window", (5, 5), (3, 3),
         one, (False, False), (6, 6)),
        ("kernel 5x5, is_causal=(True, False)", (5, 5), one, one, (True, False), (6, 6)),
        ("kernel (3, 7), dilation (1, 2),\nis_causal=(False, True)", (3, 7), one, (1, 2),
         (False, True), (6, 10)),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11.5, 8.4))
    for ax, (title, K, s, d, causal, q) in zip(axes.flat, panels):
        m = _mask_2d(shape, K, s, d, causal, q).astype(int)
        groups = [stride_group(shape[a], s[a], d[a], q[a]) for a in range(2)]
        if not any(causal):
            for x in groups[0]:
                for y in groups[1]:
                    # Every member of a non-causal stride group attends exactly the same keys.
                    if not np.array_equal(_mask_2d(shape, K, s, d, causal, (x, y)), m.astype(bool)):
                        raise AssertionError("stride group members must share the window")
        if any(v > 1 for v in s):
            x0, y0 = min(groups[0]), min(groups[1])
            ax.add_patch(plt.Rectangle((y0 - 0.5, x0 - 0.5), max(groups[1]) - y0 + 1,
                                       max(groups[0]) - x0 + 1, fill=False, lw=3, ec="black", zorder=5))
        m[q] = 2 if m[q] == 1 else 3
        ax.imshow(m, cmap=CMAP, vmin=0, vmax=3)
        _grid(ax, *shape)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("axis 1 (Y)")
        ax.set_ylabel("axis 0 (X)")
        ax.set_xticks(range(0, shape[1], 3))
        ax.set_yticks(range(0, shape[0], 3))
    fig.suptitle("A 13x13 token grid: the keys one query (red) attends (blue)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = out / "window_2d.png"
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for path in (figure_1d(a.out), figure_2d(a.out)):
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
