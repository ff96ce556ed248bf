// Work decomposition of the SM90 forward: the SM80 kernel's (csrc/kernels/sm80/tile_scheduler.cuh)
// geometry, query tiles and key-tile walk with 128-token boxes. Work tile = (batch, head, query tile
// per axis; dilation is 1 here so there is one group); a CTA runs the work tiles of RotatedWork
// (persistent: one CTA per SM). Producer and consumers derive the same
// work tiles and walks independently from the index, so nothing about them crosses shared memory.
#pragma once

#include "sm90/params.cuh"
#include "sm90/work_context.cuh"

namespace natten {
namespace sm90 {

// WorkContext: work_context.cuh. Forward and backward dQ build it without divisions from the
// WorkDecode the host put in their parameter blocks (FnaSm90Params, DqParams: geo, decode).
template <class Params>
NATTEN_HD WorkContext make_work_context(const Params& p, int64_t idx, int reverse_axes = 0) {
  return make_work_context_fast(p.geo, p.decode, idx, reverse_axes);
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

// Work context of work item `item` of a (possibly split) launch; slot = the chunk item's index
// into the split workspace (item - split_base), or -1 for a whole work tile. kPaired: a cluster-pair
// launch (fna_forward_kernel.cuh, kCluster), whose tail tiles come from ordered_tile.
template <bool kPaired = false, class Params>
NATTEN_HD WorkContext make_item_context(const Params& p, int64_t item, int& slot) {
  if (item < p.split_base) {
    slot = -1;
    return make_work_context(p, item);
  }
  const int u = int(item - p.split_base);  // < split_chunks * (num_work - split_base) <= grid size
  const int t = u / p.split_chunks;
  WorkContext ctx = make_work_context(p, kPaired ? ordered_tile(p, p.split_base + t) : p.split_base + t);
  restrict_key_walk(p.geo, ctx.keys, u - t * p.split_chunks, p.split_chunks);
  slot = u;
  return ctx;
}

// Query tile origin (tokens per axis) of the work tile.
NATTEN_HD void query_tile_origin(const WorkContext& c, int o[kRank]) {
  for (int a = 0; a < kRank; ++a) o[a] = c.qt.q0[a];
}

}  // namespace sm90
}  // namespace natten
