// Consumers of the SM90 forward (warpgroups 1 and 2, 64 query rows each).
//
// Software pipeline over key tiles t (FA3 "intra-warpgroup overlap"): the S = Q K^T wgmma of
// tile t is issued (async) together with O += P(t-1) V(t-1), and the mask / softmax of S(t) runs
// while that PV wgmma is still in flight:
//
//   section 0:      wait K0 -> issue S0 = Q K0^T -> wait -> release K0 -> softmax(S0) -> P0
//   section t (1..T-1):
//                   wait Kt -> issue St = Q Kt^T; O *= corr(t-1); wait V(t-1) -> issue O += P(t-1) V(t-1)
//                   -> wgmma wait<1> (St done) -> release Kt -> mask / softmax(St) -> corr(t)
//                   -> wgmma wait<0> (PV done) -> release V(t-1) -> Pt = convert(St)
//   section T:      O *= corr(T-1); wait V(T-1) -> issue O += P(T-1) V(T-1) -> wait -> release V(T-1)
//
// Live accumulators: O, S(t) (fp32) and P(t-1) (fp16/bf16, read by the in-flight RS wgmma).
//
// Schedules (template flag kPingpong):
//   cooperative: the two consumer warpgroups run the pipeline above independently.
//   pingpong:    the GEMM issue of every section is bracketed by two named barriers so that the
//                warpgroups take turns (FA3 inter-warpgroup ping-pong): WG0 issues its section-k
//                GEMMs, then WG1 its section-k GEMMs, then WG0 section k+1, ... The tensor cores
//                run one warpgroup's GEMMs while the other does its softmax.
//                Barrier b (user ids 0, 1 = consumer warpgroup 0, 1) has 256 participants: the 128
//                threads of its warpgroup syncing before issuing, and the 128 threads of the other
//                warpgroup arriving after issuing theirs. The turns run on across the CTA's work
//                tiles as one sequence: WG0 arrives once on barrier 0 before the CTA's first work
//                tile (turns_open), every section of every tile ends with an arrive on the other
//                warpgroup's barrier (both warpgroups run the same T + 1 sections of a tile: same
//                work tile, same walk), and WG0 syncs barrier 0 once more after the CTA's last
//                tile (turns_close), which takes WG1's last arrive. Every arrival is matched, so
//                no barrier is left pending at exit, and arrivals alternate strictly with syncs
//                (WG1's k-th arrive on barrier 0 follows its k-th sync on barrier 1, which needs
//                WG0's k-th arrive, which follows WG0's k-th sync on barrier 0, which needs WG1's
//                (k-1)-th arrive), so no barrier ever holds two arrivals of one warpgroup.
//                (Until 2026-11-29 WG0 arrived on barrier 0 at the start of every work tile and WG1
//                skipped its last arrive of each tile. WG0 could then finish a tile, pass its own
//                turn of the next tile and arrive on barrier 1 a second time before WG1 had synced
//                it for its last section: the two arrivals of WG0 completed that barrier's phase
//                with nobody waiting, WG1 then waited for an arrive that never came, and the kernel
//                hung. Short key walks at small head dims and many tiles per CTA made it likely:
//                the benchmark suite's nat-small row, head dim 32, hung on every call. The racy
//                order let WG0 start a tile's first S GEMM before WG1's last PV GEMM of the tile
//                before; without it the forward measured +0.4% to +1.5% on the benchmark rows
//                (H200, 2 rounds), as did a race-free variant that keeps that order by giving
//                consecutive tiles separate barrier pairs.)
//                No TMA pipeline wait is gated on the other warpgroup's turn in a way that can
//                cycle: the producer's stage reuse needs releases that each warpgroup makes
//                outside any turn (after wgmma waits), and the producer issues K(t) before
//                V(t - 1).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sm90/epilogue.cuh"
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

template <class Params>  // FnaSm90Params or DqParams (geo, decode)
__device__ __forceinline__ void make_row_windows(const Params& p, const WorkContext& ctx, int ct,
                                                 RowWindows& w) {
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    row_window_fast(p.geo, p.decode, ctx.qt, frag_row(ct, r), w.start[r], w.len[r]);
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) {
      pin_registers(w.start[r][a]);  // kept in registers through the key loop (work_context.cuh)
      pin_registers(w.len[r][a]);
    }
  }
}

// Value written into masked raw scores so that s * scale_log2 = -inf.
__device__ __forceinline__ float mask_value(float scale_log2) { return scale_log2 > 0.f ? -INFINITY : INFINITY; }

// Masks the raw scores of keys outside the row windows in a partial key tile at kb[] (sets them
// to mask_value), from 64-bit column words: per row slot and 64-key half of the tile, the allowed
// keys are one run of bits per axis (column_words.cuh), so each score costs a bit test and a select.
// Keys outside the key slab (zero fill or the next batch's rows) are never inside a window: windows
// lie inside the key slab on every axis (the host checks that the key slab holds every key the
// query slab attends; without slabs, windows end at n - 1).
template <int kHalves, class TensorS>
__device__ __forceinline__ void mask_tile(const FnaSm90Params& p, const RowWindows& w, const int kb[kRank], int ct,
                                          float masked, TensorS& s) {
  uint64_t words[kHalves][2];
  CUTE_UNROLL
  for (int r = 0; r < 2; ++r) {
    CUTE_UNROLL
    for (int h = 0; h < kHalves; ++h) {
      int lo[kRank];
      CUTE_UNROLL
      for (int a = 0; a < kRank; ++a) lo[a] = w.start[r][a] - kb[a] - (h ? p.kcols_off[a] : 0);
      words[h][r] = allowed_columns(p.kcols, lo, w.len[r]);
    }
  }
  mask_by_words<kHalves>(words, ct, masked, s);
}

// fp32 accumulator -> packed fp16 / bf16 pairs (one cvt.rn.{f16,bf16}x2.f32 per pair).
template <class Element, class TensorS, class TensorP>
__device__ __forceinline__ void convert_pairs(const TensorS& s, TensorP& p) {
  static_assert(sizeof(Element) == 2, "16-bit P");
  uint32_t* out = reinterpret_cast<uint32_t*>(p.data());
  CUTE_UNROLL
  for (int i = 0; i < cute::size(s) / 2; ++i) {
    uint32_t d;
    if constexpr (cute::is_same_v<Element, cutlass::half_t>) {
      asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(s(2 * i + 1)), "f"(s(2 * i)));
    } else {
      asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(s(2 * i + 1)), "f"(s(2 * i)));
    }
    out[i] = d;
  }
}

// kDefer: the deferred epilogue is compiled in (the previous work tile's O stored during this
// tile's first S GEMM); off in the dynamic-schedule kernels, where it cost registers (spills).
// kCluster: the CTA is one of a cluster pair (fna_forward_kernel.cuh) whose producers multicast into
// both CTAs' rings, so a stage is free only when the consumer warpgroups of both CTAs have released
// it: each warpgroup arrives once on each CTA's empty barrier (count 4, PipelineTmaAsync's cluster
// count), lane 0 of its warp 0 on CTA 0's and lane 0 of its warp 1 on CTA 1's. Done here from the
// consumer index instead of PipelineTmaAsync::consumer_release, whose per-thread target and
// predicate took two registers per ring across the key walk (ptxas spilled the ring phases).
template <class Traits, bool kPingpong, bool kDefer, bool kCluster = false>
struct MainloopConsumer {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;

  // own_rank (kCluster): -1 while paired; the CTA's rank in the cluster for its unpaired chunk item,
  // whose two arrivals per warpgroup both go to its own barrier.
  __device__ __forceinline__ static void release(Pipeline& pipe, typename Pipeline::SharedStorage& ring,
                                                 const PipelineState& st, int ct, int own_rank) {
    if constexpr (kCluster) {
      const int t = ct & 127;  // thread of the consumer warpgroup
      const uint32_t dst = own_rank < 0 ? uint32_t(t >> 5) : uint32_t(own_rank);
      ring.empty_barrier_[st.index()].arrive(dst, uint32_t((t & ~32) == 0));
    } else {
      (void)ring;
      (void)ct;
      (void)own_rank;
      pipe.consumer_release(st);
    }
  }

  // Ping-pong turn barriers (user named-barrier ids 0 and 1 = consumer warpgroup 0 and 1).
  static constexpr uint32_t kTurnThreads = 2 * 128;
  __device__ __forceinline__ static void turn_begin(int wg) {
    if constexpr (kPingpong) cutlass::arch::NamedBarrier::sync(kTurnThreads, uint32_t(wg));
  }
  __device__ __forceinline__ static void turn_end(int wg) {
    if constexpr (kPingpong) cutlass::arch::NamedBarrier::arrive(kTurnThreads, uint32_t(1 - wg));
  }
  // Once per CTA, by every consumer thread, before its first work tile / after its last (see the
  // schedules above): WG0 takes the first turn, and the last arrive (WG1's) is taken.
  __device__ __forceinline__ static void turns_open(int ct) {
    if constexpr (kPingpong) {
      if ((ct >> 7) == 0) cutlass::arch::NamedBarrier::arrive(kTurnThreads, 0u);
    }
  }
  __device__ __forceinline__ static void turns_close(int ct) {
    if constexpr (kPingpong) {
      if ((ct >> 7) == 0) cutlass::arch::NamedBarrier::sync(kTurnThreads, 0u);
    }
  }

  // ct: consumer thread index 0..255. Leaves the un-normalized O in acc_o and the row statistics
  // in sm. Called once per work tile of the CTA: st_k / st_v carry the ring positions across work
  // tiles, `iter` counts them (the phase of the Q barriers). Every thread arrives on q_empty once
  // per work tile, as soon as its last S GEMM (the last read of Q) has completed. `pending` (kDefer):
  // the previous work tile's output, packed (deferred epilogue; not valid otherwise), stored once
  // this tile's first S GEMM has been issued. kPingpong: the CTA's calls lie between its
  // turns_open and turns_close, and both consumer warpgroups must take the same turns in every call
  // (a return or a skipped section in one warpgroup only would unpair the turn barriers for the
  // rest of the CTA's tiles: a hang).
  //
  // Force-inlined: the kSplit kernels call it twice (work tiles, then the chunk item), and at head dim
  // 256 nvcc otherwise kept it as a function, where ptxas serializes every wgmma of the kernel
  // (C7510: the wgmma pipeline may not cross a call).
  template <class TensorO>
  __device__ __forceinline__ static void run(const FnaSm90Params& p, const WorkContext& ctx, SharedStorage& ss,
                                             Pipeline& pipe_k, Pipeline& pipe_v, int ct, OnlineSoftmax& sm,
                                             TensorO& acc_o, PipelineState& st_k, PipelineState& st_v, int iter,
                                             PendingStore<Traits::kHeadDim>& pending, int own_rank = -1) {
    using namespace cute;
    typename Traits::TiledMmaS mma_s;
    typename Traits::TiledMmaPV mma_pv;
    auto thr_s = mma_s.get_thread_slice(ct);
    auto thr_pv = mma_pv.get_thread_slice(ct);
    const int wg = ct >> 7;  // consumer warpgroup 0 / 1 (warp-uniform)

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
    Tensor tSrQ = thr_s.partition_fragment_A(sQ);  // (MMA, MMA_M, MMA_K) descriptors
    Tensor tSrK = thr_s.partition_fragment_B(sK);  // (MMA, MMA_N, MMA_K, stage)
    Tensor tOrV = thr_pv.partition_fragment_B(sV);  // (MMA, MMA_N, MMA_K, stage)

    RowWindows win;
    make_row_windows(p, ctx, ct, win);
    sm80::KeyTiles keys = ctx.keys;
    pin_registers(keys);  // kept in registers through the key loop (work_context.cuh)
    sm.init();
    clear(acc_o);

    const int total = keys.total;  // same for both warpgroups (and the producer)
    const uint32_t q_phase = uint32_t(iter & 1);
    if (total <= 0) {  // never for valid NA (every query attends a key); keeps the Q handshake
      if constexpr (kDefer) epilogue_store_pending<Traits>(p, ct, pending);
      ss.q_full.wait(q_phase);
      ss.q_empty.arrive();
      return;
    }

    const float scale_log2 = p.scale_log2;
    const float masked = mask_value(scale_log2);
    auto scores_shape = Shape<Int<Traits::kTileQ>, Int<Traits::kTileKV>>{};

    ss.q_full.wait(q_phase);

    int kb[kRank];
    walk_origin(p.geo, keys, p.walk_rotate, kb);

    // ---- section 0: S0, softmax(S0) -> P0
    Tensor p_regs = make_tensor<Element>(partition_fragment_C(mma_s, scores_shape).layout());
    Tensor tOrP = make_tensor(p_regs.data(), acc_as_a_layout<Traits::kTileKV>());
    float corr[2];
    {
      Tensor acc_s = partition_fragment_C(mma_s, scores_shape);
      static_assert(decltype(size(acc_s))::value == Traits::kTileKV / 2, "64 x kTileKV accumulator per thread");
      pipe_k.consumer_wait(st_k);
      turn_begin(wg);
      warpgroup_gemm<true, false>(mma_s, tSrQ, tSrK(_, _, _, st_k.index()), acc_s);
      turn_end(wg);
      // The previous tile's O (deferred epilogue, packed: no accumulator registers) leaves while S0 runs.
      if constexpr (kDefer) epilogue_store_pending<Traits>(p, ct, pending);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_s);
      release(pipe_k, ss.pipe_k, st_k, ct, own_rank);
      ++st_k;
      if (total == 1) ss.q_empty.arrive();  // S0 was the last read of Q
      if (!sm80::key_tile_full(p.geo, keys, kb)) mask_tile<Traits::kTileKV / 64>(p, win, kb, ct, masked, acc_s);
      sm.update(acc_s, scale_log2, corr);  // corr = 0 (O is 0 anyway)
      convert_pairs<Element>(acc_s, p_regs);
      walk_advance(p.geo, keys, kb);
    }

    // ---- sections 1 .. T-1: S(t) overlapped with O += P(t-1) V(t-1)
    for (int t = 1; t < total && Traits::kOverlap; ++t) {
      Tensor acc_s = partition_fragment_C(mma_s, scores_shape);
      pipe_k.consumer_wait(st_k);
      turn_begin(wg);
      warpgroup_gemm<true, false>(mma_s, tSrQ, tSrK(_, _, _, st_k.index()), acc_s);
      CUTE_UNROLL
      for (int e = 0; e < size(acc_o); ++e) acc_o(e) *= corr[frag_slot(e)];
      pipe_v.consumer_wait(st_v);
      warpgroup_gemm<false, true>(mma_pv, tOrP, tOrV(_, _, _, st_v.index()), acc_o);
      turn_end(wg);

      warpgroup_wait<1>();  // S(t) done (wgmma groups complete in order)
      warpgroup_fence_operand(acc_s);
      release(pipe_k, ss.pipe_k, st_k, ct, own_rank);
      ++st_k;
      if (t == total - 1) ss.q_empty.arrive();  // S(T-1) was the last read of Q
      if (!sm80::key_tile_full(p.geo, keys, kb)) mask_tile<Traits::kTileKV / 64>(p, win, kb, ct, masked, acc_s);
      sm.update(acc_s, scale_log2, corr);

      warpgroup_wait<0>();  // O += P(t-1) V(t-1) done: P registers and V stage free
      warpgroup_fence_operand(acc_o);
      warpgroup_fence_operand(p_regs);  // keep P(t-1) live until here (read by the async wgmma)
      release(pipe_v, ss.pipe_v, st_v, ct, own_rank);
      ++st_v;
      convert_pairs<Element>(acc_s, p_regs);
      walk_advance(p.geo, keys, kb);
    }

    // ---- sections 1 .. T-1 without overlap (head dim 256, Traits::kOverlap false): within the
    // same turn, O += P(t-1) V(t-1) is issued and waited for (P(t-1) dies), then S(t) is issued.
    // Same turns as above (one per section), so the ping-pong barrier counts are unchanged.
    for (int t = 1; t < total && !Traits::kOverlap; ++t) {
      pipe_k.consumer_wait(st_k);
      pipe_v.consumer_wait(st_v);
      turn_begin(wg);
      CUTE_UNROLL
      for (int e = 0; e < size(acc_o); ++e) acc_o(e) *= corr[frag_slot(e)];
      warpgroup_gemm<false, true>(mma_pv, tOrP, tOrV(_, _, _, st_v.index()), acc_o);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_o);
      warpgroup_fence_operand(p_regs);
      release(pipe_v, ss.pipe_v, st_v, ct, own_rank);
      ++st_v;
      Tensor acc_s = partition_fragment_C(mma_s, scores_shape);
      warpgroup_gemm<true, false>(mma_s, tSrQ, tSrK(_, _, _, st_k.index()), acc_s);
      turn_end(wg);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_s);
      release(pipe_k, ss.pipe_k, st_k, ct, own_rank);
      ++st_k;
      if (t == total - 1) ss.q_empty.arrive();  // S(T-1) was the last read of Q
      if (!sm80::key_tile_full(p.geo, keys, kb)) mask_tile<Traits::kTileKV / 64>(p, win, kb, ct, masked, acc_s);
      sm.update(acc_s, scale_log2, corr);
      convert_pairs<Element>(acc_s, p_regs);
      walk_advance(p.geo, keys, kb);
    }

    // ---- section T: O += P(T-1) V(T-1)
    CUTE_UNROLL
    for (int e = 0; e < size(acc_o); ++e) acc_o(e) *= corr[frag_slot(e)];
    pipe_v.consumer_wait(st_v);
    turn_begin(wg);
    warpgroup_gemm<false, true>(mma_pv, tOrP, tOrV(_, _, _, st_v.index()), acc_o);
    turn_end(wg);  // WG1's: taken by WG0's first turn of the next work tile, or by turns_close
    warpgroup_wait<0>();
    warpgroup_fence_operand(acc_o);
    warpgroup_fence_operand(p_regs);
    release(pipe_v, ss.pipe_v, st_v, ct, own_rank);
    ++st_v;  // the ring position carries over to the CTA's next work tile
  }
};

}  // namespace sm90
}  // namespace natten
