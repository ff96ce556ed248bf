// fp32 fused neighborhood-attention forward on CUDA cores: the SM80 kernel's work decomposition and
// key-tile walk (tiles fully inside every window skip the mask), online softmax in exp2 units,
// O and the logsumexp written once per real query.
//
// Per key tile: S = Q K^T (64 x 32 chunks over D); mask (partial tiles only); online softmax;
// O += P V (64 x 32 chunks over Dv, P through shared memory).
#pragma once

#include <cmath>
#include <cstdint>

#include "f32_tile.cuh"

namespace natten {
namespace simt {

struct ForwardCta {
  sm80::QueryTile q;
  sm80::KeyTiles k;
  sm80::GroupTensor gq, gk, gv, go, glse;
};

struct ForwardSmem {
  Operands ops;
  Windows win;            // row windows (masked tiles)
  int64_t q_off[kTile];   // query rows (-1 = padding)
  int64_t k_off[kTile];   // key columns of the current tile
  int64_t v_off[kTile];
  int64_t o_off[kTile];
  ForwardCta cta;
};

template <int kCh>
__device__ void f32_forward_cta(const sm80::FnaParams& p, const sm80::WorkTile& w, const sm80::QueryTile& qt,
                                ForwardSmem& sm) {
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const sm80::Geometry& g = p.geo;
  const float* __restrict__ q = static_cast<const float*>(p.q);
  const float* __restrict__ k = static_cast<const float*>(p.k);
  const float* __restrict__ v = static_cast<const float*>(p.v);
  ForwardCta& cta = sm.cta;
  if (tid == 0) {
    cta.q = qt;
    cta.k = sm80::make_key_tiles(g, qt);
    const int64_t kv_head = w.head / p.heads_per_kv;
    cta.gq = sm80::make_group_tensor(w.batch, w.head, p.q_batch, p.q_head, p.q_spatial, w.group, g.dilation);
    cta.gk = sm80::make_group_tensor(w.batch, kv_head, p.k_batch, p.k_head, p.k_spatial, qt.kv_group, g.dilation);
    cta.gv = sm80::make_group_tensor(w.batch, kv_head, p.v_batch, p.v_head, p.v_spatial, qt.kv_group, g.dilation);
    cta.go = sm80::make_group_tensor(w.batch, w.head, p.o_batch, p.o_head, p.o_spatial, w.group, g.dilation);
    cta.glse = sm80::make_group_tensor(w.batch, w.head, p.lse_batch, p.lse_head, p.lse_spatial, w.group, g.dilation);
  }
  __syncthreads();
  tile_offsets(sm.q_off, cta.gq, cta.q.q0, g.q_log2, cta.q.n_q, tid);
  tile_offsets(sm.o_off, cta.go, cta.q.q0, g.q_log2, cta.q.n_q, tid);
  for (int r = tid; r < kTile; r += kThreads) sm80::query_row_window(g, cta.q, r, sm.win.start[r], sm.win.len[r]);
  __syncthreads();  // the tables above are read by other threads (key loop and epilogue)

  float m[kRows], l[kRows];
  float o[kCh][kRows][2];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int ch = 0; ch < kCh; ++ch) o[ch][i][0] = o[ch][i][1] = 0.f;
  }

  int kb[kRank];
  sm80::key_tile_origin(g, cta.k, 0, kb);
  const int kv_limit[kRank] = {cta.q.n_kv[0], cta.q.n_kv[1], cta.q.n_kv[2]};
  for (int t = 0; t < cta.k.total; ++t) {
    const bool full = sm80::key_tile_full(g, cta.k, kb);
    tile_offsets(sm.k_off, cta.gk, kb, g.kv_log2, kv_limit, tid);
    tile_offsets(sm.v_off, cta.gv, kb, g.kv_log2, kv_limit, tid);
    __syncthreads();

    float s[kRows][kCols];
    gemm_rows(s, sm.ops, q, sm.q_off, k, sm.k_off, p.head_dim, tid, ty, tx);

#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int row = kRows * ty + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        float x = s[i][j] * p.scale_log2;
        if (!full && !attends(sm.win, row, kb, g.kv_log2, tx + 16 * j)) x = -INFINITY;
        s[i][j] = x;
        mx = fmaxf(mx, x);
      }
      const float m_new = fmaxf(m[i], row_max16(mx));
      const float ref = m_new == -INFINITY ? 0.f : m_new;  // no key yet: keep every term 0
      const float corr = exp2f(m[i] - ref);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const float pj = exp2f(s[i][j] - ref);
        sm.ops.p[row * kLdP + tx + 16 * j] = pj;
        sum += pj;
      }
      l[i] = l[i] * corr + sum;  // per-thread partial sums; reduced over the row in the epilogue
#pragma unroll
      for (int ch = 0; ch < kCh; ++ch) {
        o[ch][i][0] *= corr;
        o[ch][i][1] *= corr;
      }
      m[i] = m_new;
    }
    __syncthreads();

    gemm_p<kCh>(o, sm.ops, v, sm.v_off, p.head_dim_v, tid, ty, tx);
    sm80::key_tile_advance(g, cta.k, kb);
  }

  // Epilogue: O / rowsum, logsumexp (natural log of the scaled scores).
  float inv[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const float sum = row_sum16(l[i]);
    inv[i] = sum > 0.f ? 1.f / sum : 0.f;
    const int row = kRows * ty + i;
    if (p.lse != nullptr && tx == 0 && sm.q_off[row] >= 0) {
      int c[kRank];
      sm80::tile_coord(row, g.q_log2, c);
#pragma unroll
      for (int a = 0; a < kRank; ++a) c[a] += cta.q.q0[a];
      p.lse[cta.glse.offset(c)] = sum > 0.f ? (m[i] + log2f(sum)) * kLn2 : -INFINITY;
    }
#pragma unroll
    for (int ch = 0; ch < kCh; ++ch) {
      o[ch][i][0] *= inv[i];
      o[ch][i][1] *= inv[i];
    }
  }
  store_rows<kCh>(static_cast<float*>(p.o), sm.o_off, o, 1.f, p.head_dim_v, ty, tx);
}

// Grid-stride over work tiles (normally one CTA per work tile).
template <int kCh>
__global__ void __launch_bounds__(kThreads) f32_forward_kernel(const __grid_constant__ sm80::FnaParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ ForwardSmem sm;
  for (int64_t idx = blockIdx.x; idx < p.geo.num_work; idx += gridDim.x) {
    const sm80::WorkTile w = sm80::decode_work(p.geo, idx);
    sm80::QueryTile qt;
    if (!sm80::make_query_tile(p.geo, w, qt)) continue;
    f32_forward_cta<kCh>(p, w, qt, sm);
    __syncthreads();
  }
#endif
}

}  // namespace simt
}  // namespace natten
