// Backward preprocess shared by every backward path (SM80 fp16 / bf16 and the fp32 SIMT kernels):
//   delta[b, h, token] = sum_d dO * O  -  dLSE     (float32 workspace; one warp per row)
// The dLSE term folds the gradient of the logsumexp output into delta (fna_backward_kernel.cuh).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "bwd_params.cuh"
#include "tile_scheduler.cuh"

namespace natten {
namespace sm80 {

constexpr float kLog2e = 1.4426950408889634074f;

template <class Element>
__global__ void __launch_bounds__(256) fna_bwd_preprocess_kernel(const __grid_constant__ FnaBwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  Element const* o = static_cast<Element const*>(p.o);
  Element const* d_o = static_cast<Element const*>(p.d_o);
  for (int64_t row = int64_t(blockIdx.x) * warps + threadIdx.x / 32; row < p.num_rows; row += int64_t(gridDim.x) * warps) {
    int64_t r = row;
    const int64_t h = r % p.geo.heads;
    r /= p.geo.heads;
    int c[kRank];
    for (int a = kRank - 1; a >= 0; --a) {
      c[a] = int(r % p.geo.q_extent[a]);  // token grid of the query slab (= extent on the whole grid)
      r /= p.geo.q_extent[a];
    }
    const int64_t b = r;
    int64_t off_o = b * p.o_batch + h * p.o_head;
    int64_t off_do = b * p.do_batch + h * p.do_head;
    int64_t off_dl = b * p.dlse_batch + h * p.dlse_head;
    int64_t off_delta = b * p.delta_batch + h * p.delta_head;
    for (int a = 0; a < kRank; ++a) {
      off_o += int64_t(c[a]) * p.o_spatial[a];
      off_do += int64_t(c[a]) * p.do_spatial[a];
      off_dl += int64_t(c[a]) * p.dlse_spatial[a];
      off_delta += int64_t(c[a]) * p.delta_spatial[a];
    }
    float acc = 0.f;
    for (int d = lane; d < p.head_dim_v; d += 32) acc += float(o[off_o + d]) * float(d_o[off_do + d]);
    #pragma unroll
    for (int s = 16; s >= 1; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) p.delta[off_delta] = acc - (p.d_lse != nullptr ? p.d_lse[off_dl] : 0.f);
  }
#endif
}

// Launches the preprocess (8 rows per 256-thread block, grid-striding past 2^20 blocks).
template <class Element>
cudaError_t launch_bwd_preprocess(const FnaBwdParams& params, cudaStream_t stream) {
  if (params.num_rows <= 0) return cudaSuccess;
  const int64_t blocks = (params.num_rows + 7) / 8;
  const unsigned grid = unsigned(blocks < 65536 * 16 ? blocks : 65536 * 16);
  fna_bwd_preprocess_kernel<Element><<<grid, 256, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace sm80
}  // namespace natten
