// Work decomposition of the SM90 forward: the SM80 kernel's (csrc/kernels/sm80/tile_scheduler.cuh)
// geometry, query tiles and key-tile walk with 128-token boxes. Work tile = (batch, head, query tile
// per axis; dilation is 1 here so there is one group); a CTA runs work tiles blockIdx.x,
// blockIdx.x + gridDim.x, ... (persistent: one CTA per SM). Producer and consumers derive the same
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

// Work tile order: index order, or reversed when p.reverse_order (set by the host when an axis is
// causal). A causal axis makes later query tiles walk more key tiles (dense causal: 1 .. T), and
// with the round-robin over CTAs the last, partial round is then made of the heaviest tiles, run by
// a few CTAs while the rest idle; reversed, the heaviest go first and the last round is the
// lightest. Both sides derive the same order, so it is only a permutation of the work.
NATTEN_HD WorkContext make_work_context(const FnaSm90Params& p, int64_t idx) {
  WorkContext c;
  if (p.reverse_order) idx = p.geo.num_work - 1 - idx;
  c.work = sm80::decode_work(p.geo, idx);
  sm80::make_query_tile(p.geo, c.work, c.qt);  // never empty: one dilation group, q_tiles from extent
  c.keys = sm80::make_key_tiles(p.geo, c.qt);
  c.kv_head = c.work.head / p.heads_per_kv;
  return c;
}

// Query tile origin (tokens per axis) of the work tile.
NATTEN_HD void query_tile_origin(const WorkContext& c, int o[kRank]) {
  for (int a = 0; a < kRank; ++a) o[a] = c.qt.q0[a];
}

}  // namespace sm90
}  // namespace natten
