"""Named use cases: the project's benchmark suite (BENCHMARKS.md) and the small default."""

from __future__ import annotations

from typing import Dict

# Values a named use case sets; any option given on the command line overrides them.
USE_CASES: Dict[str, Dict[str, object]] = {
    # The default of `natten-profiler` with no arguments: small, 2-D, seconds on a CPU.
    "default": dict(input_size=(32, 32), window_size=(7, 7), batch=1, heads=2, dim=32),
    "1d-32k": dict(input_size=(32768,), window_size=(2048,), heads=1, dim=128),
    "1d-32k-s256": dict(input_size=(32768,), window_size=(2048,), stride=(256,), heads=1, dim=128),
    "flux-4k": dict(input_size=(256, 256), window_size=(80, 80), heads=24, dim=128),
    "flux-4k-gna": dict(
        input_size=(256, 256), window_size=(80, 80), stride=(16, 16), heads=24, dim=128
    ),
    "hunyuan": dict(input_size=(30, 48, 80), window_size=(18, 24, 24), heads=24, dim=128),
    "hunyuan-gna": dict(
        input_size=(30, 48, 80), window_size=(18, 24, 24), stride=(16, 8, 8), heads=24, dim=128
    ),
    "nat-small": dict(input_size=(56, 56), window_size=(7, 7), batch=64, heads=4, dim=32),
    "dilated": dict(
        input_size=(64, 64), window_size=(13, 13), dilation=(2, 2), batch=16, heads=8, dim=64
    ),
    "causal-video": dict(
        input_size=(16, 44, 80), window_size=(8, 16, 16), causal=(True, False, False),
        heads=32, dim=128,
    ),
    "gqa": dict(input_size=(256, 256), window_size=(80, 80), heads=24, heads_kv=4, dim=128),
}
