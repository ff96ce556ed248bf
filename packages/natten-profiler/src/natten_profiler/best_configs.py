"""Best configurations per problem signature: the file ``--optimize --save-best`` writes and natten
reads (path in the environment variable ``NATTEN_BEST_CONFIGS``).

Schema (version 1)::

    {
      "version": 1,
      "entries": [
        {
          "signature": {
            "input_size": [30, 48, 80], "kernel_size": [18, 24, 24], "stride": [1, 1, 1],
            "dilation": [1, 1, 1], "is_causal": [false, false, false],
            "heads": 24, "heads_kv": 24, "head_dim": 128, "head_dim_v": 128,
            "dtype": "float16", "device_type": "cuda",
            "batch_size": 1, "backprop": false, "additional_kv": 0,
            "device_name": "NVIDIA H100 80GB HBM3"
          },
          "backend": "hopper-fna",
          "q_tile_shape": [2, 8, 8], "kv_tile_shape": [2, 8, 8],
          "backward_q_tile_shape": null, "backward_kv_tile_shape": null,
          "kernel_schedule": null,
          "runtime_ms": 81.2, "created_by": "natten-profiler 0.1.0"
        }
      ]
    }

Matching (:func:`lookup`): every *required* signature key must be equal (``input_size``,
``kernel_size``, ``stride``, ``dilation``, ``is_causal``, ``heads``, ``heads_kv``, ``head_dim``,
``head_dim_v``, ``dtype``, ``device_type``). The *optional* keys (``batch_size``, ``backprop``,
``additional_kv``, ``device_name``) are preferences: among the entries that match, the one with
the fewest optional keys that differ wins (a key missing on either side does not count), and on a
tie the later entry in the file wins. A backend named in an entry may not run everywhere (e.g. a
file tuned on an H100 read on a B200): the caller must check that it can run and fall back to its
own choice when it cannot. Unknown keys are ignored, so later versions can add fields.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

SCHEMA_VERSION = 1
ENV_VAR = "NATTEN_BEST_CONFIGS"
REQUIRED_KEYS: Tuple[str, ...] = (
    "input_size", "kernel_size", "stride", "dilation", "is_causal",
    "heads", "heads_kv", "head_dim", "head_dim_v", "dtype", "device_type",
)
OPTIONAL_KEYS: Tuple[str, ...] = ("batch_size", "backprop", "additional_kv", "device_name")
TILE_KEYS: Tuple[str, ...] = (
    "q_tile_shape", "kv_tile_shape", "backward_q_tile_shape", "backward_kv_tile_shape",
)

_DTYPE_ALIASES = {
    "fp32": "float32", "float": "float32", "float32": "float32",
    "fp16": "float16", "half": "float16", "float16": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp64": "float64", "double": "float64", "float64": "float64",
}


class BestConfigsError(ValueError):
    """The file is not a valid best-configurations file; the message says where and why."""


def _dtype_name(dtype: Any) -> str:
    s = str(dtype)
    if s.startswith("torch."):
        s = s[len("torch."):]
    s = s.lower()
    if s not in _DTYPE_ALIASES:
        raise BestConfigsError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPE_ALIASES.values()))}")
    return _DTYPE_ALIASES[s]


def _int_list(name: str, v: Any, rank: Optional[int] = None) -> List[int]:
    if isinstance(v, bool) or v is None:
        raise BestConfigsError(f"signature key {name!r} must be a list of ints, got {v!r}")
    if isinstance(v, int):
        if rank is None:
            raise BestConfigsError(f"signature key {name!r} must be a list of ints, got {v!r}")
        return [int(v)] * rank
    try:
        out = [int(x) for x in v]
    except Exception:
        raise BestConfigsError(f"signature key {name!r} must be a list of ints, got {v!r}") from None
    if any(isinstance(x, bool) for x in v):
        raise BestConfigsError(f"signature key {name!r} must be a list of ints, got {v!r}")
    if rank is not None and len(out) != rank:
        raise BestConfigsError(f"signature key {name!r} needs {rank} values (one per axis), got {out}")
    return out


def normalize_signature(sig: Mapping[str, Any]) -> Dict[str, Any]:
    """Canonical form of a signature: lists for per-axis values, dtype names like "float16",
    ints and bools. Raises :class:`BestConfigsError` naming the offending key."""
    if not isinstance(sig, Mapping):
        raise BestConfigsError(f"a signature must be a JSON object, got {type(sig).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in sig]
    if missing:
        raise BestConfigsError(f"signature lacks required key(s) {missing}")
    shape = _int_list("input_size", sig["input_size"])
    rank = len(shape)
    if rank not in (1, 2, 3):
        raise BestConfigsError(f"signature 'input_size' must have 1-3 values, got {shape}")
    causal = sig["is_causal"]
    if isinstance(causal, bool):
        causal = [causal] * rank
    if not isinstance(causal, (list, tuple)) or len(causal) != rank:
        raise BestConfigsError(f"signature key 'is_causal' needs {rank} bools, got {causal!r}")
    out: Dict[str, Any] = {
        "input_size": shape,
        "kernel_size": _int_list("kernel_size", sig["kernel_size"], rank),
        "stride": _int_list("stride", sig["stride"], rank),
        "dilation": _int_list("dilation", sig["dilation"], rank),
        "is_causal": [bool(c) for c in causal],
    }
    for k in ("heads", "heads_kv", "head_dim", "head_dim_v"):
        v = sig[k]
        if isinstance(v, bool) or not isinstance(v, int):
            raise BestConfigsError(f"signature key {k!r} must be an int, got {v!r}")
        out[k] = int(v)
    out["dtype"] = _dtype_name(sig["dtype"])
    dev = str(sig["device_type"]).split(":")[0]
    out["device_type"] = dev
    for k in OPTIONAL_KEYS:
        v = sig.get(k)
        if v is None:
            continue
        if k == "backprop":
            out[k] = bool(v)
        elif k == "device_name":
            out[k] = str(v)
        else:
            if isinstance(v, bool) or not isinstance(v, int):
                raise BestConfigsError(f"signature key {k!r} must be an int, got {v!r}")
            out[k] = int(v)
    return out


def make_signature(
    input_size: Sequence[int],
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int]] = 1,
    dilation: Union[int, Sequence[int]] = 1,
    is_causal: Union[bool, Sequence[bool]] = False,
    *,
    heads: int,
    heads_kv: Optional[int] = None,
    head_dim: int,
    head_dim_v: Optional[int] = None,
    dtype: Any,
    device_type: str,
    batch_size: Optional[int] = None,
    backprop: Optional[bool] = None,
    additional_kv: Optional[int] = None,
    device_name: Optional[str] = None,
) -> Dict[str, Any]:
    """Build a normalized signature (ints broadcast to every axis, like natten's arguments)."""
    rank = len(tuple(input_size))
    sig = {
        "input_size": list(input_size),
        "kernel_size": kernel_size if not isinstance(kernel_size, int) else [kernel_size] * rank,
        "stride": stride if not isinstance(stride, int) else [stride] * rank,
        "dilation": dilation if not isinstance(dilation, int) else [dilation] * rank,
        "is_causal": is_causal,
        "heads": heads,
        "heads_kv": heads if heads_kv is None else heads_kv,
        "head_dim": head_dim,
        "head_dim_v": head_dim if head_dim_v is None else head_dim_v,
        "dtype": dtype,
        "device_type": device_type,
        "batch_size": batch_size,
        "backprop": backprop,
        "additional_kv": additional_kv,
        "device_name": device_name,
    }
    return normalize_signature(sig)


def signature_from_tensors(
    query: Any,
    key: Any,
    value: Any,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int]] = 1,
    dilation: Union[int, Sequence[int]] = 1,
    is_causal: Union[bool, Sequence[bool]] = False,
    *,
    additional_kv: Optional[int] = None,
    backprop: Optional[bool] = None,
    with_device_name: bool = True,
) -> Dict[str, Any]:
    """Signature of a natten call on heads-last tensors ``q [B, *grid, H, D]`` (what the
    dispatcher looks up). ``backprop`` defaults to whether any input requires grad."""
    grid = tuple(int(s) for s in query.shape[1:-2])
    if backprop is None:
        backprop = bool(query.requires_grad or key.requires_grad or value.requires_grad)
    name = None
    if with_device_name and query.device.type == "cuda":
        try:
            import torch

            name = torch.cuda.get_device_name(query.device)
        except Exception:
            name = None
    return make_signature(
        grid, kernel_size, stride, dilation, is_causal,
        heads=int(query.shape[-2]), heads_kv=int(key.shape[-2]),
        head_dim=int(query.shape[-1]), head_dim_v=int(value.shape[-1]),
        dtype=query.dtype, device_type=query.device.type,
        batch_size=int(query.shape[0]), backprop=backprop,
        additional_kv=additional_kv, device_name=name,
    )


def _normalize_entry(e: Any, where: str) -> Dict[str, Any]:
    if not isinstance(e, Mapping):
        raise BestConfigsError(f"{where}: an entry must be a JSON object, got {type(e).__name__}")
    if "signature" not in e or "backend" not in e:
        raise BestConfigsError(f"{where}: an entry needs 'signature' and 'backend'")
    try:
        sig = normalize_signature(e["signature"])
    except BestConfigsError as err:
        raise BestConfigsError(f"{where}: {err}") from None
    if not isinstance(e["backend"], str):
        raise BestConfigsError(f"{where}: 'backend' must be a string, got {e['backend']!r}")
    out = dict(e)
    out["signature"] = sig
    rank = len(sig["input_size"])
    for k in TILE_KEYS:
        v = e.get(k)
        if v is None:
            out[k] = None
            continue
        try:
            out[k] = _int_list(k, v, rank)
        except BestConfigsError as err:
            raise BestConfigsError(f"{where}: {err}") from None
    out.setdefault("kernel_schedule", None)
    return out


def _score(entry_sig: Mapping[str, Any], sig: Mapping[str, Any]) -> Optional[int]:
    for k in REQUIRED_KEYS:
        if entry_sig.get(k) != sig.get(k):
            return None
    return sum(
        1 for k in OPTIONAL_KEYS
        if k in entry_sig and k in sig and entry_sig[k] != sig[k]
    )


@dataclass
class BestConfigs:
    """The entries of one best-configurations file."""

    entries: List[Dict[str, Any]] = field(default_factory=list)
    path: Optional[str] = None

    def lookup(self, signature: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """The best entry for ``signature`` (see the module docstring), or None. Tile shapes come
        back as tuples."""
        sig = normalize_signature(signature)
        best, best_score = None, None
        for e in self.entries:
            s = _score(e["signature"], sig)
            if s is None:
                continue
            if best_score is None or s <= best_score:
                best, best_score = e, s
        if best is None:
            return None
        out = dict(best)
        for k in TILE_KEYS:
            if out.get(k) is not None:
                out[k] = tuple(out[k])
        return out

    def add(self, entry: Mapping[str, Any]) -> None:
        """Add an entry, replacing one with an identical signature."""
        e = _normalize_entry(entry, "new entry")
        self.entries = [x for x in self.entries if x["signature"] != e["signature"]]
        self.entries.append(e)

    def to_json(self) -> Dict[str, Any]:
        return {"version": SCHEMA_VERSION, "entries": self.entries}

    def save(self, path: Optional[str] = None) -> str:
        """Write atomically (temporary file + rename) to ``path`` (default: where it was loaded)."""
        path = path or self.path
        if not path:
            raise ValueError("no path to save the best configurations to")
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".best-configs-", suffix=".json", dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dumps(self.to_json()))
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self.path = path
        return path


_FLAT_LIST = re.compile(r"\[\s+([^\[\]{}\"]*?)\s+\]")


def dumps(data: Any) -> str:
    """Indented JSON with lists of numbers/bools kept on one line (readable diffs)."""
    text = json.dumps(data, indent=2)
    return _FLAT_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def parse(data: Any, where: str = "best configurations") -> BestConfigs:
    if not isinstance(data, Mapping):
        raise BestConfigsError(f"{where}: expected a JSON object with 'version' and 'entries'")
    version = data.get("version")
    if version != SCHEMA_VERSION:
        raise BestConfigsError(
            f"{where}: unsupported version {version!r} (this reader understands {SCHEMA_VERSION})"
        )
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise BestConfigsError(f"{where}: 'entries' must be a list")
    return BestConfigs([_normalize_entry(e, f"{where}: entries[{i}]") for i, e in enumerate(entries)])


def load(path: Union[str, os.PathLike]) -> BestConfigs:
    """Read and validate a best-configurations file."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BestConfigsError(f"{path}: not valid JSON: {e}") from None
    cfg = parse(data, path)
    cfg.path = path
    return cfg


_CACHE: Dict[str, Tuple[float, BestConfigs]] = {}


def _load_cached(path: str) -> BestConfigs:
    mtime = os.stat(path).st_mtime
    hit = _CACHE.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    cfg = load(path)
    _CACHE[path] = (mtime, cfg)
    return cfg


def lookup(
    signature: Mapping[str, Any],
    configs: Union[None, str, os.PathLike, BestConfigs] = None,
) -> Optional[Dict[str, Any]]:
    """Best entry for ``signature`` from ``configs`` (a loaded :class:`BestConfigs` or a path),
    by default from the file named by ``$NATTEN_BEST_CONFIGS``; None when there is no file or
    no matching entry. The file is re-read when it changes."""
    if configs is None:
        configs = os.environ.get(ENV_VAR) or None
        if configs is None or not os.path.exists(configs):
            return None
    if not isinstance(configs, BestConfigs):
        configs = _load_cached(os.fspath(configs))
    return configs.lookup(signature)


def save_entry(path: Union[str, os.PathLike], entry: Mapping[str, Any]) -> BestConfigs:
    """Add ``entry`` to the file at ``path`` (created if missing), replacing the entry with the
    same signature, and write it back."""
    path = os.fspath(path)
    cfg = load(path) if os.path.exists(path) and os.path.getsize(path) > 0 else BestConfigs(path=path)
    cfg.add(entry)
    cfg.save(path)
    _CACHE.pop(path, None)
    return cfg


__all__ = [
    "BestConfigs", "BestConfigsError", "ENV_VAR", "OPTIONAL_KEYS", "REQUIRED_KEYS",
    "SCHEMA_VERSION", "load", "lookup", "make_signature", "normalize_signature", "parse",
    "save_entry", "signature_from_tensors",
]
