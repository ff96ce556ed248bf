// Backward preprocess shared by every backward path (SM80 fp16 / bf16 and the fp32 SIMT kernels):
//   delta[b, h, token] = sum_d dO * O  -  dLSE     (float32 workspace; one warp per row)
// The dLSE term folds the gradient of the logsumexp output into delta (fna_backward_kernel.cuh).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "bwd_params.cuh"
#include "sm90/pdl.cuh"
#include "tile_scheduler.cuh"

namespace natten {
namespace sm80 {

constexpr float kLog2e = 1.4426950408889634074f;

// Offsets of preprocess row `row` (rows ordered batch, query-slab token, head: consecutive rows are
// consecutive heads, so a contiguous [B, *grid, H, D] out / d_out is read front to back).
struct PreprocessRow {
  int64_t o, d_o, d_lse, delta;
};

// kRows32: p.num_rows < 2^31 (the launcher checks), so the decode runs in 32-bit divisions (a 64-bit
// division is a long subroutine, and this decode precedes every row's loads).
template <bool kRows32 = false>
__device__ __forceinline__ PreprocessRow preprocess_row(const FnaBwdParams& p, int64_t row) {
  using Index = std::conditional_t<kRows32, uint32_t, int64_t>;
  Index r = Index(row);
  const Index heads = Index(p.geo.heads);
  const int64_t h = int64_t(r % heads);
  r /= heads;
  int c[kRank];  // token grid of the query slab (= extent on the whole grid)
  for (int a = kRank - 1; a >= 0; --a) {
    const Index extent = Index(p.geo.q_extent[a]);
    c[a] = int(r % extent);
    r /= extent;
  }
  const int64_t b = int64_t(r);
  PreprocessRow o{b * p.o_batch + h * p.o_head, b * p.do_batch + h * p.do_head, b * p.dlse_batch + h * p.dlse_head,
                  b * p.delta_batch + h * p.delta_head};
  for (int a = 0; a < kRank; ++a) {
    o.o += int64_t(c[a]) * p.o_spatial[a];
    o.d_o += int64_t(c[a]) * p.do_spatial[a];
    o.d_lse += int64_t(c[a]) * p.dlse_spatial[a];
    o.delta += int64_t(c[a]) * p.delta_spatial[a];
  }
  return o;
}

// Any element type and layout: one warp per row, one element per lane and step.
template <class Element>
__global__ void __launch_bounds__(256) fna_bwd_preprocess_kernel(const __grid_constant__ FnaBwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  sm90::pdl_launch_dependents();  // see launch_bwd_preprocess
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  Element const* o = static_cast<Element const*>(p.o);
  Element const* d_o = static_cast<Element const*>(p.d_o);
  for (int64_t row = int64_t(blockIdx.x) * warps + threadIdx.x / 32; row < p.num_rows; row += int64_t(gridDim.x) * warps) {
    const PreprocessRow off = preprocess_row(p, row);
    float acc = 0.f;
    for (int d = lane; d < p.head_dim_v; d += 32) acc += float(o[off.o + d]) * float(d_o[off.d_o + d]);
    #pragma unroll
    for (int s = 16; s >= 1; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) p.delta[off.delta] = acc - (p.d_lse != nullptr ? p.d_lse[off.d_lse] : 0.f);
  }
#endif
}

// 2-byte elements with every out / d_out row on a 16-byte boundary (FnaBwdParams::vec_rows): a
// group of 8 lanes per row, 8 elements (16 bytes) per lane and 64-column step, 8 rows per warp (two
// groups of 4 rows, lanes 8 r + j on rows r and r + 4). kSteps = 64-column steps of the padded row
// (1, 2 or 4: head_dim_v <= 64, 128, 256). Every load of a lane (2 rows x kSteps x o / d_out) is
// issued before the first product in the source (ptxas interleaves the second row's loads with the
// first row's products: SASS of the 2-step kernel). Per row the arithmetic is that
// of one lane group in step order, then the butterfly over the group (the same order as the
// one-row-group version this replaced, so delta is bit-identical to it).
//
// History: one row per warp with 2-byte loads ran the 1-D suite rows' 32768 x 128 preprocess in ~16
// us; 4 rows per warp with 16-byte loads in 8.1-8.9 us, in two waves of blocks (44 registers: 5 of
// its 1,024 blocks per SM). This version: 512 blocks, one wave at 4 per SM (54-60 registers).
template <class Element, bool kRows32, int kSteps>
__global__ void __launch_bounds__(256) fna_bwd_preprocess_vec_kernel(const __grid_constant__ FnaBwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(sizeof(Element) == 2, "16-byte loads of 8 elements");
  static_assert(kSteps == 1 || kSteps == 2 || kSteps == 4, "64-column steps of a padded head dim <= 256");
  sm90::pdl_launch_dependents();  // see launch_bwd_preprocess
  constexpr int kRowsPerWarp = 8;
  const int lane = threadIdx.x & 31;
  const int sub = lane & 7;  // lane within the row's group
  Element const* o = static_cast<Element const*>(p.o);
  Element const* d_o = static_cast<Element const*>(p.d_o);
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  // Warp-uniform loop (every lane reaches the shuffles); rows past the last load nothing.
  for (int64_t row0 = warp * kRowsPerWarp; row0 < p.num_rows; row0 += warps * kRowsPerWarp) {
    int64_t row[2];
    bool valid[2];
    PreprocessRow off[2];
    uint4 a[2][kSteps], b[2][kSteps];
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
      row[h] = row0 + lane / 8 + 4 * h;
      valid[h] = row[h] < p.num_rows;
      off[h] = valid[h] ? preprocess_row<kRows32>(p, row[h]) : PreprocessRow{0, 0, 0, 0};
    }
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
      #pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const int d = sub * 8 + 64 * s;
        if (valid[h] && d < p.head_dim_v) {
          a[h][s] = *reinterpret_cast<const uint4*>(o + off[h].o + d);
          b[h][s] = *reinterpret_cast<const uint4*>(d_o + off[h].d_o + d);
        } else {
          a[h][s] = make_uint4(0u, 0u, 0u, 0u);
          b[h][s] = make_uint4(0u, 0u, 0u, 0u);
        }
      }
    }
    float acc[2];
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
      acc[h] = 0.f;
      #pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        if (sub * 8 + 64 * s < p.head_dim_v) {  // as the loop `d < head_dim_v` it replaced
          const Element* ea = reinterpret_cast<const Element*>(&a[h][s]);
          const Element* eb = reinterpret_cast<const Element*>(&b[h][s]);
          #pragma unroll
          for (int i = 0; i < 8; ++i) acc[h] += float(ea[i]) * float(eb[i]);
        }
      }
    }
    #pragma unroll
    for (int s = 4; s >= 1; s >>= 1) {
      acc[0] += __shfl_xor_sync(0xffffffffu, acc[0], s);
      acc[1] += __shfl_xor_sync(0xffffffffu, acc[1], s);
    }
    #pragma unroll
    for (int h = 0; h < 2; ++h)
      if (valid[h] && sub == 0)
        p.delta[off[h].delta] = acc[h] - (p.d_lse != nullptr ? p.d_lse[off[h].d_lse] : 0.f);
  }
#endif
}

// Launches the preprocess: the vector kernel where it applies (64 rows per 256-thread block), else
// the scalar one (8 rows per block); grid-striding past 2^20 blocks. Both kernels let a
// programmatic dependent start at once (on SM90: the Hopper backward's visit-table kernel, which
// reads lse first and waits for this kernel before it reads delta; sm90/pdl.cuh). A kernel launched
// normally after it is not affected.
template <class Element>
cudaError_t launch_bwd_preprocess(const FnaBwdParams& params, cudaStream_t stream) {
  if (params.num_rows <= 0) return cudaSuccess;
  constexpr int64_t kMaxBlocks = 65536 * 16;
  if constexpr (sizeof(Element) == 2) {
    if (params.vec_rows && params.head_dim_v > 0 && params.head_dim_v <= 256) {
      const int64_t blocks = (params.num_rows + 63) / 64;  // 8 warps of 8 rows
      const unsigned grid = unsigned(blocks < kMaxBlocks ? blocks : kMaxBlocks);
      const bool rows32 = params.num_rows <= 0x7fffffff;
      const int steps = params.head_dim_v <= 64 ? 1 : params.head_dim_v <= 128 ? 2 : 4;
      auto go = [&](auto kernel) {
        kernel<<<grid, 256, 0, stream>>>(params);
        return cudaGetLastError();
      };
      if (rows32) {
        if (steps == 1) return go(fna_bwd_preprocess_vec_kernel<Element, true, 1>);
        if (steps == 2) return go(fna_bwd_preprocess_vec_kernel<Element, true, 2>);
        return go(fna_bwd_preprocess_vec_kernel<Element, true, 4>);
      }
      if (steps == 1) return go(fna_bwd_preprocess_vec_kernel<Element, false, 1>);
      if (steps == 2) return go(fna_bwd_preprocess_vec_kernel<Element, false, 2>);
      return go(fna_bwd_preprocess_vec_kernel<Element, false, 4>);
    }
  }
  const int64_t blocks = (params.num_rows + 7) / 8;
  fna_bwd_preprocess_kernel<Element><<<unsigned(blocks < kMaxBlocks ? blocks : kMaxBlocks), 256, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace sm80
}  // namespace natten
