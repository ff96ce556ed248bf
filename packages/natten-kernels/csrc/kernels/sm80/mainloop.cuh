// Collective mainloop of the SM80 fused neighborhood-attention forward kernel.
//
// One CTA owns a query tile (box of kTileQ tokens) and walks the key tiles (boxes of kTileKV
// tokens) that cover the union of its windows. Per key tile (FlashAttention-2 schedule, one K and
// one V buffer, loads overlapped with the GEMM that does not use them):
//
//   wait K[t]; barrier; issue cp.async V[t]  (V[0] comes with Q and K[0], load_prologue)
//   S = Q K[t]^T                       (ldmatrix + mma.sync, fp32 accumulators)
//   mask  (only if the key tile cuts a window border)
//   online softmax on raw scores: running row max / row sum, rescale O, P = exp2(S * scale - max)
//   wait V[t]; barrier; issue cp.async K[t+1]
//   O += P V[t]                        (P straight from registers)
//
// With 32 query rows per warp (128-token query tiles on 4 warps) K has two buffers, and K[t+1] is
// issued with V[t] right after the first barrier (into the buffer K[t-1] used), so it has the whole
// step to land; the second barrier then only makes V[t] visible. (Issued after the S GEMM instead,
// as FlashAttention-2 does, it needed a third barrier and spilled; measured slower.)
#pragma once

#include <cute/tensor.hpp>

#include "kernel_traits.cuh"
#include "params.cuh"
#include "tile_scheduler.cuh"
#include "utils.cuh"

namespace natten {
namespace sm80 {

// What the mainloop and epilogue need to know about their CTA. Built once by one thread and kept
// in shared memory (read where used), so that none of it occupies registers across the key loop.
constexpr int kMaxKvPasses = 8;  // key tiles of <= 64 rows, >= 8 rows per copy pass

// The pass tables of two tensors' kRows-row tile loads (load_tile_box_fast), element steps sa / sb:
// written only where that path uses them (8 copy passes: head dims 128 / 256), else nothing.
template <class Traits, int kRows>
CUTE_DEVICE void fill_pass_tables(int64_t* a, int64_t* b, const int lg[kRank], const int64_t sa[kRank],
                                  const int64_t sb[kRank]) {
  constexpr int kPasses = kRows / Traits::kRowsPerPass;
  static_assert(kPasses <= kMaxKvPasses || kPasses < 8, "pass table");
  if constexpr (kPasses >= 8 && kPasses <= kMaxKvPasses) {
    constexpr int kBytes = int(sizeof(typename Traits::Element));
    fill_pass_table(a, kPasses, Traits::kRowsPerPass, lg, sa, kBytes);
    fill_pass_table(b, kPasses, Traits::kRowsPerPass, lg, sb, kBytes);
  }
}

struct CtaTile {
  QueryTile q;  // q.n_q / q.n_kv: token bounds of the query / key slab groups (loads, stores)
  KeyTiles k;
  GroupTensor gq, gk, gv, go;
  int64_t lse_base;  // element offset of (batch, head, group origin) in lse
  int64_t lse_step[kRank];
  // Byte offset of key-tile row p * kRowsPerPass from row 0 in K and in V: the same for every
  // thread and key tile (tile_coord of a multiple of the pass height), so load_tile_box_inside
  // adds one table entry per pass instead of decoding and addressing each row.
  int64_t pass_k[kMaxKvPasses], pass_v[kMaxKvPasses];
};

// acc += A(_, _, kk) B(_, _, kk), the B fragments of slice kk loaded from shared memory (sb, through
// copy_b into bv: b's registers retiled as the copy's) one copy block (ldmatrix.x4: two 8-wide MMA
// blocks of B) at a time, each multiplied as soon as it is loaded: 4 registers of B live instead of
// the whole slice (16 for K, 32 for V at head dim 128). Which MMA blocks a copy block holds:
// mma_block_in_copy_block (utils.cuh; checked for every thread by tests/sm80_layout_test.cu).
template <class TiledMma, class TA, class CopyB, class SB, class TB, class TBView, class TC>
CUTE_DEVICE void gemm_slice_b_by_block(TiledMma const& mma, TA const& a, CopyB const& copy_b, SB const& sb, TB& b,
                                       TBView& bv, TC& acc, int kk) {
  using namespace cute;
  CUTE_UNROLL
  for (int cb = 0; cb < size<1>(bv); ++cb) {
    copy(copy_b, sb(_, cb, kk), bv(_, cb, kk));
    CUTE_UNROLL
    for (int n = 0; n < size<1>(b); ++n) {
      if (!mma_block_in_copy_block(b.layout(), n, bv.layout(), cb)) continue;
      CUTE_UNROLL
      for (int m = 0; m < size<1>(a); ++m) gemm(mma, a(_, m, kk), b(_, n, kk), acc(_, m, n));
    }
  }
}

template <class Traits>
struct CollectiveMainloop {
  using Element = typename Traits::Element;
  static constexpr int kTileQ = Traits::kTileQ;
  static constexpr int kTileKV = Traits::kTileKV;
  static constexpr int kDim = Traits::kDim;

  // Masked-path tables in smem: per-row windows (start, length) per axis, and the repeat
  // patterns of key_tile_row_mask for this key tile shape.
  CUTE_DEVICE static void fill_mask_tables(Geometry const& geo, QueryTile const& qt, int2* row_win,
                                           uint64_t* rep, int tid) {
    for (int r = tid; r < kTileQ; r += Traits::kThreads) {
      int start[kRank], len[kRank];
      query_row_window(geo, qt, r, start, len);
      CUTE_UNROLL
      for (int a = 0; a < kRank; ++a) row_win[r * kRank + a] = make_int2(start[a], len[a]);
    }
    if (tid == 0) key_tile_mask_patterns(geo.kv_log2, rep);
  }

  // Issues Q, K[0] and V[0] (one cp.async group) from addressing every thread computed itself, so
  // that they are in flight before the CTA descriptor and the mask / pass tables are built.
  CUTE_DEVICE static void load_prologue(FnaParams const& p, QueryTile const& qt, KeyTiles const& kt,
                                        GroupTensor const& gq, GroupTensor const& gk, GroupTensor const& gv,
                                        Element* smem_q, Element* smem_k, Element* smem_v, int tid) {
    const bool aligned = p.aligned != 0;
    typename Traits::SmemLayoutQ layout_q;
    typename Traits::SmemLayoutKV layout_kv;
    load_tile_box_first<Traits, kTileQ>(smem_q, layout_q, static_cast<Element const*>(p.q), gq, qt.q0, p.geo.q_log2,
                                        qt.n_q, p.head_dim, aligned, tid);
    load_tile_box_first<Traits, kTileKV>(smem_k, layout_kv, static_cast<Element const*>(p.k), gk, kt.start,
                                         p.geo.kv_log2, qt.n_kv, p.head_dim, aligned, tid);
    load_tile_box_first<Traits, kTileKV>(smem_v, layout_kv, static_cast<Element const*>(p.v), gv, kt.start,
                                         p.geo.kv_log2, qt.n_kv, p.head_dim_v, aligned, tid);
    cute::cp_async_fence();
  }

  // Runs the whole key loop. acc_o: (MMA, MMA_M, MMA_N) fp32 fragment of O (zeroed here);
  // row_max (log2 units, scaled) and row_sum (thread-partial) per accumulator row.
  template <class TensorO, int kRowsPerThread>
  CUTE_DEVICE static void run(FnaParams const& p, CtaTile const& cta, Element* smem_q, Element* smem_k,
                              Element* smem_v, int2 const* row_win, uint64_t const* rep_smem, TensorO& acc_o,
                              float (&row_max)[kRowsPerThread], float (&row_sum)[kRowsPerThread], int tid) {
    using namespace cute;
    using TiledMma = typename Traits::TiledMma;

    Geometry const& geo = p.geo;
    const bool aligned = p.aligned != 0;
    Element const* k_ptr = static_cast<Element const*>(p.k);
    Element const* v_ptr = static_cast<Element const*>(p.v);
    // Key slab bounds in registers: read from smem in every K/V load, they stalled the key loop
    // on shared-memory loads (ncu on the H100: MIO scoreboard, 34% of stall cycles).
    int n_kv[kRank];
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) n_kv[a] = cta.q.n_kv[a];

    typename Traits::SmemLayoutQ layout_q;
    typename Traits::SmemLayoutKV layout_kv;
    Tensor sQ = make_tensor(make_smem_ptr(smem_q), layout_q);
    Tensor sK = make_tensor(make_smem_ptr(smem_k), layout_kv);
    Tensor sVt = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutVt{});

    TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);    // (MMA, MMA_M, MMA_K)
    Tensor tSrK = thr_mma.partition_fragment_B(sK);    // (MMA, MMA_N, MMA_K)
    Tensor tOrVt = thr_mma.partition_fragment_B(sVt);  // (MMA, MMA_N(dim), MMA_K(keys))

    auto copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto thr_copy_q = copy_q.get_thread_slice(tid);
    Tensor tSsQ = thr_copy_q.partition_S(sQ);
    Tensor tSrQ_view = thr_copy_q.retile_D(tSrQ);
    auto copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto thr_copy_k = copy_k.get_thread_slice(tid);
    Tensor tSsK = thr_copy_k.partition_S(sK);
    Tensor tSrK_view = thr_copy_k.retile_D(tSrK);
    auto copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomT{}, tiled_mma);
    auto thr_copy_v = copy_v.get_thread_slice(tid);
    Tensor tOsVt = thr_copy_v.partition_S(sVt);
    Tensor tOrVt_view = thr_copy_v.retile_D(tOrVt);

    // (row, col) of every S accumulator element of this thread.
    Tensor cS = make_identity_tensor(Shape<Int<kTileQ>, Int<kTileKV>>{});
    Tensor tScS = thr_mma.partition_C(cS);
    Tensor tScS_rc = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));

    Tensor acc_o_rc = make_tensor(acc_o.data(), acc_rowcol(acc_o.layout()));
    static_assert(decltype(size<0>(acc_o_rc))::value == kRowsPerThread, "");
    clear(acc_o);
    CUTE_UNROLL
    for (int i = 0; i < kRowsPerThread; ++i) {
      row_max[i] = -INFINITY;
      row_sum[i] = 0.f;
    }

    // The scale folds into the exponent: maxima are taken on raw scores and p = 2^(s * mul - max * mul)
    // (one FFMA per score instead of a multiply and a subtract) with mul = |scale * log2(e)|; a
    // negative scale was folded into Q's sign bits in shared memory (exp(c s) = exp(|c| (-s)), exact),
    // once per query tile. The C ABI refuses a zero scale; the 1e-30 floor keeps masked scores at
    // weight 0 (not -inf * 0 = NaN) should one arrive.
    const float mul = fmaxf(fabsf(p.scale_log2), 1e-30f);
    const bool negate_q = p.scale_log2 < 0.f;
    // 32 rows per warp: B fragments (K, V) one ldmatrix.x4 at a time, each used by its MMAs right
    // away (gemm_slice_b_by_block), and two K buffers.
    constexpr bool kFineB = Traits::kRows32;
    constexpr int kKStages = Traits::kKStages;
    constexpr int kSmemKV = Traits::kSmemKV;
    int kb[kRank];
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) kb[a] = cta.k.start[a];

    // Q, K[0] and V[0] were issued by load_prologue.

    // K / V tile loads after the first barrier (the pass tables are written before it).
    auto load_kv = [&](Element* smem_x, Element const* x_ptr, GroupTensor const& gx, int64_t const* pass_x,
                       int dim) {
      load_tile_box_fast<Traits, kTileKV>(smem_x, layout_kv, x_ptr, gx, pass_x, kb, geo.kv_log2, n_kv, dim, aligned,
                                          tid);
    };

    for (int t = 0; t < cta.k.total; ++t) {
      const bool full = key_tile_full(geo, cta.k, kb);

      cp_async_wait<0>();
      __syncthreads();  // K[t] visible; every warp is done with V[t-1]
      if (t == 0) NATTEN_SM80_TRACE_MARK(p.trace, kMarkFirstData);
      if (negate_q && t == 0) {  // uniform; Q is complete after the first wait
        constexpr int kChunks = kTileQ * kDim * int(sizeof(Element)) / 16;
        uint4* q16 = reinterpret_cast<uint4*>(smem_q);
        for (int i = tid; i < kChunks; i += Traits::kThreads) {
          uint4 x = q16[i];
          x.x ^= 0x80008000u;
          x.y ^= 0x80008000u;
          x.z ^= 0x80008000u;
          x.w ^= 0x80008000u;
          q16[i] = x;
        }
        __syncthreads();
      }
      if (t > 0) load_kv(smem_v, v_ptr, cta.gv, cta.pass_v, p.head_dim_v);
      cp_async_fence();  // an empty group at t = 0 keeps the wait counts below
      if constexpr (kKStages == 2) {  // K[t + 1] into the other buffer (free: K[t - 1] was read before the barrier)
        if (t + 1 < cta.k.total) {
          key_tile_advance(geo, cta.k, kb);  // kb: the next tile's origin from here on (mask: kb_mask below)
          load_kv(smem_k + ((t + 1) & 1) * kSmemKV, k_ptr, cta.gk, cta.pass_k, p.head_dim);
        }
        cp_async_fence();
      }
      const int kbuf = kKStages == 2 ? (t & 1) : 0;

      // S = Q K^T
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kTileQ>, Int<kTileKV>>{});
      clear(acc_s);
      // k-slice kk's fragments are loaded one slice ahead (kPrefetchQK) or just before its MMA.
      constexpr int kPrefetchQK = Traits::kPrefetchQK ? 1 : 0;
      if constexpr (kFineB) {
        CUTE_UNROLL
        for (int kk = 0; kk < size<2>(tSrQ); ++kk) {
          copy(copy_q, tSsQ(_, _, kk), tSrQ_view(_, _, kk));
          gemm_slice_b_by_block(tiled_mma, tSrQ, copy_k, make_tensor(tSsK.data() + kbuf * kSmemKV, tSsK.layout()), tSrK,
                                tSrK_view, acc_s, kk);
        }
      } else {
        if constexpr (kPrefetchQK) {
          copy(copy_q, tSsQ(_, _, _0{}), tSrQ_view(_, _, _0{}));
          copy(copy_k, tSsK(_, _, _0{}), tSrK_view(_, _, _0{}));
        }
        CUTE_UNROLL
        for (int kk = 0; kk < size<2>(tSrQ); ++kk) {
          if (kk + kPrefetchQK < size<2>(tSrQ)) {
            copy(copy_q, tSsQ(_, _, kk + kPrefetchQK), tSrQ_view(_, _, kk + kPrefetchQK));
            copy(copy_k, tSsK(_, _, kk + kPrefetchQK), tSrK_view(_, _, kk + kPrefetchQK));
          }
          cute::gemm(tiled_mma, tSrQ(_, _, kk), tSrK(_, _, kk), acc_s);
        }
      }

      // Raw scores (the scale is applied in the exponent); mask where the key tile cuts a window border.
      Tensor s_rc = make_tensor(acc_s.data(), acc_rowcol(acc_s.layout()));
      if (!full) {
        // One 64-bit word per row: bit c = key column c attended (AND over axes).
        const uint64_t rep[kRank] = {rep_smem[0], rep_smem[1], rep_smem[2]};
        int kb_mask[kRank];  // origin of key tile t (kb already holds t + 1's with two K buffers)
        if constexpr (kKStages == 2) {
          key_tile_origin(geo, cta.k, t, kb_mask);
        } else {
          CUTE_UNROLL
          for (int a = 0; a < kRank; ++a) kb_mask[a] = kb[a];
        }
        const int col0 = get<1>(tScS_rc(0, 0));
        CUTE_UNROLL
        for (int mi = 0; mi < size<0>(s_rc); ++mi) {
          const int r = get<0>(tScS_rc(mi, 0));
          int rel_start[kRank], len[kRank];
          CUTE_UNROLL
          for (int a = 0; a < kRank; ++a) {
            const int2 w = row_win[r * kRank + a];
            rel_start[a] = w.x - kb_mask[a];
            len[a] = w.y;
          }
          const uint64_t word = key_tile_row_mask(rel_start, len, geo.kv_log2, rep) >> col0;
          CUTE_UNROLL
          for (int ni = 0; ni < size<1>(s_rc); ++ni) {
            const int bit = get<1>(tScS_rc(mi, ni)) - col0;  // compile-time after simplification
            if (((word >> bit) & 1u) == 0) s_rc(mi, ni) = -INFINITY;
          }
        }
      }

      // Online softmax with a lazy reference maximum: a row's row_max (the exponent's reference) moves,
      // and O and row_sum are rescaled, only when some row of the warp sees a new maximum more than
      // kRescaleSlack above its reference (warp-uniform branch); otherwise P = 2^(s * mul - row_max)
      // stays <= 2^kRescaleSlack (exact range for fp16 / bf16 P, fp32 sums). The logsumexp of the
      // epilogue, row_max + log2(row_sum), is the same for any reference.
      constexpr float kRescaleSlack = 8.f;
      float mx_new[kRowsPerThread];
      bool rescale = false;
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(s_rc); ++mi) {
        float mx_raw = -INFINITY;
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(s_rc); ++ni) mx_raw = fmaxf(mx_raw, s_rc(mi, ni));
        mx_new[mi] = fmaxf(row_max[mi], quad_max(mx_raw) * mul);  // log2 units, scaled
        rescale = rescale || mx_new[mi] > row_max[mi] + kRescaleSlack;  // -inf -> finite: always
      }
      if (__any_sync(0xffffffffu, rescale)) {
        CUTE_UNROLL
        for (int mi = 0; mi < size<0>(s_rc); ++mi) {
          const float m_use = mx_new[mi] == -INFINITY ? 0.f : mx_new[mi];  // row without keys so far
          const float corr = fast_exp2(row_max[mi] - m_use);
          row_max[mi] = mx_new[mi];
          row_sum[mi] *= corr;
          CUTE_UNROLL
          for (int nj = 0; nj < size<1>(acc_o_rc); ++nj) acc_o_rc(mi, nj) *= corr;
        }
      }
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(s_rc); ++mi) {
        const float m_use = row_max[mi] == -INFINITY ? 0.f : row_max[mi];  // row without keys so far: P = 0
        float sum = 0.f;
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(s_rc); ++ni) {
          const float e = fast_exp2(fmaf(s_rc(mi, ni), mul, -m_use));
          s_rc(mi, ni) = e;
          sum += e;
        }
        row_sum[mi] += sum;
      }
      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_as_a_operand(rP.layout()));

      if constexpr (kKStages == 2) {
        cp_async_wait<1>();  // V[t] landed (K[t + 1] may still be in flight)
        __syncthreads();     // V[t] visible
      } else {
        cp_async_wait<0>();
        __syncthreads();  // V[t] visible; every warp is done with K[t]
        if (t + 1 < cta.k.total) {
          key_tile_advance(geo, cta.k, kb);
          load_kv(smem_k, k_ptr, cta.gk, cta.pass_k, p.head_dim);
        }
        cp_async_fence();
      }

      // O += P V
      if constexpr (kFineB) {
        CUTE_UNROLL
        for (int kk = 0; kk < size<2>(tOrP); ++kk)
          gemm_slice_b_by_block(tiled_mma, tOrP, copy_v, tOsVt, tOrVt, tOrVt_view, acc_o, kk);
      } else {
        constexpr int kPrefetchV = Traits::kPrefetchV ? 1 : 0;  // as for Q / K above
        if constexpr (kPrefetchV) copy(copy_v, tOsVt(_, _, _0{}), tOrVt_view(_, _, _0{}));
        CUTE_UNROLL
        for (int kk = 0; kk < size<2>(tOrP); ++kk) {
          if (kk + kPrefetchV < size<2>(tOrP)) copy(copy_v, tOsVt(_, _, kk + kPrefetchV), tOrVt_view(_, _, kk + kPrefetchV));
          cute::gemm(tiled_mma, tOrP(_, _, kk), tOrVt(_, _, kk), acc_o);
        }
      }
    }
    cp_async_wait<0>();
  }
};

}  // namespace sm80
}  // namespace natten
