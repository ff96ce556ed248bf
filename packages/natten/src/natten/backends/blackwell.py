"""``blackwell-fna`` / ``blackwell-fmha``: tcgen05 kernels for SM100 (not in this release yet)."""

from __future__ import annotations

from ._unavailable import entry_points

SUPPORTS_VARLEN = False
_REASON = (
    "the Blackwell (SM100) kernels are not part of this release yet; use 'cutlass-fna' / "
    "'cutlass-fmha', which run on SM100 too"
)


_entry = entry_points(_REASON)
can_run_fna = _entry["can_run_fna"]
can_run_fmha = _entry["can_run_fmha"]
fna = _entry["fna"]
fmha = _entry["fmha"]
