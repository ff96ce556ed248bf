// Producer and consumers of the SM90 backward dQ kernel (bwd_dq_traits.cuh has the GEMM plan).
//
// Producer (one thread): per work tile, Q and dO on the q_full barrier (after q_empty from the 2nd
// work tile on), then per key tile of the forward's walk (64- or 128-token key tiles, DqTraits) K
// and V into one ring stage. Consumers (64 query rows per warpgroup, cooperative: the warpgroups run independently),
// per key tile:
//   wait stage -> issue S = Q K^T and dP = dO V^T -> wait -> (last tile: arrive q_empty)
//   -> mask S on partial tiles (column words) -> P = 2^(S * scale_log2 - lse * log2 e) -> dS = P (dP - delta)
//   -> issue dQ += dS K -> wait -> release the stage.
// Rows past the query slab (tile padding, or the next batch's rows on the folded X axis) compute
// with lse = delta = 0 and are never stored (their dQ rows depend only on themselves).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "sm90/bwd_dq_params.cuh"
#include "sm90/bwd_dq_traits.cuh"
#include "sm90/fragment.cuh"
#include "sm90/column_words.cuh"
#include "sm90/mainloop_consumer.cuh"  // RowWindows, convert_pairs
#include "sm90/mainloop_producer.cuh"  // load_tile
#include "sm90/params.cuh"
#include "sm90/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

template <class Traits>
struct DqProducer {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  using Loader = MainloopProducer<Traits>;

  __device__ static void run(const DqParams& p, const WorkContext& ctx, SharedStorage& ss, Pipeline& pipe,
                             PipelineState& st, int iter) {
    const int64_t b = ctx.work.batch;
    int o[kRank], c[3];
    query_tile_origin(ctx, o);
    tma_token_coords(p, b, o, p.fold_q, c);
    if (iter > 0) ss.q_empty.wait(uint32_t((iter - 1) & 1));
    ss.q_full.arrive_and_expect_tx(2 * Traits::kTileBytesQ);
    uint64_t* qbar = reinterpret_cast<uint64_t*>(&ss.q_full);
    Loader::template load_tile<Traits::kChunkElemsQ>(&p.tma_q, qbar, ss.q.data(), int(ctx.work.head), c);
    Loader::template load_tile<Traits::kChunkElemsQ>(&p.tma_do, qbar, ss.d_o.data(), int(ctx.work.head), c);

    int kb[kRank];
    walk_origin(p.geo, ctx.keys, p.walk_rotate, kb);
    const int kv_head = int(ctx.kv_head);
    constexpr int kStageElems = Traits::kTileKV * Traits::kHeadDim;
    for (int t = 0; t < ctx.keys.total; ++t) {
      tma_token_coords(p, b, kb, p.fold_kv, c);
      pipe.producer_acquire(st);  // expects K + V bytes
      uint64_t* bar = pipe.producer_get_barrier(st);
      Loader::template load_tile<Traits::kChunkElemsKV>(&p.tma_k, bar, ss.k.data() + st.index() * kStageElems,
                                                        kv_head, c);
      Loader::template load_tile<Traits::kChunkElemsKV>(&p.tma_v, bar, ss.v.data() + st.index() * kStageElems,
                                                        kv_head, c);
      ++st;
      walk_advance(p.geo, ctx.keys, kb);
    }
  }
};

// lse (log2 domain) and delta of this thread's two row slots; 0 for rows past the query slab.
__device__ __forceinline__ void load_row_stats(const DqParams& p, const WorkContext& ctx, int ct, float lse2[2],
                                               float delta[2]) {
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    int x[kRank];
    const bool valid = tile_row_coords(frag_row(ct, r), p.geo.q_log2, ctx.qt.q0, ctx.qt.n_q, x);
    const int64_t b = ctx.work.batch, h = ctx.work.head;
    lse2[r] = valid ? p.lse[token_offset(b * p.lse_batch + h * p.lse_head, x, p.lse_spatial)] * 1.4426950408889634074f
                    : 0.f;
    delta[r] = valid ? p.delta[token_offset(b * p.delta_batch + h * p.delta_head, x, p.delta_spatial)] : 0.f;
  }
}

template <class Traits>
struct DqConsumer {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;

  // Accumulates the un-scaled dQ of the work tile into acc_dq (cleared here).
  template <class TensorDq>
  __device__ static void run(const DqParams& p, const WorkContext& ctx, SharedStorage& ss, Pipeline& pipe, int ct,
                             TensorDq& acc_dq, PipelineState& st, int iter) {
    using namespace cute;
    typename Traits::TiledMmaS mma_s;
    typename Traits::TiledMmaDq mma_dq;
    auto thr_s = mma_s.get_thread_slice(ct);
    auto thr_dq = mma_dq.get_thread_slice(ct);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.d_o.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{});
    Tensor tSrQ = thr_s.partition_fragment_A(sQ);
    Tensor tSrdO = thr_s.partition_fragment_A(sdO);
    Tensor tSrK = thr_s.partition_fragment_B(sK);
    Tensor tSrV = thr_s.partition_fragment_B(sV);
    Tensor tDrK = thr_dq.partition_fragment_B(sKt);

    RowWindows win;
    make_row_windows(p, ctx, ct, win);
    sm80::KeyTiles keys = ctx.keys;
    pin_registers(keys);  // kept in registers through the key loop (work_context.cuh)
    float lse2[2], delta[2];
    load_row_stats(p, ctx, ct, lse2, delta);
    clear(acc_dq);

    const int total = keys.total;
    const uint32_t q_phase = uint32_t(iter & 1);
    ss.q_full.wait(q_phase);
    if (total <= 0) {  // never for valid NA; keeps the Q handshake
      ss.q_empty.arrive();
      return;
    }
    const float scale_log2 = p.scale_log2;
    const float masked = mask_value(scale_log2);
    auto scores_shape = Shape<Int<Traits::kTileQ>, Int<Traits::kTileKV>>{};
    Tensor ds_regs = make_tensor<Element>(partition_fragment_C(mma_s, scores_shape).layout());
    Tensor tDrdS = make_tensor(ds_regs.data(), acc_as_a_layout<Traits::kTileKV>());

    int kb[kRank];
    walk_origin(p.geo, keys, p.walk_rotate, kb);
    for (int t = 0; t < total; ++t) {
      Tensor acc_s = partition_fragment_C(mma_s, scores_shape);
      Tensor acc_dp = partition_fragment_C(mma_s, scores_shape);
      pipe.consumer_wait(st);
      const int stage = st.index();
      warpgroup_gemm<true, false>(mma_s, tSrQ, tSrK(_, _, _, stage), acc_s);
      warpgroup_gemm<true, false>(mma_s, tSrdO, tSrV(_, _, _, stage), acc_dp);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_s);
      warpgroup_fence_operand(acc_dp);
      if (t == total - 1) ss.q_empty.arrive();  // the last reads of Q and dO
      if (!sm80::key_tile_full(p.geo, keys, kb)) {
        constexpr int kHalves = Traits::kTileKV / 64;  // 64-column words per row (kcols: one half)
        uint64_t w[kHalves][2];
        CUTE_UNROLL
        for (int h = 0; h < kHalves; ++h) {
          CUTE_UNROLL
          for (int r = 0; r < 2; ++r) {
            int lo[kRank];
            CUTE_UNROLL
            for (int a = 0; a < kRank; ++a) lo[a] = win.start[r][a] - kb[a] - (h ? p.kcols_off[a] : 0);
            w[h][r] = allowed_columns(p.kcols, lo, win.len[r]);
          }
        }
        mask_by_words<kHalves>(w, ct, masked, acc_s);
      }
      CUTE_UNROLL
      for (int e = 0; e < size(acc_s); ++e) {
        const int r = frag_slot(e);
        const float pe = fast_exp2(fmaf(acc_s(e), scale_log2, -lse2[r]));
        acc_dp(e) = pe * (acc_dp(e) - delta[r]);
      }
      convert_pairs<Element>(acc_dp, ds_regs);
      warpgroup_gemm<false, true>(mma_dq, tDrdS, tDrK(_, _, _, stage), acc_dq);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_dq);
      warpgroup_fence_operand(ds_regs);
      pipe.consumer_release(st);
      ++st;
      walk_advance(p.geo, keys, kb);
    }
  }
};

}  // namespace sm90
}  // namespace natten
