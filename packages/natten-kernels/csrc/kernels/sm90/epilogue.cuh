// Epilogue of the SM90 forward: O / rowsum, logsumexp (natural log of the scaled scores), and
// predicated stores of the accumulator's rows, normalized and packed to 16-bit pairs (pack_row):
// 16-byte vectors after a transpose inside each quad (store_row_packed_vec16), the first Dv columns; rows outside the grid (padding of a partial
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

// A work tile's output as the epilogue needs it once its key walk is done: where its rows go, the
// logsumexp, and O itself, normalized and packed to 2-element words (pack_row). With the deferred
// epilogue (FnaSm90Params::defer_epilogue) the consumer keeps it until the next tile's first S GEMM
// has been issued and stores then, while that GEMM runs: the stores' latency no longer sits between
// this warpgroup's last PV GEMM and its next turn on the tensor cores (the ping-pong partner would
// wait for it). O is packed out of the accumulator first: reading accumulator registers right after
// a wgmma issue made ptxas insert a wait for that wgmma (C7517) in the ping-pong kernels, which
// took away the overlap.
template <int kCols>
struct PendingStore {
  bool valid;
  int64_t batch, head;
  int q0[kRank], n_q[kRank];
  float lse[2];
  uint32_t packed[2][kCols / 8];  // [row slot][8-column group]: this lane's pair of the group
};

template <class Traits, class TensorO>
__device__ __forceinline__ void epilogue_finalize(const WorkContext& ctx, OnlineSoftmax& sm, const TensorO& acc_o,
                                                  PendingStore<Traits::kHeadDim>& ps) {
  using Element = typename Traits::Element;
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(sm.row_sum[r]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    ps.lse[r] = l > 0.f ? (sm.row_max[r] + __log2f(l)) * 0.69314718055994530942f : -INFINITY;
    pack_row<Element, Traits::kHeadDim>(acc_o, r, inv, ps.packed[r]);
  }
  ps.batch = ctx.work.batch;
  ps.head = ctx.work.head;
  CUTE_UNROLL
  for (int a = 0; a < kRank; ++a) {
    ps.q0[a] = ctx.qt.q0[a];
    ps.n_q[a] = ctx.qt.n_q[a];
  }
  ps.valid = true;
}

// Stores the pending tile's O and lse; stores nothing unless ps.valid. Every consumer thread calls
// it (the stores shuffle within quads).
template <class Traits>
__device__ __forceinline__ void epilogue_store_pending(const FnaSm90Params& p, int ct,
                                                       PendingStore<Traits::kHeadDim>& ps) {
  using Element = typename Traits::Element;
  // No early return: a branch here, while a wgmma is in flight, made ptxas serialize every wgmma of
  // the kernel (C7518). ps.valid predicates the stores.
  Element* out = static_cast<Element*>(p.o);
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    int x[kRank];
    const bool valid = tile_row_coords(frag_row(ct, r), p.geo.q_log2, ps.q0, ps.n_q, x) && ps.valid;
    const int64_t off_o = token_offset(ps.batch * p.o_batch + ps.head * p.o_head, x, p.o_spatial);
    store_row_packed_vec16<Element, Traits::kHeadDim>(ps.packed[r], ct, out + off_o, p.dim_v, valid);  // columns < Dv
    if (valid && p.lse != nullptr && (ct & 3) == 0)
      p.lse[token_offset(ps.batch * p.lse_batch + ps.head * p.lse_head, x, p.lse_spatial)] = ps.lse[r];
  }
  ps.valid = false;
}

}  // namespace sm90
}  // namespace natten
