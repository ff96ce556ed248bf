// Consumers of the SM90 forward (warpgroups 1 and 2, 64 query rows each): per key tile
//   wait K -> S = Q K^T (SS wgmma) -> release K -> mask (only tiles that cut a window border)
//   -> online softmax -> O *= correction -> P to fp16/bf16 in registers
//   -> wait V -> O += P V (RS wgmma) -> release V.
// (Later: ping-pong of the two warpgroups and overlap of softmax with the next tile's GEMMs.)
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "sm90/fragment.cuh"
#include "sm90/kernel_traits.cuh"
#include "sm90/softmax.cuh"
#include "sm90/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

// Per-row windows of this thread's two row slots, in key coordinates (see
// sm80::query_row_window: padding rows take the window of the last real query).
struct RowWindows {
  int start[2][kRank];
  int len[2][kRank];  // end - start (inclusive window)
};

__device__ __forceinline__ void make_row_windows(const FnaSm90Params& p, const WorkContext& ctx, int ct,
                                                 RowWindows& w) {
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) sm80::query_row_window(p.geo, ctx.qt, frag_row(ct, r), w.start[r], w.len[r]);
}

// Masks (sets to -inf) the scores of keys outside the row windows in a partial key tile at kb[].
// Keys outside the grid (zero fill or the next batch's rows) are never inside a window: windows
// end at n - 1 on every axis.
template <class TensorS>
__device__ __forceinline__ void mask_tile(const FnaSm90Params& p, const RowWindows& w, const int kb[kRank], int ct,
                                          TensorS& s) {
  int lo[2][kRank];
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r)
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) lo[r][a] = w.start[r][a] - kb[a];
  const int l2 = p.geo.kv_log2[2], l1 = p.geo.kv_log2[1];
  const int m2 = (1 << l2) - 1, m1 = (1 << l1) - 1, sh0 = l1 + l2;
  CUTE_UNROLL
  for (int e = 0; e < cute::size(s); ++e) {
    const int col = frag_col(ct, e), r = frag_slot(e);
    const int o0 = col >> sh0, o1 = (col >> l2) & m1, o2 = col & m2;
    const bool ok = unsigned(o0 - lo[r][0]) <= unsigned(w.len[r][0]) &&
                    unsigned(o1 - lo[r][1]) <= unsigned(w.len[r][1]) &&
                    unsigned(o2 - lo[r][2]) <= unsigned(w.len[r][2]);
    if (!ok) s(e) = -INFINITY;
  }
}

template <class Traits>
struct MainloopConsumer {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;

  // ct: consumer thread index 0..255. Leaves the un-normalized O in acc_o and the row statistics
  // in sm.
  template <class TensorO>
  __device__ static void run(const FnaSm90Params& p, const WorkContext& ctx, SharedStorage& ss, Pipeline& pipe_k,
                             Pipeline& pipe_v, int ct, OnlineSoftmax& sm, TensorO& acc_o) {
    using namespace cute;
    typename Traits::TiledMmaS mma_s;
    typename Traits::TiledMmaPV mma_pv;
    auto thr_s = mma_s.get_thread_slice(ct);
    auto thr_pv = mma_pv.get_thread_slice(ct);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
    Tensor tSrQ = thr_s.partition_fragment_A(sQ);  // (MMA, MMA_M, MMA_K) descriptors
    Tensor tSrK = thr_s.partition_fragment_B(sK);  // (MMA, MMA_N, MMA_K, stage)
    Tensor tOrV = thr_pv.partition_fragment_B(sV);  // (MMA, MMA_N, MMA_K, stage)

    RowWindows win;
    make_row_windows(p, ctx, ct, win);
    sm.init();
    clear(acc_o);

    ss.q_full.wait(0);

    PipelineState st;  // consumer start state: stage 0, phase 0
    int kb[kRank];
    sm80::key_tile_origin(p.geo, ctx.keys, 0, kb);
    const float scale_log2 = p.scale_log2;
    for (int t = 0; t < ctx.keys.total; ++t) {
      Tensor acc_s = partition_fragment_C(mma_s, Shape<Int<Traits::kTileQ>, Int<Traits::kTileKV>>{});
      static_assert(decltype(size(acc_s))::value == Traits::kTileKV / 2, "64 x 128 accumulator per thread");
      pipe_k.consumer_wait(st);
      warpgroup_gemm<true, false>(mma_s, tSrQ, tSrK(_, _, _, st.index()), acc_s);
      warpgroup_wait<0>();
      pipe_k.consumer_release(st);

      CUTE_UNROLL
      for (int e = 0; e < size(acc_s); ++e) acc_s(e) *= scale_log2;
      if (!sm80::key_tile_full(p.geo, ctx.keys, kb)) mask_tile(p, win, kb, ct, acc_s);

      float corr[2];
      sm.update(acc_s, corr);
      CUTE_UNROLL
      for (int e = 0; e < size(acc_o); ++e) acc_o(e) *= corr[frag_slot(e)];

      Tensor p_regs = make_tensor<Element>(acc_s.layout());
      CUTE_UNROLL
      for (int e = 0; e < size(acc_s); ++e) p_regs(e) = Element(acc_s(e));
      Tensor tOrP = make_tensor(p_regs.data(), acc_as_a_layout<Traits::kTileKV>());

      pipe_v.consumer_wait(st);
      warpgroup_gemm<false, true>(mma_pv, tOrP, tOrV(_, _, _, st.index()), acc_o);
      warpgroup_wait<0>();
      pipe_v.consumer_release(st);

      ++st;
      sm80::key_tile_advance(p.geo, ctx.keys, kb);
    }
  }
};

}  // namespace sm90
}  // namespace natten
