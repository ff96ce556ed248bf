"""``natten-profiler sim --plot``: tile bound per configuration (needs matplotlib)."""

from __future__ import annotations

from typing import Sequence


def plot_bounds(path: str, groups: Sequence[tuple], shape: Sequence[int]) -> None:
    """One horizontal bar per configuration; the FLOP bound of its (window, stride) as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = lambda t: "x".join(str(int(v)) for v in t)  # noqa: E731
    labels, bounds, flops, colors = [], [], [], []
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    many = len(groups) > 1
    for gi, (w, s, fb, shown, _total) in enumerate(groups):
        for r in shown:
            lab = f"q {x(r.q_tile)} / kv {x(r.kv_tile)}"
            if many:
                lab = f"w {x(w)} s {x(s)} | " + lab
            if r.block_sparse:
                lab += " (block-sparse)"
            labels.append(lab)
            bounds.append(r.tile_bound)
            flops.append(fb)
            colors.append(palette[gi % len(palette)])
    n = len(labels)
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.32 * n + 1.2)))
    ys = list(range(n))[::-1]
    ax.barh(ys, bounds, color=colors)
    ax.scatter(flops, ys, marker="|", s=200, color="black", label="FLOP bound", zorder=3)
    for y, b in zip(ys, bounds):
        ax.text(b, y, f" {b:.2f}x", va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("upper bound on speedup over dense attention (dense pairs / visited pairs)")
    title = f"Tile-visit bound, {x(shape)}"
    if not many:
        w, s = groups[0][0], groups[0][1]
        title += f", window {x(w)}, stride {x(s)}"
    ax.set_title(title)
    ax.set_xlim(0, max(bounds + flops) * 1.15)
    ax.legend(loc="lower left", bbox_to_anchor=(1.0, 0.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
