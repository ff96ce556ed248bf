// Split tail of the SM90 forward's static work order (planned by the host: split_plan in
// fna_forward.cpp; parameters in params.cuh).
//
// A persistent launch of G CTAs over T work tiles runs ceil(T / G) rounds; when T = F G + r with
// 0 < r < G, the last round has r tiles and G - r idle CTAs, so the kernel takes F + 1 tile times
// for F + r / G tiles of work (dense-fmha: 4096 tiles on 132 SMs, 31.03 -> 32 rounds, 3%). The
// split tail cuts each of those r tiles into c = split_chunks slices of its key walk (along axis 0,
// restrict_key_walk in tile_scheduler.cuh), so the last round runs r c <= G chunk items of about
// 1 / c of a tile each. A chunk item keeps its un-normalized O and row statistics in an fp32
// workspace (epilogue_store_partial); the combine kernel, launched after the forward on the same
// stream, merges the c partials of every row exactly as the online softmax would have (fixed order:
// the result is deterministic) and writes O and the logsumexp.
#pragma once

#include <cmath>
#include <cstdint>

#include <cute/tensor.hpp>

#include "sm90/fragment.cuh"
#include "sm90/params.cuh"
#include "sm90/softmax.cuh"
#include "sm90/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

// Writes the partial result of chunk item `slot`: the 128 x kHeadDim un-normalized O (column pairs
// as float2, row-major) and, per row, the running maximum m' (log2 domain) and the row sum. Every
// consumer thread calls it (quad shuffles).
template <class Traits, class TensorO>
__device__ __forceinline__ void epilogue_store_partial(const FnaSm90Params& p, int ct, int slot, const OnlineSoftmax& sm,
                                                       const TensorO& acc_o) {
  constexpr int D = Traits::kHeadDim;
  float* po = p.partial_o + int64_t(slot) * (Traits::kTileQ * D);
  CUTE_UNROLL
  for (int e = 0; e < cute::size(acc_o); e += 2) {
    const int row = frag_row(ct, frag_slot(e)), col = frag_col(ct, e);
    *reinterpret_cast<float2*>(po + row * D + col) = make_float2(acc_o(e), acc_o(e + 1));
  }
  float* ps = p.partial_stats + int64_t(slot) * (Traits::kTileQ * 2);
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(sm.row_sum[r]);
    if ((ct & 3) == 0) *reinterpret_cast<float2*>(ps + 2 * frag_row(ct, r)) = make_float2(sm.row_max[r], l);
  }
}

// Combine kernel: block (tail tile t, group of kCombineRows rows), one warp per row; lane j holds
// columns [j kPerLane, (j + 1) kPerLane). O = sum_i 2^(m_i - m) O_i / l with m = max_i m_i and
// l = sum_i 2^(m_i - m) l_i; lse = (m + log2 l) ln 2 (-inf and O = 0 for a row without keys, as in
// epilogue_finalize). Rows outside the query slab (padding of a partial tile) are not stored.
constexpr int kCombineRows = 4;

template <class Traits>
__global__ void __launch_bounds__(32 * kCombineRows) fna_sm90_split_combine_kernel(const __grid_constant__ FnaSm90Params p) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kPerLane = D / 32;
  const int t = int(blockIdx.x);
  const int row = int(blockIdx.y) * kCombineRows + int(threadIdx.x) / 32;
  const int lane = int(threadIdx.x) % 32;
  const int c = p.split_chunks;
  const int slot0 = t * c;

  // Unrolled so that several chunks' loads are in flight (the partials are in L2, just written).
  float m = -INFINITY;
#pragma unroll 8
  for (int i = 0; i < c; ++i) m = fmaxf(m, p.partial_stats[(int64_t(slot0 + i) * Traits::kTileQ + row) * 2]);
  const float base = m == -INFINITY ? 0.f : m;
  float acc[kPerLane];
  CUTE_UNROLL
  for (int j = 0; j < kPerLane; ++j) acc[j] = 0.f;
  float l = 0.f;
#pragma unroll 8
  for (int i = 0; i < c; ++i) {
    const int64_t it = int64_t(slot0 + i) * Traits::kTileQ + row;
    const float2 st = *reinterpret_cast<const float2*>(p.partial_stats + it * 2);
    const float w = fast_exp2(st.x - base);  // 0 for an empty row (m_i = -inf)
    l += w * st.y;
    const float* src = p.partial_o + it * D + lane * kPerLane;
    if constexpr (kPerLane % 4 == 0) {
      CUTE_UNROLL
      for (int j = 0; j < kPerLane; j += 4) {
        const float4 v = *reinterpret_cast<const float4*>(src + j);
        acc[j] += w * v.x;
        acc[j + 1] += w * v.y;
        acc[j + 2] += w * v.z;
        acc[j + 3] += w * v.w;
      }
    } else {
      CUTE_UNROLL
      for (int j = 0; j < kPerLane; ++j) acc[j] += w * src[j];
    }
  }

  const WorkContext ctx = make_work_context(p, ordered_tile(p, p.split_base + t));  // the chunk items' tile
  int x[kRank];
  if (!tile_row_coords(row, p.geo.q_log2, ctx.qt.q0, ctx.qt.n_q, x)) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  Element* out = static_cast<Element*>(p.o) + token_offset(ctx.work.batch * p.o_batch + ctx.work.head * p.o_head, x, p.o_spatial);
  CUTE_UNROLL
  for (int j = 0; j < kPerLane; ++j) {
    const int col = lane * kPerLane + j;
    if (col < p.dim_v) out[col] = Element(acc[j] * inv);
  }
  if (lane == 0 && p.lse != nullptr)
    p.lse[token_offset(ctx.work.batch * p.lse_batch + ctx.work.head * p.lse_head, x, p.lse_spatial)] =
        l > 0.f ? (m + __log2f(l)) * 0.69314718055994530942f : -INFINITY;
}

}  // namespace sm90
}  // namespace natten
