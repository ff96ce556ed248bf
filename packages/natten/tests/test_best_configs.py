"""natten reads the best-config file written by `natten-profiler --optimize --save-best`."""

import os
import sys

import torch

import natten
from natten.backends import flex

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "natten-profiler", "src"))
from natten_profiler import best_configs  # noqa: E402


def test_tuned_backend_and_tiles_are_used(tmp_path, monkeypatch):
    q = torch.randn(1, 16, 16, 2, 32)
    sig = best_configs.signature_from_tensors(q, q, q, (5, 5))
    path = tmp_path / "best.json"
    best_configs.save_entry(path, {"signature": sig, "backend": "flex-fna",
                                   "q_tile_shape": [8, 8], "kv_tile_shape": [8, 8]})
    seen = {}
    real = flex.fna

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(flex, "fna", spy)
    with torch.no_grad():
        ref = natten.na2d(q, q, q, 5, backend="reference")
        monkeypatch.setenv("NATTEN_BEST_CONFIGS", str(path))
        natten.functional._PLANS.clear()  # the file is consulted when a call plan is built
        out = natten.na2d(q, q, q, 5)
    assert seen.get("q_tile_shape") == (8, 8) and seen.get("kv_tile_shape") == (8, 8)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # A problem with no entry keeps the default choice (reference on CPU).
    seen.clear()
    with torch.no_grad():
        natten.na2d(q, q, q, 3)
    assert seen == {}
