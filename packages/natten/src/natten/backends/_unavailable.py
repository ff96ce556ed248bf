"""Entry points for a backend that is not in this release: it never runs and says why."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional


def entry_points(reason: str) -> Dict[str, Callable[..., Any]]:
    """``can_run_fna/can_run_fmha`` returning ``reason``; ``fna/fmha`` raising NotImplementedError."""

    def can_run(*args: Any, **kwargs: Any) -> Optional[str]:
        return reason

    def run(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(reason)

    return {"can_run_fna": can_run, "can_run_fmha": can_run, "fna": run, "fmha": run}
