// Kernel parameter block of the SM90 (Hopper) fused neighborhood-attention forward, built on the
// host by fna_forward.cpp. Passed as a __grid_constant__ kernel parameter: the three TMA
// descriptors live in parameter space and are used there directly by cp.async.bulk.tensor.
#pragma once

#include <cstdint>

#include <cuda.h>  // CUtensorMap (type only; the library never links libcuda)

#include "sm80/tile_scheduler.cuh"  // shared work decomposition / window / key-tile walk
#include "sm90/column_words.cuh"
#include "sm90/work_context.cuh"

namespace natten {
namespace sm90 {

using sm80::kRank;
using sm80::Geometry;

// How a token box of one (batch, head) maps onto the 5 coordinates of the TMA descriptors
// (innermost first: head-dim chunk, head, then the spatial axes, last axis first):
//   rank 1: (d, h, x,          b, 0)
//   rank 2: (d, h, y, x,       b)
//   rank 3: (d, h, z, y, x + b * X)   (batch folded into X: needs batch stride == X * x stride)
// Tokens past an axis end are zero-filled by TMA (or, on the folded X axis, the next batch's
// rows): the kernel masks them as keys by coordinate and never stores them as queries.
struct FnaSm90Params {
  CUtensorMap tma_q;  // box (chunk, 1, q tile, reversed axes); chunk = min(kernel head dim, 64)
  CUtensorMap tma_k;  // box (chunk, 1, kv tile, reversed axes)
  CUtensorMap tma_v;  // same box as K (head-dim columns past D / Dv are zero-filled)

  Geometry geo;  // dilation 1; slabs: q / kv tensors hold the query / key slab of the global grid

  void* o;
  float* lse;  // nullable
  // element strides (dim stride 1); axes >= rank have stride 0
  int64_t o_batch, o_head, o_spatial[kRank];
  int64_t lse_batch, lse_head, lse_spatial[kRank];

  int heads_per_kv;  // H / H_kv
  int rank;          // 1..3 (selects the TMA coordinate mapping above)
  int fold_q;        // rank 3: X of the query slab (batch folded into the outermost TMA dim); else 0
  int fold_kv;       // rank 3: X of the key/value slab; else 0
  float scale_log2;  // softmax scale * log2(e)
  int dim_v;         // the output's head dim Dv (multiple of 8, <= the kernel head dim): columns stored
  // Partial key tiles are masked from 64-bit column words (column_words.cuh): kcols describes a
  // 64-token half of the key tile (a 128-token tile halved on its outermost tiled axis; at head dim
  // 256 the 64-token tile itself), kcols_off[a] the second half's offset on axis a (0 elsewhere).
  ColumnWords kcols;
  int kcols_off[kRank];
  // Schedule (fna_forward_kernel.cuh). work_counter null: static (RotatedWork). Else dynamic: a
  // CTA's first work tile is blockIdx.x, each next one gridDim.x + atomicAdd(work_counter, 1) (the
  // host zeroes the counter on the stream before the launch); reverse_axes (bits, dynamic only):
  // axes whose query tiles run in descending order (causal axes: longest key walks first).
  unsigned* work_counter;
  int reverse_axes;
  // 1: each work tile's O is stored while the next tile's first S GEMM runs (epilogue.cuh,
  // PendingStore; static-order kernels only); 0: right after the tile. Host: NATTEN_HOPPER_EPILOGUE
  // (fna_forward.cpp).
  int defer_epilogue;
  // 1: the key walks are rotated on axis 0 (sm80/tile_scheduler.cuh: walk_origin); 0: plain odometer order.
  // Host: NATTEN_HOPPER_WALK (fna_forward.cpp).
  int walk_rotate;
  // Divisors and window axes of the per-tile work decode (work_context.cuh), built by the host.
  WorkDecode decode;
  // Split tail (static work order only; split_tail.cuh): the work items the CTAs walk are
  // num_items >= geo.num_work. Items below split_base are whole work tiles (item = tile); item
  // split_base + u is chunk u % split_chunks of work tile split_base + u / split_chunks: a slice of
  // its key walk along axis 0, whose un-normalized O and row statistics go to the fp32 workspace
  // (partial_o, partial_stats) for the combine kernel that runs after this one. Without a split:
  // num_items = split_base = geo.num_work, split_chunks = 1, the workspace pointers null.
  int64_t num_items;
  int64_t split_base;
  int split_chunks;
  float* partial_o;      // [chunk item][kTileQ rows][kernel head dim] (un-normalized O)
  float* partial_stats;  // [chunk item][kTileQ rows][2]: row max (log2 domain, scale folded), row sum
  // Cluster pairs (static order; fna_forward_kernel.cuh, kCluster). pair_half 0: off. Else the work
  // tiles come in pairs, query tiles 2 j and 2 j + 1 of one axis with the same key walk, and a
  // cluster of 2 CTAs runs a pair: each CTA loads half of every K / V tile's head-dim chunks and
  // multicasts it to both (work_context.cuh: pair_member, cluster_pair_axis; a split tail takes its
  // tiles in the pairs' order, ordered_tile).
  int pair_half;                    // query tiles / 2 on the pairs' axis
  window::FastDiv pair_half_div;    // pair_half
  int pair_inner;                   // query tiles of the axes after it (faster in the work index)
  window::FastDiv pair_inner_div;   // pair_inner
  // Host only: 1 = launch the kernel as a programmatic dependent of the stream's previous kernel
  // (pdl.cuh; the kernel waits before its first global memory access), so that its CTAs start and
  // run their prologue while that kernel's last CTAs drain. NATTEN_HOPPER_PDL (fna_forward.cpp).
  int pdl;
};

// TMA coordinates (dims 2..4) of the token box at origin o[] (slab coordinates of the tensor) of
// batch b; fold: that tensor's X (p.fold_q or p.fold_kv).
template <class Params>
NATTEN_HD void tma_token_coords(const Params& p, int64_t b, const int o[kRank], int fold, int c[3]) {
  if (p.rank == 1) {
    c[0] = o[0];
    c[1] = int(b);
    c[2] = 0;
  } else if (p.rank == 2) {
    c[0] = o[1];
    c[1] = o[0];
    c[2] = int(b);
  } else {
    c[0] = o[2];
    c[1] = o[1];
    c[2] = o[0] + int(b) * fold;
  }
}

}  // namespace sm90
}  // namespace natten
