// Layout of the SM90 dK / dV kernel's visit tables (DkdvParams::tab_lse2 / tab_delta; written by
// bwd_dkdv_tables.cu): one row of 64 floats per (batch, head, query tile of the kernel's 64-token
// query tiling, row-major over geo.q_tiles), the tile's tokens in tile order (sm80::tile_coord).
// Host and device: the CPU test tests/sm90_visit_tables_test.cpp checks the map against the
// layout's definition.
#pragma once

#include <cstdint>

#include "sm80/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

// Entry i of a visit table (row = (batch, head, query tile), column = token within the tile) of
// geometry g: the element offset of its token in a tensor with the given strides; false for a
// padding token.
NATTEN_HD bool table_entry_offset(const sm80::Geometry& g, int64_t q_tiles_total, int64_t i, int64_t s_batch,
                                  int64_t s_head, const int64_t* s_spatial, int64_t& off) {
  const int col = int(i & 63);
  const int64_t row = i >> 6;
  int64_t t = row % q_tiles_total;
  const int64_t bh = row / q_tiles_total;
  const int64_t h = bh % g.heads, b = bh / g.heads;
  int qc[sm80::kRank];
  sm80::tile_coord(col, g.q_log2, qc);
  bool ok = true;
  off = b * s_batch + h * s_head;
  for (int a = sm80::kRank - 1; a >= 0; --a) {
    const int tile = int(t % g.q_tiles[a]);
    t /= g.q_tiles[a];
    const int x = (tile << g.q_log2[a]) + qc[a];
    ok = ok && x < g.q_extent[a];
    off += int64_t(x) * s_spatial[a];
  }
  return ok;
}

}  // namespace sm90
}  // namespace natten
