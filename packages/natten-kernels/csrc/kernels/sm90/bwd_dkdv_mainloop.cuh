// Producer and consumers of the SM90 backward dK / dV kernel (bwd_dkdv_traits.cuh has the GEMM
// plan) and its work decomposition (the SM80 key-parallel walk: sm80/tile_scheduler.cuh).
//
// Producer (one thread): per work tile (batch, kv head, 128-token key tile), K and V once on the
// kv_full barrier (after kv_empty from the 2nd work tile on), then Q and dO of every visit (query
// head of the group x query tile the key tile is visited by) into a ring stage.
// Consumers (64 keys per warpgroup, cooperative), per visit: threads 0..63 write the visit's column
// table (lse, delta of each query; padding queries: lse = +inf so P = 0) into the slot of the
// visit's parity, a named barrier publishes it (and, two visits later, guarantees every reader is
// done with the slot); then
//   wait stage -> S^T = K Q^T, dP^T = V dO^T -> wait -> (last visit: arrive kv_empty)
//   -> mask S^T on pairs not fully inside the windows -> P^T, dS^T -> dV += P^T dO, dK += dS^T Q
//   -> wait -> release the stage.
#pragma once

#include <cmath>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sm90/bwd_dkdv_params.cuh"
#include "sm90/bwd_dkdv_traits.cuh"
#include "sm90/fragment.cuh"
#include "sm90/mainloop_consumer.cuh"  // mask_value, convert_pairs
#include "sm90/mainloop_producer.cuh"  // load_tile
#include "sm90/params.cuh"

namespace natten {
namespace sm90 {

struct KvWorkContext {
  sm80::KvWorkTile w;
  sm80::KeyTile kt;
  sm80::QueryTilesForKey qs;
  int visits;  // heads_per_kv * qs.total
};

__device__ __forceinline__ KvWorkContext make_kv_work_context(const DkdvParams& p, int64_t idx) {
  KvWorkContext c;
  c.w = sm80::decode_kv_work(p.geo, p.kvg, idx);
  const bool nonempty = sm80::make_key_tile(p.geo, c.w, c.kt);  // always, with dilation 1
  c.qs = sm80::make_query_tiles_for_key(p.geo, c.kt);
  c.visits = nonempty ? p.heads_per_kv * c.qs.total : 0;
  return c;
}

// The queries attending this thread's two keys (row slots), per axis an interval in query slab
// coordinates (window starts and ends grow with the query, so the queries whose window holds key k
// are [first ending at or after k, last starting at or before k]: window::key_run_query_range).
// Computed once per work tile; the mask then needs no per-column window table.
struct KeyQueryRanges {
  int lo[2][kRank];
  int hi[2][kRank];
};

__device__ __forceinline__ void make_key_query_ranges(const DkdvParams& p, const KvWorkContext& c, int ct,
                                                      KeyQueryRanges& kr) {
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    int kc[kRank];
    sm80::tile_coord(frag_row(ct, r), p.geo.kv_log2, kc);
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) {
      const int k = c.kt.k0[a] + kc[a] + c.kt.kv_shift[a];  // global group coordinate
      int lo, hi;
      window::key_run_query_range(k, k, c.kt.axis[a], lo, hi);
      kr.lo[r][a] = lo - c.kt.q_shift[a];
      kr.hi[r][a] = hi - c.kt.q_shift[a];
    }
  }
}

// Query tile and query head of visit v.
__device__ __forceinline__ void visit_query_tile(const DkdvParams& p, const KvWorkContext& c, int v,
                                                 sm80::QueryTile& q, int64_t& head) {
  const int t = v % c.qs.total;
  head = c.w.kv_head * p.heads_per_kv + v / c.qs.total;
  int tile[kRank];
  sm80::query_tile_of_visit(c.qs, t, tile);
  sm80::query_tile_at(p.geo, c.kt, tile, q);
}

template <class Traits>
struct DkdvProducer {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  using Loader = MainloopProducer<Traits>;

  __device__ static void run(const DkdvParams& p, const KvWorkContext& ctx, SharedStorage& ss, Pipeline& pipe,
                             PipelineState& st, int iter) {
    const int64_t b = ctx.w.batch;
    int c[3];
    tma_token_coords(p, b, ctx.kt.k0, p.fold_kv, c);
    if (iter > 0) ss.kv_empty.wait(uint32_t((iter - 1) & 1));
    ss.kv_full.arrive_and_expect_tx(2 * Traits::kTileBytesKV);
    uint64_t* kvbar = reinterpret_cast<uint64_t*>(&ss.kv_full);
    Loader::template load_tile<Traits::kChunkElemsKV>(&p.tma_k, kvbar, ss.k.data(), int(ctx.w.kv_head), c);
    Loader::template load_tile<Traits::kChunkElemsKV>(&p.tma_v, kvbar, ss.v.data(), int(ctx.w.kv_head), c);
    constexpr int kStageElems = Traits::kTileQ * Traits::kHeadDim;
    for (int v = 0; v < ctx.visits; ++v) {
      sm80::QueryTile q;
      int64_t head;
      visit_query_tile(p, ctx, v, q, head);
      tma_token_coords(p, b, q.q0, p.fold_q, c);
      pipe.producer_acquire(st);  // expects Q + dO bytes
      uint64_t* bar = pipe.producer_get_barrier(st);
      Loader::template load_tile<Traits::kChunkElemsQ>(&p.tma_q, bar, ss.q.data() + st.index() * kStageElems,
                                                       int(head), c);
      Loader::template load_tile<Traits::kChunkElemsQ>(&p.tma_do, bar, ss.d_o.data() + st.index() * kStageElems,
                                                       int(head), c);
      ++st;
    }
  }
};

template <class Traits>
struct DkdvConsumer {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr uint32_t kTableBarrier = 2;  // named barrier id (ids 0 / 1 are the forward's turns)

  // Fills the column table of visit (q, head) in slot `slot` (threads ct < kTileQ).
  __device__ static void write_table(const DkdvParams& p, const KvWorkContext& ctx, const sm80::QueryTile& q,
                                     int64_t head, int ct, typename Traits::ColTable& tab) {
    if (ct >= Traits::kTileQ) return;
    int qc[kRank];
    sm80::tile_coord(ct, p.geo.q_log2, qc);
    bool ok = true;
    int64_t off_l = ctx.w.batch * p.lse_batch + head * p.lse_head;
    int64_t off_d = ctx.w.batch * p.delta_batch + head * p.delta_head;
    for (int a = 0; a < kRank; ++a) {
      const int x = q.q0[a] + qc[a];
      ok = ok && x < ctx.kt.n_q[a];
      off_l += int64_t(x) * p.lse_spatial[a];
      off_d += int64_t(x) * p.delta_spatial[a];
    }
    tab.lse2[ct] = ok ? p.lse[off_l] * 1.4426950408889634074f : INFINITY;  // padding query: P = 0
    tab.delta[ct] = ok ? p.delta[off_d] : 0.f;
  }

  // Accumulates the un-scaled dK and dV of the work tile (cleared here). `vis` counts this
  // thread's visits over the CTA's work tiles (table slot parity).
  template <class TensorK, class TensorV>
  __device__ static void run(const DkdvParams& p, const KvWorkContext& ctx, SharedStorage& ss, Pipeline& pipe,
                             int ct, TensorK& acc_dk, TensorV& acc_dv, PipelineState& st, int iter, int& vis) {
    using namespace cute;
    typename Traits::TiledMmaS mma_s;
    typename Traits::TiledMmaAcc mma_acc;
    auto thr_s = mma_s.get_thread_slice(ct);
    auto thr_acc = mma_acc.get_thread_slice(ct);

    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});
    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.d_o.data()), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdOt = make_tensor(make_smem_ptr(ss.d_o.data()), typename Traits::SmemLayoutQt{});
    Tensor tSrK = thr_s.partition_fragment_A(sK);
    Tensor tSrV = thr_s.partition_fragment_A(sV);
    Tensor tSrQ = thr_s.partition_fragment_B(sQ);
    Tensor tSrdO = thr_s.partition_fragment_B(sdO);
    Tensor tArQt = thr_acc.partition_fragment_B(sQt);
    Tensor tArdOt = thr_acc.partition_fragment_B(sdOt);

    clear(acc_dk);
    clear(acc_dv);
    KeyQueryRanges kr;
    make_key_query_ranges(p, ctx, ct, kr);

    ss.kv_full.wait(uint32_t(iter & 1));
    if (ctx.visits <= 0) {  // keys no query attends: dK = dV = 0
      ss.kv_empty.arrive();
      return;
    }
    const float scale_log2 = p.scale_log2;
    const float masked = mask_value(scale_log2);
    auto scores_shape = Shape<Int<Traits::kTileKV>, Int<Traits::kTileQ>>{};
    Tensor p_regs = make_tensor<Element>(partition_fragment_C(mma_s, scores_shape).layout());
    Tensor ds_regs = make_tensor<Element>(partition_fragment_C(mma_s, scores_shape).layout());
    Tensor tP = make_tensor(p_regs.data(), acc_as_a_layout<Traits::kTileQ>());
    Tensor tdS = make_tensor(ds_regs.data(), acc_as_a_layout<Traits::kTileQ>());

    for (int v = 0; v < ctx.visits; ++v, ++vis) {
      sm80::QueryTile q;
      int64_t head;
      visit_query_tile(p, ctx, v, q, head);
      const bool full = sm80::pair_full(p.geo, q, ctx.kt.k0);
      typename Traits::ColTable& tab = ss.cols[vis & 1];
      write_table(p, ctx, q, head, ct, tab);
      cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads, kTableBarrier);

      Tensor acc_s = partition_fragment_C(mma_s, scores_shape);
      Tensor acc_dp = partition_fragment_C(mma_s, scores_shape);
      pipe.consumer_wait(st);
      const int stage = st.index();
      warpgroup_gemm<true, false>(mma_s, tSrK, tSrQ(_, _, _, stage), acc_s);
      warpgroup_gemm<true, false>(mma_s, tSrV, tSrdO(_, _, _, stage), acc_dp);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_s);
      warpgroup_fence_operand(acc_dp);
      if (v == ctx.visits - 1) ss.kv_empty.arrive();  // the last reads of K and V
      if (!full) {
        CUTE_UNROLL
        for (int e = 0; e < size(acc_s); ++e) {
          const int r = frag_slot(e);
          int qc[kRank];
          sm80::tile_coord(frag_col(ct, e), p.geo.q_log2, qc);
          bool ok = true;
          CUTE_UNROLL
          for (int a = 0; a < kRank; ++a) {
            const int x = q.q0[a] + qc[a];
            ok = ok && x >= kr.lo[r][a] && x <= kr.hi[r][a];
          }
          if (!ok) acc_s(e) = masked;
        }
      }
      CUTE_UNROLL
      for (int e = 0; e < size(acc_s); ++e) {
        const int col = frag_col(ct, e);
        const float pe = fast_exp2(fmaf(acc_s(e), scale_log2, -tab.lse2[col]));
        acc_dp(e) = pe * (acc_dp(e) - tab.delta[col]);
        acc_s(e) = pe;
      }
      convert_pairs<Element>(acc_s, p_regs);
      convert_pairs<Element>(acc_dp, ds_regs);
      warpgroup_gemm<false, true>(mma_acc, tP, tArdOt(_, _, _, stage), acc_dv);
      warpgroup_gemm<false, true>(mma_acc, tdS, tArQt(_, _, _, stage), acc_dk);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_dv);
      warpgroup_fence_operand(acc_dk);
      warpgroup_fence_operand(p_regs);
      warpgroup_fence_operand(ds_regs);
      pipe.consumer_release(st);
      ++st;
    }
  }
};

}  // namespace sm90
}  // namespace natten
