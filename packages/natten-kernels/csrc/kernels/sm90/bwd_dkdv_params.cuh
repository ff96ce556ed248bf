// Kernel parameter block of the SM90 backward dK / dV kernel (bwd_dkdv_kernel.cuh), built on the
// host by bwd_dkdv.cpp from the SM80 backward's arguments (the preprocess there writes delta).
#pragma once

#include <cstdint>

#include <cuda.h>  // CUtensorMap (type only)

#include "sm80/tile_scheduler.cuh"
#include "sm90/bwd_dkdv_order.hpp"
#include "sm90/column_words.cuh"
#include "sm90/trace.cuh"

namespace natten {
namespace sm90 {

struct DkdvParams {
  CUtensorMap tma_q;   // box (chunk, 1, q tile reversed): Q, columns past D zero-filled
  CUtensorMap tma_do;  // same box over dO (columns past Dv zero-filled)
  CUtensorMap tma_k;   // box (chunk, 1, kv tile reversed): K
  CUtensorMap tma_v;   // same box over V

  sm80::Geometry geo;     // dilation 1; 64-token query tiles, 128-token key tiles; slabs as the forward
  sm80::KvGeometry kvg;   // key-parallel walk: one work tile per (batch, kv head, key tile)

  void* dk;
  void* dv;
  const float* lse;    // the forward's logsumexp (natural log)
  const float* delta;  // rowsum(dO * O) - dLSE (the SM80 preprocess), compact over the query slab
  // Visit tables (workspace, written by fna_sm90_bwd_dkdv_tables_kernel from lse and delta): per
  // (batch, head, query tile of the 64-token tiling, row-major over q_tiles[]) 64 floats each, the
  // tile's tokens in tile order (geo.q_tiles per axis); lse in log2 units (+inf for padding
  // tokens, so P = 0), delta (0). One 256-byte bulk copy per table and visit.
  float* tab_lse2;
  float* tab_delta;
  int64_t q_tiles_total;  // prod(geo.q_tiles)
  // Work counter of the dynamic tile schedule (workspace after the tables; zeroed by the tables
  // kernel): a CTA's next work tile is gridDim.x + atomicAdd(work_counter, 1).
  unsigned* work_counter;
  // Work order (bwd_dkdv_order.hpp; order_tiles 0: the natural order). The dynamic schedule hands
  // out positions o = 0, 1, ...; position o runs work tile (o / order_tiles) * order_tiles +
  // tile_order[o % order_tiles], i.e. within each (batch, kv head) the key tiles most query-tile
  // visits first (ties in index order), so that the last round holds the shortest walks
  // (dkdv_work_index below). Written by the host into this parameter block.
  int order_tiles;  // key tiles per (batch, kv head): prod(kvg.splits) (dilation 1); 0: natural
  // element strides (dim stride 1); axes >= rank have stride 0
  int64_t dk_batch, dk_head, dk_spatial[sm80::kRank];
  int64_t dv_batch, dv_head, dv_spatial[sm80::kRank];
  int64_t lse_batch, lse_head, lse_spatial[sm80::kRank];
  int64_t delta_batch, delta_head, delta_spatial[sm80::kRank];

  ColumnWords qcols;  // the 64-token query tile's column words (column_words.cuh)
  int heads_per_kv;  // H / H_kv
  int rank;          // 1..3 (TMA coordinate mapping, params.cuh)
  int fold_q;        // rank 3: X of the query slab; else 0
  int fold_kv;       // rank 3: X of the key slab; else 0
  int dim;           // D of k / dK: columns stored
  int dim_v;         // Dv of v / dV: columns stored
  float scale;       // softmax scale (dK = scale * dS^T Q)
  float scale_log2;  // scale * log2(e)
  NATTEN_SM90_TRACE_FIELD  // diagnostic builds only (trace.cuh)
  uint16_t tile_order[kDkdvOrderMaxTiles];  // the first order_tiles entries are used
};

// Work tile of schedule position o (< kvg.num_work) under the order above.
NATTEN_HD int64_t dkdv_work_index(const DkdvParams& p, int64_t o) {
  if (p.order_tiles == 0) return o;
  const int64_t n = p.order_tiles;
  return o - o % n + p.tile_order[o % n];
}

}  // namespace sm90
}  // namespace natten
