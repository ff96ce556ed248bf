// The SM90 backward dQ kernel: warp-specialized like the forward (1 producer warpgroup issuing TMA,
// 2 consumer warpgroups running wgmma), persistent (each CTA walks its work tiles in
// the rotated round-robin of tile_scheduler.cuh; the Q/dO buffer and the K/V ring carry over between them), and its
// epilogue: dQ = scale * acc stored from registers (16-byte vectors, store_row_vec16; the first D columns, rows inside
// the query slab only). Deterministic: each dQ row is written once, no atomics.
#pragma once

#include <cute/arch/cluster_sm90.hpp>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cutlass/arch/reg_reconfig.h>

#include "sm90/bwd_dq_mainloop.cuh"
#include "sm90/pdl.cuh"

namespace natten {
namespace sm90 {

template <class Traits, class TensorDq>
__device__ __forceinline__ void dq_epilogue_store(const DqParams& p, const WorkContext& ctx, int ct,
                                                  TensorDq& acc_dq) {
  using Element = typename Traits::Element;
  Element* out = static_cast<Element*>(p.dq);
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    int x[kRank];
    const bool valid = tile_row_coords(frag_row(ct, r), p.geo.q_log2, ctx.qt.q0, ctx.qt.n_q, x);
    const int64_t off = token_offset(ctx.work.batch * p.dq_batch + ctx.work.head * p.dq_head, x, p.dq_spatial);
    store_row_vec16<Element, Traits::kHeadDim>(acc_dq, r, ct, out + off, p.dim, p.scale, valid);  // columns < D
  }
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) fna_sm90_bwd_dq_kernel(const __grid_constant__ DqParams p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  extern __shared__ char smem_raw[];
  const uintptr_t base = (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023);
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(base);

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
  pp.transaction_bytes = 2 * Traits::kTileBytesKV;  // K and V of one key tile
  pp.role = producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = threadIdx.x == 0;
  pp.num_consumers = Traits::kConsumerThreads;
  Pipeline pipe(ss.pipe_kv, pp, cute::Shape<cute::_1, cute::_1, cute::_1>{});
  if (threadIdx.x == 0) {
    ss.q_full.init(1);
    ss.q_empty.init(Traits::kConsumerThreads);
  }
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  const int64_t num_work = p.geo.num_work;
  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      PipelineState st = cutlass::make_producer_start_state<Pipeline>();
      int iter = 0;
      for (RotatedWork rw(blockIdx.x, gridDim.x); rw.more(num_work); rw.next()) {
        const int64_t idx = rw.index();
        if (idx >= num_work) continue;  // the last step has fewer tiles than CTAs
        const WorkContext ctx = make_work_context(p, idx);
        DqProducer<Traits>::run(p, ctx, ss, pipe, st, iter);
        ++iter;
      }
    }
    // Lanes 1-31 of the producer warp wait here for lane 0's loop, not in the pdl_wait below: a
    // warp some of whose lanes reach griddepcontrol.wait stalls its other lanes too (pdl.cuh), so
    // a CTA that starts while the dK / dV kernel still runs would issue no loads until it completes.
    __syncwarp();
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int ct = int(threadIdx.x) - 128;
    typename Traits::TiledMmaDq mma_dq;
    PipelineState st;
    int iter = 0;
    for (RotatedWork rw(blockIdx.x, gridDim.x); rw.more(num_work); rw.next()) {
      const int64_t idx = rw.index();
      if (idx >= num_work) continue;  // the last step has fewer tiles than CTAs
      NATTEN_SM90_TRACE_NOW(trace_t0);
      const WorkContext ctx = make_work_context(p, idx);
      cute::Tensor acc_dq = cute::partition_fragment_C(
          mma_dq, cute::Shape<cute::Int<Traits::kTileQ>, cute::Int<Traits::kHeadDim>>{});
      DqConsumer<Traits>::run(p, ctx, ss, pipe, ct, acc_dq, st, iter);
      dq_epilogue_store<Traits>(p, ctx, ct, acc_dq);
      if (ct == 0) NATTEN_SM90_TRACE_EVENT(p.trace, kTraceDqTile, idx, trace_t0, trace_now(), unsigned(ctx.keys.total));
      ++iter;
    }
    if (ct == 0) NATTEN_SM90_TRACE_EVENT(p.trace, kTraceDqCta, blockIdx.x, trace_cta0, trace_now(), unsigned(iter));
  }
  // Launched as a dependent of the dK / dV kernel (pdl.cuh), whose outputs it does not read: it
  // waits only before exiting, so that its completion implies that kernel's. Every thread waits
  // (as before the __syncwarp above, which only keeps lanes 1-31 of the producer warp out of it
  // until lane 0's loads are issued: NOTES nineteenth and twentieth sessions; the end of the
  // backward does not move with the static order, whose last-starting CTAs set it).
  pdl_wait();
#endif
}

}  // namespace sm90
}  // namespace natten
