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

// kCluster: the CTA is member `rank` of a cluster pair (fna_forward_kernel.cuh): it loads the K / V
// head-dim chunks c with c % 2 == rank and multicasts them to both CTAs of the cluster (same stage,
// same offset, each CTA's own full barrier: each expects the whole tile, half from each producer).
template <class Traits, bool kCluster = false>
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

  // K / V tile: every chunk (load_tile), or with kCluster this CTA's half, multicast to the pair.
  // (paired false: a kCluster CTA's unpaired chunk item, whole tiles into its own ring.)
  template <int kChunkElems>
  __device__ static void load_kv_tile(const CUtensorMap* desc, uint64_t* bar, Element* dst, int head, const int c[3],
                                      int rank, bool paired) {
    if constexpr (kCluster) {
      static_assert(Traits::kChunks % 2 == 0, "cluster pairs split the head-dim chunks");
      if (paired) {
        CUTE_UNROLL
        for (int k = 0; k < Traits::kChunks; ++k) {
          if ((k & 1) != rank) continue;
          cute::SM90_TMA_LOAD_MULTICAST_5D::copy(desc, bar, uint16_t(0x3), kCacheHint, dst + k * kChunkElems,
                                                 k * Traits::kChunk, head, c[0], c[1], c[2]);
        }
        return;
      }
    }
    (void)rank;
    (void)paired;
    load_tile<kChunkElems>(desc, bar, dst, head, c);
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
                             int64_t next_idx = 0, int rank = 0, bool paired = true) {
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
    walk_origin(p.geo, ctx.keys, p.walk_rotate, kb);
    walk_origin(p.geo, ctx.keys, p.walk_rotate, vb);
    const int kv_head = int(ctx.kv_head);
    constexpr int kStageElems = Traits::kTileKV * Traits::kHeadDim;
    const int total = ctx.keys.total;
    for (int t = 0; t <= total; ++t) {
      if (t < total) {
        tma_token_coords(p, b, kb, p.fold_kv, c);
        pipe_k.producer_acquire(st_k);  // waits for the stage to be free, then expects kTileBytesKV
        load_kv_tile<Traits::kChunkElemsKV>(&p.tma_k, pipe_k.producer_get_barrier(st_k),
                                            ss.k.data() + st_k.index() * kStageElems, kv_head, c, rank, paired);
        ++st_k;
        walk_advance(p.geo, ctx.keys, kb);
      }
      if (t > 0) {
        tma_token_coords(p, b, vb, p.fold_kv, c);
        pipe_v.producer_acquire(st_v);
        load_kv_tile<Traits::kChunkElemsKV>(&p.tma_v, pipe_v.producer_get_barrier(st_v),
                                            ss.v.data() + st_v.index() * kStageElems, kv_head, c, rank, paired);
        ++st_v;
        walk_advance(p.geo, ctx.keys, vb);
      }
    }
    // No producer tail needed: the consumers wait on the full barrier of every tile issued here
    // before they (and with them the CTA) exit; with kCluster the kernel's final cluster_sync keeps
    // both CTAs until the peer's consumers have done the same.
  }
};

}  // namespace sm90
}  // namespace natten
