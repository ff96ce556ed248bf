// The visit tables of the SM90 backward dK / dV kernel (DkdvParams::tab_lse2 / tab_delta): the
// forward's lse (to log2 units) and the preprocess's delta rearranged per (batch, head, 64-token
// query tile of the dK / dV kernel's tiling), so that each visit of a query tile brings its 64
// values with one 256-byte bulk copy per table instead of 64 scattered loads in the consumers.
// Padding tokens of partial tiles get lse = +inf (P = 0) and delta = 0. One thread per entry.
// It also zeroes the dK / dV kernel's work counter (DkdvParams::work_counter) and, in one extra
// block, writes its work order (DkdvParams::tile_order) when the host asked for one.
#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "sm90/bwd_dkdv_params.cuh"
#include "sm90/bwd_dq.hpp"
#include "sm90/pdl.cuh"

namespace natten {
namespace sm90 {

// The work order (DkdvParams::tile_order), by the launch's last block: each key tile of one (batch,
// kv head) gets its query-tile visit count, then its rank among them (more visits first, ties in
// index order), and tile_order[rank] = tile. n <= kDkdvOrderMaxTiles.
__device__ void dkdv_work_order(const DkdvParams& p) {
  __shared__ int visits[kDkdvOrderMaxTiles];
  const int n = p.order_tiles;
  for (int s = threadIdx.x; s < n; s += blockDim.x) {
    const sm80::KvWorkTile w = sm80::decode_kv_work(p.geo, p.kvg, s);
    sm80::KeyTile kt;
    visits[s] = sm80::make_key_tile(p.geo, w, kt) ? sm80::make_query_tiles_for_key(p.geo, kt).total : 0;
  }
  __syncthreads();
  for (int s = threadIdx.x; s < n; s += blockDim.x) {
    const int v = visits[s];
    int rank = 0;
    for (int j = 0; j < n; ++j) rank += (visits[j] > v) || (visits[j] == v && j < s);
    p.tile_order[rank] = s;
  }
}

__global__ void __launch_bounds__(256) fna_sm90_bwd_dkdv_tables_kernel(const __grid_constant__ DkdvParams p,
                                                                       int64_t entries) {
  pdl_launch_dependents();  // the dK / dV kernel's CTAs may start their prologue (it waits for this kernel)
  const unsigned table_blocks = gridDim.x - (p.tile_order != nullptr ? 1u : 0u);
  if (blockIdx.x >= table_blocks) {
    dkdv_work_order(p);
    return;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *p.work_counter = 0u;
  const int64_t step = int64_t(table_blocks) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < entries; i += step) {
    const int col = int(i & 63);
    const int64_t row = i >> 6;
    int64_t t = row % p.q_tiles_total;
    const int64_t bh = row / p.q_tiles_total;
    const int64_t h = bh % p.geo.heads, b = bh / p.geo.heads;
    int qc[sm80::kRank];
    sm80::tile_coord(col, p.geo.q_log2, qc);
    bool ok = true;
    int64_t off_l = b * p.lse_batch + h * p.lse_head;
    int64_t off_d = b * p.delta_batch + h * p.delta_head;
    for (int a = sm80::kRank - 1; a >= 0; --a) {
      const int tile = int(t % p.geo.q_tiles[a]);
      t /= p.geo.q_tiles[a];
      const int x = (tile << p.geo.q_log2[a]) + qc[a];
      ok = ok && x < p.geo.q_extent[a];
      off_l += int64_t(x) * p.lse_spatial[a];
      off_d += int64_t(x) * p.delta_spatial[a];
    }
    p.tab_lse2[i] = ok ? p.lse[off_l] * 1.4426950408889634074f : INFINITY;
    p.tab_delta[i] = ok ? p.delta[off_d] : 0.f;
  }
}

cudaError_t launch_bwd_dkdv_tables(const DkdvParams& params, cudaStream_t stream) {
  const int64_t entries = params.geo.batch * params.geo.heads * params.q_tiles_total * 64;
  if (entries <= 0) return cudaSuccess;
  const int64_t blocks = (entries + 255) / 256;
  const int grid = int(blocks < 132 * 16 ? blocks : 132 * 16) + (params.tile_order != nullptr ? 1 : 0);
  fna_sm90_bwd_dkdv_tables_kernel<<<grid, 256, 0, stream>>>(params, entries);
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace natten
