// Epilogue of the SM90 forward: O / rowsum, logsumexp (natural log of the scaled scores), and
// predicated stores straight from the wgmma accumulator: 16-byte vectors after a transpose inside
// each quad (store_row_vec16), the first Dv columns; rows outside the grid (padding of a partial
// query tile, or the next batch's rows on the folded axis) are never written. A row with no
// attended key (impossible for valid NA) gives O = 0, lse = -inf. The 4-byte pair stores this
// replaced cost 4-7% of the forward on the rows with short key walks (H100, 2026-11-26); an
// asynchronous TMA store through shared memory would take the rest (~2-3% on those rows).
#pragma once

#include <cmath>
#include <cstdint>

#include <cute/tensor.hpp>

#include "sm90/fragment.cuh"
#include "sm90/softmax.cuh"
#include "sm90/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

template <class Traits, class TensorO>
__device__ __forceinline__ void epilogue_store(const FnaSm90Params& p, const WorkContext& ctx, int ct,
                                               OnlineSoftmax& sm, TensorO& acc_o) {
  using Element = typename Traits::Element;
  float inv[2], lse[2];
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(sm.row_sum[r]);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    lse[r] = l > 0.f ? (sm.row_max[r] + __log2f(l)) * 0.69314718055994530942f : -INFINITY;
  }
  Element* out = static_cast<Element*>(p.o);
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    int x[kRank];
    const bool valid = tile_row_coords(frag_row(ct, r), p.geo.q_log2, ctx.qt.q0, ctx.qt.n_q, x);
    const int64_t off_o = token_offset(ctx.work.batch * p.o_batch + ctx.work.head * p.o_head, x, p.o_spatial);
    store_row_vec16<Element, Traits::kHeadDim>(acc_o, r, ct, out + off_o, p.dim_v, inv[r], valid);  // columns < Dv
    if (valid && p.lse != nullptr && (ct & 3) == 0)
      p.lse[token_offset(ctx.work.batch * p.lse_batch + ctx.work.head * p.lse_head, x, p.lse_spatial)] = lse[r];
  }
}

}  // namespace sm90
}  // namespace natten
