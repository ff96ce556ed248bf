// Producer and consumers of the SM90 backward dK / dV kernel (bwd_dkdv_traits.cuh has the GEMM
// plan) and its work decomposition (the SM80 key-parallel walk: sm80/tile_scheduler.cuh).
//
// Producer (thread 0): per work tile (batch, kv head, 128-token key tile), K and V once on the
// kv_full barrier (after kv_empty from the 2nd work tile on), then per visit (query head of the
// group x query tile the key tile is visited by) into a ring stage: the tile origin, Q and dO (TMA)
// and the visit's lse / delta table rows (two 256-byte bulk copies from the tables that
// fna_sm90_bwd_dkdv_tables_kernel wrote), all on the stage's full barrier. The consumers thus get
// every per-visit input from shared memory, with no global loads or window math per visit.
// Consumers (64 keys per warpgroup; the two warpgroups never wait for each other, so one's softmax
// runs under the other's GEMMs), per visit:
//   wait stage + table -> S^T = K Q^T, dP^T = V dO^T -> wait -> (last visit: arrive kv_empty)
//   -> mask S^T unless the thread's two keys see every query of the tile (a per-work-tile bound
//      test per axis; else column words) -> P^T, dS^T -> dV += P^T dO, dK += dS^T Q -> wait
//   -> release the stage (Q, dO and the table).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sm90/bwd_dkdv_params.cuh"
#include "sm90/bwd_dkdv_traits.cuh"
#include "sm90/column_words.cuh"
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

// The consumers' form (every lane of the warp calls it): the key tile's query run needs 2 kRank
// binary searches, which lanes 0 .. 2 kRank - 1 run one each (window::query_run_bound) and
// shuffle to the warp, instead of every lane running all of them.
__device__ __forceinline__ KvWorkContext make_kv_work_context_warp(const DkdvParams& p, int64_t idx, int lane) {
  KvWorkContext c;
  c.w = sm80::decode_kv_work(p.geo, p.kvg, idx);
  const bool nonempty = sm80::make_key_tile(p.geo, c.w, c.kt);
  const int axis = (lane >> 1) < kRank ? lane >> 1 : kRank - 1;
  const bool hi = (lane & 1) != 0;
  int k = 0;
  window::Axis ax = c.kt.axis[0];
  CUTE_UNROLL
  for (int a = 0; a < kRank; ++a) {
    if (a == axis) {
      k = (hi ? c.kt.k_last[a] : c.kt.k0[a]) + c.kt.kv_shift[a];
      ax = c.kt.axis[a];
    }
  }
  const int v = window::query_run_bound(k, ax, hi);
  int lo[kRank], up[kRank];
  CUTE_UNROLL
  for (int a = 0; a < kRank; ++a) {
    lo[a] = __shfl_sync(0xffffffffu, v, 2 * a);
    up[a] = __shfl_sync(0xffffffffu, v, 2 * a + 1);
  }
  c.qs = sm80::query_tiles_from_runs(p.geo, c.kt, lo, up);
  c.visits = nonempty ? p.heads_per_kv * c.qs.total : 0;
  return c;
}

// The queries attending this thread's two keys (row slots), per axis an interval in query slab
// coordinates (window starts and ends grow with the query, so the queries whose window holds key k
// are [first ending at or after k, last starting at or before k]: window::key_run_query_range).
// Computed once per work tile; the mask then needs no per-column window table.
struct KeyQueryRanges {
  int lo[2][kRank];
  int len[2][kRank];  // hi - lo (inclusive); an empty range is lo = 2^29, len = 0 (allowed_columns)
  // A visit at tile origin q0 is full (both keys see every query of the tile: no mask) iff
  // full_lo[a] <= q0[a] <= full_hi[a] on every axis; from lo / len and the tile extent.
  int full_lo[kRank];
  int full_hi[kRank];
};

// The four lanes of a quad share their two rows, so each runs one of the four binary searches per
// axis (lane q: row slot q / 2, the run's end if q is odd, else its start: window::query_run_bound)
// and the quad exchanges them. Every lane of the warp calls it.
__device__ __forceinline__ void make_key_query_ranges(const DkdvParams& p, const KvWorkContext& c, int ct,
                                                      KeyQueryRanges& kr) {
  const int quad = ct & 28;  // lane of the quad's first thread
  int kc[kRank];
  sm80::tile_coord(frag_row(ct, (ct >> 1) & 1), p.geo.kv_log2, kc);
  CUTE_UNROLL
  for (int a = 0; a < kRank; ++a) {
    const int k = c.kt.k0[a] + kc[a] + c.kt.kv_shift[a];  // global group coordinate
    const int v = window::query_run_bound(k, c.kt.axis[a], (ct & 1) != 0);
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int lo = __shfl_sync(0xffffffffu, v, quad + 2 * r);
      const int hi = __shfl_sync(0xffffffffu, v, quad + 2 * r + 1);
      const bool empty = hi < lo;
      kr.lo[r][a] = empty ? (1 << 29) : lo - c.kt.q_shift[a];
      kr.len[r][a] = empty ? 0 : hi - lo;
    }
  }
  CUTE_UNROLL
  for (int a = 0; a < kRank; ++a) {
    const int top = (1 << p.qcols.log2[a]) - 1;  // the query tile's last offset on axis a
    kr.full_lo[a] = max(kr.lo[0][a], kr.lo[1][a]);
    kr.full_hi[a] = min(kr.lo[0][a] + kr.len[0][a], kr.lo[1][a] + kr.len[1][a]) - top;
  }
}

template <class Traits>
struct DkdvProducer {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  using Loader = MainloopProducer<Traits>;

  // One thread. The pipeline's producer is not its leader (kernel), so producer_acquire only waits
  // for the stage to be free; the tile origin is stored before the arrive (whose release publishes
  // it), then the copies follow.
  // The caller has waited for kv_empty (the previous work tile's K / V are no longer read) and
  // stored the next work index into ss.work; kv_full's arrive here publishes it.
  __device__ static void run(const DkdvParams& p, const KvWorkContext& ctx, SharedStorage& ss, Pipeline& pipe,
                             PipelineState& st) {
    const int b = int(ctx.w.batch);
    int c[3];
    tma_token_coords(p, b, ctx.kt.k0, p.fold_kv, c);
    ss.kv_full.arrive_and_expect_tx(2 * Traits::kTileBytesKV);
    uint64_t* kvbar = reinterpret_cast<uint64_t*>(&ss.kv_full);
    Loader::template load_tile<Traits::kChunkElemsKV>(&p.tma_k, kvbar, ss.k.data(), int(ctx.w.kv_head), c);
    Loader::template load_tile<Traits::kChunkElemsKV>(&p.tma_v, kvbar, ss.v.data(), int(ctx.w.kv_head), c);
    constexpr int kStageElems = Traits::kTileQ * Traits::kHeadDim;
    // The visits as an odometer (query tile index on the last axis fastest, then the other axes,
    // then the query head of the group), so that no division runs per visit. The walk's bounds stay
    // in shared memory (this thread runs with 24 registers).
    volatile int* first = ss.walk_first;
    volatile int* end = ss.walk_end;
    int tile[kRank];
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) {
      tile[a] = ctx.qs.first[a];
      first[a] = ctx.qs.first[a];
      end[a] = ctx.qs.first[a] + ctx.qs.count[a];
    }
    int head = int(ctx.w.kv_head) * p.heads_per_kv;
    for (int left = ctx.visits; left > 0; --left) {
      int q0[kRank];
      CUTE_UNROLL
      for (int a = 0; a < kRank; ++a) q0[a] = tile[a] << p.geo.q_log2[a];
      tma_token_coords(p, b, q0, p.fold_q, c);
      const int stage = st.index();
      pipe.producer_acquire(st);  // waits for the stage (Q, dO, table) to be free
      typename Traits::VisitTable& tab = ss.tables[stage];
      CUTE_UNROLL
      for (int a = 0; a < kRank; ++a) tab.q0[a] = q0[a];
      uint64_t* bar = pipe.producer_get_barrier(st);
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(bar, 2 * Traits::kTileBytesQ +
                                                                              Traits::kTableBytes);
      Loader::template load_tile<Traits::kChunkElemsQ>(&p.tma_q, bar, ss.q.data() + stage * kStageElems, head, c);
      Loader::template load_tile<Traits::kChunkElemsQ>(&p.tma_do, bar, ss.d_o.data() + stage * kStageElems, head, c);
      int64_t row = int64_t(b) * p.geo.heads + head;  // -> the tile's row of the visit tables
      CUTE_UNROLL
      for (int a = 0; a < kRank; ++a) row = row * p.geo.q_tiles[a] + tile[a];
      row *= Traits::kTileQ;
      cute::SM90_BULK_COPY_G2S::copy(p.tab_lse2 + row, bar, tab.lse2, Traits::kTableBytes / 2);
      cute::SM90_BULK_COPY_G2S::copy(p.tab_delta + row, bar, tab.delta, Traits::kTableBytes / 2);
      ++st;
      bool carry = true;
      CUTE_UNROLL
      for (int a = kRank - 1; a >= 0; --a) {
        if (carry) {
          carry = ++tile[a] == end[a];
          if (carry) tile[a] = first[a];
        }
      }
      if (carry) ++head;
    }
  }
};

template <class Traits>
struct DkdvConsumer {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;

  // Accumulates the un-scaled dK and dV of the work tile (cleared here); `iter` counts the CTA's
  // work tiles (kv_full parity).
  template <class TensorK, class TensorV>
  __device__ static void run(const DkdvParams& p, const KvWorkContext& ctx, SharedStorage& ss, Pipeline& pipe,
                             int ct, TensorK& acc_dk, TensorV& acc_dv, PipelineState& st, int iter) {
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
    // The SS GEMMs' A descriptors (this warpgroup's 64 rows of K and V) depend on the warpgroup only:
    // taken from its first thread's slice by a warp-uniform index (a shuffle from lane 0), they are
    // built in uniform registers instead of being moved there (R2UR) before every wgmma.
    auto thr_s_wg = mma_s.get_thread_slice(__shfl_sync(0xffffffffu, ct & ~127, 0));
    Tensor tSrK = thr_s_wg.partition_fragment_A(sK);
    Tensor tSrV = thr_s_wg.partition_fragment_A(sV);
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

    for (int v = 0; v < ctx.visits; ++v) {
      Tensor acc_s = partition_fragment_C(mma_s, scores_shape);
      Tensor acc_dp = partition_fragment_C(mma_s, scores_shape);
      pipe.consumer_wait(st);  // Q, dO and the table
      const int stage = st.index();
      warpgroup_gemm<true, false>(mma_s, tSrK, tSrQ(_, _, _, stage), acc_s);
      warpgroup_gemm<true, false>(mma_s, tSrV, tSrdO(_, _, _, stage), acc_dp);
      const typename Traits::VisitTable& tab = ss.tables[stage];
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_s);
      warpgroup_fence_operand(acc_dp);
      if (v == ctx.visits - 1) ss.kv_empty.arrive();  // the last reads of K and V
      bool full = true;  // both of this thread's keys see every column (query) of the tile
      CUTE_UNROLL
      for (int a = 0; a < kRank; ++a) full = full && tab.q0[a] >= kr.full_lo[a] && tab.q0[a] <= kr.full_hi[a];
      if (!full) {  // mask by the column words of the two keys
        uint64_t w[1][2];
        CUTE_UNROLL
        for (int r = 0; r < 2; ++r) {
          int lo[kRank];
          CUTE_UNROLL
          for (int a = 0; a < kRank; ++a) lo[a] = kr.lo[r][a] - tab.q0[a];
          w[0][r] = allowed_columns(p.qcols, lo, kr.len[r]);
        }
        if ((w[0][0] & w[0][1]) != ~uint64_t(0)) mask_by_words<1>(w, ct, masked, acc_s);
      }
      CUTE_UNROLL
      for (int j = 0; j < size(acc_s) / 4; ++j) {  // 8-column group j: columns 8 j + 2 (ct % 4), + 1
        const int col = frag_col(ct, 4 * j);        // even: one 8-byte load per table
        const float2 l2 = *reinterpret_cast<const float2*>(&tab.lse2[col]);
        const float2 dl = *reinterpret_cast<const float2*>(&tab.delta[col]);
        CUTE_UNROLL
        for (int i = 0; i < 4; ++i) {  // value 4 j + i: column col + (i & 1), row slot i >> 1
          const int e = 4 * j + i;
          const float pe = fast_exp2(fmaf(acc_s(e), scale_log2, -((i & 1) ? l2.y : l2.x)));
          acc_dp(e) = pe * (acc_dp(e) - ((i & 1) ? dl.y : dl.x));
          acc_s(e) = pe;
        }
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
      pipe.consumer_release(st);  // Q, dO and the table of this stage
      ++st;
    }
  }
};

}  // namespace sm90
}  // namespace natten
