// Producer of the SM90 forward: one elected thread of warpgroup 0 issues every TMA load.
// Q: one box per 64-element head-dim chunk, once, on its own transaction barrier.
// K, V: per key tile (the SM80 walk: odometer over the per-axis key box, last axis fastest), one
// box per chunk into the stage of a PipelineTmaAsync ring each (K and V have separate rings so the
// S = QK^T GEMM can start before V has landed); V runs one tile behind K (see run()).
#pragma once

#include <cute/arch/copy_sm90_tma.hpp>

#include "sm90/kernel_traits.cuh"
#include "sm90/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

template <class Traits>
struct MainloopProducer {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;

  static constexpr uint64_t kCacheHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);

  // Loads the `Traits::kChunks` boxes of one tile (all head-dim chunks, kChunkElems elements each)
  // into `dst`.
  template <int kChunkElems>
  __device__ static void load_tile(const CUtensorMap* desc, uint64_t* bar, Element* dst, int head,
                                   const int c[3]) {
    CUTE_UNROLL
    for (int k = 0; k < Traits::kChunks; ++k) {
      cute::SM90_TMA_LOAD_5D::copy(desc, bar, kCacheHint, dst + k * kChunkElems, k * Traits::kChunk, head,
                                   c[0], c[1], c[2]);
    }
  }

  // Called by exactly one thread, once per work tile of the CTA. st_k / st_v carry the ring
  // positions from one work tile to the next; `iter` counts the CTA's work tiles (0, 1, ...).
  // kPublish (the dynamic work order): next_idx, the CTA's next work index, is stored to
  // ss.work[(iter + 1) & 1] before the Q barrier's arrive, whose release publishes it to the
  // consumers; they read it after this tile. The slot was last read at the end of tile iter - 2,
  // before the consumers' q_empty arrive of tile iter - 1, which the q_empty wait before the store
  // covers.
  template <bool kPublish = false>
  __device__ static void run(const FnaSm90Params& p, const WorkContext& ctx, SharedStorage& ss, Pipeline& pipe_k,
                             Pipeline& pipe_v, PipelineState& st_k, PipelineState& st_v, int iter,
                             int64_t next_idx = 0) {
    const int64_t b = ctx.work.batch;
    int o[kRank], c[3];
    query_tile_origin(ctx, o);
    tma_token_coords(p, b, o, p.fold_q, c);
    // One Q buffer: wait until both consumer warpgroups are done with the previous work tile's Q
    // (they arrive after their last S GEMM completed, before that tile's last PV GEMM and its
    // epilogue), so this Q load and the first K / V loads overlap the previous tile's tail.
    if (iter > 0) ss.q_empty.wait(uint32_t((iter - 1) & 1));
    if constexpr (kPublish) reinterpret_cast<volatile int64_t*>(ss.work)[(iter + 1) & 1] = next_idx;
    ss.q_full.arrive_and_expect_tx(Traits::kTileBytesQ);
    load_tile<Traits::kChunkElemsQ>(&p.tma_q, reinterpret_cast<uint64_t*>(&ss.q_full), ss.q.data(), int(ctx.work.head), c);

    // Issue order K0, K1, V0, K2, V1, ..., K(T-1), V(T-2), V(T-1): the consumers wait for K(t)
    // before V(t-1) (their S(t) GEMM is issued before O += P(t-1) V(t-1)), so K(t) must not queue
    // behind V(t-1). K and V have separate states (V runs one tile behind).
    int kb[kRank], vb[kRank];
    sm80::key_tile_origin(p.geo, ctx.keys, 0, kb);
    sm80::key_tile_origin(p.geo, ctx.keys, 0, vb);
    const int kv_head = int(ctx.kv_head);
    constexpr int kStageElems = Traits::kTileKV * Traits::kHeadDim;
    const int total = ctx.keys.total;
    for (int t = 0; t <= total; ++t) {
      if (t < total) {
        tma_token_coords(p, b, kb, p.fold_kv, c);
        pipe_k.producer_acquire(st_k);  // waits for the stage to be free, then expects kTileBytesKV
        load_tile<Traits::kChunkElemsKV>(&p.tma_k, pipe_k.producer_get_barrier(st_k), ss.k.data() + st_k.index() * kStageElems, kv_head, c);
        ++st_k;
        sm80::key_tile_advance(p.geo, ctx.keys, kb);
      }
      if (t > 0) {
        tma_token_coords(p, b, vb, p.fold_kv, c);
        pipe_v.producer_acquire(st_v);
        load_tile<Traits::kChunkElemsKV>(&p.tma_v, pipe_v.producer_get_barrier(st_v), ss.v.data() + st_v.index() * kStageElems, kv_head, c);
        ++st_v;
        sm80::key_tile_advance(p.geo, ctx.keys, vb);
      }
    }
    // No producer tail needed: the CTA is a cluster of one, and the consumers wait on the full
    // barrier of every tile issued here before they (and with them the CTA) exit.
  }
};

}  // namespace sm90
}  // namespace natten
