// Work decomposition of the SM90 forward: the SM80 kernel's (csrc/kernels/sm80/tile_scheduler.cuh)
// geometry, query tiles and key-tile walk with 128-token boxes. Work tile = (batch, head, query tile
// per axis; dilation is 1 here so there is one group); a CTA runs the work tiles of RotatedWork
// (persistent: one CTA per SM). Producer and consumers derive the same
// work tiles and walks independently from the index, so nothing about them crosses shared memory.
#pragma once

#include "sm90/params.cuh"

namespace natten {
namespace sm90 {

struct WorkContext {
  sm80::WorkTile work;
  sm80::QueryTile qt;
  sm80::KeyTiles keys;
  int64_t kv_head;
};

// reverse_axes (the forward's dynamic order on causal axes; 0 = the plain order): bit a set = query
// tiles of axis a in descending order, so the longest key walks come first; and, when batch * heads
// is even, the tiles of two consecutive (batch, head) pairs interleaved (index 2 (g T + t) + j =
// tile t of pair 2 g + j, T query tiles per pair): a dynamic schedule then takes tiles of nearly
// equal walks in turn across two heads, and the lightest ones last. (A model of the greedy dynamic
// assignment on dense causal attention with 8 heads, 8192 tokens in 128-token tiles, 132 CTAs: the
// makespan is 1.23x the balanced one with one head after the other, 1.00x with pairs interleaved;
// benchmarks/NOTES.md.) Two heads at a time keep the keys the grid reads within L2.
template <class Params>  // FnaSm90Params or the backward's DqParams (geo, heads_per_kv)
NATTEN_HD WorkContext make_work_context(const Params& p, int64_t idx, int reverse_axes = 0) {
  WorkContext c;
  if (reverse_axes != 0 && ((p.geo.batch * p.geo.heads) & 1) == 0) {
    int64_t T = 1;  // work tiles per (batch, head)
    for (int a = 0; a < kRank; ++a) T *= int64_t(p.geo.q_tiles[a]) * p.geo.groups[a];
    const int64_t rest = idx >> 1, g = rest / T;
    idx = ((g << 1) + (idx & 1)) * T + (rest - g * T);
  }
  c.work = sm80::decode_work(p.geo, idx);
  for (int a = 0; a < kRank; ++a)
    if ((reverse_axes >> a) & 1) c.work.tile[a] = p.geo.q_tiles[a] - 1 - c.work.tile[a];
  sm80::make_query_tile(p.geo, c.work, c.qt);  // never empty: one dilation group, q_tiles from extent
  c.keys = sm80::make_key_tiles(p.geo, c.qt);
  c.kv_head = c.work.head / p.heads_per_kv;
  return c;
}

// Rotated round-robin over the work tiles of a persistent grid of G CTAs (the forward's static
// schedule; its dynamic one takes tiles from a global counter, fna_forward_kernel.cuh): at step k the grid runs the
// tiles [k G, k G + G) (neighbouring query tiles run together and share their key tiles in L2, as in a
// plain round-robin), and CTA b takes the one at position (b + k) mod G. A plain round-robin (b, b + G,
// ...) gives CTA b only the positions congruent to b, which can alias with the period of the tile grid
// (hunyuan: 20 query tiles on the last axis and G = 132 hand each CTA one residue class of them mod 4,
// so some CTAs get more border tiles than others); rotating, every CTA's tiles sample every position.
// With one CTA per work tile (G >= num_work) it is the plain grid. Producer and consumers of a CTA
// step through the same sequence.
struct RotatedWork {
  int64_t base = 0;  // k G
  int64_t pos;       // (b + k) mod G
  int64_t grid;
  NATTEN_HD RotatedWork(int64_t cta, int64_t g) : pos(cta), grid(g) {}
  NATTEN_HD bool more(int64_t num_work) const { return base < num_work; }
  NATTEN_HD int64_t index() const { return base + pos; }  // may be >= num_work at the last step: skip it
  NATTEN_HD void next() {
    base += grid;
    pos = pos + 1 == grid ? 0 : pos + 1;
  }
};

// Query tile origin (tokens per axis) of the work tile.
NATTEN_HD void query_tile_origin(const WorkContext& c, int o[kRank]) {
  for (int a = 0; a < kRank; ++a) o[a] = c.qt.q0[a];
}

}  // namespace sm90
}  // namespace natten
