// The work order of the SM90 backward dK / dV kernel (DkdvParams::tile_order), computed on the host.
//
// NA windows shift inward at the grid's edges, so the key tiles between w / 2 and w from either end
// are attended by more query tiles than interior ones (1-D, w = 2048, 64-token query tiles: up to
// 48 visits against 34). When the dK / dV work is 1 to 4 rounds of the persistent grid, the kernel
// takes its work tiles longest walk first and mirror-pairs each CTA's first two (bwd_dkdv_kernel.cuh),
// which evens out the rounds (sm90/README.md, "dK / dV work order").
//
// The order is a function of the geometry only, so it is computed here, cached per thread, and
// passed in the kernel's parameter block (uint16 per key tile, at most kDkdvOrderMaxTiles). An
// earlier, unreleased version computed it in one extra block of the visit-table kernel; that block
// took 8-12 us (cold code, divisions, binary searches) and the dK / dV kernel's first tiles waited
// for it (benchmarks/NOTES.md, nineteenth session).
//
// A key tile's query-tile visits are separable: make_query_tiles_for_key's total is the product
// over the axes of counts that depend on that axis's tile index only (make_key_tile's fields of
// axis a come from w.tile[a] and w.group[a] alone). So sum_a tiles[a] one-axis evaluations give
// every tile's count (1-D: 256 at 1d-32k), not prod_a tiles[a] full ones.
//
// Host only; compiled in every build (CPU test: tests/sm90_dkdv_order_test.cpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "sm80/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

// Most key tiles per (batch, kv head) that are ordered; the order is a uint16 per tile in the
// parameter block (2 KB).
constexpr int kDkdvOrderMaxTiles = 1024;

// Key tiles per (batch, kv head) to order, or 0 for the natural order: every (batch, kv head) has
// 2..kDkdvOrderMaxTiles key tiles (dilation 1: one group per axis), and the schedule is 1 to 4
// rounds of work tiles on `grid` CTAs (more than one tile per CTA, and few enough rounds that
// the last is a large share of the time).
inline int dkdv_order_tiles(const sm80::KvGeometry& kvg, int64_t grid) {
  int64_t tiles = 1;
  for (int a = 0; a < sm80::kRank; ++a) {
    if (kvg.groups[a] != 1) return 0;
    tiles *= int64_t(kvg.splits[a]);
  }
  if (tiles < 2 || tiles > kDkdvOrderMaxTiles) return 0;
  return kvg.num_work > grid && kvg.num_work <= 4 * grid ? int(tiles) : 0;
}

// Query-tile visits of each key tile along axis a (tile index t in [0, kvg.splits[a])), with the
// other axes at tile 0; 0 for an empty tile. counts must hold kvg.splits[a] entries.
inline void dkdv_axis_visits(const sm80::Geometry& g, const sm80::KvGeometry& kvg, int a, int* counts) {
  sm80::KvWorkTile w;
  w.batch = 0;
  w.kv_head = 0;
  for (int b = 0; b < sm80::kRank; ++b) {
    w.group[b] = 0;
    w.tile[b] = 0;
  }
  for (int t = 0; t < kvg.splits[a]; ++t) {
    w.tile[a] = t;
    sm80::KeyTile kt;
    sm80::make_key_tile(g, w, kt);
    const sm80::QueryTilesForKey r = sm80::make_query_tiles_for_key(g, kt);
    counts[t] = kt.k0[a] < kt.n_kv[a] ? r.count[a] : 0;
  }
}

// The order of the n = dkdv_order_tiles(...) key tiles of one (batch, kv head): order[rank] = tile
// (the index decode_kv_work gives its key tile, last axis fastest), more visits first, ties in
// index order.
inline void dkdv_work_order(const sm80::Geometry& g, const sm80::KvGeometry& kvg, int n, uint16_t* order) {
  int counts[sm80::kRank][kDkdvOrderMaxTiles];
  for (int a = 0; a < sm80::kRank; ++a) dkdv_axis_visits(g, kvg, a, counts[a]);
  int64_t visits[kDkdvOrderMaxTiles];
  int idx[kDkdvOrderMaxTiles];
  for (int s = 0; s < n; ++s) {
    int r = s;
    int64_t v = 1;
    for (int a = sm80::kRank - 1; a >= 0; --a) {
      v *= counts[a][r % kvg.splits[a]];
      r /= kvg.splits[a];
    }
    visits[s] = v;
    idx[s] = s;
  }
  std::stable_sort(idx, idx + n, [&](int x, int y) { return visits[x] > visits[y]; });
  for (int s = 0; s < n; ++s) order[s] = uint16_t(idx[s]);
}

// dkdv_work_order through a small per-thread cache keyed by the geometry fields it reads (a training
// loop repeats a few shapes). On the 2-core development machine: 40 us to compute the order of
// 1d-32k's 256 key tiles, 0.035 us for a cache hit.
inline void dkdv_work_order_cached(const sm80::Geometry& g, const sm80::KvGeometry& kvg, int n, uint16_t* order) {
  struct Key {
    int geo[13 * sm80::kRank];  // Geometry's int arrays, extent .. groups
    int splits[sm80::kRank];
    int n;
  };
  static_assert(offsetof(sm80::Geometry, groups) + sizeof(sm80::Geometry::groups) - offsetof(sm80::Geometry, extent) ==
                    sizeof(Key::geo),
                "Geometry's int arrays are contiguous");
  struct Entry {
    bool valid = false;
    Key key;
    uint16_t order[kDkdvOrderMaxTiles];
  };
  constexpr int kEntries = 8;
  thread_local Entry cache[kEntries];
  thread_local int next = 0;
  Key key;
  std::memset(&key, 0, sizeof(key));
  std::memcpy(key.geo, g.extent, sizeof(key.geo));
  std::memcpy(key.splits, kvg.splits, sizeof(key.splits));
  key.n = n;
  for (Entry& e : cache) {
    if (e.valid && std::memcmp(&e.key, &key, sizeof(key)) == 0) {
      std::memcpy(order, e.order, sizeof(uint16_t) * size_t(n));
      return;
    }
  }
  Entry& e = cache[next];
  next = (next + 1) % kEntries;
  dkdv_work_order(g, kvg, n, e.order);
  e.key = key;
  e.valid = true;
  std::memcpy(order, e.order, sizeof(uint16_t) * size_t(n));
}

}  // namespace sm90
}  // namespace natten
