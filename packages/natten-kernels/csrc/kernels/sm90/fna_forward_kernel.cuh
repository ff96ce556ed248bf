// The SM90 fused neighborhood-attention forward kernel: warp-specialized (1 producer warpgroup
// issuing TMA, 2 consumer warpgroups running wgmma + online softmax). Each CTA walks the work tiles
// of the rotated round-robin (RotatedWork, tile_scheduler.cuh) or, with a work counter, takes them
// dynamically (below): with one CTA per work tile that is
// the classic grid, with one CTA per SM (persistent) the K/V ring and the next tile's Q load run
// ahead while the consumers finish a tile (last PV GEMM, epilogue), which a new CTA could not do
// (one CTA fits an SM). kPingpong: the consumer schedule (mainloop_consumer.cuh).
#pragma once

#include <cute/arch/cluster_sm90.hpp>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cutlass/arch/reg_reconfig.h>

#include "sm90/epilogue.cuh"
#include "sm90/kernel_traits.cuh"
#include "sm90/mainloop_consumer.cuh"
#include "sm90/mainloop_producer.cuh"
#include "sm90/split_tail.cuh"
#include "sm90/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

// kDynamic: the dynamic work order (p.work_counter must be set) instead of RotatedWork. A separate
// instantiation: the producer thread's dynamic loop does not fit its 24 registers (ptxas, CUDA 13.0:
// 72-80 bytes of stack, 128-156 bytes of spills, all in that one thread, which mostly waits on
// barriers), and the static kernel keeps none of it.
//
// kSplit (static order only): the launch has a split tail (split_tail.cuh). Another instantiation,
// so that the kernel of unsplit launches stays exactly the one without it: the chunk item's second
// copy of the key loop (below) changed ptxas' register assignment of the main loop, and hunyuan-gna
// (never split on an H100) measured 0.7-1.4% slower with it (benchmarks/NOTES.md).
template <class Traits, bool kPingpong, bool kDynamic, bool kSplit = false>
__global__ void __launch_bounds__(Traits::kThreads, 1) fna_sm90_forward_kernel(const __grid_constant__ FnaSm90Params p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ char smem_raw[];
  const uintptr_t base = (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023);
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(base);

  const int warp = cutlass::canonical_warp_idx_sync();
  const int warpgroup = warp / 4;
  const bool producer = warpgroup == 0;

  if (warp == 0 && cute::elect_one_sync()) {
    cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.tma_q));
    cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.tma_k));
    cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.tma_v));
  }

  typename Pipeline::Params pp;
  pp.transaction_bytes = Traits::kTileBytesKV;
  pp.role = producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = threadIdx.x == 0;  // the one producer thread that issues loads
  pp.num_consumers = Traits::kConsumerThreads;
  Pipeline pipe_k(ss.pipe_k, pp, cute::Shape<cute::_1, cute::_1, cute::_1>{});
  Pipeline pipe_v(ss.pipe_v, pp, cute::Shape<cute::_1, cute::_1, cute::_1>{});
  if (threadIdx.x == 0) {
    ss.q_full.init(1);
    ss.q_empty.init(Traits::kConsumerThreads);
  }
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  using PipelineState = typename Traits::PipelineState;
  // kSplit: whole work tiles below p.split_base, then at most one split-tail chunk item per CTA
  // (split_tail.cuh: the last round's r tiles as r c <= G chunks, one per CTA position), run after
  // the loop (inside it, its epilogue pushed the main loop into 400+ bytes of spills).
  static_assert(!(kSplit && kDynamic), "the dynamic work order never splits");
  const int64_t num_work = kSplit ? p.split_base : p.geo.num_work;
  // Work order. Static: RotatedWork; producer and consumers derive the same sequence. Dynamic: a
  // CTA's first tile is blockIdx.x, each next one gridDim.x + atomicAdd(p.work_counter, 1), taken by
  // the producer thread before it issues the current tile's loads and published with that tile's
  // q_full (mainloop_producer.cuh), so the consumers know the next tile as they finish this one and a
  // CTA whose tiles had shorter key walks takes more of them. Either way a CTA stops at its first
  // index >= num_work (RotatedWork's indices only grow past it).
  const int reverse = kDynamic ? p.reverse_axes : 0;
  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      PipelineState st_k = cutlass::make_producer_start_state<Pipeline>();
      PipelineState st_v = cutlass::make_producer_start_state<Pipeline>();
      if constexpr (!kDynamic) {
        int iter = 0;
        RotatedWork rw(blockIdx.x, gridDim.x);
        for (; rw.more(num_work); rw.next()) {
          const int64_t idx = rw.index();
          if (idx >= num_work) continue;  // the last step has fewer tiles than CTAs
          MainloopProducer<Traits>::run(p, make_work_context(p, idx), ss, pipe_k, pipe_v, st_k, st_v, iter);
          ++iter;
        }
        if constexpr (kSplit) {
          // rw now stands at the round after the loop's: the chunk items'.
          const int64_t item = rw.index();
          if (item < p.num_items) {
            int slot;
            MainloopProducer<Traits>::run(p, make_item_context(p, item, slot), ss, pipe_k, pipe_v, st_k, st_v, iter);
          }
        }
      } else {
        int64_t idx = blockIdx.x;
        for (int iter = 0; idx < num_work; ++iter) {
          const int64_t next = int64_t(gridDim.x) + atomicAdd(p.work_counter, 1u);
          MainloopProducer<Traits>::template run<true>(p, make_work_context(p, idx, reverse), ss, pipe_k, pipe_v,
                                                       st_k, st_v, iter, next);
          idx = next;
        }
      }
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int ct = int(threadIdx.x) - 128;
    typename Traits::TiledMmaPV mma_pv;
    PipelineState st_k, st_v;  // consumer start states: stage 0, phase 0
    RotatedWork rw(blockIdx.x, gridDim.x);
    int64_t idx = blockIdx.x;
    // With the deferred epilogue a tile's O is stored, packed, during the next tile's first S GEMM
    // (mainloop_consumer.cuh), the last one after the loop. Static work order only: in the dynamic
    // kernels it raised the spills (D 128: 140 -> 228 bytes) and measured no gain on causal rows.
    constexpr bool kDefer = !kDynamic;
    PendingStore<Traits::kHeadDim> pending = {};  // valid = false
    int iter = 0;  // the CTA's work tiles so far (the Q barrier phase)
    for (; idx < num_work; ++iter) {
      const WorkContext ctx = make_work_context(p, idx, reverse);
      cute::Tensor acc_o = cute::partition_fragment_C(
          mma_pv, cute::Shape<cute::Int<Traits::kTileQ>, cute::Int<Traits::kHeadDim>>{});
      OnlineSoftmax sm;
      MainloopConsumer<Traits, kPingpong, kDefer>::run(p, ctx, ss, pipe_k, pipe_v, ct, sm, acc_o, st_k, st_v, iter,
                                                      pending);
      epilogue_finalize<Traits>(ctx, sm, acc_o, pending);
      if (!kDefer || !p.defer_epilogue) epilogue_store_pending<Traits>(p, ct, pending);
      if constexpr (kDynamic) {
        idx = reinterpret_cast<const volatile int64_t*>(ss.work)[(iter + 1) & 1];  // published with this tile's q_full
      } else {
        rw.next();
        idx = rw.index();
      }
    }
    epilogue_store_pending<Traits>(p, ct, pending);  // the CTA's last tile (deferred epilogue)
    if constexpr (kSplit) {
      // This CTA's chunk item (idx is at the round after the loop's): its partial O and row
      // statistics to the workspace for the combine kernel (split_tail.cuh).
      if (idx < p.num_items) {
        int slot;
        const WorkContext ctx = make_item_context(p, idx, slot);
        cute::Tensor acc_o = cute::partition_fragment_C(
            mma_pv, cute::Shape<cute::Int<Traits::kTileQ>, cute::Int<Traits::kHeadDim>>{});
        OnlineSoftmax sm;
        MainloopConsumer<Traits, kPingpong, kDefer>::run(p, ctx, ss, pipe_k, pipe_v, ct, sm, acc_o, st_k, st_v, iter,
                                                        pending);
        epilogue_store_partial<Traits>(p, ct, slot, sm, acc_o);
      }
    }
  }
#endif
}

}  // namespace sm90
}  // namespace natten
