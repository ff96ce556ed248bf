// SM80 fused neighborhood-attention backward kernels (mma.sync + cp.async + ldmatrix, CuTe).
//
// Three kernels, launched in this order on one stream (fna_backward_launch.cuh):
//
// 1. preprocess: delta[b, h, token] = sum_d dO * O  -  dLSE   (float32 workspace; one warp per row)
//
// 2. dQ, query-parallel (mirrors the forward's walk: query tile = box of 64 tokens of one dilation
//    group, key tiles = boxes anchored at the window start of its first query):
//      per key tile:  S = Q K^T;  mask (only tiles that cut a window border);
//                     P = exp2(S * scale_log2 - lse_log2);  dP = dO V^T;
//                     dS = P * (dP - delta);  dQ += dS K
//      dQ *= scale, written once (deterministic, no atomics).
//
// 3. dK / dV, key-parallel: a CTA owns (batch, kv head, dilation group, key tile of 64 tokens on a
//    fixed grid); for every query head of its GQA group and every query tile whose windows reach the
//    key tile (tile_scheduler.cuh: make_query_tiles_for_key) it recomputes the transposed scores
//      S^T = K Q^T;  mask;  P^T = exp2(S^T * scale_log2 - lse_log2[col]);  dP^T = V dO^T;
//      dS^T = P^T * (dP^T - delta[col]);  dV += P^T dO;  dK += dS^T Q
//    and writes dK (* scale) and dV once (deterministic, no atomics, no repeated K / V).
//    At padded head dim 256 the dK and dV accumulators (2 x 128 floats per thread) do not fit the
//    register file next to S and dP, so that bucket runs the kernel twice: once for dV (no dP), once
//    for dK (kDoDk / kDoDv template flags); S is recomputed, ~1.25x the work of one fused pass.
//
// Streams: with FnaBwdParams::dq_stages / kv_stages = 2 (the launcher's choice per device) the dQ
// kernel's K / V and the dK / dV kernel's Q / dO and column tables are double-buffered: step t + 1
// loads while step t computes, one barrier per step. Both pipelines do the same arithmetic in the
// same order (bit-identical results).
//
// Slabs of a larger grid (tile_scheduler.cuh): dQ uses the forward's slab geometry (query slab
// groups, K / V of the key slab's matching group); dK / dV work tiles cover the key slab, visit the
// query slab's tiles whose (global) windows reach them, and write zeros for keys no slab query
// attends. Query-side tensors (Q, dO, lse, delta) are bounded by the query slab group (n_q),
// key-side ones (K, V, dK, dV) by the key slab group (n_kv).
//
// Gradient of the logsumexp output: with z = scale * q.k, d lse / d z_ij = P_ij, so
//    dz = P * (dP - delta) + dLSE * P = P * (dP - (delta - dLSE)),
// which is why the preprocess folds dLSE into delta. Padding query rows (outside the group) get
// lse = +inf in shared memory, so their P is exactly 0 and they contribute nothing.
#pragma once

#include <cute/tensor.hpp>

#include "bwd_params.cuh"
#include "bwd_preprocess.cuh"
#include "kernel_traits.cuh"
#include "mainloop.cuh"
#include "params.cuh"
#include "tile_scheduler.cuh"
#include "utils.cuh"

namespace natten {
namespace sm80 {

// ---------------------------------------------------------------------------------------------
// GEMM helpers on the forward's tiled MMA (4 warps x 16 rows)
// ---------------------------------------------------------------------------------------------

// acc (M x N) += sA (M x K, K contiguous) * sB (N x K, K contiguous)^T, both from swizzled smem.
template <class Traits, class TensorAcc, class TensorSA, class TensorSB>
CUTE_DEVICE void bwd_gemm_ss(TensorAcc& acc, TensorSA const& sA, TensorSB const& sB, int tid) {
  using namespace cute;
  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor tCrA = thr_mma.partition_fragment_A(sA);
  Tensor tCrB = thr_mma.partition_fragment_B(sB);
  auto copy_a = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto thr_a = copy_a.get_thread_slice(tid);
  Tensor tCsA = thr_a.partition_S(sA);
  Tensor tCrA_v = thr_a.retile_D(tCrA);
  auto copy_b = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto thr_b = copy_b.get_thread_slice(tid);
  Tensor tCsB = thr_b.partition_S(sB);
  Tensor tCrB_v = thr_b.retile_D(tCrB);
  copy(copy_a, tCsA(_, _, _0{}), tCrA_v(_, _, _0{}));
  copy(copy_b, tCsB(_, _, _0{}), tCrB_v(_, _, _0{}));
  CUTE_UNROLL
  for (int kk = 0; kk < size<2>(tCrA); ++kk) {
    if (kk + 1 < size<2>(tCrA)) {
      copy(copy_a, tCsA(_, _, kk + 1), tCrA_v(_, _, kk + 1));
      copy(copy_b, tCsB(_, _, kk + 1), tCrB_v(_, _, kk + 1));
    }
    cute::gemm(tiled_mma, tCrA(_, _, kk), tCrB(_, _, kk), acc);
  }
}

// acc (M x N) += rA (registers, A-operand view of an M x K accumulator) * sBt (N x K view of a
// K x N smem tile, read with transposing ldmatrix).
template <class Traits, class TensorAcc, class TensorRA, class TensorSBt>
CUTE_DEVICE void bwd_gemm_rs(TensorAcc& acc, TensorRA const& tCrA, TensorSBt const& sBt, int tid) {
  using namespace cute;
  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor tCrB = thr_mma.partition_fragment_B(sBt);
  auto copy_b = make_tiled_copy_B(typename Traits::SmemCopyAtomT{}, tiled_mma);
  auto thr_b = copy_b.get_thread_slice(tid);
  Tensor tCsB = thr_b.partition_S(sBt);
  Tensor tCrB_v = thr_b.retile_D(tCrB);
  copy(copy_b, tCsB(_, _, _0{}), tCrB_v(_, _, _0{}));
  CUTE_UNROLL
  for (int kk = 0; kk < size<2>(tCrA); ++kk) {
    if (kk + 1 < size<2>(tCrA)) copy(copy_b, tCsB(_, _, kk + 1), tCrB_v(_, _, kk + 1));
    cute::gemm(tiled_mma, tCrA(_, _, kk), tCrB(_, _, kk), acc);
  }
}

// Accumulator (rows x kDim) -> Element -> swizzled smem tile (rows x kDim), scaled by `mul`.
template <class Traits, class TensorAcc, class SmemLayout>
CUTE_DEVICE void bwd_acc_to_smem(TensorAcc& acc, float mul, typename Traits::Element* smem, SmemLayout const& layout,
                                 int tid) {
  using namespace cute;
  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  CUTE_UNROLL
  for (int i = 0; i < size(acc); ++i) acc(i) *= mul;
  Tensor r = convert_fragment<typename Traits::Element>(acc);
  Tensor s = make_tensor(make_smem_ptr(smem), layout);
  Tensor ts = thr_mma.partition_C(s);
  static_assert(decltype(size(r))::value == decltype(size(ts))::value, "");
  CUTE_UNROLL
  for (int i = 0; i < size(r); ++i) ts(i) = r(i);
}

// Shared-memory plan of both tile kernels: the four 64 x kDim tiles of stage 0 (dQ: Q, dO, K, V;
// dK / dV: K, V, Q, dO), then two more per extra stage (the streamed pair: dQ's K / V, dK / dV's
// Q / dO), then per stage the column / row tables (windows, lse, delta), the mask patterns and the
// CTA descriptor. `stages` is a runtime value (FnaBwdParams::dq_stages / kv_stages).
template <class Traits>
struct BwdSmem {
  static_assert(Traits::kTileQ == Traits::kTileKV, "the backward uses square 64 x 64 score tiles");
  static constexpr int kTile = Traits::kTileQ;
  static constexpr int kTileElems = kTile * Traits::kDim;
  static constexpr int kTileBytes = kTileElems * int(sizeof(typename Traits::Element));
  static constexpr int kStageTableBytes = kTile * kRank * int(sizeof(int2)) + 2 * kTile * int(sizeof(float));
  static constexpr int kCtaBytes = 1024;
  static constexpr int bytes(int stages) {
    return (2 + 2 * stages) * kTileBytes + stages * kStageTableBytes + kRank * int(sizeof(uint64_t)) + kCtaBytes;
  }
  static_assert(bytes(1) == bwd_smem_bytes(Traits::kDim, 1) && bytes(2) == bwd_smem_bytes(Traits::kDim, 2),
                "keep bwd_smem_bytes (host checks) in sync");

  // Carve-up of `smem` for `stages` stages. The per-stage accessors select with `buf ? .. : ..`
  // (a runtime index into the arrays would put them in local memory).
  struct Plan {
    typename Traits::Element* tile[6];  // [0..3]: stage 0; [4], [5]: the streamed pair of stage 1
    int2* win[2];                       // per stage: kTile x kRank (start, len)
    float* lse[2];
    float* delta[2];
    uint64_t* rep;
    unsigned char* cta;
    // streamed tile `which` (0: dQ's K / dK-dV's Q, 1: dQ's V / dK-dV's dO) of stage `buf`
    CUTE_DEVICE typename Traits::Element* streamed(int which, int buf) const {
      return buf ? tile[4 + which] : tile[2 + which];
    }
    CUTE_DEVICE int2* win_of(int buf) const { return buf ? win[1] : win[0]; }
    CUTE_DEVICE float* lse_of(int buf) const { return buf ? lse[1] : lse[0]; }
    CUTE_DEVICE float* delta_of(int buf) const { return buf ? delta[1] : delta[0]; }
  };
  static CUTE_DEVICE Plan plan(unsigned char* smem, int stages) {
    using Element = typename Traits::Element;
    Plan pl;
    Element* t = reinterpret_cast<Element*>(smem);
    for (int i = 0; i < 4; ++i) pl.tile[i] = t + i * kTileElems;
    pl.tile[4] = stages > 1 ? t + 4 * kTileElems : pl.tile[2];
    pl.tile[5] = stages > 1 ? t + 5 * kTileElems : pl.tile[3];
    unsigned char* tab = smem + (2 + 2 * stages) * kTileBytes;
    for (int st = 0; st < 2; ++st) {
      unsigned char* b = tab + (st < stages ? st : 0) * kStageTableBytes;
      pl.win[st] = reinterpret_cast<int2*>(b);
      pl.lse[st] = reinterpret_cast<float*>(b + kTile * kRank * int(sizeof(int2)));
      pl.delta[st] = pl.lse[st] + kTile;
    }
    pl.rep = reinterpret_cast<uint64_t*>(tab + stages * kStageTableBytes);
    pl.cta = reinterpret_cast<unsigned char*>(pl.rep + kRank);
    return pl;
  }
};

// ---------------------------------------------------------------------------------------------
// 2. dQ (query-parallel)
// ---------------------------------------------------------------------------------------------

struct BwdQCta {
  QueryTile q;  // q.n_q / q.n_kv: token bounds of the query / key slab groups (loads, stores)
  KeyTiles k;
  GroupTensor gq, gk, gv, gdo, gdq, glse, gdelta;
  int64_t pass_k[kMaxKvPasses], pass_v[kMaxKvPasses];  // load_tile_box_fast tables of the K / V loads
};

template <class Traits>
CUTE_DEVICE void fna_bwd_dq_cta(FnaBwdParams const& p, WorkTile const& w, QueryTile const& qt, unsigned char* smem) {
  using namespace cute;
  using Element = typename Traits::Element;
  using Smem = BwdSmem<Traits>;
  constexpr int kTile = Smem::kTile;
  const int tid = threadIdx.x;
  Geometry const& geo = p.geo;
  const int stages = p.dq_stages;  // 2: K / V of key tile t + 1 load while tile t computes

  const typename Smem::Plan pl = Smem::plan(smem, stages);
  Element* smem_q = pl.tile[0];
  Element* smem_do = pl.tile[1];
  auto smem_k = [&](int buf) { return pl.streamed(0, buf); };
  auto smem_v = [&](int buf) { return pl.streamed(1, buf); };
  int2* row_win = pl.win[0];
  uint64_t* rep_smem = pl.rep;
  float* lse_s = pl.lse[0];
  float* delta_s = pl.delta[0];
  static_assert(sizeof(BwdQCta) <= Smem::kCtaBytes, "");
  BwdQCta* cta_smem = reinterpret_cast<BwdQCta*>(pl.cta);

  const bool aligned = p.aligned != 0;
  const int64_t kv_head = w.head / p.heads_per_kv;
  // The key walk, in every thread's registers: the loop below reads its fields each step (from
  // shared memory they were a read -> compare chain per step; ncu, 1d-32k-s256).
  const KeyTiles kt = make_key_tiles(geo, qt);
  // Q, dO and K / V of the first key tile, issued by every thread before the CTA descriptor (as the
  // forward's load_prologue): the descriptor, its barrier and the tables then run under their latency.
  // The setup jobs below store these same group tensors.
  const GroupTensor gq = make_group_tensor(w.batch, w.head, p.q_batch, p.q_head, p.q_spatial, w.group, geo.dilation);
  const GroupTensor gdo = make_group_tensor(w.batch, w.head, p.do_batch, p.do_head, p.do_spatial, w.group, geo.dilation);
  const GroupTensor gk =
      make_group_tensor(w.batch, kv_head, p.k_batch, p.k_head, p.k_spatial, qt.kv_group, geo.dilation);
  const GroupTensor gv =
      make_group_tensor(w.batch, kv_head, p.v_batch, p.v_head, p.v_spatial, qt.kv_group, geo.dilation);
  load_tile_box_first<Traits, kTile>(smem_q, typename Traits::SmemLayoutQ{}, static_cast<Element const*>(p.q), gq,
                                     qt.q0, geo.q_log2, qt.n_q, p.head_dim, aligned, tid);
  load_tile_box_first<Traits, kTile>(smem_do, typename Traits::SmemLayoutQ{}, static_cast<Element const*>(p.d_o), gdo,
                                     qt.q0, geo.q_log2, qt.n_q, p.head_dim_v, aligned, tid);
  if (kt.total > 0) {
    load_tile_box_first<Traits, kTile>(smem_k(0), typename Traits::SmemLayoutKV{}, static_cast<Element const*>(p.k), gk,
                                       kt.start, geo.kv_log2, qt.n_kv, p.head_dim, aligned, tid);
    load_tile_box_first<Traits, kTile>(smem_v(0), typename Traits::SmemLayoutKV{}, static_cast<Element const*>(p.v), gv,
                                       kt.start, geo.kv_log2, qt.n_kv, p.head_dim_v, aligned, tid);
  }
  cp_async_fence();

  // CTA descriptor, built by the first lanes of the four warps in parallel (as the dK / dV kernel).
  static_assert(Traits::kWarps >= 4, "four setup jobs");
  if ((tid & 31) == 0) {
    BwdQCta& c = *cta_smem;
    const int job = tid >> 5;
    if (job == 0) {
      c.q = qt;
      c.k = kt;
    } else if (job == 1) {
      c.gq = gq;
      c.gdo = gdo;
      c.gdq = make_group_tensor(w.batch, w.head, p.dq_batch, p.dq_head, p.dq_spatial, w.group, geo.dilation);
    } else if (job == 2) {
      c.gk = gk;
      c.gv = gv;
      c.glse = make_group_tensor(w.batch, w.head, p.lse_batch, p.lse_head, p.lse_spatial, w.group, geo.dilation);
      c.gdelta =
          make_group_tensor(w.batch, w.head, p.delta_batch, p.delta_head, p.delta_spatial, w.group, geo.dilation);
    } else if (job == 3) {
      fill_pass_tables<Traits, kTile>(c.pass_k, c.pass_v, geo.kv_log2, gk.step, gv.step);
    }
  }
  __syncthreads();
  BwdQCta const& cta = *cta_smem;
  auto load_kv = [&](int buf, const int kb[kRank]) {
    load_tile_box_fast<Traits, kTile>(smem_k(buf), typename Traits::SmemLayoutKV{}, static_cast<Element const*>(p.k),
                                      cta.gk, cta.pass_k, kb, geo.kv_log2, qt.n_kv, p.head_dim, aligned, tid);
    load_tile_box_fast<Traits, kTile>(smem_v(buf), typename Traits::SmemLayoutKV{}, static_cast<Element const*>(p.v),
                                      cta.gv, cta.pass_v, kb, geo.kv_log2, qt.n_kv, p.head_dim_v, aligned, tid);
  };

  // Per-row windows, lse (log2 units) and delta of every row.
  int kb[kRank];
  for (int a = 0; a < kRank; ++a) kb[a] = kt.start[a];
  CollectiveMainloop<Traits>::fill_mask_tables(geo, cta.q, row_win, rep_smem, tid);
  for (int r = tid; r < kTile; r += Traits::kThreads) {
    int c[kRank];
    tile_coord(r, geo.q_log2, c);
    bool ok = true;
    for (int a = 0; a < kRank; ++a) {
      c[a] += cta.q.q0[a];
      ok = ok && c[a] < cta.q.n_q[a];
    }
    lse_s[r] = ok ? p.lse[cta.glse.offset(c)] * kLog2e : INFINITY;
    delta_s[r] = ok ? p.delta[cta.gdelta.offset(c)] : 0.f;
  }

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQ{});
  Tensor sdO = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQ{});

  Tensor cS = make_identity_tensor(Shape<Int<kTile>, Int<kTile>>{});
  Tensor tScS = thr_mma.partition_C(cS);
  Tensor tScS_rc = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));

  Tensor acc_dq = partition_fragment_C(tiled_mma, Shape<Int<kTile>, Int<Traits::kDim>>{});
  clear(acc_dq);

  const float scale_log2 = p.scale_log2;
  // Masked scores: infinite with the sign that scale_log2 turns into -inf (scales may be negative).
  const float masked = scale_log2 > 0.f ? -INFINITY : INFINITY;

  for (int t = 0; t < kt.total; ++t) {
    const int buf = stages > 1 ? (t & 1) : 0;
    const bool full = key_tile_full(geo, kt, kb);
    int kn[kRank] = {kb[0], kb[1], kb[2]};
    if (t + 1 < kt.total) key_tile_advance(geo, kt, kn);
    cp_async_wait<0>();
    __syncthreads();  // K, V of tile t (and at t = 0: Q, dO, tables) visible; every warp is done with tile t - 1
    if (stages > 1 && t + 1 < kt.total) load_kv(buf ^ 1, kn);  // lands while tile t computes
    cp_async_fence();

    Tensor sK = make_tensor(make_smem_ptr(smem_k(buf)), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(smem_v(buf)), typename Traits::SmemLayoutKV{});
    Tensor sKt = make_tensor(make_smem_ptr(smem_k(buf)), typename Traits::SmemLayoutVt{});
    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kTile>, Int<kTile>>{});
    clear(acc_s);
    bwd_gemm_ss<Traits>(acc_s, sQ, sK, tid);
    Tensor s_rc = make_tensor(acc_s.data(), acc_rowcol(acc_s.layout()));
    if (!full) {
      const uint64_t rep[kRank] = {rep_smem[0], rep_smem[1], rep_smem[2]};
      const int col0 = get<1>(tScS_rc(0, 0));
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(s_rc); ++mi) {
        const int r = get<0>(tScS_rc(mi, 0));
        int rel_start[kRank], len[kRank];
        CUTE_UNROLL
        for (int a = 0; a < kRank; ++a) {
          const int2 wv = row_win[r * kRank + a];
          rel_start[a] = wv.x - kb[a];
          len[a] = wv.y;
        }
        const uint64_t word = key_tile_row_mask(rel_start, len, geo.kv_log2, rep) >> col0;
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(s_rc); ++ni) {
          const int bit = get<1>(tScS_rc(mi, ni)) - col0;
          if (((word >> bit) & 1u) == 0) s_rc(mi, ni) = masked;
        }
      }
    }
    // P = exp2(S * scale_log2 - lse_log2)
    CUTE_UNROLL
    for (int mi = 0; mi < size<0>(s_rc); ++mi) {
      const float l = lse_s[get<0>(tScS_rc(mi, 0))];
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s_rc); ++ni) s_rc(mi, ni) = fast_exp2(s_rc(mi, ni) * scale_log2 - l);
    }
    // dP = dO V^T;  dS = P * (dP - delta)
    Tensor acc_dp = partition_fragment_C(tiled_mma, Shape<Int<kTile>, Int<kTile>>{});
    clear(acc_dp);
    bwd_gemm_ss<Traits>(acc_dp, sdO, sV, tid);
    Tensor dp_rc = make_tensor(acc_dp.data(), acc_rowcol(acc_dp.layout()));
    CUTE_UNROLL
    for (int mi = 0; mi < size<0>(s_rc); ++mi) {
      const float dl = delta_s[get<0>(tScS_rc(mi, 0))];
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s_rc); ++ni) dp_rc(mi, ni) = s_rc(mi, ni) * (dp_rc(mi, ni) - dl);
    }
    Tensor rdS = convert_fragment<Element>(acc_dp);
    Tensor tdS = make_tensor(rdS.data(), acc_as_a_operand(rdS.layout()));
    // dQ += dS K
    bwd_gemm_rs<Traits>(acc_dq, tdS, sKt, tid);
    if (stages == 1 && t + 1 < kt.total) {
      __syncthreads();  // every warp is done with K, V before the next tile overwrites them
      load_kv(0, kn);
      cp_async_fence();
    }
    for (int a = 0; a < kRank; ++a) kb[a] = kn[a];
  }
  cp_async_wait<0>();
  __syncthreads();
  bwd_acc_to_smem<Traits>(acc_dq, p.scale, smem_q, typename Traits::SmemLayoutQ{}, tid);
  __syncthreads();
  store_tile_box<Traits, kTile>(smem_q, typename Traits::SmemLayoutQ{}, static_cast<Element*>(p.dq), cta.gdq,
                                cta.q.q0, geo.q_log2, cta.q.n_q, p.head_dim, aligned, tid);
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) fna_bwd_dq_kernel(const __grid_constant__ FnaBwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  for (int64_t idx = blockIdx.x; idx < p.geo.num_work; idx += gridDim.x) {
    const WorkTile w = decode_work(p.geo, idx);
    QueryTile qt;
    if (!make_query_tile(p.geo, w, qt)) continue;
    fna_bwd_dq_cta<Traits>(p, w, qt, smem);
    __syncthreads();
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// 3. dK / dV (key-parallel)
// ---------------------------------------------------------------------------------------------

struct BwdKvCta {
  KeyTile k;  // k.n_kv / k.n_q: token bounds of the key / query slab groups (loads, stores)
  QueryTilesForKey qs;
  GroupTensor gk, gv, gdk, gdv;
  GroupTensor gq, gdo, glse, gdelta;  // query-side tensors of the group's first query head (hh = 0)
  // Visit tiles (relative to qs.first) whose pair with the key tile needs no mask, per axis:
  // full_lo[a] <= j <= full_hi[a] (an interval: window starts and ends are monotone in the query).
  int full_lo[kRank], full_hi[kRank];
  int64_t pass_q[kMaxKvPasses], pass_do[kMaxKvPasses];  // load_tile_box_fast tables (same for every head)
};

// dK / dV of one key tile. Visits (query head hh of the kv head's group, query tile) are walked
// by every thread with its own cursor (mixed-radix digits over qs.count, last axis fastest, then
// the head); whether a visit needs the mask is an interval test per axis. With kv_stages = 2 the
// Q / dO tiles and the column tables (windows; lse and delta by cp.async) of visit vi + 1 load into
// the other buffer while visit vi computes (one barrier per visit); with 1 stage: compute, barrier,
// load, wait, barrier (the shared-memory budget of two CTAs per SM on A100 at head dim 128).
template <class Traits, bool kDoDk, bool kDoDv>
CUTE_DEVICE void fna_bwd_dkdv_cta(FnaBwdParams const& p, KvWorkTile const& w, KeyTile const& kt,
                                  unsigned char* smem) {
  using namespace cute;
  using Element = typename Traits::Element;
  using Smem = BwdSmem<Traits>;
  constexpr int kTile = Smem::kTile;
  const int tid = threadIdx.x;
  Geometry const& geo = p.geo;
  const int stages = p.kv_stages;

  const typename Smem::Plan pl = Smem::plan(smem, stages);
  Element* smem_k = pl.tile[0];
  Element* smem_v = pl.tile[1];
  auto smem_q = [&](int buf) { return pl.streamed(0, buf); };
  auto smem_do = [&](int buf) { return pl.streamed(1, buf); };
  static_assert(sizeof(BwdKvCta) <= Smem::kCtaBytes, "");
  BwdKvCta* cta_smem = reinterpret_cast<BwdKvCta*>(pl.cta);

  const bool aligned = p.aligned != 0;
  // K and V of the key tile, issued by every thread before the CTA descriptor (as the forward's
  // load_prologue and the dQ kernel); setup job 1 stores these same group tensors.
  const GroupTensor gk = make_group_tensor(w.batch, w.kv_head, p.k_batch, p.k_head, p.k_spatial, w.group, geo.dilation);
  const GroupTensor gv = make_group_tensor(w.batch, w.kv_head, p.v_batch, p.v_head, p.v_spatial, w.group, geo.dilation);
  load_tile_box_first<Traits, kTile>(smem_k, typename Traits::SmemLayoutKV{}, static_cast<Element const*>(p.k), gk,
                                     kt.k0, geo.kv_log2, kt.n_kv, p.head_dim, aligned, tid);
  load_tile_box_first<Traits, kTile>(smem_v, typename Traits::SmemLayoutKV{}, static_cast<Element const*>(p.v), gv,
                                     kt.k0, geo.kv_log2, kt.n_kv, p.head_dim_v, aligned, tid);
  cp_async_fence();

  // CTA descriptor, built by the first lanes of the four warps in parallel (thread 0 alone: ncu put
  // 3% of the kernel's warp time at the barrier below waiting for it, 1d-32k-s256).
  static_assert(Traits::kWarps >= 4, "four setup jobs");
  if ((tid & 31) == 0) {
    BwdKvCta& c = *cta_smem;
    const int job = tid >> 5;
    const int64_t head0 = w.kv_head * p.heads_per_kv;
    int const* qg = kt.q_group;  // the query slab's group (= w.group on the whole grid)
    if (job == 0) {
      c.k = kt;
      c.qs = make_query_tiles_for_key(geo, kt);
    } else if (job == 1) {
      c.gk = gk;
      c.gv = gv;
      c.gdk = make_group_tensor(w.batch, w.kv_head, p.dk_batch, p.dk_head, p.dk_spatial, w.group, geo.dilation);
      c.gdv = make_group_tensor(w.batch, w.kv_head, p.dv_batch, p.dv_head, p.dv_spatial, w.group, geo.dilation);
    } else if (job == 2) {
      c.gq = make_group_tensor(w.batch, head0, p.q_batch, p.q_head, p.q_spatial, qg, geo.dilation);
      c.gdo = make_group_tensor(w.batch, head0, p.do_batch, p.do_head, p.do_spatial, qg, geo.dilation);
      c.glse = make_group_tensor(w.batch, head0, p.lse_batch, p.lse_head, p.lse_spatial, qg, geo.dilation);
      c.gdelta = make_group_tensor(w.batch, head0, p.delta_batch, p.delta_head, p.delta_spatial, qg, geo.dilation);
    } else if (job == 3) {
      const GroupTensor gq = make_group_tensor(w.batch, head0, p.q_batch, p.q_head, p.q_spatial, qg, geo.dilation);
      const GroupTensor gdo = make_group_tensor(w.batch, head0, p.do_batch, p.do_head, p.do_spatial, qg, geo.dilation);
      fill_pass_tables<Traits, kTile>(c.pass_q, c.pass_do, geo.q_log2, gq.step, gdo.step);
    }
  }
  __syncthreads();
  BwdKvCta& cta = *cta_smem;
  const int64_t nvis = int64_t(cta.qs.total) * p.heads_per_kv;
  // Full intervals per axis: full_lo = #tiles failing B, full_hi = #tiles passing A - 1 (counted
  // by the whole CTA; every thread passes the same barriers).
  for (int a = 0; a < kRank; ++a) {
    int n_not_b = 0, n_a = 0;
    for (int j0 = 0; j0 < cta.qs.count[a]; j0 += Traits::kThreads) {
      const int j = j0 + tid;
      bool A = false, B = true;
      if (j < cta.qs.count[a]) visit_full_halves(geo, cta.k, cta.qs, a, j, A, B);
      n_not_b += __syncthreads_count(!B);
      n_a += __syncthreads_count(A);
    }
    if (tid == 0) {
      cta.full_lo[a] = n_not_b;
      cta.full_hi[a] = n_a - 1;
    }
  }
  __syncthreads();

  // Visit cursor: digits over qs.count (last axis fastest), then the query head.
  int cur[kRank] = {0, 0, 0};
  int64_t cur_hh = 0;
  // Both branch-free (selects, `&`; see key_tile_advance).
  auto advance = [&](int d[kRank], int64_t& hh) {
    bool carry = true;
    CUTE_UNROLL
    for (int a = kRank - 1; a >= 0; --a) {
      const int next = d[a] + int(carry);
      const bool wrap = carry & (next == cta.qs.count[a]);
      d[a] = wrap ? 0 : next;
      carry = wrap;
    }
    hh += int(carry);
  };
  auto visit_full = [&](const int d[kRank]) {
    bool f = true;
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) f &= (cta.full_lo[a] <= d[a]) & (d[a] <= cta.full_hi[a]);
    return f;
  };

  // Q / dO tiles and column tables of visit (d, hh) into buffer `buf` (asynchronous; visible after
  // the next cp_async_wait + barrier).
  auto load_visit = [&](const int d[kRank], int64_t hh, int buf) {
    int tile[kRank];
    for (int a = 0; a < kRank; ++a) tile[a] = cta.qs.first[a] + d[a];
    QueryTile q;
    query_tile_at(geo, cta.k, tile, q);
    GroupTensor gq = cta.gq, gdo = cta.gdo;
    gq.base += hh * p.q_head;
    gdo.base += hh * p.do_head;
    load_tile_box_fast<Traits, kTile>(smem_q(buf), typename Traits::SmemLayoutQ{}, static_cast<Element const*>(p.q),
                                      gq, cta.pass_q, q.q0, geo.q_log2, cta.k.n_q, p.head_dim, aligned, tid);
    load_tile_box_fast<Traits, kTile>(smem_do(buf), typename Traits::SmemLayoutQ{}, static_cast<Element const*>(p.d_o),
                                      gdo, cta.pass_do, q.q0, geo.q_log2, cta.k.n_q, p.head_dim_v, aligned, tid);
    const int64_t lse_base = cta.glse.base + hh * p.lse_head;
    const int64_t delta_base = cta.gdelta.base + hh * p.delta_head;
    // Threads [0, kTile): lse / delta of column c = tid; threads [kTile, 2 kTile): the window of
    // column c = tid - kTile, needed only by visits that take the mask (one job per thread: the
    // barrier after each visit waits for the slowest warp).
    static_assert(Traits::kThreads == 2 * kTile, "one column job per thread");
    if (tid < kTile) {
      const int c = tid;
      int qc[kRank];
      tile_coord(c, geo.q_log2, qc);
      bool ok = true;
      int64_t lo = lse_base, dof = delta_base;
      for (int a = 0; a < kRank; ++a) {
        qc[a] += q.q0[a];
        ok = ok && qc[a] < cta.k.n_q[a];
        lo += int64_t(qc[a]) * cta.glse.step[a];
        dof += int64_t(qc[a]) * cta.gdelta.step[a];
      }
      if (ok) {  // natural-log lse (scaled to log2 at use)
        cp_async_f32(pl.lse_of(buf) + c, p.lse + lo);
        cp_async_f32(pl.delta_of(buf) + c, p.delta + dof);
      } else {  // padding query: P = 0
        pl.lse_of(buf)[c] = INFINITY;
        pl.delta_of(buf)[c] = 0.f;
      }
    } else if (!visit_full(d)) {
      const int c = tid - kTile;
      int ws[kRank], wl[kRank];
      query_col_window(geo, q, c, ws, wl);  // key slab coordinates (global window shifted)
      for (int a = 0; a < kRank; ++a) pl.win_of(buf)[c * kRank + a] = make_int2(ws[a], wl[a]);
    }
  };

  if (nvis > 0) load_visit(cur, cur_hh, 0);
  cp_async_fence();

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKV{});

  // rows = keys, cols = queries
  Tensor cS = make_identity_tensor(Shape<Int<kTile>, Int<kTile>>{});
  Tensor tScS = thr_mma.partition_C(cS);
  Tensor tScS_rc = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));

  Tensor acc_dk = partition_fragment_C(tiled_mma, Shape<Int<kTile>, Int<kDoDk ? Traits::kDim : 16>>{});
  Tensor acc_dv = partition_fragment_C(tiled_mma, Shape<Int<kTile>, Int<kDoDv ? Traits::kDim : 16>>{});
  clear(acc_dk);
  clear(acc_dv);

  const float scale_log2 = p.scale_log2;
  const float masked = scale_log2 > 0.f ? -INFINITY : INFINITY;  // -> -inf after scaling
  for (int64_t vi = 0; vi < nvis; ++vi) {
    const int buf = stages > 1 ? int(vi & 1) : 0;
    cp_async_wait<0>();
    __syncthreads();  // Q, dO, tables of visit vi visible; every warp is done with visit vi - 1
    const bool full = visit_full(cur);
    advance(cur, cur_hh);  // now visit vi + 1
    if (stages > 1 && vi + 1 < nvis) load_visit(cur, cur_hh, buf ^ 1);  // lands while vi computes
    cp_async_fence();

    int2 const* q_win = pl.win_of(buf);
    float const* lse_s = pl.lse_of(buf);
    float const* delta_s = pl.delta_of(buf);
    Tensor sQ = make_tensor(make_smem_ptr(smem_q(buf)), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(smem_do(buf)), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(smem_q(buf)), typename Traits::SmemLayoutVt{});
    Tensor sdOt = make_tensor(make_smem_ptr(smem_do(buf)), typename Traits::SmemLayoutVt{});

    // S^T = K Q^T
    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kTile>, Int<kTile>>{});
    clear(acc_s);
    bwd_gemm_ss<Traits>(acc_s, sK, sQ, tid);
    Tensor s_rc = make_tensor(acc_s.data(), acc_rowcol(acc_s.layout()));
    if (!full) {
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(s_rc); ++mi) {
        int key[kRank];
        tile_coord(get<0>(tScS_rc(mi, 0)), geo.kv_log2, key);
        for (int a = 0; a < kRank; ++a) key[a] += cta.k.k0[a];
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(s_rc); ++ni) {
          const int c = get<1>(tScS_rc(mi, ni));
          bool ok = true;
          CUTE_UNROLL
          for (int a = 0; a < kRank; ++a) {
            const int2 wv = q_win[c * kRank + a];
            ok = ok && unsigned(key[a] - wv.x) <= unsigned(wv.y);
          }
          if (!ok) s_rc(mi, ni) = masked;
        }
      }
    }
    // P^T = exp2(S^T * scale_log2 - lse[col] * log2(e))
    CUTE_UNROLL
    for (int mi = 0; mi < size<0>(s_rc); ++mi) {
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s_rc); ++ni)
        s_rc(mi, ni) = fast_exp2(s_rc(mi, ni) * scale_log2 - lse_s[get<1>(tScS_rc(mi, ni))] * kLog2e);
    }
    if constexpr (kDoDv) {
      // dV += P^T dO
      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tP = make_tensor(rP.data(), acc_as_a_operand(rP.layout()));
      bwd_gemm_rs<Traits>(acc_dv, tP, sdOt, tid);
    }
    if constexpr (kDoDk) {
      // dP^T = V dO^T;  dS^T = P^T * (dP^T - delta[col]);  dK += dS^T Q
      Tensor acc_dp = partition_fragment_C(tiled_mma, Shape<Int<kTile>, Int<kTile>>{});
      clear(acc_dp);
      bwd_gemm_ss<Traits>(acc_dp, sV, sdO, tid);
      Tensor dp_rc = make_tensor(acc_dp.data(), acc_rowcol(acc_dp.layout()));
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(s_rc); ++mi) {
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(s_rc); ++ni)
          dp_rc(mi, ni) = s_rc(mi, ni) * (dp_rc(mi, ni) - delta_s[get<1>(tScS_rc(mi, ni))]);
      }
      Tensor rdS = convert_fragment<Element>(acc_dp);
      Tensor tdS = make_tensor(rdS.data(), acc_as_a_operand(rdS.layout()));
      bwd_gemm_rs<Traits>(acc_dk, tdS, sQt, tid);
    }

    if (stages == 1 && vi + 1 < nvis) {
      __syncthreads();  // every warp is done with Q, dO and the tables of visit vi
      load_visit(cur, cur_hh, 0);
      cp_async_fence();
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // everyone is done with Q / dO: reuse them for staging dK / dV
  if constexpr (kDoDk) bwd_acc_to_smem<Traits>(acc_dk, p.scale, smem_q(0), typename Traits::SmemLayoutQ{}, tid);
  if constexpr (kDoDv) bwd_acc_to_smem<Traits>(acc_dv, 1.f, smem_do(0), typename Traits::SmemLayoutQ{}, tid);
  __syncthreads();
  if constexpr (kDoDk)
    store_tile_box<Traits, kTile>(smem_q(0), typename Traits::SmemLayoutQ{}, static_cast<Element*>(p.dk), cta.gdk,
                                  cta.k.k0, geo.kv_log2, cta.k.n_kv, p.head_dim, aligned, tid);
  if constexpr (kDoDv)
    store_tile_box<Traits, kTile>(smem_do(0), typename Traits::SmemLayoutQ{}, static_cast<Element*>(p.dv), cta.gdv,
                                  cta.k.k0, geo.kv_log2, cta.k.n_kv, p.head_dim_v, aligned, tid);
}

template <class Traits, bool kDoDk, bool kDoDv>
__global__ void __launch_bounds__(Traits::kThreads, 1) fna_bwd_dkdv_kernel(const __grid_constant__ FnaBwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  for (int64_t idx = blockIdx.x; idx < p.kvg.num_work; idx += gridDim.x) {
    const KvWorkTile split = decode_kv_work(p.geo, p.kvg, idx);
    const int n = kv_split_tiles(p.kvg, split);  // 1 unless backward_kv_splits < key tiles
    for (int j = 0; j < n; ++j) {
      const KvWorkTile w = kv_split_tile(p.kvg, split, j);
      KeyTile kt;
      if (!make_key_tile(p.geo, w, kt)) continue;
      fna_bwd_dkdv_cta<Traits, kDoDk, kDoDv>(p, w, kt, smem);
      __syncthreads();
    }
  }
#endif
}

}  // namespace sm80
}  // namespace natten
