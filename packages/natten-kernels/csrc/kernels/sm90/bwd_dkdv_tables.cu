// The visit tables of the SM90 backward dK / dV kernel (DkdvParams::tab_lse2 / tab_delta): the
// forward's lse (to log2 units) and the preprocess's delta rearranged per (batch, head, 64-token
// query tile of the dK / dV kernel's tiling), so that each visit of a query tile brings its 64
// values with one 256-byte bulk copy per table instead of 64 scattered loads in the consumers.
// Padding tokens of partial tiles get lse = +inf (P = 0) and delta = 0. One thread per entry.
// It also zeroes the dK / dV kernel's work counter (DkdvParams::work_counter).
#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "sm90/bwd_dkdv_params.cuh"
#include "sm90/bwd_dq.hpp"
#include "sm90/bwd_visit_tables.hpp"
#include "sm90/pdl.cuh"

namespace natten {
namespace sm90 {

__global__ void __launch_bounds__(256) fna_sm90_bwd_dkdv_tables_kernel(const __grid_constant__ DkdvParams p,
                                                                       int64_t entries) {
  NATTEN_SM90_TRACE_NOW(trace_t0);
  pdl_launch_dependents();  // the dK / dV kernel's CTAs may start their prologue (it waits for this kernel)
  if (blockIdx.x == 0 && threadIdx.x == 0) *p.work_counter = 0u;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  // lse first (the forward's output), then delta, which the preprocess just before this kernel
  // writes: when this kernel is its programmatic dependent (pdl.cuh), the lse half overlaps it.
  for (int64_t i = first; i < entries; i += step) {
    int64_t off = 0;
    const bool ok = table_entry_offset(p.geo, p.q_tiles_total, i, p.lse_batch, p.lse_head, p.lse_spatial, off);
    p.tab_lse2[i] = ok ? p.lse[off] * 1.4426950408889634074f : INFINITY;
  }
  pdl_wait();
  for (int64_t i = first; i < entries; i += step) {
    int64_t off = 0;
    const bool ok = table_entry_offset(p.geo, p.q_tiles_total, i, p.delta_batch, p.delta_head, p.delta_spatial, off);
    p.tab_delta[i] = ok ? p.delta[off] : 0.f;
  }
  if (threadIdx.x == 0) NATTEN_SM90_TRACE_EVENT(p.trace, kTraceTables, blockIdx.x, trace_t0, trace_now(), 0u);
}

cudaError_t launch_bwd_dkdv_tables(const DkdvParams& params, cudaStream_t stream, bool dependent) {
  const int64_t entries = params.geo.batch * params.geo.heads * params.q_tiles_total * 64;
  if (entries <= 0) return cudaSuccess;
  const int64_t blocks = (entries + 255) / 256;
  const int grid = int(blocks < 132 * 16 ? blocks : 132 * 16);
  return launch_maybe_dependent(fna_sm90_bwd_dkdv_tables_kernel, dim3(unsigned(grid)), dim3(256), 0, stream,
                                dependent, params, entries);
}

}  // namespace sm90
}  // namespace natten
