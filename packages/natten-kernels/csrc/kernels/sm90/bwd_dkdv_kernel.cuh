// The SM90 backward dK / dV kernel: warp-specialized (1 producer warpgroup issuing TMA, 2 consumer
// warpgroups running wgmma), persistent over the key-parallel work tiles (blockIdx.x, blockIdx.x +
// gridDim.x, ...), and its epilogue: dK = scale * acc and dV stored from registers (16-byte vectors, store_row_vec16;
// the first D / Dv columns, keys inside the key slab only). GQA: a work tile visits the query tiles
// of every query head of its kv head, so dK / dV are reduced over the group in registers. No
// atomics: each dK / dV row is written once (deterministic).
#pragma once

#include <cute/arch/cluster_sm90.hpp>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cutlass/arch/reg_reconfig.h>

#include "sm90/bwd_dkdv_mainloop.cuh"
#include "sm90/pdl.cuh"

namespace natten {
namespace sm90 {

template <class Traits, class TensorAcc>
__device__ __forceinline__ void dkdv_store(const KvWorkContext& ctx, int ct, const TensorAcc& acc, void* ptr,
                                           int64_t sb, int64_t sh, const int64_t* sp, int dim, float scale,
                                           const int geo_kv_log2[kRank]) {
  using Element = typename Traits::Element;
  Element* out = static_cast<Element*>(ptr);
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    int x[kRank];
    const bool valid = tile_row_coords(frag_row(ct, r), geo_kv_log2, ctx.kt.k0, ctx.kt.n_kv, x);
    store_row_vec16<Element, Traits::kHeadDim>(
        acc, r, ct, out + token_offset(ctx.w.batch * sb + ctx.w.kv_head * sh, x, sp), dim, scale, valid);
  }
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) fna_sm90_bwd_dkdv_kernel(const __grid_constant__ DkdvParams p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  extern __shared__ char smem_raw[];
  // 1024-byte aligned, derived from smem_raw so that the compiler keeps the shared address space
  // (LDS for the visit tables instead of generic loads)
  const uint32_t misalign = uint32_t(__cvta_generic_to_shared(smem_raw)) & 1023u;
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw + ((1024u - misalign) & 1023u));

  NATTEN_SM90_TRACE_NOW(trace_cta0);
  const int warp = cutlass::canonical_warp_idx_sync();
  const bool producer = warp / 4 == 0;
  if (warp == 0 && cute::elect_one_sync()) {
    cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.tma_q));
    cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.tma_do));
    cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.tma_k));
    cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.tma_v));
  }
  typename Pipeline::Params pp;
  pp.transaction_bytes = 2 * Traits::kTileBytesQ + Traits::kTableBytes;  // Q, dO and the table of one visit
  pp.role = producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = false;  // the producer arrives itself, after storing the visit's tile origin
  pp.num_consumers = Traits::kConsumerThreads;
  Pipeline pipe(ss.pipe_q, pp, cute::Shape<cute::_1, cute::_1, cute::_1>{});
  if (threadIdx.x == 0) {
    ss.kv_full.init(1);
    ss.kv_empty.init(Traits::kConsumerThreads);
  }
  cutlass::arch::fence_barrier_init();
  __syncthreads();
  // A dependent of the visit-table kernel (pdl.cuh): its tables and work counter are read below.
  // The dQ kernel, this kernel's dependent, reads none of its outputs, so it may start right away
  // (on the SMs this kernel's CTAs leave).
  pdl_wait();
  pdl_launch_dependents();

  // Work tiles: schedule position blockIdx.x first; each next position comes from a global counter
  // (dynamic: gridDim.x + atomicAdd; the tables kernel zeroed it), so a CTA whose tiles had fewer
  // visits takes more of them. Position -> work tile: dkdv_work_index. With a work order (computed
  // by the host, bwd_dkdv_order.hpp: longest walks first) a CTA's second position is its mirror
  // 2 gridDim.x - 1 - blockIdx.x and the counter starts at 2 gridDim.x (see the producer). The
  // producer thread fetches each index one work tile early and stores it into ss.work[(iter + 1) & 1]
  // before arriving on tile iter's kv_full, which publishes it; the consumers read it after that
  // tile (the slot is rewritten two tiles later, after their kv_empty arrive of the tile in
  // between), so they know each tile's index before waiting for its K / V.
  const int64_t num_work = p.kvg.num_work;
  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      PipelineState st = cutlass::make_producer_start_state<Pipeline>();
      volatile int64_t* work = ss.work;
      int64_t idx = dkdv_work_index(p, blockIdx.x);  // grid <= num_work
      // positions past the end stay >= num_work (the loops' exit)
      auto tile_at = [&](int64_t o) { return o < num_work ? dkdv_work_index(p, o) : o; };
      const int64_t grid = gridDim.x;
      // The next position is fetched one tile early (the atomic's latency hides under the wait for
      // kv_empty), so a CTA's second position is fixed before any tile ends. An ordered launch
      // makes it the mirror 2G - 1 - b, which pairs the b-th longest walk of the first round with
      // the b-th shortest of the second, and hands out 2G, 2G + 1, ... from the counter; the
      // natural order takes G, G + 1, ... from the counter from the start.
      const bool ordered = p.order_tiles > 0;
      const int64_t base = ordered ? 2 * grid : grid;
      auto next = [&]() { return tile_at(base + atomicAdd(p.work_counter, 1u)); };
      int64_t pending = ordered ? tile_at(2 * grid - 1 - int64_t(blockIdx.x)) : next();
      for (int iter = 0; idx < num_work; ++iter) {
        if (iter > 0) ss.kv_empty.wait(uint32_t((iter - 1) & 1));
        work[(iter + 1) & 1] = pending;
        DkdvProducer<Traits>::run(p, make_kv_work_context(p, idx), ss, pipe, st);
        idx = work[(iter + 1) & 1];
        pending = next();
      }
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int ct = int(threadIdx.x) - 128;
    typename Traits::TiledMmaAcc mma_acc;
    PipelineState st;
    volatile int64_t* work = ss.work;
    int64_t idx = dkdv_work_index(p, blockIdx.x);
    int iter = 0;
    for (; idx < num_work; ++iter) {
      NATTEN_SM90_TRACE_NOW(trace_t0);
      const KvWorkContext ctx = make_kv_work_context_warp(p, idx, ct & 31);
      auto acc_shape = cute::Shape<cute::Int<Traits::kTileKV>, cute::Int<Traits::kHeadDim>>{};
      cute::Tensor acc_dk = cute::partition_fragment_C(mma_acc, acc_shape);
      cute::Tensor acc_dv = cute::partition_fragment_C(mma_acc, acc_shape);
      DkdvConsumer<Traits>::run(p, ctx, ss, pipe, ct, acc_dk, acc_dv, st, iter);
      dkdv_store<Traits>(ctx, ct, acc_dk, p.dk, p.dk_batch, p.dk_head, p.dk_spatial, p.dim, p.scale, p.geo.kv_log2);
      dkdv_store<Traits>(ctx, ct, acc_dv, p.dv, p.dv_batch, p.dv_head, p.dv_spatial, p.dim_v, 1.f, p.geo.kv_log2);
      if (ct == 0) NATTEN_SM90_TRACE_EVENT(p.trace, kTraceDkdvTile, idx, trace_t0, trace_now(), unsigned(ctx.visits));
      idx = work[(iter + 1) & 1];
    }
    if (ct == 0) NATTEN_SM90_TRACE_EVENT(p.trace, kTraceDkdvCta, blockIdx.x, trace_cta0, trace_now(), unsigned(iter));
  }
#endif
}

}  // namespace sm90
}  // namespace natten
