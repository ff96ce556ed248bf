"""``--optimize``: time every compatible backend and tile configuration, pick the fastest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from . import __version__
from .best_configs import make_signature
from .configs import BackendConfigs, Config
from .problem import UseCase
from .profiling import median, time_step
from .progress import Progress
from .runners import RunOptions, build_natten_step


@dataclass
class Trial:
    config: Config
    runtime_ms: Optional[float] = None
    tflops: Optional[float] = None
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        d = self.config.to_dict()
        d.update(runtime_ms=self.runtime_ms, tflops=self.tflops, error=self.error)
        return d


@dataclass
class OptimizeResult:
    trials: List[Trial] = field(default_factory=list)
    skipped: List[BackendConfigs] = field(default_factory=list)

    @property
    def best(self) -> Optional[Trial]:
        ok = [t for t in self.trials if t.runtime_ms is not None]
        return min(ok, key=lambda t: t.runtime_ms) if ok else None

    def ranked(self) -> List[Trial]:
        ok = sorted((t for t in self.trials if t.runtime_ms is not None), key=lambda t: t.runtime_ms)
        return ok + [t for t in self.trials if t.runtime_ms is None]


def optimize(
    uc: UseCase,
    device: torch.device,
    backend_configs: Sequence[BackendConfigs],
    base: RunOptions,
    warmup: int,
    reps: int,
    max_configs: int = 0,
    show_progress: bool = True,
    seed: int = 0,
) -> OptimizeResult:
    """Time up to ``max_configs`` configurations per available backend (0: all)."""
    result = OptimizeResult()
    todo: List[Config] = []
    for bc in backend_configs:
        if not bc.available or not bc.configs:
            result.skipped.append(bc)
            continue
        cfgs = bc.configs if max_configs <= 0 else bc.configs[:max_configs]
        todo.extend(cfgs)
    flops = uc.flops(base.backprop)
    with Progress(len(todo), "optimize", enabled=show_progress) as bar:
        for cfg in todo:
            opts = dataclasses.replace(
                base,
                q_tile=cfg.q_tile_shape,
                kv_tile=cfg.kv_tile_shape,
                backward_q_tile=cfg.backward_q_tile_shape or base.backward_q_tile,
                backward_kv_tile=cfg.backward_kv_tile_shape or base.backward_kv_tile,
                schedule=cfg.kernel_schedule or base.schedule,
            )
            trial = Trial(cfg)
            try:
                step = build_natten_step(uc, cfg.backend, device, opts, seed)
                ms = median(time_step(step, device, warmup, reps))
                trial.runtime_ms = ms
                trial.tflops = flops / (ms * 1e-3) / 1e12 if ms > 0 else None
            except Exception as e:  # a configuration that cannot run is reported, not fatal
                trial.error = f"{type(e).__name__}: {e}"
            result.trials.append(trial)
            status = f"{ms:.3f} ms" if trial.runtime_ms is not None else "failed"
            bar.advance(f"{cfg.label()}: {status}")
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def use_case_signature(uc: UseCase, device: torch.device, backprop: bool) -> Dict[str, Any]:
    return make_signature(
        uc.input_size, uc.window_size, uc.stride, uc.dilation, uc.causal,
        heads=uc.heads, heads_kv=uc.heads_kv, head_dim=uc.dim, head_dim_v=uc.dim_value,
        dtype=uc.torch_dtype, device_type=device.type, batch_size=uc.batch,
        backprop=backprop, additional_kv=uc.add_kv, device_name=device_name(device),
    )


def best_entry(uc: UseCase, device: torch.device, backprop: bool, trial: Trial) -> Dict[str, Any]:
    c = trial.config
    lst = lambda t: None if t is None else list(t)  # noqa: E731
    return {
        "signature": use_case_signature(uc, device, backprop),
        "backend": c.backend,
        "q_tile_shape": lst(c.q_tile_shape),
        "kv_tile_shape": lst(c.kv_tile_shape),
        "backward_q_tile_shape": lst(c.backward_q_tile_shape),
        "backward_kv_tile_shape": lst(c.backward_kv_tile_shape),
        "kernel_schedule": c.kernel_schedule,
        "runtime_ms": trial.runtime_ms,
        "created_by": f"natten-profiler {__version__}",
    }
