"""Tile-visit simulator: how much work a tiled (fused) kernel must do for a use case, without a GPU.

A fused neighborhood-attention kernel works on a query tile of ``Tq`` tokens against key tiles of
``Tk`` tokens, and it pays for every (query tile, key tile) pair it visits, whatever happens inside
the tile. Tiles are multi-dimensional (e.g. ``2x8x8`` tokens on a 3-D grid) and live in
*dilation-group coordinates*: with dilation ``d`` on an axis, tokens ``g, g+d, g+2d, ...`` form
group ``g`` (a separate sub-grid of ``ceil((n - g) / d)`` tokens) and tiles never mix groups.

The box bound (PERF-NOTES "The tile-visit bound")
--------------------------------------------------
On one axis, for each query tile, take the *box* ``[min start, max last]`` of its queries' windows
(``natten.window.axis_window_bounds``, evaluated for every query of the tile: no monotonicity is
assumed, so it is exact for stride, causal masking and clamped borders too) and count the key
tiles of the same dilation group that intersect it. A multi-dimensional kernel visits the key tiles
in the product of the per-axis boxes, so the visited work is separable::

    visited_pairs = prod over axes of  sum over query tiles on that axis of
                    (Tq_axis x keyTilesInBox x Tk_axis)

Tiles count in full (a padded partial tile at the end of an axis costs a whole tile), while the
dense reference is the unpadded ``N * N`` (``N`` = tokens). ``dense / visited_pairs`` is the
*tile bound*: the best speedup over a dense kernel of the same per-tile efficiency. This is the
convention of PERF-NOTES' table (e.g. hunyuan 4x4x8/4x4x8 -> 5.49x; counting only real tokens
instead gives 6.0x, reported here as ``tile_bound_real``).

This module computes exactly that bound. Two facts about it (proved below, tested against brute
force in ``tests/test_simulator.py``):

* The per-axis union of a query tile's windows is always one interval (consecutive windows overlap
  or touch: their centres move by at most ``stride <= kernel_size``; causal windows end at the query
  itself), so on one axis the box visits exactly the key tiles holding at least one attended key.
* Tiles are products of per-axis ranges and the mask is an AND over axes, so a multi-dimensional
  (query tile, key tile) pair holds an attended pair iff it does on every axis.

Hence, with tiles in dilation-group coordinates, the box bound *equals* the number of non-empty
tile pairs: no tile-skipping kernel with those tiles can visit fewer. (With tiles that mix dilation
groups, or row-major 1-D tiles of a multi-dimensional grid, the separable product does not apply.)

A visited pair is *full* when every query of the tile attends every key of the key tile; then no
element needs masking. Fullness is separable too. A use case is *fully block-sparse* for a tiling
when every visited pair is full; then the tile bound equals the FLOP bound ``dense / attended``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from natten.utils import checks
from natten.window import WindowSpec, axis_window_bounds

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class AxisTiles:
    """Tile counts on one axis, summed over dilation groups and query tiles."""

    n: int
    kernel_size: int
    stride: int
    dilation: int
    is_causal: bool
    q_tile: int
    kv_tile: int
    q_tiles: int  #: query tiles on this axis (all dilation groups)
    kv_tiles: int  #: key tiles on this axis (all dilation groups)
    visited: int  #: (query tile, key tile) pairs in the box of each query tile
    full: int  #: visited pairs in which every query attends every key
    visited_real: int  #: visited (query, key) token pairs counting real tokens only
    attended: int  #: attended (query, key) pairs on this axis

    @property
    def visited_pairs(self) -> int:
        """Visited token pairs with whole tiles (padding included)."""
        return self.visited * self.q_tile * self.kv_tile

    @property
    def block_sparse(self) -> bool:
        return self.visited == self.full


@contextlib.contextmanager
def _one_thread():
    """The arrays here are small: intra-op threads only add synchronisation (which costs
    milliseconds per op on a busy machine)."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


@functools.lru_cache(maxsize=1024)
def _group_windows(
    n: int, kernel_size: int, stride: int, dilation: int, is_causal: bool
) -> Tuple[Tuple[torch.Tensor, torch.Tensor], ...]:
    """Per dilation group: (start, last) of every query's window in group-local coordinates."""
    start, last = axis_window_bounds(n, kernel_size, stride, dilation, is_causal)
    out = []
    for g in range(dilation):
        idx = torch.arange(g, n, dilation)
        out.append(((start[idx] - g) // dilation, (last[idx] - g) // dilation))
    return tuple(out)


def _tile_reduce(x: torch.Tensor, tile: int, pad_value: int, op: str) -> torch.Tensor:
    nt = -(-x.numel() // tile)
    pad = nt * tile - x.numel()
    if pad:
        x = torch.cat([x, x.new_full((pad,), pad_value)])
    x = x.view(nt, tile)
    return x.amin(dim=1) if op == "min" else x.amax(dim=1)


def _axis_tiles(
    n: int, kernel_size: int, stride: int, dilation: int, is_causal: bool, q_tile: int, kv_tile: int
) -> AxisTiles:
    with _one_thread():
        return _axis_tiles_impl(n, kernel_size, stride, dilation, is_causal, q_tile, kv_tile)


def _axis_tiles_impl(
    n: int, kernel_size: int, stride: int, dilation: int, is_causal: bool, q_tile: int, kv_tile: int,
    windows=None,
) -> AxisTiles:
    if windows is None:
        windows = _group_windows(n, kernel_size, stride, dilation, is_causal)
    q_tiles = kv_tiles = visited = full = visited_real = attended = 0
    Tq, Tk = q_tile, kv_tile
    for start, last in windows:
        ng = start.numel()
        nq = -(-ng // Tq)
        nk = -(-ng // Tk)
        big = ng + 1
        lo = _tile_reduce(start, Tq, big, "min")  # box start: earliest window start in the tile
        hi = _tile_reduce(last, Tq, -1, "max")  # box end: latest window end in the tile
        kt_lo = lo // Tk
        kt_hi = hi // Tk
        count = kt_hi - kt_lo + 1
        # Full key tiles: inside [latest start, earliest end] of the tile's queries.
        s_max = _tile_reduce(start, Tq, -1, "max")
        l_min = _tile_reduce(last, Tq, big, "min")
        t_min = (s_max + Tk - 1) // Tk
        t_max = torch.where(
            l_min >= ng - 1,
            torch.full_like(l_min, nk - 1),
            torch.clamp((l_min + 1) // Tk - 1, max=nk - 2),
        )
        nfull = torch.clamp(t_max - t_min + 1, min=0)
        # Real tokens: the last query/key tile of a group may be partial.
        q_real = torch.full((nq,), Tq, dtype=torch.int64)
        q_real[-1] = ng - (nq - 1) * Tq
        k_missing = nk * Tk - ng
        k_real = count * Tk - torch.where(kt_hi == nk - 1, k_missing, 0)
        q_tiles += nq
        kv_tiles += nk
        visited += int(count.sum())
        full += int(nfull.sum())
        visited_real += int((q_real * k_real).sum())
        attended += int((last - start + 1).sum())
    return AxisTiles(
        n, kernel_size, stride, dilation, is_causal, q_tile, kv_tile,
        q_tiles, kv_tiles, visited, full, visited_real, attended,
    )


axis_tiles = functools.lru_cache(maxsize=65536)(_axis_tiles)
axis_tiles.__doc__ = """Box-bound tile counts on one axis (cached); see the module docstring."""


@dataclass(frozen=True)
class TileResult:
    """Tile-visit bound of one use case under one tiling."""

    shape: Shape
    kernel_size: Shape
    stride: Shape
    dilation: Shape
    is_causal: Tuple[bool, ...]
    q_tile: Shape
    kv_tile: Shape
    axes: Tuple[AxisTiles, ...] = field(repr=False)

    @property
    def tokens(self) -> int:
        return math.prod(self.shape)

    @property
    def dense_pairs(self) -> int:
        return self.tokens * self.tokens

    @property
    def attended_pairs(self) -> int:
        return math.prod(a.attended for a in self.axes)

    @property
    def visited_tiles(self) -> int:
        return math.prod(a.visited for a in self.axes)

    @property
    def full_tiles(self) -> int:
        return math.prod(a.full for a in self.axes)

    @property
    def masked_tiles(self) -> int:
        """Visited tile pairs that cut a window border (need element masking)."""
        return self.visited_tiles - self.full_tiles

    @property
    def visited_pairs(self) -> int:
        return math.prod(a.visited_pairs for a in self.axes)

    @property
    def visited_pairs_real(self) -> int:
        return math.prod(a.visited_real for a in self.axes)

    @property
    def tile_bound(self) -> float:
        """dense pairs / visited pairs (whole tiles): upper bound on the speedup over dense."""
        return self.dense_pairs / self.visited_pairs

    @property
    def tile_bound_real(self) -> float:
        return self.dense_pairs / self.visited_pairs_real

    @property
    def flop_bound(self) -> float:
        """dense pairs / attended pairs: upper bound on the speedup of any exact kernel."""
        return self.dense_pairs / self.attended_pairs

    @property
    def efficiency(self) -> float:
        """Useful fraction of the visited work (tile bound / FLOP bound)."""
        return self.attended_pairs / self.visited_pairs

    @property
    def block_sparse(self) -> bool:
        """Every visited tile pair is fully inside every window of its queries."""
        return all(a.block_sparse for a in self.axes)

    def to_dict(self) -> Dict[str, object]:
        return {
            "input_size": list(self.shape),
            "window_size": list(self.kernel_size),
            "stride": list(self.stride),
            "dilation": list(self.dilation),
            "causal": list(self.is_causal),
            "q_tile": list(self.q_tile),
            "kv_tile": list(self.kv_tile),
            "dense_pairs": self.dense_pairs,
            "attended_pairs": self.attended_pairs,
            "visited_tiles": self.visited_tiles,
            "full_tiles": self.full_tiles,
            "masked_tiles": self.masked_tiles,
            "visited_pairs": self.visited_pairs,
            "visited_pairs_real": self.visited_pairs_real,
            "tile_bound": self.tile_bound,
            "tile_bound_real": self.tile_bound_real,
            "flop_bound": self.flop_bound,
            "efficiency": self.efficiency,
            "block_sparse": self.block_sparse,
            "per_axis": [
                {
                    "q_tiles": a.q_tiles, "kv_tiles": a.kv_tiles, "visited": a.visited,
                    "full": a.full, "block_sparse": a.block_sparse,
                }
                for a in self.axes
            ],
        }


def _check_tile(name: str, tile: Sequence[int], rank: int) -> Shape:
    t = checks.as_int_tuple(name, tuple(tile) if not isinstance(tile, int) else tile, rank)
    for a, v in enumerate(t):
        if v < 1:
            raise ValueError(f"`{name}` must be positive, got {v} on {checks.axis_name(rank, a)}.")
    return t


def simulate(
    shape: Sequence[int],
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    q_tile=None,
    kv_tile=None,
) -> TileResult:
    """Tile-visit bound of a use case for one (query tile, key tile) shape.

    ``kernel_size``, ``stride``, ``dilation``, ``is_causal`` follow natten (an int/bool or one per
    axis); ``q_tile`` / ``kv_tile`` are tile shapes in tokens of dilation-group coordinates.
    """
    shape = tuple(int(s) for s in shape)
    rank = len(shape)
    if rank not in (1, 2, 3):
        raise ValueError(f"the token grid must have 1, 2 or 3 axes, got {shape}.")
    ks, st, dl, ca = checks.check_na_params(shape, kernel_size, stride, dilation, is_causal)
    if q_tile is None or kv_tile is None:
        raise ValueError("`q_tile` and `kv_tile` are required.")
    qt = _check_tile("q_tile", q_tile, rank)
    kt = _check_tile("kv_tile", kv_tile, rank)
    axes = tuple(
        axis_tiles(shape[a], ks[a], st[a], dl[a], ca[a], qt[a], kt[a]) for a in range(rank)
    )
    return TileResult(shape, ks, st, dl, ca, qt, kt, axes)


def flop_bound(shape: Sequence[int], kernel_size, stride=1, dilation=1, is_causal=False) -> float:
    """dense pairs / attended pairs of a use case (independent of tiles)."""
    shape = tuple(int(s) for s in shape)
    ks, st, dl, ca = checks.check_na_params(shape, kernel_size, stride, dilation, is_causal)
    n = math.prod(shape)
    return n * n / WindowSpec(shape, ks, st, dl, ca).num_pairs()


def block_sparse_strides(
    n: int, kernel_size: int, dilation: int, is_causal: bool, q_tile: int, kv_tile: int
) -> List[int]:
    """Strides (1..kernel_size) for which one axis is fully block-sparse under the given tiles.

    Full block sparsity is separable: a use case is fully block-sparse iff every axis is, so the
    strides that make the whole mask block-sparse are the product of the per-axis lists.
    """
    return _block_sparse_strides(n, kernel_size, dilation, is_causal, q_tile, kv_tile)


@functools.lru_cache(maxsize=4096)
def _block_sparse_strides(
    n: int, kernel_size: int, dilation: int, is_causal: bool, q_tile: int, kv_tile: int
) -> List[int]:
    out = []
    with _one_thread():
        for s in range(1, kernel_size + 1):
            # Uncached on purpose: a stride scan would flood the per-axis caches.
            windows = _group_windows.__wrapped__(n, kernel_size, s, dilation, is_causal)
            if _axis_tiles_impl(
                n, kernel_size, s, dilation, is_causal, q_tile, kv_tile, windows
            ).block_sparse:
                out.append(s)
    return out


def _pow2_upto(limit: int) -> List[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def candidate_tile_shapes(
    shape: Sequence[int],
    dilation: Sequence[int] = None,
    products: Iterable[int] = (64, 128),
    max_waste: float = 1.25,
) -> List[Shape]:
    """Power-of-two tile shapes whose volume is one of ``products`` and that divide the problem
    reasonably: on every axis the tile fits the (largest) dilation group and padding that group to
    a whole number of tiles adds at most ``max_waste - 1`` (25%) tokens."""
    shape = tuple(int(s) for s in shape)
    rank = len(shape)
    dilation = tuple(dilation) if dilation is not None else (1,) * rank
    group = [-(-n // d) for n, d in zip(shape, dilation)]
    per_axis = []
    for ng in group:
        ok = [t for t in _pow2_upto(ng) if (-(-ng // t) * t) <= max_waste * ng]
        per_axis.append(ok)
    out: List[Shape] = []
    for p in products:
        for combo in itertools.product(*per_axis):
            if math.prod(combo) == p:
                out.append(tuple(combo))
    return out


def rank_tilings(
    shape: Sequence[int],
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    q_tiles: Optional[Sequence[Shape]] = None,
    kv_tiles: Optional[Sequence[Shape]] = None,
    same_shape: bool = True,
    products: Iterable[int] = (64, 128),
) -> List[TileResult]:
    """Simulate many tilings, best tile bound first (ties: fewer masked tiles, larger tiles)."""
    shape = tuple(int(s) for s in shape)
    rank = len(shape)
    dl = checks.as_int_tuple("dilation", dilation, rank)
    cands = candidate_tile_shapes(shape, dl, products)
    qs = list(q_tiles) if q_tiles else cands
    if same_shape and not kv_tiles:
        pairs = [(q, q) for q in qs]
    else:
        ks = list(kv_tiles) if kv_tiles else cands
        pairs = list(itertools.product(qs, ks))
    results = [simulate(shape, kernel_size, stride, dilation, is_causal, q, k) for q, k in pairs]
    results.sort(
        key=lambda r: (-r.tile_bound, r.masked_tiles, -math.prod(r.q_tile), -math.prod(r.kv_tile))
    )
    return results

