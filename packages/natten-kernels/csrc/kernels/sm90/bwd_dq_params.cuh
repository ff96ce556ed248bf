// Kernel parameter block of the SM90 backward dQ kernel (bwd_dq_kernel.cuh), built on the host by
// bwd_dq.cpp from the SM80 backward's parameters (the preprocess there writes delta).
#pragma once

#include <cstdint>

#include <cuda.h>  // CUtensorMap (type only)

#include "sm80/tile_scheduler.cuh"
#include "sm90/column_words.cuh"
#include "sm90/trace.cuh"
#include "sm90/work_context.cuh"

namespace natten {
namespace sm90 {

struct DqParams {
  CUtensorMap tma_q;   // box (chunk, 1, q tile reversed): Q, columns past D zero-filled
  CUtensorMap tma_do;  // same box over dO (columns past Dv zero-filled)
  CUtensorMap tma_k;   // box (chunk, 1, kv tile reversed): K
  CUtensorMap tma_v;   // same box over V

  sm80::Geometry geo;  // dilation 1; 128-token query tiles, 64- or 128-token key tiles; slabs as the forward

  void* dq;
  const float* lse;    // the forward's logsumexp (natural log)
  const float* delta;  // rowsum(dO * O) - dLSE (the SM80 preprocess), compact over the query slab
  // element strides (dim stride 1); axes >= rank have stride 0
  int64_t dq_batch, dq_head, dq_spatial[sm80::kRank];
  int64_t lse_batch, lse_head, lse_spatial[sm80::kRank];
  int64_t delta_batch, delta_head, delta_spatial[sm80::kRank];

  ColumnWords kcols;  // column words of the key tile's 64-token half (the tile itself at 64 tokens)
  int kcols_off[sm80::kRank];  // 128-token key tiles: the second half's offset on its axis (else 0)
  int heads_per_kv;  // H / H_kv
  int rank;          // 1..3 (TMA coordinate mapping, params.cuh)
  int fold_q;        // rank 3: X of the query slab; else 0
  int fold_kv;       // rank 3: X of the key slab; else 0
  int dim;           // D of q / dQ: columns stored
  float scale;       // softmax scale (dQ = scale * dS K)
  float scale_log2;  // scale * log2(e)
  int walk_rotate;   // key walks rotated on axis 0 (sm80/tile_scheduler.cuh: walk_origin); rule: rotate_walks
  WorkDecode decode;  // divisors and window axes of the per-tile work decode (work_context.cuh)
  NATTEN_SM90_TRACE_FIELD  // diagnostic builds only (trace.cuh)
};

}  // namespace sm90
}  // namespace natten
