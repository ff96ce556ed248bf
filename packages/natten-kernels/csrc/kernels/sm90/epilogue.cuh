// Epilogue of the SM90 forward: O / rowsum, logsumexp (natural log of the scaled scores), and
// predicated stores straight from the wgmma accumulator (4-byte pairs, the first Dv columns; rows outside the grid -
// padding of a partial query tile, or the next batch's rows on the folded axis - are never
// written). A row with no attended key (impossible for valid NA) gives O = 0, lse = -inf.
// (Later: stage O through shared memory for 16-byte / TMA stores.)
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
    const int row = frag_row(ct, r);
    int c[kRank];
    sm80::tile_coord(row, p.geo.q_log2, c);
    bool valid = true;
    int64_t off_o = ctx.work.batch * p.o_batch + ctx.work.head * p.o_head;
    int64_t off_l = ctx.work.batch * p.lse_batch + ctx.work.head * p.lse_head;
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) {
      const int x = ctx.qt.q0[a] + c[a];
      valid = valid && x < ctx.qt.n_q[a];
      off_o += int64_t(x) * p.o_spatial[a];
      off_l += int64_t(x) * p.lse_spatial[a];
    }
    if (!valid) continue;
    Element* orow = out + off_o;
    CUTE_UNROLL
    for (int j = 0; j < Traits::kHeadDim / 8; ++j) {
      const int e = 4 * j + 2 * r;
      if (8 * j >= p.dim_v) break;  // columns past Dv (8-column groups: Dv is a multiple of 8)
      const Element v0 = Element(acc_o(e) * inv[r]);
      const Element v1 = Element(acc_o(e + 1) * inv[r]);
      const uint32_t packed = uint32_t(v0.raw()) | (uint32_t(v1.raw()) << 16);
      *reinterpret_cast<uint32_t*>(orow + frag_col(ct, e)) = packed;
    }
    if (p.lse != nullptr && (ct & 3) == 0) p.lse[off_l] = lse[r];
  }
}

}  // namespace sm90
}  // namespace natten
