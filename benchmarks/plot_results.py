"""Plot the recorded speedups over cuDNN per use case (benchmarks/results/*.json) to a PNG.

    python benchmarks/plot_results.py OUT.png

Reads the JSON written by benchmarks/run.py (fused backends) and benchmarks/bench_flex.py
(flex-fna and plain-mask flex); one bar group per use case, one bar per backend/dtype, with the
BENCHMARKS.md targets of the Hopper issue drawn as markers.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["1d-32k", "1d-32k-s256", "flux-4k", "flux-4k-gna", "hunyuan", "hunyuan-gna",
         "nat-small", "dilated", "causal-video", "gqa"]
TARGETS = {"1d-32k": 10, "1d-32k-s256": 14, "flux-4k": 7, "flux-4k-gna": 10, "hunyuan": 5,
           "hunyuan-gna": 10.5}


def _by_recency(paths: List[str]) -> List[Tuple[str, Dict]]:
    """The result files oldest first (measurement date and UTC time where recorded, then natten-kernels
    version, then name), so that for each backend / dtype / use case the newest measurement is the
    one plotted."""
    def key(item: Tuple[str, Dict]) -> Tuple[str, str, Tuple[int, ...], str]:
        path, data = item
        meta = data.get("meta", {}) if isinstance(data, dict) else {}
        m = re.search(r"natten-kernels (\d+)\.(\d+)\.(\d+)", str(meta.get("kernels", "")))
        return (str(meta.get("date", "")), str(meta.get("time_utc", "")), tuple(int(g) for g in m.groups()) if m else (),
                os.path.basename(path))
    items = []
    for path in paths:
        with open(path) as f:
            items.append((path, json.load(f)))
    return sorted(items, key=key)


def load() -> Tuple[Dict[str, Dict[str, float]], List[str]]:
    series: Dict[str, Dict[str, float]] = {}
    cards = set()
    for path, data in _by_recency(glob.glob(os.path.join(HERE, "results", "*.json"))):
        if not isinstance(data, dict) or not (data.get("results") or data.get("rows")):
            continue  # not a speedup table (e.g. distributed.json, or a list of A/B records)
        meta = data.get("meta", {})
        cards.add(f"{meta.get('device', '?')}, {meta.get('date', '?')[:10]}")
        for r in data.get("results", []):  # benchmarks/run.py
            if "speedup" in r and r.get("pass") == "fwd":
                series.setdefault(f"{r['backend']} {r['dtype']}", {})[r["id"]] = r["speedup"]
        for r in data.get("rows", []):  # benchmarks/bench_flex.py (bf16)
            if r.get("flex_fwd_speedup"):
                series.setdefault("flex-fna bfloat16", {})[r["id"]] = r["flex_fwd_speedup"]
            if r.get("plain_fwd_speedup"):
                series.setdefault("plain-mask flex bfloat16", {})[r["id"]] = r["plain_fwd_speedup"]
    return series, sorted(cards)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, cards = load()
    if not series:
        sys.exit("no results in benchmarks/results/")
    ids = [i for i in ORDER if any(i in s for s in series.values())]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for n, (name, vals) in enumerate(sorted(series.items())):
        xs = [i + (n - (len(series) - 1) / 2) * width for i in range(len(ids))]
        ax.bar(xs, [vals.get(u, 0.0) for u in ids], width, label=name)
    for i, u in enumerate(ids):
        if u in TARGETS:
            ax.plot([i - 0.4, i + 0.4], [TARGETS[u]] * 2, "k--", lw=1)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(ids)))
    ax.set_xticklabels(ids, rotation=20)
    ax.set_ylabel("forward speedup over cuDNN SDPA (x)")
    ax.set_title("natten forward speedup over dense cuDNN (dashed: Hopper targets) - " + "; ".join(cards))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=110)
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
