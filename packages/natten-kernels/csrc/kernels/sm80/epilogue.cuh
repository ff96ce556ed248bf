// Epilogue of the SM80 fused neighborhood-attention forward kernel: finish the row sums, normalize
// O, stage it through shared memory (swizzled, reusing the Q buffer), write it with predication on
// real tokens / real head dim, and write the logsumexp (natural log of the scaled scores).
#pragma once

#include <cute/tensor.hpp>

#include "kernel_traits.cuh"
#include "mainloop.cuh"
#include "params.cuh"
#include "tile_scheduler.cuh"
#include "utils.cuh"

namespace natten {
namespace sm80 {

template <class Traits>
struct CollectiveEpilogue {
  using Element = typename Traits::Element;
  static constexpr int kTileQ = Traits::kTileQ;

  template <class TensorO, int kRowsPerThread>
  CUTE_DEVICE static void run(FnaParams const& p, CtaTile const& cta, Element* smem_o, TensorO& acc_o,
                              float (&row_max)[kRowsPerThread], float (&row_sum)[kRowsPerThread], int tid) {
    using namespace cute;
    using TiledMma = typename Traits::TiledMma;
    Geometry const& geo = p.geo;

    Tensor acc_o_rc = make_tensor(acc_o.data(), acc_rowcol(acc_o.layout()));
    float lse[kRowsPerThread];
    constexpr float kLn2 = 0.69314718055994530942f;
    CUTE_UNROLL
    for (int mi = 0; mi < kRowsPerThread; ++mi) {
      const float sum = quad_sum(row_sum[mi]);
      const bool has_keys = sum > 0.f;  // false for an empty row (cannot happen for valid NA) or NaN
      const float inv = has_keys ? 1.f / sum : 0.f;
      lse[mi] = has_keys ? (row_max[mi] + log2f(sum)) * kLn2 : -INFINITY;
      CUTE_UNROLL
      for (int nj = 0; nj < size<1>(acc_o_rc); ++nj) acc_o_rc(mi, nj) *= inv;
    }

    TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(tid);

    // logsumexp: one thread of each quad owns its rows.
    if (p.lse != nullptr && (tid & 3) == 0) {
      Tensor cO = make_identity_tensor(Shape<Int<kTileQ>, Int<Traits::kDim>>{});
      Tensor tOcO = thr_mma.partition_C(cO);
      Tensor tOcO_rc = make_tensor(tOcO.data(), acc_rowcol(tOcO.layout()));
      CUTE_UNROLL
      for (int mi = 0; mi < kRowsPerThread; ++mi) {
        const int r = get<0>(tOcO_rc(mi, 0));
        int c[kRank];
        tile_coord(r, geo.q_log2, c);
        bool ok = true;
        int64_t off = cta.lse_base;
        CUTE_UNROLL
        for (int a = 0; a < kRank; ++a) {
          const int x = cta.q.q0[a] + c[a];
          ok = ok && x < cta.q.n_q[a];
          off += int64_t(x) * cta.lse_step[a];
        }
        if (ok) p.lse[off] = lse[mi];
      }
    }

    // O: registers -> smem (Q buffer; every warp finished reading Q before the last barrier of the
    // mainloop, the barrier below is for clarity and for tiles that had no key tile).
    __syncthreads();
    typename Traits::SmemLayoutQ layout_o;
    Tensor sO = make_tensor(make_smem_ptr(smem_o), layout_o);
    Tensor rO = convert_fragment<Element>(acc_o);
    Tensor tOsO = thr_mma.partition_C(sO);
    static_assert(decltype(size(rO))::value == decltype(size(tOsO))::value, "");
    CUTE_UNROLL
    for (int i = 0; i < size(rO); ++i) tOsO(i) = rO(i);
    __syncthreads();
    NATTEN_SM80_TRACE_MARK(p.trace, kMarkStaged);

    store_tile_box<Traits, kTileQ>(smem_o, layout_o, static_cast<Element*>(p.o), cta.go, cta.q.q0, geo.q_log2,
                                   cta.q.n_q, p.head_dim_v, p.aligned != 0, tid);
  }
};

}  // namespace sm80
}  // namespace natten
