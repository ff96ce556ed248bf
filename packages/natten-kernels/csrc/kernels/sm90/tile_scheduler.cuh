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

template <class Params>  // FnaSm90Params or the backward's DqParams (geo, heads_per_kv)
NATTEN_HD WorkContext make_work_context(const Params& p, int64_t idx) {
  WorkContext c;
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
