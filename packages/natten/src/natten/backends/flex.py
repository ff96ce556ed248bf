"""``flex-fna`` / ``flex-fmha``: neighborhood attention through PyTorch FlexAttention.

Not implemented in this release yet: the dispatcher skips it and says so when it is asked for.
"""

from __future__ import annotations

from ._unavailable import entry_points

SUPPORTS_VARLEN = False
_REASON = "the FlexAttention backend is not implemented in this release yet"


_entry = entry_points(_REASON)
can_run_fna = _entry["can_run_fna"]
can_run_fmha = _entry["can_run_fmha"]
fna = _entry["fna"]
fmha = _entry["fmha"]
