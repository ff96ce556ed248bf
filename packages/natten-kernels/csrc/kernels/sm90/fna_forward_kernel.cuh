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
#include "sm90/pdl.cuh"
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
//
// kCluster (static order; launched in clusters of 2 CTAs, p.pair_half > 0): the two CTAs of a cluster
// run the two work tiles of a cluster pair (params.cuh), which walk the same key tiles; each producer
// loads half of every K / V tile's head-dim chunks and multicasts it into both CTAs' ring stage, so
// the pair reads each K / V tile from L2 once instead of twice. The rings' empty barriers count the
// consumer warpgroups of both CTAs (PipelineTmaAsync with a 2 x 1 cluster). With kSplit too, the
// pairs cover the work tiles below split_base (even: the host plans the split over the cluster grid,
// G = 2 x clusters), and each CTA then runs its chunk item unpaired: its producer loads whole tiles
// into its own ring, and its consumers arrive twice per warpgroup on its own empty barriers (the
// pairs' last ring uses were identical in both CTAs, so the barriers' phases agree at the switch).
template <class Traits, bool kPingpong, bool kDynamic, bool kSplit = false, bool kCluster = false>
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
  static_assert(!(kCluster && kDynamic), "cluster pairs: static order only");
  using ClusterShape = cute::Shape<cute::Int<kCluster ? 2 : 1>, cute::_1, cute::_1>;
  Pipeline pipe_k(ss.pipe_k, pp, ClusterShape{});
  Pipeline pipe_v(ss.pipe_v, pp, ClusterShape{});
  if (threadIdx.x == 0) {
    ss.q_full.init(1);
    ss.q_empty.init(Traits::kConsumerThreads);
  }
  cutlass::arch::fence_barrier_init();
  // kCluster: the peer's producer multicasts into this CTA's ring, and its consumers arrive on this
  // CTA's empty barriers, so both CTAs' barriers must be initialized before either goes on.
  if constexpr (kCluster) {
    cute::cluster_sync();
  } else {
    __syncthreads();
  }
  // Launched as a programmatic dependent (p.pdl, pdl.cuh): everything above (descriptor prefetch,
  // barrier init) overlaps the previous kernel's drain; no global memory is touched before this
  // wait (which returns at once for a normal launch), so the previous kernel's writes are visible
  // and its reads of memory this kernel writes are done.
  pdl_wait();

  using PipelineState = typename Traits::PipelineState;
  // kSplit: whole work tiles below p.split_base, then at most one split-tail chunk item per CTA
  // (split_tail.cuh: the last round's r tiles as r c <= G chunks, one per CTA position), run after
  // the loop (inside it, its epilogue pushed the main loop into 400+ bytes of spills).
  static_assert(!(kSplit && kDynamic), "the dynamic work order never splits");
  const int64_t num_work = kSplit ? p.split_base : p.geo.num_work;
  // Units of the static order: work tiles, or (kCluster) cluster pairs, of which this CTA runs
  // member `rank` (pair_member); the CTAs of a cluster step through the same pairs.
  const int rank = kCluster ? int(cute::block_rank_in_cluster()) : 0;
  const int64_t num_units = kCluster ? num_work / 2 : num_work;
  const int64_t first_unit = kCluster ? int64_t(blockIdx.x / 2) : int64_t(blockIdx.x);
  const int64_t units_grid = kCluster ? int64_t(gridDim.x / 2) : int64_t(gridDim.x);
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
        RotatedWork rw(first_unit, units_grid);
        for (; rw.more(num_units); rw.next()) {
          const int64_t unit = rw.index();
          if (unit >= num_units) continue;  // the last step has fewer tiles than CTAs
          const int64_t idx = kCluster ? pair_member(p, unit, rank) : unit;
          MainloopProducer<Traits, kCluster>::run(p, make_work_context(p, idx), ss, pipe_k, pipe_v, st_k, st_v,
                                                  iter, 0, rank);
          ++iter;
        }
        if constexpr (kSplit) {
          // rw now stands at the round after the loop's: the chunk items' (kCluster: one per CTA of
          // the grid, which is the plan's G).
          const int64_t item = kCluster ? p.split_base + int64_t(blockIdx.x) : rw.index();
          if (item < p.num_items) {
            int slot;
            MainloopProducer<Traits, kCluster>::run(p, make_item_context<kCluster>(p, item, slot), ss, pipe_k,
                                                    pipe_v, st_k, st_v, iter, 0, rank, /*paired=*/false);
          }
        }
      } else {
        int64_t idx = blockIdx.x;
        for (int iter = 0; idx < num_work; ++iter) {
          const int64_t next = int64_t(gridDim.x) + atomicAdd(p.work_counter, 1u);
          MainloopProducer<Traits, kCluster>::template run<true>(p, make_work_context(p, idx, reverse), ss, pipe_k, pipe_v,
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
    RotatedWork rw(first_unit, units_grid);
    int64_t unit = first_unit;  // static: the order's unit; dynamic: the work index
    // With the deferred epilogue a tile's O is stored, packed, during the next tile's first S GEMM
    // (mainloop_consumer.cuh), the last one after the loop. Static work order only: in the dynamic
    // kernels it raised the spills (D 128: 140 -> 228 bytes) and measured no gain on causal rows.
    constexpr bool kDefer = !kDynamic;
    PendingStore<Traits::kHeadDim> pending = {};  // valid = false
    int iter = 0;  // the CTA's work tiles so far (the Q barrier phase)
    using Consumer = MainloopConsumer<Traits, kPingpong, kDefer, kCluster>;
    Consumer::turns_open(ct);  // ping-pong turns run on across the CTA's work tiles
    for (; unit < num_units; ++iter) {
      // (the rank re-read here, not held across the key walk: that spilled the ring phases)
      const int64_t idx = kCluster ? pair_member(p, unit, int(blockIdx.x & 1)) : unit;
      const WorkContext ctx = make_work_context(p, idx, reverse);
      cute::Tensor acc_o = cute::partition_fragment_C(
          mma_pv, cute::Shape<cute::Int<Traits::kTileQ>, cute::Int<Traits::kHeadDim>>{});
      OnlineSoftmax sm;
      Consumer::run(p, ctx, ss, pipe_k, pipe_v, ct, sm, acc_o, st_k, st_v, iter, pending);
      epilogue_finalize<Traits>(ctx, sm, acc_o, pending);
      if (!kDefer || !p.defer_epilogue) epilogue_store_pending<Traits>(p, ct, pending);
      if constexpr (kDynamic) {
        unit = reinterpret_cast<const volatile int64_t*>(ss.work)[(iter + 1) & 1];  // published with this tile's q_full
      } else {
        rw.next();
        unit = rw.index();
      }
    }
    epilogue_store_pending<Traits>(p, ct, pending);  // the CTA's last tile (deferred epilogue)
    if constexpr (kSplit) {
      // This CTA's chunk item (unit is at the round after the loop's): its partial O and row
      // statistics to the workspace for the combine kernel (split_tail.cuh).
      const int64_t item = kCluster ? p.split_base + int64_t(blockIdx.x) : unit;
      if (item < p.num_items) {
        int slot;
        const WorkContext ctx = make_item_context<kCluster>(p, item, slot);
        cute::Tensor acc_o = cute::partition_fragment_C(
            mma_pv, cute::Shape<cute::Int<Traits::kTileQ>, cute::Int<Traits::kHeadDim>>{});
        OnlineSoftmax sm;
        Consumer::run(p, ctx, ss, pipe_k, pipe_v, ct, sm, acc_o, st_k, st_v, iter, pending, int(blockIdx.x & 1));
        epilogue_store_partial<Traits>(p, ct, slot, sm, acc_o);
      }
    }
    Consumer::turns_close(ct);
  }
  if constexpr (kCluster) {
    // Neither CTA may exit while its peer can still arrive on its empty barriers (the peer's last
    // releases); the multicast loads into it have all landed (its consumers waited on them).
    __syncwarp();
    cute::cluster_sync();
  }
#endif
}

}  // namespace sm90
}  // namespace natten
