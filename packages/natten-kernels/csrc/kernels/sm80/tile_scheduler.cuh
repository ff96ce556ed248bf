// Tile scheduler and tile geometry of the SM80 fused neighborhood-attention forward kernel.
//
// Work decomposition: one work item = (batch, head, dilation group per axis, query tile per axis).
// A query tile is a box of 2^q_log2[0] x 2^q_log2[1] x 2^q_log2[2] tokens of ONE dilation group
// (group-local coordinates: token x = g + d * x'), addressed in place through strides. Its rows are
// numbered with the last axis fastest. Key tiles are boxes of 2^kv_log2[a] tokens, iterated over the
// box [window start of the first query, window end of the last query] per axis; their columns are
// numbered the same way.
//
// Slabs of a larger grid: the query tensor may hold the slab of the global grid (extent[]) that
// starts at q_origin[] (q_extent[] tokens per axis) and the key/value tensors the slab at
// kv_origin[] (kv_extent[] tokens). Work items, query tiles and tensor addressing use the query
// slab's own dilation groups and coordinates; windows are computed on the global grid
// (global group coordinate = slab group coordinate + q_shift) and key coordinates are those of the
// key slab's group holding the same global group (key slab coordinate = global - kv_shift). The
// whole grid is the special case origin 0, q_extent = kv_extent = extent (all shifts 0).
//
// Plain integer C++ (host + device) so that the CPU test (tests/window_math_test.cpp) replays
// exactly the decisions the kernel makes.
#pragma once

#include <cstdint>

#include "natten/window.cuh"

namespace natten {
namespace sm80 {

constexpr int kRank = 3;  // kernels always work in 3-D; missing axes have extent/kernel 1

struct Geometry {
  int extent[kRank];    // tokens per axis of the global grid (the windows live on it)
  int q_extent[kRank];  // query slab: tokens per axis (= extent without a region)
  int kv_extent[kRank]; // key/value slab: tokens per axis (= extent without a region)
  int q_origin[kRank];  // global coordinate of the query slab's first token (0 without a region)
  int kv_origin[kRank]; // global coordinate of the key/value slab's first token (0 without a region)
  int kernel[kRank];
  int stride[kRank];
  int dilation[kRank];
  int causal[kRank];    // 0 / 1
  int q_log2[kRank];    // query tile shape, log2 per axis
  int kv_log2[kRank];   // key tile shape, log2 per axis
  int q_tiles[kRank];   // query tiles per axis in the query slab's largest (first) dilation group
  int groups[kRank];    // non-empty dilation groups of the query slab: min(dilation, q_extent)
  int64_t batch;
  int64_t heads;
  int64_t num_work;     // batch * heads * prod(groups) * prod(q_tiles)
};

// Fills q_tiles / groups / num_work from the other fields.
NATTEN_HD void geometry_finalize(Geometry& g) {
  int64_t n = g.batch * g.heads;
  for (int a = 0; a < kRank; ++a) {
    const int ng0 = window::group_extent(g.q_extent[a], g.dilation[a], 0);
    const int qt = 1 << g.q_log2[a];
    g.q_tiles[a] = (ng0 + qt - 1) / qt;
    g.groups[a] = window::imin(g.dilation[a], g.q_extent[a]);  // = dilation on the whole grid
    n *= int64_t(g.groups[a]) * int64_t(g.q_tiles[a]);
  }
  g.num_work = n;
}

struct WorkTile {
  int64_t batch;
  int64_t head;
  int group[kRank];  // dilation group of the query slab (its token x lies in group x mod d)
  int tile[kRank];
};

// Linear work index -> work tile. Query tiles vary fastest (neighbouring CTAs share keys in L2),
// then dilation groups, then heads, then batch.
NATTEN_HD WorkTile decode_work(const Geometry& g, int64_t idx) {
  WorkTile w;
  if (g.num_work <= int64_t(0xffffffffu)) {
    // The same decode in 32-bit arithmetic, skipping extents of 1 (a 64-bit division costs several
    // times a 32-bit one; small-tile kernels decode once per few hundred MMAs).
    uint32_t i = uint32_t(idx);
    for (int a = kRank - 1; a >= 0; --a) {
      const uint32_t n = uint32_t(g.q_tiles[a]);
      w.tile[a] = 0;
      if (n != 1u) {
        w.tile[a] = int(i % n);
        i /= n;
      }
    }
    for (int a = kRank - 1; a >= 0; --a) {
      const uint32_t n = uint32_t(g.groups[a]);
      w.group[a] = 0;
      if (n != 1u) {
        w.group[a] = int(i % n);
        i /= n;
      }
    }
    const uint32_t h = uint32_t(g.heads);
    w.head = int64_t(i % h);
    w.batch = int64_t(i / h);
    return w;
  }
  for (int a = kRank - 1; a >= 0; --a) {
    w.tile[a] = int(idx % g.q_tiles[a]);
    idx /= g.q_tiles[a];
  }
  for (int a = kRank - 1; a >= 0; --a) {
    w.group[a] = int(idx % g.groups[a]);
    idx /= g.groups[a];
  }
  w.head = idx % g.heads;
  w.batch = idx / g.heads;
  return w;
}

// Box shapes of 2^total tokens over the first `rank` axes: every composition of `total` into per-axis
// log2 extents (axes >= rank get 0), first axis outermost (the tile choosers' and listings' order).
// Writes at most `capacity`; returns the total count.
NATTEN_HD int log2_box_shapes(int rank, int total, int out[][kRank], int capacity) {
  int count = 0;
  for (int a0 = 0; a0 <= total; ++a0) {
    for (int a1 = 0; a1 <= total - a0; ++a1) {
      const int l[kRank] = {a0, a1, total - a0 - a1};
      bool ok = true;
      for (int a = 0; a < kRank; ++a) ok = ok && (a < rank || l[a] == 0);
      if (!ok) continue;
      if (count < capacity)
        for (int a = 0; a < kRank; ++a) out[count][a] = l[a];
      ++count;
    }
  }
  return count;
}

// Row / column index inside a tile box -> per-axis offsets (last axis fastest).
NATTEN_HD void tile_coord(int idx, const int log2[kRank], int c[kRank]) {
  c[2] = idx & ((1 << log2[2]) - 1);
  c[1] = (idx >> log2[2]) & ((1 << log2[1]) - 1);
  c[0] = idx >> (log2[1] + log2[2]);
}

// Coordinates: "slab" coordinates are group-local coordinates inside the query slab's group
// (query rows) or the key slab's group (key columns); "global" ones are group-local coordinates of
// the global grid's group (window math). Without a region both are the same.
struct QueryTile {
  window::Axis axis[kRank];  // global group's axis parameters (n = global group extent)
  int q0[kRank];             // first query of the tile (query slab coordinates)
  int q_last[kRank];         // last REAL query of the tile (clamped to the query slab's group)
  int n_q[kRank];            // tokens of the query slab's group
  int n_kv[kRank];           // tokens of the key slab's group holding the same global group
  int kv_group[kRank];       // that key slab group (its tokens x satisfy x mod d == kv_group)
  int q_shift[kRank];        // global coordinate = query slab coordinate + q_shift
  int kv_shift[kRank];       // key slab coordinate = global coordinate - kv_shift
};

// Returns false when the tile holds no token (tiles past the end of a smaller dilation group).
NATTEN_HD bool make_query_tile(const Geometry& g, const WorkTile& w, QueryTile& q) {
  bool nonempty = true;
  for (int a = 0; a < kRank; ++a) {
    const int d = g.dilation[a];
    const int first = g.q_origin[a] + w.group[a];  // global token of the slab group's first token
    // (d == 1: the same values without the divisions, which dominate this function's cost)
    const int gg = d == 1 ? 0 : first % d;         // global dilation group
    const int kg = d == 1 ? 0 : (gg + d - g.kv_origin[a] % d) % d;
    const int ng = window::group_extent(g.extent[a], d, gg);
    const int nq = window::group_extent(g.q_extent[a], d, w.group[a]);
    q.axis[a] = window::make_axis(ng, g.kernel[a], g.stride[a], g.causal[a] != 0);
    q.q0[a] = w.tile[a] << g.q_log2[a];
    q.q_last[a] = window::imin(q.q0[a] + (1 << g.q_log2[a]) - 1, nq - 1);
    q.n_q[a] = nq;
    q.n_kv[a] = window::group_extent(g.kv_extent[a], d, kg);
    q.kv_group[a] = kg;
    q.q_shift[a] = d == 1 ? first : first / d;
    q.kv_shift[a] = d == 1 ? g.kv_origin[a] : (g.kv_origin[a] + kg) / d;
    nonempty = nonempty && (q.q0[a] < nq);
  }
  return nonempty;
}

// Is the query row `r` of the tile a real token?
NATTEN_HD bool query_row_valid(const Geometry& g, const QueryTile& q, int r) {
  int c[kRank];
  tile_coord(r, g.q_log2, c);
  bool ok = true;
  for (int a = 0; a < kRank; ++a) ok = ok && (q.q0[a] + c[a] < q.n_q[a]);
  return ok;
}

// Per-row window used by the masked path, in key slab coordinates: start and (end - start) per
// axis. Padding rows (outside the group) take the window of the last real query, so no row is
// ever empty.
NATTEN_HD void query_row_window(const Geometry& g, const QueryTile& q, int r, int start[kRank],
                                int len[kRank]) {
  int c[kRank];
  tile_coord(r, g.q_log2, c);
  for (int a = 0; a < kRank; ++a) {
    int s, e;
    window::window(window::imin(q.q0[a] + c[a], q.n_q[a] - 1) + q.q_shift[a], q.axis[a], s, e);
    start[a] = s - q.kv_shift[a];
    len[a] = e - s;
  }
}

// Element mask of the masked path: key at group-local coordinates key[] vs. a row window.
NATTEN_HD bool row_attends(const int start[kRank], const int len[kRank], const int key[kRank]) {
  bool ok = true;
  for (int a = 0; a < kRank; ++a)
    ok = ok && (unsigned(key[a] - start[a]) <= unsigned(len[a]));
  return ok;
}

// Masked path, word form: bit c of the result is set iff key column c (numbered by tile_coord
// with kv_log2; 2^(sum kv_log2) <= 64 columns) passes row_attends(rel_start, len, .), where
// rel_start = row window start - key tile origin. Built per axis as a run of set bits repeated
// with the axis period, ANDed over axes. Bits of columns >= 2^(sum kv_log2) are unspecified.
NATTEN_HD uint64_t bits_below(int n) {  // 0 <= n <= 64
  return n >= 64 ? ~uint64_t(0) : ((uint64_t(1) << n) - 1);
}

// Bits at every multiple of 2^period_log2 (period_log2 <= 6).
NATTEN_HD uint64_t repeat_pattern(int period_log2) {
  uint64_t rep = 1;
  for (int s = 1 << period_log2; s < 64; s *= 2) rep |= rep << s;
  return rep;
}

NATTEN_HD uint64_t key_tile_row_mask(const int rel_start[kRank], const int len[kRank],
                                     const int kv_log2[kRank], const uint64_t rep[kRank]) {
  uint64_t m = ~uint64_t(0);
  int inner = 0;  // log2 of the column step of axis a
  for (int a = kRank - 1; a >= 0; --a) {
    const int lo = window::imax(rel_start[a], 0);
    const int hi = window::imin(rel_start[a] + len[a], (1 << kv_log2[a]) - 1);
    const uint64_t run = lo > hi ? uint64_t(0) : (bits_below((hi + 1) << inner) & ~bits_below(lo << inner));
    m &= run * rep[a];  // run fits in one period: the product replicates it without carries
    inner += kv_log2[a];
  }
  return m;
}

// rep[] argument of key_tile_row_mask for a key tile shape (per CTA constant).
NATTEN_HD void key_tile_mask_patterns(const int kv_log2[kRank], uint64_t rep[kRank]) {
  int period = 0;
  for (int a = kRank - 1; a >= 0; --a) {
    period += kv_log2[a];
    rep[a] = repeat_pattern(period);
  }
}

struct KeyTiles {
  int start[kRank];    // first key of the key box (key slab coordinates)
  int count[kRank];    // key tiles per axis
  int full_lo[kRank];  // key tile [kb, kb + kt - 1] needs no mask iff full_lo <= kb and
  int full_hi[kRank];  //   kb + kt - 1 <= full_hi on every axis
  int total;           // prod(count)
};

NATTEN_HD KeyTiles make_key_tiles(const Geometry& g, const QueryTile& q) {
  KeyTiles k;
  k.total = 1;
  for (int a = 0; a < kRank; ++a) {
    const int q0 = q.q0[a] + q.q_shift[a], q_last = q.q_last[a] + q.q_shift[a];  // global
    int ks, ke, lo, hi;
    window::tile_key_range(q0, q_last, q.axis[a], ks, ke);
    window::tile_full_range(q0, q_last, q.axis[a], lo, hi);
    const int kt = 1 << g.kv_log2[a];
    k.start[a] = ks - q.kv_shift[a];
    k.count[a] = (ke - ks + kt) >> g.kv_log2[a];  // ceil((ke - ks + 1) / kt), >= 1
    k.full_lo[a] = lo - q.kv_shift[a];
    k.full_hi[a] = hi - q.kv_shift[a];
    k.total *= k.count[a];
  }
  return k;
}

// Origin (first key per axis) of key tile t, 0 <= t < total (last axis fastest).
NATTEN_HD void key_tile_origin(const Geometry& g, const KeyTiles& k, int t, int kb[kRank]) {
  for (int a = kRank - 1; a >= 0; --a) {
    kb[a] = k.start[a] + ((t % k.count[a]) << g.kv_log2[a]);
    t /= k.count[a];
  }
}

// Odometer step: origin of tile t -> origin of tile t + 1 (same order as key_tile_origin).
// Branch-free (selects, non-short-circuit `&`): the SM80 forward and the f32 kernels keep KeyTiles
// in shared memory, and a branch per axis made each step a chain of shared-memory read -> compare ->
// branch (ncu: with key_tile_full and box_inside, most of the dQ kernel's ~28% of stall samples
// outside its GEMMs, 1d-32k-s256); this way every field is read up front.
NATTEN_HD void key_tile_advance(const Geometry& g, const KeyTiles& k, int kb[kRank]) {
  bool carry = true;  // axis a steps (every lower axis wrapped)
  for (int a = kRank - 1; a >= 0; --a) {
    const int next = kb[a] + (carry ? 1 << g.kv_log2[a] : 0);
    const bool wrap = carry & (a > 0) & (next >= k.start[a] + (k.count[a] << g.kv_log2[a]));
    kb[a] = wrap ? k.start[a] : next;
    carry = wrap;
  }
}

// Rotated key walks. The key tiles of a work tile's box in key_tile_origin's odometer order (last axis
// fastest), except that with `rotate` axis 0 starts at the box's tile whose key-tile index
// start[0] / kt + j is a multiple of count[0] and wraps round. Then every work tile whose box has n
// tiles on axis 0 visits key tile X of that axis at step X mod n, so CTAs that start their tiles
// together (a wave, or a round of the Hopper kernels' persistent grid) read the same few K / V tiles
// at each step, instead of each the first tile of its own box: on 1d-32k-s256 with 128-token tiles
// (boxes of 16 tiles, shifted by 2 per stride group) the first steps of a round read 9 distinct key
// tiles instead of 63, so the start of a launch after the L2 was flushed no longer reads most of K
// and V from DRAM at once (benchmarks/NOTES.md, twenty-second session). Online softmax is
// order-free: outputs differ from the plain walk by rounding only. Used by the Hopper forward and
// dQ kernels, whose host decides per launch (sm90/fna_forward.cpp: rotate_walks, NATTEN_HOPPER_WALK);
// the SM80 forward measured no gain from it (its slower key steps do not outrun DRAM at the start).
NATTEN_HD int walk_rotation(const Geometry& g, const KeyTiles& k) {
  const int n = k.count[0];
  int m = (k.start[0] >> g.kv_log2[0]) % n;  // arithmetic shift: floor, also for a negative start
  if (m < 0) m += n;
  return m == 0 ? 0 : n - m;
}

NATTEN_HD void walk_origin(const Geometry& g, const KeyTiles& k, int rotate, int kb[kRank]) {
  for (int a = 0; a < kRank; ++a) kb[a] = k.start[a];
  if (rotate != 0) kb[0] += walk_rotation(g, k) << g.kv_log2[0];
}

// Odometer step of walk_origin's order: like key_tile_advance, but axis 0 wraps too (after the
// walk's last tile kb is back at its first, which no caller reads).
NATTEN_HD void walk_advance(const Geometry& g, const KeyTiles& k, int kb[kRank]) {
  for (int a = kRank - 1; a >= 0; --a) {
    kb[a] += 1 << g.kv_log2[a];
    if (kb[a] < k.start[a] + (k.count[a] << g.kv_log2[a])) return;
    kb[a] = k.start[a];
  }
}

// True when every key of the tile is attended by every query of the query tile (no mask needed).
// Such a tile never contains keys outside the key slab's group (keys attended by a query lie in it).
// Branch-free (`&`), as key_tile_advance.
NATTEN_HD bool key_tile_full(const Geometry& g, const KeyTiles& k, const int kb[kRank]) {
  bool full = true;
  for (int a = 0; a < kRank; ++a)
    full &= (kb[a] >= k.full_lo[a]) & (kb[a] + (1 << g.kv_log2[a]) - 1 <= k.full_hi[a]);
  return full;
}

// Is key column `c` of the key tile at kb[] a real token (inside the key slab's group)?
NATTEN_HD bool key_col_valid(const Geometry& g, const QueryTile& q, const int kb[kRank], int c) {
  int o[kRank];
  tile_coord(c, g.kv_log2, o);
  bool ok = true;
  for (int a = 0; a < kRank; ++a) ok = ok && (kb[a] + o[a] < q.n_kv[a]);
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Backward, key-parallel (dK / dV): one work item = (batch, kv head, dilation group per axis, key
// tile per axis). Key tiles here lie on a fixed grid of 2^kv_log2[a] tokens per axis of the group;
// each visits the query tiles (grid of 2^q_log2[a], as in the forward) holding at least one query
// that attends one of its keys: per axis the query run of window::key_run_query_range, rounded out
// to query tiles. Attendance is a product over axes, so every visited (query tile, key tile) pair
// holds at least one attended pair, and every attended pair is visited exactly once.
//
// Slabs: work items cover the KEY slab's dilation groups (min(dilation, kv_extent) per axis) and
// its key tiles (key slab coordinates). Per axis the key tile knows its global group (window
// math), the shift from key slab to global coordinates (kv_shift) and the query slab's group with
// the same global group (q_group, n_q tokens, possibly 0) plus its shift (q_shift). The query run
// of the key tile is computed on the global group, then clipped to the query slab's group and
// moved into query slab coordinates; only queries of the query slab contribute (the gradient of
// this slab's forward). Keys that no slab query attends get an empty walk and are written as 0.
// The whole grid is the case with all shifts 0 and q_group = the key tile's group.
// ---------------------------------------------------------------------------------------------

struct KvGeometry {
  int kv_tiles[kRank];  // key tiles per axis in the key slab's largest (first) dilation group
  int splits[kRank];    // CTAs per axis sharing those key tiles (1 <= splits <= kv_tiles; = kv_tiles:
                        // one CTA per key tile, the default)
  int groups[kRank];    // non-empty dilation groups of the key slab: min(dilation, kv_extent)
  int64_t heads_kv;
  int64_t num_work;     // batch * heads_kv * prod(groups) * prod(splits)
};

// splits: CTAs per axis (backward_kv_splits); nullptr or entries <= 0 or > kv_tiles mean kv_tiles.
NATTEN_HD void kv_geometry_finalize(const Geometry& g, int64_t heads_kv, KvGeometry& kg,
                                    const int* splits = nullptr) {
  int64_t n = g.batch * heads_kv;
  for (int a = 0; a < kRank; ++a) {
    const int ng0 = window::group_extent(g.kv_extent[a], g.dilation[a], 0);
    const int kt = 1 << g.kv_log2[a];
    kg.kv_tiles[a] = (ng0 + kt - 1) / kt;
    const int s = splits != nullptr ? splits[a] : 0;
    kg.splits[a] = (s >= 1 && s <= kg.kv_tiles[a]) ? s : kg.kv_tiles[a];
    kg.groups[a] = window::imin(g.dilation[a], g.kv_extent[a]);  // = dilation on the whole grid
    n *= int64_t(kg.groups[a]) * int64_t(kg.splits[a]);
  }
  kg.heads_kv = heads_kv;
  kg.num_work = n;
}

struct KvWorkTile {
  int64_t batch;
  int64_t kv_head;
  int group[kRank];  // dilation group of the key slab (its token x lies in group x mod d)
  int tile[kRank];   // key tile per axis (decode_kv_work: the split's first key tile)
};

// Linear index -> key-parallel work item (splits fastest, then groups, kv heads, batch). The item
// owns the key tiles tile[a] = split[a] + splits[a] * j[a] (kv_split_tile below).
NATTEN_HD KvWorkTile decode_kv_work(const Geometry& g, const KvGeometry& kg, int64_t idx) {
  (void)g;
  KvWorkTile w;
  for (int a = kRank - 1; a >= 0; --a) {
    w.tile[a] = int(idx % kg.splits[a]);
    idx /= kg.splits[a];
  }
  for (int a = kRank - 1; a >= 0; --a) {
    w.group[a] = int(idx % kg.groups[a]);
    idx /= kg.groups[a];
  }
  w.kv_head = idx % kg.heads_kv;
  w.batch = idx / kg.heads_kv;
  return w;
}

// Number of key tiles a work item from decode_kv_work owns (1 with the default splits).
NATTEN_HD int kv_split_tiles(const KvGeometry& kg, const KvWorkTile& w) {
  int n = 1;
  for (int a = 0; a < kRank; ++a) n *= (kg.kv_tiles[a] - w.tile[a] + kg.splits[a] - 1) / kg.splits[a];
  return n;
}

// Its j-th key tile (0 <= j < kv_split_tiles; last axis fastest): the work item with tile[] set.
NATTEN_HD KvWorkTile kv_split_tile(const KvGeometry& kg, const KvWorkTile& w, int j) {
  KvWorkTile t = w;
  for (int a = kRank - 1; a >= 0; --a) {
    const int n = (kg.kv_tiles[a] - w.tile[a] + kg.splits[a] - 1) / kg.splits[a];
    t.tile[a] = w.tile[a] + kg.splits[a] * (j % n);
    j /= n;
  }
  return t;
}

struct KeyTile {
  window::Axis axis[kRank];  // global group's axis parameters (n = global group extent)
  int k0[kRank];             // first key of the tile (key slab coordinates)
  int k_last[kRank];         // last REAL key of the tile (clamped to the key slab's group)
  int n_kv[kRank];           // tokens of the key slab's group
  int n_q[kRank];            // tokens of the query slab's group holding the same global group (may be 0)
  int q_group[kRank];        // that query slab group (its tokens x satisfy x mod d == q_group)
  int q_shift[kRank];        // global coordinate = query slab coordinate + q_shift
  int kv_shift[kRank];       // global coordinate = key slab coordinate + kv_shift
};

// Returns false when the tile holds no token (tiles past the end of a smaller dilation group).
NATTEN_HD bool make_key_tile(const Geometry& g, const KvWorkTile& w, KeyTile& k) {
  bool nonempty = true;
  for (int a = 0; a < kRank; ++a) {
    const int d = g.dilation[a];
    const int first = g.kv_origin[a] + w.group[a];  // global token of the key slab group's first token
    const int gg = first % d;                       // global dilation group
    const int qg = (gg + d - g.q_origin[a] % d) % d;
    const int ng = window::group_extent(g.extent[a], d, gg);
    const int nk = window::group_extent(g.kv_extent[a], d, w.group[a]);
    k.axis[a] = window::make_axis(ng, g.kernel[a], g.stride[a], g.causal[a] != 0);
    k.k0[a] = w.tile[a] << g.kv_log2[a];
    k.k_last[a] = window::imin(k.k0[a] + (1 << g.kv_log2[a]) - 1, nk - 1);
    k.n_kv[a] = nk;
    k.n_q[a] = window::group_extent(g.q_extent[a], d, qg);
    k.q_group[a] = qg;
    k.q_shift[a] = (g.q_origin[a] + qg) / d;
    k.kv_shift[a] = first / d;
    nonempty = nonempty && (k.k0[a] < nk);
  }
  return nonempty;
}

// Query tiles (tile indices, grid of 2^q_log2 over the query slab's group) a key tile visits:
// first[a] .. first[a]+count[a]-1.
struct QueryTilesForKey {
  int first[kRank];
  int count[kRank];
  int total;  // prod(count); 0 when some axis has no attending query in the query slab
};

// From the query run [run_lo[a], run_hi[a]] (global group coordinates) of the key tile's keys on
// each axis (window::key_run_query_range of k0 .. k_last).
NATTEN_HD QueryTilesForKey query_tiles_from_runs(const Geometry& g, const KeyTile& k, const int run_lo[kRank],
                                                 const int run_hi[kRank]) {
  QueryTilesForKey r;
  r.total = 1;
  for (int a = 0; a < kRank; ++a) {
    int lo = run_lo[a], hi = run_hi[a];
    lo = window::imax(lo - k.q_shift[a], 0);           // global -> query slab, clipped to its group
    hi = window::imin(hi - k.q_shift[a], k.n_q[a] - 1);
    if (lo > hi) {
      r.first[a] = 0;
      r.count[a] = 0;
    } else {
      r.first[a] = lo >> g.q_log2[a];
      r.count[a] = (hi >> g.q_log2[a]) - r.first[a] + 1;
    }
    r.total *= r.count[a];
  }
  return r;
}

NATTEN_HD QueryTilesForKey make_query_tiles_for_key(const Geometry& g, const KeyTile& k) {
  int lo[kRank], hi[kRank];
  for (int a = 0; a < kRank; ++a)
    window::key_run_query_range(k.k0[a] + k.kv_shift[a], k.k_last[a] + k.kv_shift[a], k.axis[a], lo[a], hi[a]);
  return query_tiles_from_runs(g, k, lo, hi);
}

// Visited (query, key) pairs on one axis of the key-parallel walk (make_key_tile /
// make_query_tiles_for_key): key tiles of 2^kl tokens on an aligned grid over each dilation group of
// the key slab, each visiting the aligned query tiles of 2^ql tokens that hold a query attending one
// of its keys; padding tokens of partial tiles count. Separable: the pairs of a tiling are the
// product over the axes. Unlike the query walk's count (key tiles start at the window of the query
// tile's first query), the key grid is fixed, so a ragged or window-straddling key tile costs whole
// query tiles. Host only (the tile chooser); O(d + nkv / 2^kl).
inline double key_walk_axis_pairs(int n, int K, int s, int d, bool causal, int nq, int q0, int nkv, int k0, int ql,
                                  int kl) {
  const int kt = 1 << kl;
  double total = 0.0;
  for (int gk = 0; gk < d; ++gk) {  // key slab group (KvWorkTile::group)
    const int nk = window::group_extent(nkv, d, gk);
    if (nk <= 0) continue;
    const int first = k0 + gk;  // global token of the group's first key
    const int gg = first % d;
    const int qg = (gg + d - q0 % d) % d;
    const int nqg = window::group_extent(nq, d, qg);
    if (nqg <= 0) continue;
    const window::Axis a = window::make_axis(window::group_extent(n, d, gg), K, s, causal);
    const int q_shift = (q0 + qg) / d, kv_shift = first / d;
    for (int kb = 0; kb < nk; kb += kt) {
      int lo, hi;
      window::key_run_query_range(kb + kv_shift, window::imin(kb + kt - 1, nk - 1) + kv_shift, a, lo, hi);
      lo = window::imax(lo - q_shift, 0);
      hi = window::imin(hi - q_shift, nqg - 1);
      if (lo <= hi) total += double((hi >> ql) - (lo >> ql) + 1) * double(1 << ql) * double(kt);
    }
  }
  return total;
}

// Query tile indices of visit t, 0 <= t < total (last axis fastest).
NATTEN_HD void query_tile_of_visit(const QueryTilesForKey& r, int t, int tile[kRank]) {
  for (int a = kRank - 1; a >= 0; --a) {
    tile[a] = r.first[a] + t % r.count[a];
    t /= r.count[a];
  }
}

// Query tile (tile indices of the query slab's group) of a key tile -> QueryTile (same global axes
// as the key tile; kv_group is not used by the key-parallel walk and is left 0).
NATTEN_HD void query_tile_at(const Geometry& g, const KeyTile& k, const int tile[kRank], QueryTile& q) {
  for (int a = 0; a < kRank; ++a) {
    q.axis[a] = k.axis[a];
    q.q0[a] = tile[a] << g.q_log2[a];
    q.q_last[a] = window::imin(q.q0[a] + (1 << g.q_log2[a]) - 1, k.n_q[a] - 1);
    q.n_q[a] = k.n_q[a];
    q.n_kv[a] = k.n_kv[a];
    q.kv_group[a] = 0;
    q.q_shift[a] = k.q_shift[a];
    q.kv_shift[a] = k.kv_shift[a];
  }
}

// Window of query column c (query slab coordinates q.q0 + offset) in KEY slab coordinates: start
// and (end - start) per axis. Padding columns (outside the query slab's group) take the window of
// the last real query, like the forward's padding rows (their P is 0 anyway: lse = +inf).
NATTEN_HD void query_col_window(const Geometry& g, const QueryTile& q, int c, int start[kRank], int len[kRank]) {
  query_row_window(g, q, c, start, len);
}

// True when every REAL query of q attends every key of the key tile at origin kb[] (key slab
// coordinates; no mask needed). Computed on the global group. Such a tile holds no key outside the
// key slab's group: those keys would be attended, and the key slab holds every attended key.
NATTEN_HD bool pair_full(const Geometry& g, const QueryTile& q, const int kb[kRank]) {
  bool full = true;
  for (int a = 0; a < kRank; ++a) {
    int lo, hi;
    window::tile_full_range(q.q0[a] + q.q_shift[a], q.q_last[a] + q.q_shift[a], q.axis[a], lo, hi);
    const int k0 = kb[a] + q.kv_shift[a];
    full = full && k0 >= lo && k0 + (1 << g.kv_log2[a]) - 1 <= hi;
  }
  return full;
}

// pair_full split per axis for the key-parallel walk: visit tile j on axis a (query slab tile
// index qs.first[a] + j). A: the last query's window starts at or before the key tile; B: the
// first query's window ends at or after its last key; pair_full == AND over axes of (A && B).
// Window starts and ends are non-decreasing in the query, so A holds on a prefix of the visit
// tiles and B on a suffix: the mask-free visit tiles of an axis are the interval
// [#tiles failing B, #tiles passing A - 1] (the dK / dV kernel counts them once per CTA;
// tests/bwd_tile_math_test.cpp checks the interval against pair_full on every visit).
NATTEN_HD void visit_full_halves(const Geometry& g, const KeyTile& k, const QueryTilesForKey& qs, int a, int j,
                                 bool& A, bool& B) {
  const int q0 = (qs.first[a] + j) << g.q_log2[a];
  const int q_last = window::imin(q0 + (1 << g.q_log2[a]) - 1, k.n_q[a] - 1);
  const int k0 = k.k0[a] + k.kv_shift[a];
  A = window::window_start(q_last + k.q_shift[a], k.axis[a]) <= k0;
  B = window::window_end(q0 + k.q_shift[a], k.axis[a]) >= k0 + (1 << g.kv_log2[a]) - 1;
}

}  // namespace sm80
}  // namespace natten
