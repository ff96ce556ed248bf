// fp32 fused neighborhood-attention backward on CUDA cores, the same three-launch plan as the SM80
// backward (sm80/fna_backward_kernel.cuh) and the same walks:
//
// 1. preprocess (sm80/bwd_preprocess.cuh): delta = rowsum(dO * O) - dLSE.
// 2. dQ, query-parallel (the forward's walk):
//      per key tile:  S = Q K^T;  dP = dO V^T;  P = exp2(S * scale_log2 - lse_log2) (0 where masked);
//                     dS = P * (dP - delta);  dQ += dS K
//    dQ *= scale, written once.
// 3. dK / dV, key-parallel (a CTA per key tile; every query head of its GQA group, every query
//    tile whose windows reach the key tile):
//      S^T = K Q^T;  dP^T = V dO^T;  P^T, dS^T as above per query column;
//      dV += P^T dO;  dK += dS^T Q
//    dK *= scale, dK and dV written once.
// No atomics: deterministic. Padding query rows / columns get lse = +inf (P = 0).
#pragma once

#include <cmath>
#include <cstdint>

#include "f32_tile.cuh"
#include "sm80/bwd_params.cuh"

namespace natten {
namespace simt {

constexpr float kLog2eF = 1.4426950408889634074f;

// Tables of the 64 query tokens of a tile: lse (log2 units; +inf for padding) and delta.
__device__ __forceinline__ void query_stats(float* lse2, float* delta, const sm80::FnaBwdParams& p,
                                            const sm80::GroupTensor& glse, const sm80::GroupTensor& gdelta,
                                            const int64_t* q_off, const int q0[kRank], int tid) {
  for (int r = tid; r < kTile; r += kThreads) {
    int c[kRank];
    sm80::tile_coord(r, p.geo.q_log2, c);
#pragma unroll
    for (int a = 0; a < kRank; ++a) c[a] += q0[a];
    const bool ok = q_off[r] >= 0;
    lse2[r] = ok ? p.lse[glse.offset(c)] * kLog2eF : INFINITY;
    delta[r] = ok ? p.delta[gdelta.offset(c)] : 0.f;
  }
}

// ---------------------------------------------------------------------------------------------
// dQ
// ---------------------------------------------------------------------------------------------

struct DqCta {
  sm80::QueryTile q;
  sm80::KeyTiles k;
  sm80::GroupTensor gq, gk, gv, gdo, gdq, glse, gdelta;
};

struct DqSmem {
  Operands ops;
  Windows win;
  int64_t q_off[kTile], do_off[kTile], dq_off[kTile], k_off[kTile], v_off[kTile];
  float lse2[kTile], delta[kTile];
  DqCta cta;
};

template <int kCh>
__device__ void f32_dq_cta(const sm80::FnaBwdParams& p, const sm80::WorkTile& w, const sm80::QueryTile& qt,
                           DqSmem& sm) {
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const sm80::Geometry& g = p.geo;
  const float* __restrict__ q = static_cast<const float*>(p.q);
  const float* __restrict__ k = static_cast<const float*>(p.k);
  const float* __restrict__ v = static_cast<const float*>(p.v);
  const float* __restrict__ d_o = static_cast<const float*>(p.d_o);
  DqCta& cta = sm.cta;
  if (tid == 0) {
    cta.q = qt;
    cta.k = sm80::make_key_tiles(g, qt);
    const int64_t kv_head = w.head / p.heads_per_kv;
    cta.gq = sm80::make_group_tensor(w.batch, w.head, p.q_batch, p.q_head, p.q_spatial, w.group, g.dilation);
    cta.gdo = sm80::make_group_tensor(w.batch, w.head, p.do_batch, p.do_head, p.do_spatial, w.group, g.dilation);
    cta.gdq = sm80::make_group_tensor(w.batch, w.head, p.dq_batch, p.dq_head, p.dq_spatial, w.group, g.dilation);
    cta.glse = sm80::make_group_tensor(w.batch, w.head, p.lse_batch, p.lse_head, p.lse_spatial, w.group, g.dilation);
    cta.gdelta =
        sm80::make_group_tensor(w.batch, w.head, p.delta_batch, p.delta_head, p.delta_spatial, w.group, g.dilation);
    cta.gk = sm80::make_group_tensor(w.batch, kv_head, p.k_batch, p.k_head, p.k_spatial, qt.kv_group, g.dilation);
    cta.gv = sm80::make_group_tensor(w.batch, kv_head, p.v_batch, p.v_head, p.v_spatial, qt.kv_group, g.dilation);
  }
  __syncthreads();
  tile_offsets(sm.q_off, cta.gq, cta.q.q0, g.q_log2, cta.q.n_q, tid);
  tile_offsets(sm.do_off, cta.gdo, cta.q.q0, g.q_log2, cta.q.n_q, tid);
  tile_offsets(sm.dq_off, cta.gdq, cta.q.q0, g.q_log2, cta.q.n_q, tid);
  for (int r = tid; r < kTile; r += kThreads) sm80::query_row_window(g, cta.q, r, sm.win.start[r], sm.win.len[r]);
  __syncthreads();
  query_stats(sm.lse2, sm.delta, p, cta.glse, cta.gdelta, sm.q_off, cta.q.q0, tid);

  float dq[kCh][kRows][2];
#pragma unroll
  for (int ch = 0; ch < kCh; ++ch)
#pragma unroll
    for (int i = 0; i < kRows; ++i) dq[ch][i][0] = dq[ch][i][1] = 0.f;

  int kb[kRank];
  sm80::key_tile_origin(g, cta.k, 0, kb);
  const int kv_limit[kRank] = {cta.q.n_kv[0], cta.q.n_kv[1], cta.q.n_kv[2]};
  for (int t = 0; t < cta.k.total; ++t) {
    const bool full = sm80::key_tile_full(g, cta.k, kb);
    tile_offsets(sm.k_off, cta.gk, kb, g.kv_log2, kv_limit, tid);
    tile_offsets(sm.v_off, cta.gv, kb, g.kv_log2, kv_limit, tid);
    __syncthreads();

    float s[kRows][kCols], dp[kRows][kCols];
    gemm_rows(s, sm.ops, q, sm.q_off, k, sm.k_off, p.head_dim, tid, ty, tx);
    gemm_rows(dp, sm.ops, d_o, sm.do_off, v, sm.v_off, p.head_dim_v, tid, ty, tx);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int row = kRows * ty + i;
      const float lse2 = sm.lse2[row], delta = sm.delta[row];
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int col = tx + 16 * j;
        float ds = 0.f;
        if (full || attends(sm.win, row, kb, g.kv_log2, col)) {
          const float pr = exp2f(s[i][j] * p.scale_log2 - lse2);
          ds = pr * (dp[i][j] - delta);
        }
        sm.ops.p[row * kLdP + col] = ds;
      }
    }
    __syncthreads();
    gemm_p<kCh>(dq, sm.ops, k, sm.k_off, p.head_dim, tid, ty, tx);
    sm80::key_tile_advance(g, cta.k, kb);
  }
  store_rows<kCh>(static_cast<float*>(p.dq), sm.dq_off, dq, p.scale, p.head_dim, ty, tx);
}

template <int kCh>
__global__ void __launch_bounds__(kThreads) f32_dq_kernel(const __grid_constant__ sm80::FnaBwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ DqSmem sm;
  for (int64_t idx = blockIdx.x; idx < p.geo.num_work; idx += gridDim.x) {
    const sm80::WorkTile w = sm80::decode_work(p.geo, idx);
    sm80::QueryTile qt;
    if (!sm80::make_query_tile(p.geo, w, qt)) continue;
    f32_dq_cta<kCh>(p, w, qt, sm);
    __syncthreads();
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// dK / dV
// ---------------------------------------------------------------------------------------------

struct DkvCta {
  sm80::KeyTile k;
  sm80::QueryTilesForKey visits;
  sm80::QueryTile q;  // query tile of the current visit
  sm80::GroupTensor gk, gv, gdk, gdv;
  sm80::GroupTensor gq, gdo, glse, gdelta;  // query side, current head
};

struct DkvSmem {
  Operands ops;
  Windows win;  // windows of the current query tile's columns
  int64_t k_off[kTile], v_off[kTile], dk_off[kTile], dv_off[kTile], q_off[kTile], do_off[kTile];
  float lse2[kTile], delta[kTile];
  DkvCta cta;
};

template <int kCh>
__device__ void f32_dkdv_cta(const sm80::FnaBwdParams& p, const sm80::KvWorkTile& w, const sm80::KeyTile& kt,
                             DkvSmem& sm) {
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const sm80::Geometry& g = p.geo;
  const float* __restrict__ q = static_cast<const float*>(p.q);
  const float* __restrict__ k = static_cast<const float*>(p.k);
  const float* __restrict__ v = static_cast<const float*>(p.v);
  const float* __restrict__ d_o = static_cast<const float*>(p.d_o);
  DkvCta& cta = sm.cta;
  if (tid == 0) {
    cta.k = kt;
    cta.visits = sm80::make_query_tiles_for_key(g, kt);
    cta.gk = sm80::make_group_tensor(w.batch, w.kv_head, p.k_batch, p.k_head, p.k_spatial, w.group, g.dilation);
    cta.gv = sm80::make_group_tensor(w.batch, w.kv_head, p.v_batch, p.v_head, p.v_spatial, w.group, g.dilation);
    cta.gdk = sm80::make_group_tensor(w.batch, w.kv_head, p.dk_batch, p.dk_head, p.dk_spatial, w.group, g.dilation);
    cta.gdv = sm80::make_group_tensor(w.batch, w.kv_head, p.dv_batch, p.dv_head, p.dv_spatial, w.group, g.dilation);
  }
  __syncthreads();
  const int kv_limit[kRank] = {cta.k.n_kv[0], cta.k.n_kv[1], cta.k.n_kv[2]};
  tile_offsets(sm.k_off, cta.gk, cta.k.k0, g.kv_log2, kv_limit, tid);
  tile_offsets(sm.v_off, cta.gv, cta.k.k0, g.kv_log2, kv_limit, tid);
  tile_offsets(sm.dk_off, cta.gdk, cta.k.k0, g.kv_log2, kv_limit, tid);
  tile_offsets(sm.dv_off, cta.gdv, cta.k.k0, g.kv_log2, kv_limit, tid);
  // The tables are read by other threads, also by the stores when no query tile visits this key
  // tile (then dK = dV = 0 are written right away).
  __syncthreads();

  float dk[kCh][kRows][2], dv[kCh][kRows][2];
#pragma unroll
  for (int ch = 0; ch < kCh; ++ch)
#pragma unroll
    for (int i = 0; i < kRows; ++i) dk[ch][i][0] = dk[ch][i][1] = dv[ch][i][0] = dv[ch][i][1] = 0.f;

  const int total = cta.visits.total;
  for (int64_t hh = 0; hh < p.heads_per_kv; ++hh) {
    const int64_t head = w.kv_head * p.heads_per_kv + hh;
    for (int t = 0; t < total; ++t) {
      __syncthreads();  // the previous visit's tables and descriptor are no longer read
      if (tid == 0) {
        int tile[kRank];
        sm80::query_tile_of_visit(cta.visits, t, tile);
        sm80::query_tile_at(g, cta.k, tile, cta.q);
        if (t == 0) {
          cta.gq = sm80::make_group_tensor(w.batch, head, p.q_batch, p.q_head, p.q_spatial, cta.k.q_group, g.dilation);
          cta.gdo =
              sm80::make_group_tensor(w.batch, head, p.do_batch, p.do_head, p.do_spatial, cta.k.q_group, g.dilation);
          cta.glse =
              sm80::make_group_tensor(w.batch, head, p.lse_batch, p.lse_head, p.lse_spatial, cta.k.q_group, g.dilation);
          cta.gdelta = sm80::make_group_tensor(w.batch, head, p.delta_batch, p.delta_head, p.delta_spatial,
                                               cta.k.q_group, g.dilation);
        }
      }
      __syncthreads();
      const sm80::QueryTile& qt = cta.q;
      tile_offsets(sm.q_off, cta.gq, qt.q0, g.q_log2, qt.n_q, tid);
      tile_offsets(sm.do_off, cta.gdo, qt.q0, g.q_log2, qt.n_q, tid);
      for (int c = tid; c < kTile; c += kThreads) sm80::query_col_window(g, qt, c, sm.win.start[c], sm.win.len[c]);
      const bool full = sm80::pair_full(g, qt, cta.k.k0);
      __syncthreads();
      query_stats(sm.lse2, sm.delta, p, cta.glse, cta.gdelta, sm.q_off, qt.q0, tid);

      // Rows: keys of the tile; columns: queries of the visited tile.
      float s[kRows][kCols], dp[kRows][kCols];
      gemm_rows(s, sm.ops, k, sm.k_off, q, sm.q_off, p.head_dim, tid, ty, tx);
      gemm_rows(dp, sm.ops, v, sm.v_off, d_o, sm.do_off, p.head_dim_v, tid, ty, tx);
      float ds[kRows][kCols];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int row = kRows * ty + i;
        int key[kRank];
        sm80::tile_coord(row, g.kv_log2, key);
#pragma unroll
        for (int a = 0; a < kRank; ++a) key[a] += cta.k.k0[a];
#pragma unroll
        for (int j = 0; j < kCols; ++j) {
          const int col = tx + 16 * j;
          float pr = 0.f;
          if (full || sm80::row_attends(sm.win.start[col], sm.win.len[col], key))
            pr = exp2f(s[i][j] * p.scale_log2 - sm.lse2[col]);
          ds[i][j] = pr * (dp[i][j] - sm.delta[col]);
          sm.ops.p[row * kLdP + col] = pr;
        }
      }
      __syncthreads();
      gemm_p<kCh>(dv, sm.ops, d_o, sm.do_off, p.head_dim_v, tid, ty, tx);  // dV += P^T dO
#pragma unroll
      for (int i = 0; i < kRows; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) sm.ops.p[(kRows * ty + i) * kLdP + tx + 16 * j] = ds[i][j];
      __syncthreads();
      gemm_p<kCh>(dk, sm.ops, q, sm.q_off, p.head_dim, tid, ty, tx);  // dK += dS^T Q
    }
  }
  store_rows<kCh>(static_cast<float*>(p.dk), sm.dk_off, dk, p.scale, p.head_dim, ty, tx);
  store_rows<kCh>(static_cast<float*>(p.dv), sm.dv_off, dv, 1.f, p.head_dim_v, ty, tx);
}

template <int kCh>
__global__ void __launch_bounds__(kThreads) f32_dkdv_kernel(const __grid_constant__ sm80::FnaBwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ DkvSmem sm;
  for (int64_t idx = blockIdx.x; idx < p.kvg.num_work; idx += gridDim.x) {
    const sm80::KvWorkTile split = sm80::decode_kv_work(p.geo, p.kvg, idx);
    const int n = sm80::kv_split_tiles(p.kvg, split);  // 1 unless backward_kv_splits < key tiles
    for (int j = 0; j < n; ++j) {
      const sm80::KvWorkTile w = sm80::kv_split_tile(p.kvg, split, j);
      sm80::KeyTile kt;
      if (!sm80::make_key_tile(p.geo, w, kt)) continue;
      f32_dkdv_cta<kCh>(p, w, kt, sm);
      __syncthreads();
    }
  }
#endif
}

}  // namespace simt
}  // namespace natten
