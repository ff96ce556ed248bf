"""``flex-fna`` / ``flex-fmha``: neighborhood attention through PyTorch FlexAttention.

Design
======

Token permutation into multi-dimensional tiles
----------------------------------------------
FlexAttention works on a 1-D sequence cut into blocks (``BLOCK_SIZE = (Q block, KV block)``
tokens); it skips blocks that its ``BlockMask`` leaves out and runs ``mask_mod`` only on the blocks
listed as *partial*. With a row-major flattening of a 2-D/3-D grid a block of 128 tokens is a thin
strip that cuts almost every window, so nearly every block is partial and block sparsity is lost.
We therefore reorder tokens so that every block is a multi-dimensional *tile* (e.g. 16x8 or
2x8x8 = 128 tokens):

* dilation groups are folded into the batch: axis coordinate ``x = x' * d + g``; the ``prod(d)``
  groups become batch entries ``b * G + g`` and every group is dense in its local coordinate ``x'``;
* each axis (group-local length ``m = ceil(n / d)``) is padded to a multiple of the tile extent;
* ``[B, *grid, H, D]`` is viewed as ``[B, (tiles_a, tile_a, d_a) per axis, H, D]`` and permuted to
  ``[B, d..., tiles..., tile..., H, D]``: one copy (two when padding is needed), heads-last in memory
  (FlexAttention takes the ``[B*G, H, N, D]`` *view*, no head transpose is copied). The copies
  move the rows as 8- or 16-byte elements (a reinterpreting view), which runs the strided copy
  near the device's copy bandwidth instead of at a fraction of it for 2-byte elements.

The output and the logsumexp are permuted back (and cropped) the same way. Under autograd the
copies are one autograd function whose backward is the inverse permutation; under torch.compile
they are plain tensor code for the compiler.

Exact masks
-----------
``mask_mod(b, h, q_idx, kv_idx)`` decodes tile index / tile offset / dilation group back to per-axis
group-local coordinates with integer tensor arithmetic (no data-dependent Python control flow; the
per-problem constants are Python ints baked into the closure) and applies the per-axis rule of
SEMANTICS.md (stride-group leader, centre clamped inward, causal start/stop, dilation-group length
``n_g = ceil((n - g) / d)``), AND over axes. Padded tokens never enter a real query's window
(windows lie inside ``[0, n_g)``, and inside the key slab with a region); padded queries get a
valid window too, so no row is empty.

Block masks from tile-visit bounds (never O(N^2))
-------------------------------------------------
Per axis and dilation group, every query's keys form one interval ``[start_i, last_i]`` (in
group-local coordinates); the union over a query tile is again an interval (stride <= kernel size),
so the key tiles a query tile touches are a range. Because the mask is a per-axis AND and tiles are
boxes, a (query tile, key tile) block is non-empty iff it is non-empty on every axis, and *full* iff
it is full on every axis (full on an axis: ``max start <= first key`` and ``min last >= last key``).
We build those 1-D block relations, take their outer AND at block granularity
(``[G, q_blocks, kv_blocks]`` booleans, the size FlexAttention itself uses for its backward
indices), split partial / full, and hand them to ``BlockMask.from_kv_blocks``: full blocks skip
``mask_mod`` in the kernel; blocks left out are exactly the empty ones. The block mask's batch dim is
the number of dilation groups: FlexAttention broadcasts it over the batch by ``b % G``.

Slabs of a larger grid (``global_shape``, ``q_origin``, ``kv_origin``)
-------------------------------------------------------------------------
With a region (``spec.is_partial``) the query tensor holds the slab of the global grid
``spec.shape`` at ``spec.q_origin`` and key/value the (possibly larger or shifted) slab at
``spec.kv_origin``. Queries are tiled over their slab and keys over theirs (their tile grids differ
in size), but every coordinate that enters a mask is *global*, so sparsity and exactness are those
of the unsharded problem (per axis, :class:`_AxisLayout`):

* both slabs are laid on the global tile grid: the first query row of every dilation group is the
  global group-local row ``q_start = floor((q_origin // d) / t) * t`` (``t`` the query tile
  extent), likewise ``kv_start`` for keys, and the slabs are zero-padded in front accordingly
  (``q_origin - d * q_start`` tokens; this also keeps token ``x`` of the padded axis in the global
  dilation group ``x % d``). A slab's tiles are therefore tiles of the unsharded problem: sharding
  an axis (e.g. time in a video, for context parallelism) at tile boundaries (slab edges at
  multiples of ``d * t``), with the same tile shapes, gives each shard exactly the unsharded
  problem's (query tile, key tile) blocks, full and partial alike; elsewhere a shard visits a
  subset of the blocks of the unsharded query tiles it overlaps;
* ``mask_mod`` and the host-side block relations add ``q_start`` / ``kv_start`` to the decoded
  rows and apply the global-grid rule (``n_g`` from the global length; windows clamped at global
  borders, not at the slab's);
* padded query rows (in front of or past the slab) are clamped to the slab's first / last query
  row, so they use windows that lie on the key slab: no row is empty and a padded row never widens a
  tile's key range. Padded key tokens are never attended by a real query: the key slab covers every
  real query's window (checked by ``checks.check_region``).

Tile shapes are chosen for the slabs (caps from each slab's extent, cost of the slab's query tiles
on the global tile grid). The plan cache key includes the region; the slab's offsets are constants
of its mask_mod, so every distinct slab position is one compile (one per rank for context
parallelism).

Tile shapes
-----------
Unless ``q_tile_shape`` / ``kv_tile_shape`` are given, tiles of 128 query and 128 key tokens are
chosen per problem (powers of two per axis) by minimising the visited work of PERF-NOTES.md
(``prod_a sum_{q tiles} Tq_a * keyTilesInBox * Tk_a``, padding included) with partial blocks weighted
a little more than full ones. 128-token blocks are multiples of every default Triton block size of
FlexAttention (forward and backward), so no kernel option has to be forced; for other tile sizes
the Triton block sizes are lowered to divide them.

Caching and compilation
-----------------------
A *plan* (tiles, mask_mod, BlockMask, kernel options) is built once per problem signature (grid,
window parameters, region, tiles, device) and kept in a bounded LRU cache (``_CACHE_SIZE`` = 32
entries): the same signature returns the same BlockMask object and the same mask_mod function, so
calls never rebuild masks and never change what dynamo guards on. All calls go through one
module-level ``torch.compile(flex_attention, dynamic=False, fullgraph=True)`` with its own recompile
budget (``isolate_recompiles``, ``recompile_limit`` = ``_RECOMPILE_LIMIT``; on torch versions
without those arguments dynamo's per-code-object limit is raised to it once): every new problem shape
is one compile, repeated calls are cache hits, and a sweep over many problems never reaches dynamo's
recompile limit (the default limit of 8 is per code object and would otherwise be hit).

When compilation happens: only on CUDA, and only while ``natten.is_flex_compile_allowed()`` (and,
when gradients are needed, ``natten.is_flex_compile_backprop_allowed()``); both are on by default.
``torch_compile=True`` demands compilation (the backend refuses the problem where it cannot
compile). Otherwise FlexAttention runs eagerly: its eager path materialises the full score matrix,
so we run it in query chunks (whole query tiles) bounded by ``_EAGER_SCORE_ELEMENTS`` scores; the
chunks' mask_mods take their query offset as a captured 0-d tensor, so all chunks share one trace.
If dynamo's global cap on compiled entries (``accumulated_recompile_limit``, 256) is ever reached,
or compiling fails, the call runs eagerly and a warning says so once. Inside a user's own
``torch.compile`` region FlexAttention is traced into the user's graph directly (plan lookup is a
``torch.compiler.disable``d call, so mask building never enters the graph).

CPU: FlexAttention on CPU runs eagerly (compiled CPU FlexAttention supports neither logsumexp nor
backward, and the eager path has no CPU backward). Training on CPU (grad mode on and an input that
requires grad) is routed to the exact ``reference`` backend automatically; the dispatcher prefers
``reference`` on CPU anyway, so flex runs there only when asked for by name.

Gradients: out and logsumexp are both differentiable (FlexAttention's backward takes the lse
gradient, compiled and eager).
"""

from __future__ import annotations

import collections
import functools
import inspect
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import context
from ..window import Region, WindowSpec
from . import reference

try:  # FlexAttention exists from torch 2.5 on.
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    _FLEX_IMPORT_ERROR: Optional[str] = None
except Exception as _e:  # pragma: no cover - depends on the torch build
    BlockMask = None  # type: ignore[assignment,misc]
    flex_attention = None  # type: ignore[assignment]
    _FLEX_IMPORT_ERROR = (
        f"FlexAttention is not available in this torch ({torch.__version__}): {_e}"
    )

try:  # torch >= 2.9 returns auxiliary outputs through AuxRequest; older versions use return_lse.
    from torch.nn.attention.flex_attention import AuxRequest

    _HAS_AUX = True
except Exception:  # pragma: no cover
    AuxRequest = None  # type: ignore[assignment,misc]
    _HAS_AUX = False

NAME_FNA = "flex-fna"
NAME_FMHA = "flex-fmha"

SUPPORTS_VARLEN = False

# Tokens per query / key tile (= FlexAttention's sparse block size) unless tile shapes are given.
_DEFAULT_TILE_TOKENS = 128
# tl.dot needs blocks of at least 16 rows/columns: the smallest tile a compiled kernel can use.
_MIN_TILE_TOKENS = 16
# Plans (BlockMask, mask_mod, tiles) kept alive; least recently used ones are dropped.
_CACHE_SIZE = 32
# Budget of the eager path: scores materialised per FlexAttention call (float32 elements).
_EAGER_SCORE_ELEMENTS = 1 << 24
# Compiles the module-level compiled FlexAttention may do (one per new problem shape).
_RECOMPILE_LIMIT = 4096
# Cost of a partial block (mask_mod evaluated) relative to a full one, for the tile choice.
_PARTIAL_BLOCK_WEIGHT = 1.2

# Test hooks: the compile backend and whether the compiled path may run on CPU (it can only do so
# with a non-inductor backend such as "eager", which is how the CPU tests check recompilations).
_COMPILE_BACKEND: Any = "inductor"
_ALLOW_COMPILE_ON_CPU = False

_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _pow2_divisor(x: int) -> int:
    """Largest power of two dividing ``x`` (x > 0)."""
    return x & -x


def _prod(xs: Iterable[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _device_key(device: torch.device) -> Tuple[str, int]:
    return (device.type, -1 if device.index is None else int(device.index))


# ------------------------------------------------------------------------------------------------
# Per-axis layout and window arithmetic in group-local coordinates (host side, for block masks and
# tiles)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AxisLayout:
    """Where the query and key tokens of one axis sit in tile order.

    Coordinates are *group-local* (``x = x' * dilation + g``) and *global* (on the global grid,
    which is the tensors' own grid when the spec has no region). In every dilation group, padded
    query row ``p`` (``0 <= p < q_ext``) holds the global group-local coordinate ``q_start + p`` and
    padded key row ``r`` (``0 <= r < kv_ext``) holds ``kv_start + r``.

    Attributes:
        q_start (int): global group-local coordinate of the first query row; a multiple of the
            query tile extent, so the slab's query tiles are tiles of the unsharded problem.
        q_ext (int): query rows per group (a multiple of the query tile extent).
        q_first (int): the smallest global group-local coordinate of a real query of the slab.
        q_last (int): the largest one.
        q_lo (int or None): padded query rows before ``q_first`` use the window of row
            ``q_lo = q_first``; None where there are no such rows (always without a region).
        q_hi (int or None): padded query rows past ``q_last`` use the window of row
            ``q_hi = q_last``; None where there are no such rows or where the global rule
            already clamps their windows (the slab reaches the end of the global axis; always so
            without a region). Both keep the windows of padded rows on the key slab, so that no
            row is empty (see :func:`_axis_windows`).
        q_front (int): padding tokens placed in front of the query slab
            (``q_origin - dilation * q_start``), so that token ``x`` of the padded axis lies in
            dilation group ``x % dilation`` of the global grid.
        kv_start (int): as ``q_start``, for keys (a multiple of the key tile extent).
        kv_ext (int): key rows per group (a multiple of the key tile extent).
        kv_front (int): padding tokens placed in front of the key slab.
    """

    q_start: int
    q_ext: int
    q_first: int
    q_last: int
    q_lo: Optional[int]
    q_hi: Optional[int]
    q_front: int
    kv_start: int
    kv_ext: int
    kv_front: int


def _axis_layout(
    n: int, dilation: int, t: int, u: int, q_origin: int, q_len: int, kv_origin: int, kv_len: int
) -> _AxisLayout:
    """Layout of one axis of global length ``n`` whose query slab is
    ``[q_origin, q_origin + q_len)`` and key slab ``[kv_origin, kv_origin + kv_len)`` (global
    coordinates), for query tile extent ``t`` and key tile extent ``u``. The whole axis
    (``q_origin = kv_origin = 0``, ``q_len = kv_len = n``) gives ``q_start = kv_start = 0``,
    ``q_ext = ceil(m / t) * t`` with ``m = ceil(n / dilation)`` and no clamps: the layout of a
    problem without region."""
    d = dilation
    q_start = (q_origin // d) // t * t
    q_first = q_origin // d
    q_last = (q_origin + q_len - 1) // d
    kv_start = (kv_origin // d) // u * u
    kv_last = (kv_origin + kv_len - 1) // d
    q_ext = _ceil_div(q_last + 1 - q_start, t) * t
    padded_past = q_start + q_ext - 1 > q_last
    return _AxisLayout(
        q_start=q_start,
        q_ext=q_ext,
        q_first=q_first,
        q_last=q_last,
        q_lo=q_first if q_start < q_first else None,
        q_hi=q_last if (padded_past and q_last < (n - 1) // d) else None,
        q_front=q_origin - d * q_start,
        kv_start=kv_start,
        kv_ext=_ceil_div(kv_last + 1 - kv_start, u) * u,
        kv_front=kv_origin - d * kv_start,
    )


def _axis_windows(
    lay: _AxisLayout, ng: int, K: int, s: int, causal: bool
) -> Tuple[Tensor, Tensor]:
    """``(start, last)`` of the keys of the padded query rows ``0 .. q_ext-1`` of one axis, in
    padded key rows (key-local), for the dilation group holding ``ng`` tokens of the global axis.

    Query rows are first clamped into ``[q_lo, q_hi]`` (where set): padded rows reuse the window
    of the slab's first / last query row. Then the rule of SEMANTICS.md runs in global group-local
    coordinates. This is exactly what ``mask_mod`` computes, padded rows included.

    Why no row is empty: a real query's window lies on the key slab (the key slab covers it), and
    on one axis the windows of the rows ``q_first`` and ``q_last`` in a dilation group without a
    real query there differ from a real query's window of the same row by a shift of at most one
    (the groups' lengths differ by at most one), so with ``K >= 2`` they still meet the key slab.
    Rows past the global axis' end follow the global rule, whose windows stop at the axis' end.
    Windows may reach past the padded key rows only for padded query rows."""
    i = torch.arange(lay.q_ext, dtype=torch.int64) + lay.q_start
    if lay.q_lo is not None or lay.q_hi is not None:
        i = torch.clamp(i, min=lay.q_lo, max=lay.q_hi)
    if causal:
        leader = torch.clamp(s * (i // s) + s - 1, max=ng - 1)
        start, last = torch.clamp(leader - K + 1, min=0), i
    else:
        left = K // 2
        right = K // 2 + K % 2 - 1
        centre = torch.clamp(torch.clamp(s * (i // s) + s // 2, max=ng - 1 - right), min=left)
        start, last = centre - left, centre + right
    return start - lay.kv_start, last - lay.kv_start


def _axis_block_relation(
    lay: _AxisLayout, t: int, u: int, ng: int, K: int, s: int, causal: bool
) -> Tuple[Tensor, Tensor]:
    """Block relations on one axis: ``any[p, r]`` (some query of query tile p attends some key of
    key tile r) and ``full[p, r]`` (every query of tile p attends every key of tile r)."""
    start, last = _axis_windows(lay, ng, K, s, causal)
    last = torch.clamp(last, max=lay.kv_ext - 1)
    lo = start.view(-1, t).amin(1)
    hi = last.view(-1, t).amax(1)
    fs = start.view(-1, t).amax(1)
    fl = last.view(-1, t).amin(1)
    k0 = torch.arange(0, lay.kv_ext, u, dtype=torch.int64)
    k1 = k0 + u - 1
    any_ = (lo[:, None] <= k1[None, :]) & (hi[:, None] >= k0[None, :])
    full = (fs[:, None] <= k0[None, :]) & (fl[:, None] >= k1[None, :])
    return any_, full & any_


def _axis_cost(
    m: int, t: int, u: int, K: int, s: int, causal: bool, lay: Optional[_AxisLayout] = None
) -> Tuple[int, int]:
    """(visited, full) token pairs on one axis for query tile t and key tile u (group of length m).

    ``lay`` places query and key slabs in the group (see :func:`_axis_layout`); default: both are
    the whole group."""
    if lay is None:
        lay = _axis_layout(m, 1, t, u, 0, m, 0, m)
    any_, full = _axis_block_relation(lay, t, u, m, K, s, causal)
    return int(any_.sum()) * t * u, int(full.sum()) * t * u


# ------------------------------------------------------------------------------------------------
# Tile choice
# ------------------------------------------------------------------------------------------------


def _factorizations(exp: int, caps: Sequence[int]) -> List[Tuple[int, ...]]:
    """All tuples of powers of two with product 2**exp and entry a at most caps[a]."""
    out: List[Tuple[int, ...]] = []

    def rec(a: int, left: int, acc: Tuple[int, ...]) -> None:
        if a == len(caps) - 1:
            if (1 << left) <= caps[a]:
                out.append(acc + (1 << left,))
            return
        e = 0
        while e <= left and (1 << e) <= caps[a]:
            rec(a + 1, left - e, acc + (1 << e,))
            e += 1

    rec(0, exp, ())
    return out


def _tile_tokens_for(
    m: Sequence[int], target: int, min_tokens: int = _MIN_TILE_TOKENS
) -> Tuple[int, Tuple[int, ...]]:
    """Token count of the tiles and per-axis caps (next power of two of the group-local length)."""
    caps = tuple(_next_pow2(x) for x in m)
    total = _prod(caps)
    tokens = max(target, min_tokens)
    if total < tokens:
        tokens = max(total, min_tokens)
        if total < tokens:  # tiny grid: let the last axis' tile grow (padding) up to the minimum
            caps = caps[:-1] + (caps[-1] * (tokens // total),)
    return tokens, caps


@functools.lru_cache(maxsize=256)
def choose_tile_shapes(
    shape: Tuple[int, ...],
    kernel_size: Tuple[int, ...],
    stride: Tuple[int, ...],
    dilation: Tuple[int, ...],
    is_causal: Tuple[bool, ...],
    q_tokens: int = _DEFAULT_TILE_TOKENS,
    kv_tokens: int = _DEFAULT_TILE_TOKENS,
    region: Optional[Region] = None,
    min_tokens: int = _MIN_TILE_TOKENS,
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Query and key tile shapes (per-axis powers of two with ``q_tokens`` / ``kv_tokens`` tokens)
    that minimise the tile-visit work of this problem (see the module docstring).

    Args:
        shape (tuple): the (global) token grid.
        kernel_size, stride, dilation, is_causal (tuple): per-axis window parameters.
        q_tokens (int): tokens per query tile. Default: 128.
        kv_tokens (int): tokens per key tile. Default: 128.
        region (Region, optional): query and key slabs of ``shape`` (see
            :class:`natten.window.Region`): tiles are then fitted to the slabs (per-axis caps
            from each slab's extent) and the cost is that of the slab's query tiles, with both
            slabs' tiles aligned to the global tile grid as the backend lays them out.
            Default: None (both are the whole grid).
        min_tokens (int): smallest tile, also on tiny grids (padding fills it). Default: 16.

    Returns:
        ``(q_tile_shape, kv_tile_shape)``.
    """
    rank = len(shape)
    m = tuple(_ceil_div(n, d) for n, d in zip(shape, dilation))
    if region is None:
        q_origin = kv_origin = (0,) * rank
        q_len = kv_len = tuple(shape)
    else:
        q_origin, q_len = region.q_origin, region.q_shape
        kv_origin, kv_len = region.kv_origin, region.kv_shape

    def span(origin: int, length: int, d: int) -> int:  # group-local rows the slab touches
        return (origin + length - 1) // d - origin // d + 1

    m_q = tuple(span(q_origin[a], q_len[a], dilation[a]) for a in range(rank))
    m_k = tuple(span(kv_origin[a], kv_len[a], dilation[a]) for a in range(rank))
    tq, caps_q = _tile_tokens_for(m_q, q_tokens, min_tokens)
    tk, caps_k = _tile_tokens_for(m_k, kv_tokens, min_tokens)
    q_opts = _factorizations(tq.bit_length() - 1, caps_q)
    k_opts = _factorizations(tk.bit_length() - 1, caps_k)
    axis_cost: Dict[Tuple[int, int, int], Tuple[int, int]] = {}

    def cost(a: int, t: int, u: int) -> Tuple[int, int]:
        key = (a, t, u)
        if key not in axis_cost:
            lay = _axis_layout(
                shape[a], dilation[a], t, u, q_origin[a], q_len[a], kv_origin[a], kv_len[a]
            )
            axis_cost[key] = _axis_cost(
                m[a], t, u, kernel_size[a], stride[a], is_causal[a], lay=lay
            )
        return axis_cost[key]

    best = None
    for qt in q_opts:
        for kt in k_opts:
            visited = full = 1
            for a in range(rank):
                v_a, f_a = cost(a, qt[a], kt[a])
                visited *= v_a
                full *= f_a
            score = visited + (_PARTIAL_BLOCK_WEIGHT - 1.0) * (visited - full)
            # Ties: prefer equal query/key tiles, then larger extents on the innermost axes.
            tie = (0 if qt == kt else 1, tuple(-x for x in reversed(qt)), tuple(-x for x in reversed(kt)))
            cand = (score, tie, qt, kt)
            if best is None or cand[:2] < best[:2]:
                best = cand
    assert best is not None
    return best[2], best[3]


# ------------------------------------------------------------------------------------------------
# mask_mod factories (integer tensor arithmetic only: works under vmap and inside the kernel)
# ------------------------------------------------------------------------------------------------


def _coord_decoder(tile: Tuple[int, ...], grid: Tuple[int, ...]) -> Callable[[Tensor], List[Any]]:
    """A function mapping tile-ordered token indices to per-axis group-local coordinates.

    Every constant is computed here, outside the returned function, so that the function itself is
    nothing but integer tensor arithmetic (dynamo traces it into FlexAttention's kernels).
    """
    rank = len(tile)
    T = _prod(tile)
    use_tile_idx = _prod(grid) > 1
    use_off = T > 1
    # (tile divisor, tile modulus, tile extent, offset divisor, offset modulus) per axis;
    # 0 means "skip this operation".
    steps = []
    for a in range(rank):
        gs = _prod(grid[a + 1 :])
        ts = _prod(tile[a + 1 :])
        steps.append((
            gs if (use_tile_idx and grid[a] > 1) else 0,
            grid[a] if (use_tile_idx and grid[a] > 1 and a > 0) else 0,
            tile[a],
            ts if (use_off and tile[a] > 1) else 0,
            tile[a] if (use_off and tile[a] > 1 and a > 0) else 0,
        ))

    def decode(idx: Tensor) -> List[Any]:
        tile_idx = idx // T if use_tile_idx else idx
        off = idx % T if use_off else idx
        coords: List[Any] = []
        for tdiv, tmod, text, odiv, omod in steps:
            c = idx * 0
            if tdiv:
                ta = tile_idx // tdiv if tdiv > 1 else tile_idx
                if tmod:
                    ta = ta % tmod
                c = ta * text
            if odiv:
                oa = off // odiv if odiv > 1 else off
                if omod:
                    oa = oa % omod
                c = c + oa
            coords.append(c)
        return coords

    return decode


def _make_na_mask_mod(
    shape: Tuple[int, ...],
    kernel_size: Tuple[int, ...],
    stride: Tuple[int, ...],
    dilation: Tuple[int, ...],
    is_causal: Tuple[bool, ...],
    q_tile: Tuple[int, ...],
    q_grid: Tuple[int, ...],
    kv_tile: Tuple[int, ...],
    kv_grid: Tuple[int, ...],
    layouts: Optional[Sequence[_AxisLayout]] = None,
) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The tile-ordered ``mask_mod`` of an NA problem on the global grid ``shape``.

    ``layouts`` (one :class:`_AxisLayout` per axis) places the query and key slabs on the global
    grid; default: both are the whole grid. Decoded padded-local rows are shifted by the layout's
    ``q_start`` / ``kv_start`` to global group-local coordinates, query rows are clamped into
    ``[q_lo, q_hi]`` (where set), and the global-grid rule is applied (its per-group length
    ``n_g`` from ``shape``).
    """
    rank = len(shape)
    G = _prod(dilation)
    group_strides = tuple(_prod(dilation[a + 1 :]) for a in range(rank))
    decode_q = _coord_decoder(q_tile, q_grid)
    decode_kv = _coord_decoder(kv_tile, kv_grid)
    if layouts is None:
        layouts = [
            _axis_layout(shape[a], dilation[a], q_tile[a], kv_tile[a], 0, shape[a], 0, shape[a])
            for a in range(rank)
        ]
    axes = []
    for a in range(rank):
        lay = layouts[a]
        # Python ints (0 / None: skip the operation), baked into the closure.
        q_shift, q_lo, q_hi, kv_shift = lay.q_start, lay.q_lo, lay.q_hi, lay.kv_start
        axes.append((
            shape[a], kernel_size[a], stride[a], dilation[a], bool(is_causal[a]), group_strides[a],
            kernel_size[a] // 2, kernel_size[a] // 2 + kernel_size[a] % 2 - 1,
            q_shift, q_lo, q_hi, kv_shift,
        ))

    def na_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        qc = decode_q(q_idx)
        kc = decode_kv(kv_idx)
        g = b % G if G > 1 else b
        result = None
        for a, (n, K, s, d, causal, gstride, left, right, q_shift, q_lo, q_hi, kv_shift) in (
            enumerate(axes)
        ):
            i, j = qc[a], kc[a]
            if q_shift:
                i = i + q_shift
            if q_lo is not None or q_hi is not None:
                i = torch.clamp(i, min=q_lo, max=q_hi)
            if kv_shift:
                j = j + kv_shift
            if d > 1:
                ga = g // gstride if gstride > 1 else g
                ga = ga % d
                ng: Any = (n - ga + d - 1) // d
            else:
                ng = n
            if causal:
                leader = s * (i // s) + s - 1 if s > 1 else i
                if d > 1:
                    leader = torch.minimum(leader, ng - 1)
                else:
                    leader = torch.clamp(leader, max=n - 1)
                ok = (j <= i) & (leader - j < K)
            else:
                leader = s * (i // s) + s // 2 if s > 1 else i
                if d > 1:
                    centre = torch.clamp(torch.minimum(leader, ng - 1 - right), min=left)
                else:
                    centre = torch.clamp(leader, min=left, max=n - 1 - right)
                ok = (j >= centre - left) & (j <= centre + right)
            result = ok if result is None else result & ok
        return result

    return na_mask_mod


def _causal_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    return kv_idx <= q_idx


def _full_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    return q_idx >= 0


def _offset_mask_mod(base: Callable, offset: Tensor) -> Callable:
    """``base`` for a query chunk starting at ``offset``. The offset is a (per-chunk, never
    mutated) 0-d tensor rather than a Python int so that all chunks share one dynamo trace."""

    def chunk_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return base(b, h, q_idx + offset, kv_idx)

    return chunk_mask_mod


# ------------------------------------------------------------------------------------------------
# Block masks
# ------------------------------------------------------------------------------------------------


def _dense_to_ordered(dense: Tensor) -> Tuple[Tensor, Tensor]:
    """``[..., Q, K]`` bool -> (counts ``[..., Q]`` int32, indices ``[..., Q, K]`` int32 with the
    listed blocks first, in ascending order)."""
    num = dense.sum(-1, dtype=torch.int32)
    idx = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True)
    return num, idx.to(torch.int32).contiguous()


def _block_mask_from_dense(
    any_: Tensor,
    full: Tensor,
    block_size: Tuple[int, int],
    mask_mod: Callable,
    seq_lengths: Tuple[int, int],
    device: torch.device,
) -> "BlockMask":
    """BlockMask from block-level ``any`` / ``full`` relations ``[Bm, 1, Q, K]`` (CPU)."""
    partial = any_ & ~full
    kv_num, kv_idx = _dense_to_ordered(partial)
    if bool(full.any()):
        full_num, full_idx = _dense_to_ordered(full)
    else:
        full_num = full_idx = None
    bm = BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod,
        seq_lengths=seq_lengths,
    )
    return bm.to(device) if device.type != "cpu" else bm


def _na_block_relations(
    m: Tuple[int, ...],
    shape: Tuple[int, ...],
    kernel_size: Tuple[int, ...],
    stride: Tuple[int, ...],
    dilation: Tuple[int, ...],
    is_causal: Tuple[bool, ...],
    q_tile: Tuple[int, ...],
    q_ext: Tuple[int, ...],
    kv_tile: Tuple[int, ...],
    kv_ext: Tuple[int, ...],
    layouts: Optional[Sequence[_AxisLayout]] = None,
) -> Tuple[Tensor, Tensor]:
    """Block-level ``any`` / ``full`` ``[G, 1, q_blocks, kv_blocks]`` for every dilation group.

    ``shape`` is the global grid; ``layouts`` (one :class:`_AxisLayout` per axis, with the given
    ``q_ext`` / ``kv_ext``) places the query and key slabs on it. Default: both are the whole grid.
    """
    rank = len(shape)
    if layouts is None:
        layouts = [
            _axis_layout(shape[a], dilation[a], q_tile[a], kv_tile[a], 0, shape[a], 0, shape[a])
            for a in range(rank)
        ]
    for a in range(rank):
        if (layouts[a].q_ext, layouts[a].kv_ext) != (q_ext[a], kv_ext[a]):
            raise ValueError(
                f"axis {a}: layout extents {(layouts[a].q_ext, layouts[a].kv_ext)} differ from "
                f"q_ext/kv_ext {(q_ext[a], kv_ext[a])}"
            )
    per_axis: List[Dict[int, Tuple[Tensor, Tensor]]] = []
    for a in range(rank):
        rel: Dict[int, Tuple[Tensor, Tensor]] = {}
        for ga in range(dilation[a]):
            ng = _ceil_div(shape[a] - ga, dilation[a])
            if ng not in rel:
                rel[ng] = _axis_block_relation(
                    layouts[a], q_tile[a], kv_tile[a], ng, kernel_size[a], stride[a],
                    is_causal[a],
                )
        per_axis.append(rel)
    anys, fulls = [], []
    for g in range(_prod(dilation)):
        rem = g
        gcoord = []
        for a in reversed(range(rank)):
            gcoord.append(rem % dilation[a])
            rem //= dilation[a]
        gcoord.reverse()
        any_g: Optional[Tensor] = None
        full_g: Optional[Tensor] = None
        for a in range(rank):
            ng = _ceil_div(shape[a] - gcoord[a], dilation[a])
            A, F = per_axis[a][ng]
            view = [1] * (2 * rank)
            view[a] = A.shape[0]
            view[rank + a] = A.shape[1]
            A = A.reshape(view)
            F = F.reshape(view)
            any_g = A if any_g is None else any_g & A
            full_g = F if full_g is None else full_g & F
        assert any_g is not None and full_g is not None
        nq = _prod(q_ext[a] // q_tile[a] for a in range(rank))
        nk = _prod(kv_ext[a] // kv_tile[a] for a in range(rank))
        qg = [q_ext[a] // q_tile[a] for a in range(rank)]
        kg = [kv_ext[a] // kv_tile[a] for a in range(rank)]
        anys.append(any_g.expand(*qg, *kg).reshape(nq, nk))
        fulls.append(full_g.expand(*qg, *kg).reshape(nq, nk))
    return torch.stack(anys)[:, None], torch.stack(fulls)[:, None]


# ------------------------------------------------------------------------------------------------
# Kernel options
# ------------------------------------------------------------------------------------------------


def _default_triton_blocks(head_dim: int, dtype: torch.dtype) -> Tuple[Tuple[int, int], Tuple[int, int, int, int]]:
    """FlexAttention's default (forward BLOCK_M/N, backward BLOCK_M1/N1/M2/N2) on this GPU."""
    try:
        from torch._inductor.virtualized import V

        fwd = V.choices.get_flex_attention_fwd_configs(head_dim, dtype, "cuda")[-1]
        bwd = V.choices.get_flex_attention_bwd_configs(head_dim, dtype, "cuda")[-1]
        return (int(fwd.block_m), int(fwd.block_n)), (
            int(bwd.block_m1), int(bwd.block_n1), int(bwd.block_m2), int(bwd.block_n2)
        )
    except Exception:  # private API moved: assume the largest defaults of torch 2.13
        if dtype == torch.float32:
            return (128, 64), (16, 16, 16, 16)
        return (128, 128), (64, 128, 128, 64)


def _kernel_options(
    q_block: int, kv_block: int, head_dim: int, dtype: torch.dtype, compiled_cuda: bool
) -> Optional[Dict[str, Any]]:
    """Triton options that make the kernel's blocks divide our sparse blocks (tiles)."""
    if not compiled_cuda:
        return None
    # (Not ROWS_GUARANTEED_SAFE: measured on the H100 with torch 2.11 it turns whole rows of
    # partially masked blocks into NaN.)
    opts: Dict[str, Any] = {"BACKEND": "TRITON"}
    (fm, fn), (m1, n1, m2, n2) = _default_triton_blocks(head_dim, dtype)
    pq, pk = _pow2_divisor(q_block), _pow2_divisor(kv_block)
    if q_block % fm or kv_block % fn:
        opts["fwd_BLOCK_M"] = min(fm, pq)
        opts["fwd_BLOCK_N"] = min(fn, pk)
    if q_block % m1 or q_block % m2 or kv_block % n1 or kv_block % n2:
        bm1, bn1 = min(m1, pq), min(n1, pk)
        bm1 = min(bm1, bn1)  # BLOCK_N1 % BLOCK_M1 == 0
        bm2, bn2 = min(m2, pq), min(n2, pk)
        bn2 = min(bn2, bm2)  # BLOCK_M2 % BLOCK_N2 == 0
        opts.update(bwd_BLOCK_M1=bm1, bwd_BLOCK_N1=bn1, bwd_BLOCK_M2=bm2, bwd_BLOCK_N2=bn2)
    return opts


# ------------------------------------------------------------------------------------------------
# Plans and their LRU cache
# ------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    key: tuple
    block_mask: Any  # BlockMask or None (dense, non-causal: FlexAttention's own empty mask)
    mask_mod: Optional[Callable]
    block_size: Tuple[int, int]
    q_len: int
    kv_len: int
    # FNA layout (None for FMHA)
    q_tile: Optional[Tuple[int, ...]] = None
    kv_tile: Optional[Tuple[int, ...]] = None
    q_ext: Optional[Tuple[int, ...]] = None
    kv_ext: Optional[Tuple[int, ...]] = None
    # Padding tokens in front of the query / key slab on each axis (zeros without a region).
    q_front: Optional[Tuple[int, ...]] = None
    kv_front: Optional[Tuple[int, ...]] = None
    groups: int = 1
    kernel_options: Dict[tuple, Optional[Dict[str, Any]]] = field(default_factory=dict)
    chunks: Dict[int, List[Tuple[int, int, Any]]] = field(default_factory=dict)
    compile_failed: bool = False

    def options_for(self, head_dim: int, dtype: torch.dtype, compiled_cuda: bool) -> Optional[Dict[str, Any]]:
        k = (head_dim, dtype, compiled_cuda)
        if k not in self.kernel_options:
            if self.block_mask is None:  # FlexAttention's own (huge-block) empty mask
                opts = _kernel_options(128, 128, head_dim, dtype, compiled_cuda)
            else:
                opts = _kernel_options(
                    self.block_size[0], self.block_size[1], head_dim, dtype, compiled_cuda
                )
            self.kernel_options[k] = opts
        return self.kernel_options[k]

    def chunk_masks(self, rows: int) -> List[Tuple[int, int, Any]]:
        """Block masks of query chunks of ``rows`` tokens (a multiple of the query block) for the
        eager path, with ``mask_mod`` shifted to the chunk's first query."""
        if rows in self.chunks:
            return self.chunks[rows]
        out = []
        qb = self.block_size[0]
        for r0 in range(0, self.q_len, rows):
            r1 = min(self.q_len, r0 + rows)
            if self.block_mask is None:
                out.append((r0, r1, None))
                continue
            bm = self.block_mask
            b0, b1 = r0 // qb, _ceil_div(r1, qb)
            sl = (slice(None), slice(None), slice(b0, b1))
            full_num = None if bm.full_kv_num_blocks is None else bm.full_kv_num_blocks[sl]
            full_idx = None if bm.full_kv_indices is None else bm.full_kv_indices[sl]
            cbm = BlockMask.from_kv_blocks(
                bm.kv_num_blocks[sl], bm.kv_indices[sl], full_num, full_idx,
                BLOCK_SIZE=self.block_size,
                mask_mod=_offset_mask_mod(
                    self.mask_mod,
                    torch.tensor(r0, dtype=torch.int64, device=bm.kv_num_blocks.device),
                ),
                seq_lengths=(r1 - r0, self.kv_len),
            )
            out.append((r0, r1, cbm))
        self.chunks[rows] = out
        return out


_CACHE: "collections.OrderedDict[tuple, _Plan]" = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_STATS = {"hits": 0, "misses": 0}


def _compiler_disable(fn: Callable) -> Callable:
    """Keep host-side mask building out of a user's torch.compile trace (runs eagerly)."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


@_compiler_disable
def _cached_plan(key: tuple, build: Callable[[], _Plan]) -> _Plan:
    with _CACHE_LOCK:
        plan = _CACHE.get(key)
        if plan is not None:
            _CACHE.move_to_end(key)
            _CACHE_STATS["hits"] += 1
            return plan
    plan = build()
    with _CACHE_LOCK:
        existing = _CACHE.get(key)
        if existing is not None:  # built concurrently: keep the first one
            _CACHE.move_to_end(key)
            return existing
        _CACHE[key] = plan
        _CACHE_STATS["misses"] += 1
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return plan


def cache_info() -> Dict[str, int]:
    """Plan-cache statistics: ``size``, ``maxsize``, ``hits``, ``misses``."""
    with _CACHE_LOCK:
        return {"size": len(_CACHE), "maxsize": _CACHE_SIZE, **_CACHE_STATS}


def clear_cache() -> None:
    """Drop every cached plan (block masks)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _CACHE_STATS["hits"] = _CACHE_STATS["misses"] = 0


def _resolve_tiles(
    spec: WindowSpec,
    q_tile_shape: Optional[Sequence[int]],
    kv_tile_shape: Optional[Sequence[int]],
    min_tokens: int = _MIN_TILE_TOKENS,
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Tile shapes to use: the given ones (a missing one mirrors the other) or the chosen ones."""
    if q_tile_shape is None and kv_tile_shape is None:
        return choose_tile_shapes(
            tuple(spec.shape), tuple(spec.kernel_size), tuple(spec.stride),
            tuple(spec.dilation), tuple(bool(c) for c in spec.is_causal),
            region=_region_key(spec), min_tokens=min_tokens,
        )
    q_given = q_tile_shape if q_tile_shape is not None else kv_tile_shape
    kv_given = kv_tile_shape if kv_tile_shape is not None else q_tile_shape
    assert q_given is not None and kv_given is not None
    q_tile = tuple(int(x) for x in q_given)
    kv_tile = tuple(int(x) for x in kv_given)
    for name, t in (("q_tile_shape", q_tile), ("kv_tile_shape", kv_tile)):
        if len(t) != spec.rank or any(x < 1 for x in t):
            raise ValueError(
                f"`{name}` must hold {spec.rank} positive ints (one per axis), got {t}."
            )
    return q_tile, kv_tile


def _region_key(spec: WindowSpec) -> Optional[Region]:
    """The spec's region with plain-int tuples (hashable, part of cache keys), or None."""
    if spec.region is None:
        return None
    r = spec.region
    return Region(
        tuple(int(x) for x in r.q_origin), tuple(int(x) for x in r.q_shape),
        tuple(int(x) for x in r.kv_origin), tuple(int(x) for x in r.kv_shape),
    )


def _get_na_plan(
    spec: WindowSpec,
    q_tile: Tuple[int, ...],
    kv_tile: Tuple[int, ...],
    device: torch.device,
) -> _Plan:
    """The cached plan of this problem: tile layout, mask_mod and BlockMask. The key holds the
    global grid, the window parameters, the region (query and key slabs), the tiles and the
    device."""
    shape = tuple(int(x) for x in spec.shape)
    ks = tuple(int(x) for x in spec.kernel_size)
    st = tuple(int(x) for x in spec.stride)
    dl = tuple(int(x) for x in spec.dilation)
    ca = tuple(bool(x) for x in spec.is_causal)
    region = _region_key(spec)
    key = ("na", shape, ks, st, dl, ca, region, q_tile, kv_tile, _device_key(device))

    def build() -> _Plan:
        rank = len(shape)
        m = tuple(_ceil_div(n, d) for n, d in zip(shape, dl))
        q0 = (0,) * rank if region is None else region.q_origin
        qs = shape if region is None else region.q_shape
        k0 = (0,) * rank if region is None else region.kv_origin
        kvs = shape if region is None else region.kv_shape
        layouts = tuple(
            _axis_layout(shape[a], dl[a], q_tile[a], kv_tile[a], q0[a], qs[a], k0[a], kvs[a])
            for a in range(rank)
        )
        q_ext = tuple(lay.q_ext for lay in layouts)
        kv_ext = tuple(lay.kv_ext for lay in layouts)
        q_grid = tuple(q_ext[a] // q_tile[a] for a in range(rank))
        kv_grid = tuple(kv_ext[a] // kv_tile[a] for a in range(rank))
        mask_mod = _make_na_mask_mod(
            shape, ks, st, dl, ca, q_tile, q_grid, kv_tile, kv_grid, layouts
        )
        any_, full = _na_block_relations(
            m, shape, ks, st, dl, ca, q_tile, q_ext, kv_tile, kv_ext, layouts
        )
        block_size = (_prod(q_tile), _prod(kv_tile))
        q_len, kv_len = _prod(q_ext), _prod(kv_ext)
        bm = _block_mask_from_dense(any_, full, block_size, mask_mod, (q_len, kv_len), device)
        return _Plan(
            key=key, block_mask=bm, mask_mod=mask_mod, block_size=block_size, q_len=q_len,
            kv_len=kv_len, q_tile=q_tile, kv_tile=kv_tile, q_ext=q_ext, kv_ext=kv_ext,
            q_front=tuple(lay.q_front for lay in layouts),
            kv_front=tuple(lay.kv_front for lay in layouts),
            groups=_prod(dl),
        )

    return _cached_plan(key, build)


def _get_dense_plan(
    q_len: int, kv_len: int, is_causal: bool, block: Optional[Tuple[int, int]], device: torch.device
) -> _Plan:
    key = ("dense", q_len, kv_len, bool(is_causal), block, _device_key(device))

    def build() -> _Plan:
        if not is_causal and block is None:
            return _Plan(key=key, block_mask=None, mask_mod=None, block_size=(q_len, kv_len),
                         q_len=q_len, kv_len=kv_len)
        bq, bk = block if block is not None else (_DEFAULT_TILE_TOKENS, _DEFAULT_TILE_TOKENS)
        nq, nk = _ceil_div(q_len, bq), _ceil_div(kv_len, bk)
        if is_causal:
            p = torch.arange(nq)[:, None]
            r = torch.arange(nk)[None, :]
            any_ = r * bk <= p * bq + bq - 1
            full = r * bk + bk - 1 <= p * bq
            mask_mod = _causal_mask_mod
        else:
            any_ = torch.ones(nq, nk, dtype=torch.bool)
            full = any_
            mask_mod = _full_mask_mod
        bm = _block_mask_from_dense(
            any_[None, None], full[None, None], (bq, bk), mask_mod, (q_len, kv_len), device
        )
        return _Plan(key=key, block_mask=bm, mask_mod=mask_mod, block_size=(bq, bk),
                     q_len=q_len, kv_len=kv_len)

    return _cached_plan(key, build)


# ------------------------------------------------------------------------------------------------
# Token permutation
# ------------------------------------------------------------------------------------------------


def _tile_perm(rank: int, tail: int) -> List[int]:
    """Permutation of ``[B, (tiles_a, tile_a, d_a) per axis, *tail]`` into
    ``[B, d..., tiles..., tile..., *tail]``."""
    return (
        [0]
        + [3 + 3 * a for a in range(rank)]
        + [1 + 3 * a for a in range(rank)]
        + [2 + 3 * a for a in range(rank)]
        + [1 + 3 * rank + t for t in range(tail)]
    )


def _to_tiles(
    x: Tensor,
    tile: Tuple[int, ...],
    ext: Tuple[int, ...],
    dilation: Tuple[int, ...],
    front: Optional[Tuple[int, ...]] = None,
) -> Tensor:
    """``[B, *grid, H, D]`` -> ``[B*G, N, H, D]`` (contiguous) in tile order.

    Each axis is zero-padded to ``ext * dilation`` tokens: ``front`` tokens (default 0) before the
    grid, the rest after it."""
    B, H, D = x.shape[0], x.shape[-2], x.shape[-1]
    rank = len(tile)
    grid = x.shape[1 : 1 + rank]
    front = (0,) * rank if front is None else front
    padded = tuple(ext[a] * dilation[a] for a in range(rank))
    if tuple(grid) != padded:
        pad: List[int] = [0, 0, 0, 0]
        for a in reversed(range(rank)):
            pad += [front[a], padded[a] - grid[a] - front[a]]
        x = torch.nn.functional.pad(x, pad)
    view = [B]
    for a in range(rank):
        view += [ext[a] // tile[a], tile[a], dilation[a]]
    x = x.reshape(*view, H, D).permute(_tile_perm(rank, 2))
    return x.reshape(B * _prod(dilation), _prod(ext), H, D)


def _from_tiles(
    y: Tensor,
    B: int,
    shape: Tuple[int, ...],
    tile: Tuple[int, ...],
    ext: Tuple[int, ...],
    dilation: Tuple[int, ...],
    front: Optional[Tuple[int, ...]] = None,
) -> Tensor:
    """Inverse of :func:`_to_tiles`: ``[B*G, N, *tail]`` -> ``[B, *shape, *tail]`` (the padding,
    ``front`` tokens before the grid on each axis and the rest after it, is cropped)."""
    rank = len(tile)
    tail = tuple(y.shape[2:])
    perm = _tile_perm(rank, len(tail))
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    pre = [B] + list(dilation) + [ext[a] // tile[a] for a in range(rank)] + list(tile)
    y = y.reshape(*pre, *tail).permute(inv)
    padded = tuple(ext[a] * dilation[a] for a in range(rank))
    y = y.reshape(B, *padded, *tail)
    front = (0,) * rank if front is None else front
    if padded != tuple(shape):
        y = y[(slice(None),) + tuple(slice(f, f + n) for f, n in zip(front, shape))].contiguous()
    return y


# Widest element types for the permutation copies, by byte width. A token permutation moves rows
# of ``D`` (or ``H * D``) contiguous elements; the generic strided copy computes an offset per
# *element*, so copying 2-byte elements as 8- or 16-byte ones does the same move with 4-8x fewer
# elements (measured on an H100 in benchmarks/NOTES.md). Bits are moved unchanged (no arithmetic).
_WIDE_DTYPES = ((16, torch.complex128), (8, torch.int64), (4, torch.int32))


def _widen(x: Tensor) -> Optional[Tensor]:
    """``x`` viewed with its last dimension reinterpreted as the widest element type that divides
    it and every stride, or None when no wider view exists (then the copy runs on ``x`` itself)."""
    if x.dim() == 0 or x.stride(-1) != 1 or x.is_complex():
        return None
    size = x.element_size()
    nbytes = int(x.shape[-1]) * size
    for width, dtype in _WIDE_DTYPES:
        if width <= size or nbytes % width:
            continue
        if dtype is torch.complex128 and x.device.type != "cuda":
            continue  # 16-byte moves pay off on GPUs; elsewhere 8 bytes are plenty
        ratio = width // size
        if x.storage_offset() % ratio or any(
            st % ratio for st, n in zip(x.stride()[:-1], x.shape[:-1]) if n > 1
        ):
            continue
        try:
            return x.view(dtype)
        except RuntimeError:  # a stride rule of this torch version; try narrower
            continue
    return None


class _TileLayout:
    """:func:`_to_tiles` / :func:`_from_tiles` for one grid, with the pad widths, view shapes and
    permutations worked out once (host time: the 1-D rows run in ~0.1 ms on an H100, and the
    generic functions cost ~50 us of Python per call there).

    When the tiled order is the token order (dilation 1, no padding, one tile across every axis
    but the first: e.g. any 1-D problem whose extent is a multiple of the tile), both directions
    are plain views. Otherwise each direction is one copy (two with padding), done on a wide-element
    view of the data (:func:`_widen`); under autograd the copies are wrapped in
    :class:`_TilePermute`, whose backward is the inverse permutation."""

    def __init__(self, shape: Tuple[int, ...], tile: Tuple[int, ...], ext: Tuple[int, ...],
                 dilation: Tuple[int, ...], front: Optional[Tuple[int, ...]] = None) -> None:
        rank = len(tile)
        self.rank = rank
        self.shape = tuple(int(s) for s in shape)
        front = (0,) * rank if front is None else tuple(front)
        padded = tuple(ext[a] * dilation[a] for a in range(rank))
        self.padded = padded
        self.groups = _prod(dilation)
        self.tokens = _prod(ext)
        self.pad: Optional[List[int]] = None
        if self.shape != padded:
            pad: List[int] = []
            for a in reversed(range(rank)):
                pad += [front[a], padded[a] - self.shape[a] - front[a]]
            self.pad = pad
        self.crop = None if self.shape == padded else tuple(
            slice(f, f + n) for f, n in zip(front, self.shape))
        self.view: List[int] = []
        for a in range(rank):
            self.view += [ext[a] // tile[a], tile[a], dilation[a]]
        self.pre = list(dilation) + [ext[a] // tile[a] for a in range(rank)] + list(tile)
        self.identity = (
            self.pad is None and all(d == 1 for d in dilation)
            and all(ext[a] == tile[a] for a in range(1, rank))
        )
        self._perm: Dict[int, Tuple[List[int], List[int]]] = {}

    def _perms(self, tail: int) -> Tuple[List[int], List[int]]:
        got = self._perm.get(tail)
        if got is None:
            perm = _tile_perm(self.rank, tail)
            inv = [0] * len(perm)
            for i, p in enumerate(perm):
                inv[p] = i
            got = self._perm[tail] = (perm, inv)
        return got

    # The copies themselves, on any tail ``[*tail]`` after the grid / token dimension.
    def _to_tiles_copy(self, x: Tensor) -> Tensor:
        B, tail = x.shape[0], tuple(x.shape[1 + self.rank :])
        if self.pad is not None:
            x = torch.nn.functional.pad(x, [0, 0] * len(tail) + self.pad)
        x = x.reshape(B, *self.view, *tail).permute(self._perms(len(tail))[0])
        return x.reshape(B * self.groups, self.tokens, *tail)

    def _from_tiles_copy(self, y: Tensor, B: int) -> Tensor:
        tail = tuple(y.shape[2:])
        y = y.reshape(B, *self.pre, *tail).permute(self._perms(len(tail))[1])
        y = y.reshape(B, *self.padded, *tail)
        if self.crop is not None:
            y = y[(slice(None),) + self.crop].contiguous()
        return y

    def _fast(self, x: Tensor, to: bool, B: int) -> Tensor:
        wide = _widen(x)
        if wide is None:
            return self._to_tiles_copy(x) if to else self._from_tiles_copy(x, B)
        y = self._to_tiles_copy(wide) if to else self._from_tiles_copy(wide, B)
        return y.view(x.dtype)

    def _move(self, x: Tensor, to: bool, B: int) -> Tensor:
        if torch.compiler.is_compiling():  # traced: the compiler writes its own copy kernels
            return self._to_tiles_copy(x) if to else self._from_tiles_copy(x, B)
        if x.requires_grad and torch.is_grad_enabled():
            return _TilePermute.apply(x, self, to, B)
        return self._fast(x, to, B)

    def to_tiles(self, x: Tensor) -> Tensor:
        """``[B, *grid, H, D]`` -> ``[B*G, N, H, D]`` in tile order (a view when identity)."""
        if self.identity:
            if self.rank == 1:
                return x  # already [B, N, *tail]
            return x.reshape(x.shape[0], self.tokens, *x.shape[1 + self.rank :])
        return self._move(x, True, int(x.shape[0]))

    def from_tiles(self, y: Tensor, B: int) -> Tensor:
        """``[B*G, N, *tail]`` -> ``[B, *shape, *tail]`` (padding cropped)."""
        if self.identity:
            return y if self.rank == 1 else y.reshape(B, *self.shape, *y.shape[2:])
        return self._move(y, False, B)


class _TilePermute(torch.autograd.Function):
    """A :class:`_TileLayout` copy under autograd: the gradient of a permutation (with padding /
    cropping) is the inverse permutation (with cropping / zero padding)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layout: _TileLayout, to: bool, B: int) -> Tensor:
        ctx.layout, ctx.to, ctx.B = layout, to, int(x.shape[0])
        return layout._fast(x, to, B)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None, None]:
        layout = ctx.layout
        if ctx.to:  # grad [B*G, N, *tail] -> [B, *grid, *tail]
            return layout._fast(grad, False, ctx.B), None, None, None
        return layout._fast(grad, True, ctx.B), None, None, None


# ------------------------------------------------------------------------------------------------
# Running FlexAttention (compiled or eager)
# ------------------------------------------------------------------------------------------------


_COMPILED: Optional[Callable] = None
_COMPILED_LOCK = threading.Lock()


def _compiled_flex() -> Callable:
    """The one compiled FlexAttention of this module (dynamic=False; its own recompile budget)."""
    global _COMPILED
    with _COMPILED_LOCK:
        if _COMPILED is None:
            kwargs: Dict[str, Any] = dict(dynamic=False, fullgraph=True, backend=_COMPILE_BACKEND)
            params = inspect.signature(torch.compile).parameters
            if "recompile_limit" in params and _RECOMPILE_LIMIT is not None:
                kwargs["recompile_limit"] = _RECOMPILE_LIMIT
            if "isolate_recompiles" in params and _RECOMPILE_LIMIT is not None:
                kwargs["isolate_recompiles"] = True
            if "recompile_limit" not in kwargs and _RECOMPILE_LIMIT is not None:
                _raise_recompile_limit(_RECOMPILE_LIMIT)
            _COMPILED = torch.compile(flex_attention, **kwargs)
        return _COMPILED


def _raise_recompile_limit(limit: int) -> None:
    """For torch versions whose torch.compile has no per-function ``recompile_limit``: raise
    dynamo's per-code-object limit once, globally (never lowered). A per-call config patch would
    cost host time on every call, and dynamo guards on its config, so patched and unpatched calls
    would not share compiled entries."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    if getattr(cfg, name) < limit:
        setattr(cfg, name, limit)


def _reset_compiled() -> None:
    """Forget the compiled function (test hook, e.g. after changing ``_COMPILE_BACKEND``)."""
    global _COMPILED
    with _COMPILED_LOCK:
        _COMPILED = None


def _flex_call(
    fn: Callable, q: Tensor, k: Tensor, v: Tensor, block_mask: Any, scale: float,
    kernel_options: Optional[Dict[str, Any]],
) -> Tuple[Tensor, Tensor]:
    gqa = q.shape[1] != k.shape[1]
    if _HAS_AUX:
        out, aux = fn(
            q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa,
            kernel_options=kernel_options, return_aux=AuxRequest(lse=True),
        )
        return out, aux.lse
    return fn(  # pragma: no cover - torch < 2.9
        q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa,
        kernel_options=kernel_options, return_lse=True,
    )


def _run_eager(plan: _Plan, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    """Eager FlexAttention in query chunks (its eager path materialises every score)."""
    BG, H, Nq, _ = q.shape
    Nk = k.shape[2]
    per_row = max(1, BG * H * Nk)
    qb = plan.block_size[0] if plan.block_mask is not None else 1
    rows = max(qb, (_EAGER_SCORE_ELEMENTS // per_row) // qb * qb)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        if rows >= Nq:
            return _flex_call(flex_attention, q, k, v, plan.block_mask, scale, None)
        outs, lses = [], []
        for r0, r1, cbm in plan.chunk_masks(rows):
            o, l = _flex_call(flex_attention, q[:, :, r0:r1], k, v, cbm, scale, None)
            outs.append(o)
            lses.append(l)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


@functools.lru_cache(maxsize=1)
def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except Exception:  # pragma: no cover
        return False


def _use_compile(q: Tensor, needs_grad: bool) -> bool:
    if q.device.type == "cpu":
        return _ALLOW_COMPILE_ON_CPU and not needs_grad
    if not q.is_cuda or not context.is_flex_compile_allowed() or not _has_triton():
        return False
    return not needs_grad or context.is_flex_compile_backprop_allowed()


def _is_compiling() -> bool:
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(fn()) if fn is not None else False


@_compiler_disable
def _plan_options(plan: _Plan, head_dim: int, dtype: torch.dtype, cuda: bool) -> Optional[Dict[str, Any]]:
    return plan.options_for(head_dim, dtype, cuda)


def _run(plan: _Plan, q: Tensor, k: Tensor, v: Tensor, scale: float, needs_grad: bool) -> Tuple[Tensor, Tensor]:
    """q ``[BG, H, Nq, D]``, k/v ``[BG, Hkv, Nk, *]`` (views) -> out ``[BG, H, Nq, Dv]``, lse."""
    if _is_compiling():
        # Inside the user's own torch.compile region: FlexAttention becomes part of their graph
        # (and is compiled by their backend); no nested compile, no eager chunking.
        opts = _plan_options(plan, int(q.shape[-1]), q.dtype, q.is_cuda)
        return _flex_call(flex_attention, q, k, v, plan.block_mask, float(scale), opts)
    if _use_compile(q, needs_grad) and not plan.compile_failed:
        opts = _plan_options(plan, int(q.shape[-1]), q.dtype, q.is_cuda)
        try:
            return _flex_call(_compiled_flex(), q, k, v, plan.block_mask, float(scale), opts)
        except _RECOMPILE_LIMIT_ERRORS as e:  # dynamo's global cap on compiled entries is reached
            _warn_once("recompile-limit", (
                "natten flex backend: torch.compile's recompile limit was reached after compiling "
                f"FlexAttention for many problem shapes ({e}); running FlexAttention eagerly for "
                "new shapes from now on (slower). Raise "
                "torch._dynamo.config.accumulated_recompile_limit to compile more shapes."
            ))
        except _COMPILE_ERRORS as e:  # e.g. no C compiler / Triton failure for this problem
            plan.compile_failed = True
            _warn_once(("compile-failed",) + plan.key, (
                f"natten flex backend: compiling FlexAttention failed for {plan.key} "
                f"({type(e).__name__}: {str(e)[:300]}); running it eagerly (slower) instead."
            ))
    return _run_eager(plan, q, k, v, float(scale))


def _exception_types(*names: str) -> Tuple[type, ...]:
    out = []
    for name in names:
        mod, _, cls = name.rpartition(".")
        try:
            out.append(getattr(__import__(mod, fromlist=[cls]), cls))
        except Exception:  # pragma: no cover - older torch
            pass
    return tuple(out)


_RECOMPILE_LIMIT_ERRORS = _exception_types("torch._dynamo.exc.FailOnRecompileLimitHit")
_COMPILE_ERRORS = _exception_types(
    "torch._dynamo.exc.BackendCompilerFailed", "torch._inductor.exc.InductorError"
)
_WARNED: set = set()


def _warn_once(key: Any, message: str) -> None:
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


# ------------------------------------------------------------------------------------------------
# Capability checks
# ------------------------------------------------------------------------------------------------


def _common_reason(query: Tensor, key: Tensor, value: Tensor, torch_compile: bool) -> Optional[str]:
    if _FLEX_IMPORT_ERROR is not None:
        return _FLEX_IMPORT_ERROR
    dev = query.device.type
    if dev not in ("cuda", "cpu"):
        return f"FlexAttention runs on CUDA or CPU tensors here, got tensors on {query.device}"
    if query.dtype != key.dtype or query.dtype != value.dtype:
        return f"query, key and value must share one dtype, got {query.dtype}/{key.dtype}/{value.dtype}"
    if dev == "cpu":
        if query.dtype not in _CPU_DTYPES:
            return f"FlexAttention on CPU supports {list(_CPU_DTYPES)}, got {query.dtype}"
        if torch_compile:
            return (
                "torch_compile=True: compiled FlexAttention on CPU supports neither the logsumexp "
                "nor backward, so flex runs eagerly on CPU (pass torch_compile=False)"
            )
        return None
    if query.dtype not in _CUDA_DTYPES:
        return f"FlexAttention on CUDA supports {list(_CUDA_DTYPES)}, got {query.dtype}"
    compiled = context.is_flex_compile_allowed() and _has_triton()
    if torch_compile and not compiled:
        if not _has_triton():
            return "torch_compile=True but Triton is not available to compile FlexAttention"
        return (
            "torch_compile=True but compiling FlexAttention is disabled; enable it with "
            "natten.allow_flex_compile()"
        )
    if compiled and (query.shape[-1] < 16 or value.shape[-1] < 16):
        return (
            f"compiled FlexAttention needs head dims >= 16, got D={query.shape[-1]}, "
            f"D_v={value.shape[-1]} (natten.disable_flex_compile() runs it eagerly)"
        )
    return None


def can_run_fna(
    query: Tensor, key: Tensor, value: Tensor, spec: WindowSpec, torch_compile: bool = False
) -> Optional[str]:
    """None if flex-fna can run this neighborhood-attention problem here, else why not.

    Query/key slabs of a larger grid (a spec with a region) are supported."""
    return _common_reason(query, key, value, torch_compile)


def can_run_fmha(
    query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False, is_varlen: bool = False,
    torch_compile: bool = False,
) -> Optional[str]:
    """None if flex-fmha can run this dense-attention problem here, else why not."""
    reason = _common_reason(query, key, value, torch_compile)
    if reason is not None:
        return reason
    if is_varlen and query.is_cuda and context.is_flex_compile_allowed() and _has_triton():
        return (
            "variable-length batches are not supported by flex-fmha (one compiled kernel per "
            "sequence length)"
        )
    return None


# Measured on an H100 with torch 2.11: the compiled FlexAttention backward has no valid Triton
# configuration ("NoValidChoicesError") for float16/bfloat16 blocks of 16, 32 or 64 tokens (64
# failed with head dims 64/32); every 128-token case passed. float32 and the forward work with 16.
_MIN_HALF_BWD_TILE_TOKENS = 128


def _min_tile_tokens(q: Tensor, needs_grad: bool) -> int:
    """Smallest tile the compiled kernels accept for this call."""
    if (needs_grad and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and _use_compile(q, needs_grad)):
        return _MIN_HALF_BWD_TILE_TOKENS
    return _MIN_TILE_TOKENS


def _check_compiled_tiles(q_block: int, kv_block: int, q: Tensor, needs_grad: bool) -> None:
    if not (q.is_cuda and _use_compile(q, needs_grad)):
        return
    for name, t in (("query", q_block), ("key", kv_block)):
        if t % _MIN_TILE_TOKENS:
            raise ValueError(
                f"flex-fna: compiled FlexAttention needs tiles of a multiple of {_MIN_TILE_TOKENS} "
                f"tokens, got a {name} tile of {t} tokens (q_tile_shape / kv_tile_shape)."
            )
        least = _min_tile_tokens(q, needs_grad)
        if t < least:
            raise ValueError(
                f"flex-fna: the compiled FlexAttention backward in {q.dtype} needs tiles of at "
                f"least {least} tokens (Triton has no kernel configuration for smaller blocks), "
                f"got a {name} tile of {t} tokens; choose larger q_tile_shape / kv_tile_shape, "
                "leave them to the backend, or train in float32."
            )


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def fna(
    query: Tensor, key: Tensor, value: Tensor, spec: WindowSpec, scale: float, **options: Any
) -> Tuple[Tensor, Tensor]:
    """Neighborhood attention, heads-last: q ``[B, *q_shape, H, D]``, k ``[B, *kv_shape, Hkv, D]``,
    v ``[B, *kv_shape, Hkv, Dv]`` -> out ``[B, *q_shape, H, Dv]``, lse ``[B, *q_shape, H]``
    (float32).

    ``q_shape`` / ``kv_shape`` are ``spec.q_shape`` / ``spec.kv_shape``: the whole grid
    ``spec.shape`` without a region, else the query and key slabs of it (windows on the global
    grid)."""
    rank = spec.rank
    for name, t, want in (("query", query, spec.q_shape), ("key", key, spec.kv_shape),
                          ("value", value, spec.kv_shape)):
        if tuple(t.shape[1 : 1 + rank]) != tuple(want):
            raise ValueError(
                f"flex-fna: the {name} token grid {tuple(t.shape[1 : 1 + rank])} does not match "
                f"the problem's {name} grid {tuple(want)}."
            )
    needs_grad = _needs_grad(query, key, value)
    if query.device.type == "cpu" and needs_grad:
        # FlexAttention has no CPU backward: training on CPU runs the exact reference backend.
        return reference.fna(query, key, value, spec, scale)
    reason = _common_reason(query, key, value, bool(options.get("torch_compile", False)))
    if reason is not None:
        raise ValueError(f"flex-fna cannot run this problem: {reason}")
    q_tile, kv_tile = _resolve_tiles(
        spec, options.get("q_tile_shape"), options.get("kv_tile_shape"),
        _min_tile_tokens(query, needs_grad),
    )
    _check_compiled_tiles(_prod(q_tile), _prod(kv_tile), query, needs_grad)
    plan = _get_na_plan(spec, q_tile, kv_tile, query.device)
    assert plan.q_ext is not None and plan.kv_ext is not None
    dl = tuple(int(d) for d in spec.dilation)
    q_shape = tuple(int(s) for s in spec.q_shape)
    B = query.shape[0]
    if query.device.type == "cpu":  # FlexAttention refuses CPU tensors that require grad
        query, key, value = query.detach(), key.detach(), value.detach()
    q_layout = _TileLayout(q_shape, q_tile, plan.q_ext, dl, plan.q_front)
    kv_layout = _TileLayout(tuple(int(s) for s in key.shape[1:-2]), kv_tile, plan.kv_ext, dl,
                            plan.kv_front)
    q = q_layout.to_tiles(query).transpose(1, 2)
    k = kv_layout.to_tiles(key).transpose(1, 2)
    v = kv_layout.to_tiles(value).transpose(1, 2)
    out, lse = _run(plan, q, k, v, scale, needs_grad)
    out = q_layout.from_tiles(out.transpose(1, 2), B)
    lse = q_layout.from_tiles(lse.transpose(1, 2), B)
    if query.dtype != torch.float64:
        lse = lse.float()
    return out, lse


def prepare_fna(
    query: Tensor, key: Tensor, value: Tensor, spec: WindowSpec, scale: float, **options: Any
) -> Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]:
    """A runner for repeated calls with this exact signature (shapes, strides, dtypes, devices,
    grad mode, context flags: the dispatcher's plan-cache key), with tiles, block mask and kernel
    options resolved once. Host time matters on small problems (1-D rows run in ~0.1 ms).

    The first call goes through :func:`fna` (it compiles, under the recompile budget); later calls
    permute, call the compiled FlexAttention directly and permute back. Anything unusual (eager
    path, compile failure, inside the user's torch.compile) keeps using :func:`fna`."""
    needs_grad = _needs_grad(query, key, value)
    slow = functools.partial(_fna_entry, spec=spec, scale=scale, options=options)
    if not _use_compile(query, needs_grad) or _is_compiling():
        return slow  # eager FlexAttention (in query chunks), or CPU training (reference)
    if query.device.type not in ("cuda", "cpu") or _common_reason(
        query, key, value, bool(options.get("torch_compile", False))
    ) is not None:
        return slow
    q_tile, kv_tile = _resolve_tiles(
        spec, options.get("q_tile_shape"), options.get("kv_tile_shape"),
        _min_tile_tokens(query, needs_grad),
    )
    _check_compiled_tiles(_prod(q_tile), _prod(kv_tile), query, needs_grad)  # as fna() does
    plan = _get_na_plan(spec, q_tile, kv_tile, query.device)
    dl = tuple(int(d) for d in spec.dilation)
    q_shape = tuple(int(s) for s in spec.q_shape)
    B = int(query.shape[0])
    opts = _plan_options(plan, int(query.shape[-1]), query.dtype, query.is_cuda)
    gqa = query.shape[-2] != key.shape[-2]
    scale_f = float(scale)
    calls = [0]
    q_layout = _TileLayout(q_shape, q_tile, plan.q_ext, dl, plan.q_front)
    kv_layout = _TileLayout(tuple(int(s) for s in key.shape[1:-2]), kv_tile, plan.kv_ext, dl,
                            plan.kv_front)
    device_type = query.device.type

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        if calls[0] == 0 or plan.compile_failed or not _HAS_AUX:
            result = slow(q, k, v)
            calls[0] = 1  # (only once a call went through: an error repeats on the next call)
            return result
        qt = q_layout.to_tiles(q).transpose(1, 2)
        kt = kv_layout.to_tiles(k).transpose(1, 2)
        vt = kv_layout.to_tiles(v).transpose(1, 2)
        args = (qt, kt, vt)
        kwargs = dict(block_mask=plan.block_mask, scale=scale_f, enable_gqa=gqa,
                      kernel_options=opts, return_aux=AuxRequest(lse=True))
        if calls[0] >= 2 and _skip_guards_reason(device_type) is None:
            # This exact call (same metadata, block mask, options, grad mode) already ran through
            # dynamo's guards once (below): choosing among the compiled entries is all that is
            # left, which the differentiating guards do (see _skip_guards_ok).
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                out, aux = _compiled_flex()(*args, **kwargs)
        else:
            calls[0] = 2
            out, aux = _compiled_flex()(*args, **kwargs)
        out = q_layout.from_tiles(out.transpose(1, 2), B)
        lse = q_layout.from_tiles(aux.lse.transpose(1, 2), B)
        return out, (lse if q.dtype == torch.float64 else lse.float())

    return run


# Host time of a prepared call: dynamo evaluates the guards of every compiled FlexAttention entry
# it tries (one per problem signature, all on one compiled function), measured on an H100 at ~0.1
# ms of a 0.2 ms 1-D call (benchmarks/NOTES.md). The prepared path runs each exact call once with
# full guards, then with only the differentiating guards (torch.compiler.set_stance(...,
# skip_guard_eval_unsafe=True)), which is safe because nothing that the guards check can differ
# from that first call: shapes, strides, dtypes, devices and grad mode are the plan-cache key, the
# block mask, kernel options and scale are the runner's own. Global state that is not in the key
# keeps full guards: autocast, a non-default compiler stance (the user's), and
# NATTEN_FLEX_SKIP_GUARDS=0 turns it off. The stance (and dynamo's flag under it) is process-wide,
# not per thread: while it is set, a compiled function that *another* thread enters would skip
# its guards too. So it is only used while no other Python thread that could run compiled code
# is alive (Inductor's own threads are known not to: its subprocess pool's reader and timer, the
# worker threads of its compile thread pool, which a cold cache starts on the first compile, and
# tqdm's monitor thread, which its progress bars start). Refusals are counted, with their reason, in
# GUARD_SKIP_REFUSALS (benchmarks/bench_flex.py reports them).
_SKIP_GUARDS = os.environ.get("NATTEN_FLEX_SKIP_GUARDS", "1") != "0"
_GUARD_SAFE_THREADS = frozenset({"InductorSubproc", "subproc_worker_timer"})


def _inductor_pool_threads() -> set:
    """The worker threads of Inductor's compile thread pool, if it was started (they run compile
    jobs, never compiled code). Empty when it was not, or on a torch without it."""
    try:
        import sys

        ac = sys.modules.get("torch._inductor.async_compile")
        pool = getattr(getattr(ac, "AsyncCompile", None), "pool", None)
        if pool is None or not pool.cache_info().currsize:
            return set()
        return set(pool()._threads)
    except Exception:  # pragma: no cover - other torch internals: count them as user threads
        return set()


def _is_tqdm_monitor(t: threading.Thread) -> bool:
    """tqdm's progress-bar monitor (started by Inductor's autotuning progress bars): it only sleeps
    and refreshes bars, never runs compiled code."""
    cls = type(t)
    return cls.__name__ == "TMonitor" and cls.__module__.startswith("tqdm")


def _other_threads() -> List[str]:
    """Names of the live Python threads, other than this one, that could enter compiled code."""
    me = threading.current_thread()
    others = [t for t in threading.enumerate()
              if t is not me and t.name not in _GUARD_SAFE_THREADS and not _is_tqdm_monitor(t)]
    if not others:
        return []
    helpers = _inductor_pool_threads()
    return [t.name for t in others if t not in helpers]


def _no_other_compiling_thread() -> bool:
    return not _other_threads()


# Why prepared calls kept their guards: reason -> count (at most 16 reasons kept). A prepared call
# that keeps its guards is correct but pays their host time; benchmarks report this.
GUARD_SKIP_REFUSALS: Dict[str, int] = {}


def _skip_guards_reason(device_type: str) -> Optional[str]:
    """``None`` when a prepared call may skip dynamo's guards (see above), else why not."""
    why = _skip_guards_why(device_type)
    if why is not None and (why in GUARD_SKIP_REFUSALS or len(GUARD_SKIP_REFUSALS) < 16):
        GUARD_SKIP_REFUSALS[why] = GUARD_SKIP_REFUSALS.get(why, 0) + 1
    return why


def _skip_guards_why(device_type: str) -> Optional[str]:
    if not _SKIP_GUARDS:
        return "NATTEN_FLEX_SKIP_GUARDS=0"
    try:
        stance = torch._dynamo.eval_frame._stance  # the user's stance must be the default one
        if stance.stance != "default" or stance.skip_guard_eval_unsafe or stance.backend is not None:
            return f"a compiler stance is set ({stance.stance})"
        if torch.is_autocast_enabled(device_type):
            return "autocast is enabled"
        others = _other_threads()
        if others:
            return "other Python threads are alive: " + ", ".join(sorted(set(others))[:4])
        return None
    except Exception as e:  # pragma: no cover - a torch without these internals: keep the guards
        return f"torch internals differ ({type(e).__name__})"


def _skip_guards_ok(device_type: str) -> bool:
    return _skip_guards_why(device_type) is None


def _fna_entry(q: Tensor, k: Tensor, v: Tensor, spec: WindowSpec, scale: float,
               options: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
    return fna(q, k, v, spec, scale, **options)


def fmha(
    query: Tensor, key: Tensor, value: Tensor, is_causal: bool, scale: float, **options: Any
) -> Tuple[Tensor, Tensor]:
    """Dense attention on ``[B, N, H, D]`` tensors (causal: top-left aligned, key j <= query i)."""
    needs_grad = _needs_grad(query, key, value)
    if query.device.type == "cpu" and needs_grad:
        return reference.fmha(query, key, value, is_causal, scale)
    reason = _common_reason(query, key, value, bool(options.get("torch_compile", False)))
    if reason is not None:
        raise ValueError(f"flex-fmha cannot run this problem: {reason}")
    if options.get("offsets") is not None:
        raise NotImplementedError("flex-fmha does not support variable-length sequences")
    qt, kt = options.get("q_tile_shape"), options.get("kv_tile_shape")
    block = None
    if qt is not None or kt is not None:
        bq = int((qt if qt is not None else kt)[0])  # type: ignore[index]
        bk = int((kt if kt is not None else qt)[0])  # type: ignore[index]
        _check_compiled_tiles(bq, bk, query, needs_grad)
        block = (bq, bk)
    plan = _get_dense_plan(query.shape[1], key.shape[1], bool(is_causal), block, query.device)
    if query.device.type == "cpu":
        query, key, value = query.detach(), key.detach(), value.detach()
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    out, lse = _run(
        plan, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale, needs_grad
    )
    lse = lse.transpose(1, 2).contiguous()
    if query.dtype != torch.float64:
        lse = lse.float()
    return out.transpose(1, 2), lse
