// Kernel parameter block of the SM80 fused neighborhood-attention backward (built on the host from
// natten::FnaBackwardArgs by fna_backward.cu).
#pragma once

#include <cstdint>

#include "params.cuh"
#include "tile_scheduler.cuh"

namespace natten {
namespace sm80 {

struct FnaBwdParams {
  Geometry geo;     // query-parallel walk (dQ kernel), as the forward
  KvGeometry kvg;   // key-parallel walk (dK / dV kernel)

  const void* q;
  const void* k;
  const void* v;
  const void* o;
  const void* d_o;
  const float* lse;    // saved forward logsumexp (natural log, scaled scores)
  const float* d_lse;  // nullable
  void* dq;
  void* dk;
  void* dv;
  float* delta;        // workspace [B, H, X, Y, Z]: rowsum(dO * O) - dLSE

  // element strides: batch, head, spatial axes (dim stride is 1). Missing axes have stride 0.
  int64_t q_batch, q_head, q_spatial[kRank];
  int64_t k_batch, k_head, k_spatial[kRank];
  int64_t v_batch, v_head, v_spatial[kRank];
  int64_t o_batch, o_head, o_spatial[kRank];
  int64_t do_batch, do_head, do_spatial[kRank];
  int64_t lse_batch, lse_head, lse_spatial[kRank];
  int64_t dlse_batch, dlse_head, dlse_spatial[kRank];
  int64_t dq_batch, dq_head, dq_spatial[kRank];
  int64_t dk_batch, dk_head, dk_spatial[kRank];
  int64_t dv_batch, dv_head, dv_spatial[kRank];
  int64_t delta_batch, delta_head, delta_spatial[kRank];

  int64_t heads_per_kv;  // H / H_kv
  int64_t num_rows;      // B * X * Y * Z * H (preprocess)
  int head_dim;          // D (real, multiple of 8)
  int head_dim_v;        // Dv (real, multiple of 8)
  float scale;           // softmax scale
  float scale_log2;      // scale * log2(e)
  int aligned;           // every row of every dtype tensor starts on a 16-byte boundary
  int skip_dq;           // 1: the dQ kernel is not launched (the SM90 dQ kernel runs it, sm90/bwd_dq.hpp)
  int skip_dkdv;         // 1: the dK / dV kernel is not launched (the SM90 dK / dV kernel runs it)
  int vec_rows;          // 1: out and d_out rows start on 16-byte boundaries (the preprocess's vector loads)
  int dq_stages;         // 1 / 2: K / V buffers of the dQ kernel (launcher: by occupancy per device)
  int kv_stages;         // 1 / 2: Q / dO buffers of the dK / dV kernel (launcher: by occupancy per device)
};

// Strides of the delta workspace: compact [B, H, X, Y, Z] floats over the query slab's token grid
// (g.q_extent); returns the number of rows (B * H * X * Y * Z). Shared by the SM80 preprocess and
// every backward kernel that reads delta (the SM90 dQ and dK / dV kernels too).
inline int64_t bwd_delta_strides(const Geometry& g, int64_t batch, int64_t heads, int64_t& s_batch, int64_t& s_head,
                                 int64_t s_spatial[kRank]) {
  int64_t inner = 1;
  for (int a = kRank - 1; a >= 0; --a) {
    s_spatial[a] = inner;
    inner *= g.q_extent[a];
  }
  s_head = inner;
  s_batch = inner * heads;
  return inner * heads * batch;
}

// Dynamic shared memory of the backward tile kernels (both use the same plan, fna_backward_kernel.cuh
// BwdSmem, which static_asserts this formula) with `stages` buffers of the streamed tiles (1: one,
// 2: double-buffered, chosen per device by the launcher): four 64 x padded_dim tiles of 2-byte
// elements plus two more per extra stage (the dQ kernel's K / V, the dK / dV kernel's Q / dO), the
// per-row window table (64 x 3 int2), lse and delta (64 floats each) per stage, 3 mask patterns, and
// a 1024-byte CTA descriptor. bwd_smem_bytes(d, 1) is the minimum the host checks against the device.
constexpr int bwd_smem_bytes(int padded_dim, int stages = 1) {
  return (2 + 2 * stages) * 64 * padded_dim * 2 + stages * (64 * kRank * 8 + 2 * 64 * 4) + kRank * 8 + 1024;
}

}  // namespace sm80
}  // namespace natten
