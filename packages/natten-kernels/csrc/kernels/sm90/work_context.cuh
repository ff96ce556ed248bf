// Work context of the SM90 kernels: what a work tile (batch, head, query tile) needs before its key
// walk: the work tile, its query tile, its key-tile walk and the kv head.
//
// Two ways to build it, with equal results (tests/sm90_work_context_test.cpp):
//   make_work_context_generic: the SM80 scheduler's functions (decode_work, make_query_tile,
//     make_key_tiles), for any dilation: the reference;
//   make_work_context_fast: the same values for dilation 1 (every SM90 kernel) from divisors and
//     axes the host prepared once per launch (WorkDecode): multiply-shift divisions
//     (window::FastDiv) and the branch-free window rule (window::window_fast). The forward and
//     the backward dQ kernel run it once per work tile in every producer and consumer thread; the
//     generic form took ~2.4 us per tile there (H100 clock trace, benchmarks/NOTES.md, twelfth
//     session): 32-bit divisions and branchy code, run cold from the instruction cache.
//
// Plain integer C++ (host + device).
#pragma once

#include <cstdint>

#include "natten/window.cuh"
#include "sm80/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

using sm80::kRank;

struct WorkContext {
  sm80::WorkTile work;
  sm80::QueryTile qt;
  sm80::KeyTiles keys;
  int64_t kv_head;
};

// Host-built divisors and window axes of one launch (dilation 1, num_work < 2^31).
struct WorkDecode {
  window::FastDiv q_tiles[kRank];  // geo.q_tiles[a]
  window::FastDiv heads;           // geo.heads
  window::FastDiv heads_per_kv;    // H / H_kv
  window::FastDiv pair_tiles;      // query tiles per (batch, head): prod(q_tiles) (interleaved order)
  int tiles_per_head;              // prod(q_tiles)
  window::FastAxis axis[kRank];    // global axis a: extent, kernel, stride, causal
};

inline WorkDecode make_work_decode(const sm80::Geometry& g, int heads_per_kv) {
  WorkDecode d;
  int T = 1;
  for (int a = 0; a < kRank; ++a) {
    d.q_tiles[a] = window::make_fast_div(g.q_tiles[a]);
    d.axis[a] = window::make_fast_axis(g.extent[a], g.kernel[a], g.stride[a], g.causal[a] != 0,
                                       window::make_fast_div(g.stride[a]));
    T *= g.q_tiles[a];
  }
  d.heads = window::make_fast_div(int(g.heads));
  d.heads_per_kv = window::make_fast_div(heads_per_kv);
  d.pair_tiles = window::make_fast_div(T);
  d.tiles_per_head = T;
  return d;
}

// Index permutation of the dynamic order with reversed axes (see make_work_context_generic).
NATTEN_HD int64_t interleave_pairs(const sm80::Geometry& g, int64_t idx, int reverse_axes) {
  if (reverse_axes == 0 || ((g.batch * g.heads) & 1) != 0) return idx;
  int64_t T = 1;  // work tiles per (batch, head)
  for (int a = 0; a < kRank; ++a) T *= int64_t(g.q_tiles[a]) * g.groups[a];
  const int64_t rest = idx >> 1, grp = rest / T;
  return ((grp << 1) + (idx & 1)) * T + (rest - grp * T);
}

// reverse_axes (the forward's dynamic order on causal axes; 0 = the plain order): bit a set = query
// tiles of axis a in descending order, so the longest key walks come first; and, when batch * heads
// is even, the tiles of two consecutive (batch, head) pairs interleaved (index 2 (g T + t) + j =
// tile t of pair 2 g + j, T query tiles per pair): a dynamic schedule then takes tiles of nearly
// equal walks in turn across two heads, and the lightest ones last. (A model of the greedy dynamic
// assignment on dense causal attention with 8 heads, 8192 tokens in 128-token tiles, 132 CTAs: the
// makespan is 1.23x the balanced one with one head after the other, 1.00x with pairs interleaved;
// benchmarks/NOTES.md.) Two heads at a time keep the keys the grid reads within L2.
NATTEN_HD WorkContext make_work_context_generic(const sm80::Geometry& g, int heads_per_kv, int64_t idx,
                                                int reverse_axes = 0) {
  WorkContext c;
  c.work = sm80::decode_work(g, interleave_pairs(g, idx, reverse_axes));
  for (int a = 0; a < kRank; ++a)
    if ((reverse_axes >> a) & 1) c.work.tile[a] = g.q_tiles[a] - 1 - c.work.tile[a];
  sm80::make_query_tile(g, c.work, c.qt);  // never empty: one dilation group, q_tiles from extent
  c.keys = sm80::make_key_tiles(g, c.qt);
  c.kv_head = c.work.head / heads_per_kv;
  return c;
}

// The same for dilation 1 and num_work < 2^31 without divisions.
NATTEN_HD WorkContext make_work_context_fast(const sm80::Geometry& g, const WorkDecode& d, int64_t idx64,
                                             int reverse_axes = 0) {
  WorkContext c;
  int i = int(idx64);
  if (reverse_axes != 0 && ((g.batch * g.heads) & 1) == 0) {
    const int rest = i >> 1, grp = window::fast_div(rest, d.pair_tiles);
    i = ((grp << 1) + (i & 1)) * d.tiles_per_head + (rest - grp * d.tiles_per_head);
  }
  for (int a = kRank - 1; a >= 0; --a) {
    const int q = window::fast_div(i, d.q_tiles[a]);
    c.work.tile[a] = i - q * g.q_tiles[a];
    c.work.group[a] = 0;
    if ((reverse_axes >> a) & 1) c.work.tile[a] = g.q_tiles[a] - 1 - c.work.tile[a];
    i = q;
  }
  const int batch = window::fast_div(i, d.heads);
  const int head = i - batch * int(g.heads);
  c.work.batch = batch;
  c.work.head = head;
  c.kv_head = window::fast_div(head, d.heads_per_kv);
  c.keys.total = 1;
  for (int a = 0; a < kRank; ++a) {
    const window::FastAxis& ax = d.axis[a];
    sm80::QueryTile& q = c.qt;
    q.axis[a] = window::make_axis(ax.n, ax.K, ax.s, ax.causal != 0);
    q.q0[a] = c.work.tile[a] << g.q_log2[a];
    q.q_last[a] = window::imin(q.q0[a] + (1 << g.q_log2[a]) - 1, g.q_extent[a] - 1);
    q.n_q[a] = g.q_extent[a];
    q.n_kv[a] = g.kv_extent[a];
    q.kv_group[a] = 0;
    q.q_shift[a] = g.q_origin[a];
    q.kv_shift[a] = g.kv_origin[a];
    // Window of the first and of the last real query (global coordinates): the key box runs from the
    // first one's start to the last one's end, the mask-free keys from the last one's start to the
    // first one's end (window.cuh: tile_key_range, tile_full_range).
    int s0, e0, s1, e1;
    window::window_fast(q.q0[a] + q.q_shift[a], ax, s0, e0);
    window::window_fast(q.q_last[a] + q.q_shift[a], ax, s1, e1);
    const int kt = 1 << g.kv_log2[a];
    c.keys.start[a] = s0 - q.kv_shift[a];
    c.keys.count[a] = (e1 - s0 + kt) >> g.kv_log2[a];
    c.keys.full_lo[a] = s1 - q.kv_shift[a];
    c.keys.full_hi[a] = e0 - q.kv_shift[a];
    c.keys.total *= c.keys.count[a];
  }
  return c;
}

// Hides the key walk's values from the compiler's value tracking (device code; a no-op on the host),
// so that a key loop keeps them in registers: without it, ptxas recomputed the division-free values
// from the parameter block inside the forward's key loop (34 constant loads and ~100 integer
// instructions between the S GEMM's wait and the softmax), which made every row 5-12% slower
// (H100, benchmarks/NOTES.md, thirteenth session).
NATTEN_HD void pin_registers(int& x) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+r"(x));
#else
  (void)x;
#endif
}

NATTEN_HD void pin_registers(sm80::KeyTiles& k) {
  for (int a = 0; a < kRank; ++a) {
    pin_registers(k.start[a]);
    pin_registers(k.count[a]);
    pin_registers(k.full_lo[a]);
    pin_registers(k.full_hi[a]);
  }
  pin_registers(k.total);
}

// Per-row window (sm80::query_row_window) of query row r of the context's tile, from the fast axes.
NATTEN_HD void row_window_fast(const sm80::Geometry& g, const WorkDecode& d, const sm80::QueryTile& q, int r,
                               int start[kRank], int len[kRank]) {
  int c[kRank];
  sm80::tile_coord(r, g.q_log2, c);
  for (int a = 0; a < kRank; ++a) {
    int s, e;
    window::window_fast(window::imin(q.q0[a] + c[a], q.n_q[a] - 1) + q.q_shift[a], d.axis[a], s, e);
    start[a] = s - q.kv_shift[a];
    len[a] = e - s;
  }
}

// Rotated key walks (sm80/tile_scheduler.cuh: walk_origin, walk_advance, walk_rotation): the forward
// and dQ kernels' producers and consumers walk key tiles in that order; the host decides per launch
// (fna_forward.cpp: rotate_walks; NATTEN_HOPPER_WALK).
using sm80::walk_advance;
using sm80::walk_origin;
using sm80::walk_rotation;

// Cluster pairs of the forward (params.cuh: pair_half): the fastest axis a whose query tiles 2 j and
// 2 j + 1 have the same key walk for every j (an even number of them), or -1. Both tiles of a pair
// then visit the same key tiles in the same order (the walk's other axes are the same for both), so
// one cluster of 2 CTAs can share every K / V load. On the grouped rows (stride >= 2 query tiles on
// that axis, e.g. flux-4k-gna's 8-row tiles in 16-row stride groups) every pair qualifies.
inline int cluster_pair_axis(const sm80::Geometry& g, const WorkDecode& d) {
  int inner = 1;  // query tiles of the axes after a: work index stride of axis a's tiles
  for (int a = kRank - 1; a >= 0; inner *= g.q_tiles[a], --a) {
    const int n = g.q_tiles[a];
    if (n < 2 || (n & 1) != 0) continue;
    bool same = true;  // the walk is separable: tiles j, j + 1 of axis a, the other axes' tile 0
    for (int j = 0; same && j < n; j += 2) {
      const sm80::KeyTiles k0 = make_work_context_fast(g, d, int64_t(j) * inner).keys;
      const sm80::KeyTiles k1 = make_work_context_fast(g, d, int64_t(j + 1) * inner).keys;
      same = k0.start[a] == k1.start[a] && k0.count[a] == k1.count[a];
    }
    if (same) return a;
  }
  return -1;
}

// Work index of member `rank` (0, 1) of cluster pair `pair`: with H = pair_half and I = pair_inner,
// pair = (hs H + t) I + lo  ->  (hs 2 H + 2 t + rank) I + lo (the pairs' axis has 2 H query tiles).
template <class Params>
NATTEN_HD int64_t pair_member(const Params& p, int64_t pair, int rank) {
  const int P = int(pair);  // num_work < 2^31 (the fast decode's rule)
  const int hi = window::fast_div(P, p.pair_inner_div);
  const int lo = P - hi * p.pair_inner;
  const int hs = window::fast_div(hi, p.pair_half_div);
  const int t = hi - hs * p.pair_half;
  return int64_t((hs * 2 * p.pair_half + 2 * t + rank) * p.pair_inner + lo);
}

// Work tile at position i of the launch's order: i itself, or with cluster pairs (p.pair_half > 0)
// member i % 2 of pair i / 2 (pair_member). A split tail takes positions split_base.. of this order,
// so with pairs its tiles are exactly those the pairs below split_base / 2 leave (split_base is
// even there); the host's split plan, the chunk items and the combine kernel all map through it.
template <class Params>
NATTEN_HD int64_t ordered_tile(const Params& p, int64_t i) {
  return p.pair_half > 0 ? pair_member(p, i >> 1, int(i & 1)) : i;
}

// Split tail of the forward (params.cuh: num_items, split_base, split_chunks; split_tail.cuh).
// Restricts a work tile's key walk to chunk `chunk` of `chunks`: the slice [chunk n0 / chunks, (chunk + 1) n0 / chunks) of its n0 key
// tiles on axis 0, the walk's slowest axis (key_tile_origin), so the chunk is a contiguous run of the
// walk's steps and the chunks of a tile partition its walk. Masks are unchanged (full_lo / full_hi
// and the row windows are in key coordinates). A chunk can be empty only when chunks > n0, which
// the host never plans (split_plan in fna_forward.cpp caps the chunks at the smallest n0).
NATTEN_HD void restrict_key_walk(const sm80::Geometry& g, sm80::KeyTiles& k, int chunk, int chunks) {
  const int n0 = k.count[0];
  const int j0 = chunk * n0 / chunks, j1 = (chunk + 1) * n0 / chunks;  // 32-bit: chunks <= SMs
  int rest = 1;
  for (int a = 1; a < kRank; ++a) rest *= k.count[a];
  k.start[0] += j0 << g.kv_log2[0];
  k.count[0] = j1 - j0;
  k.total = rest * (j1 - j0);
}

}  // namespace sm90
}  // namespace natten
