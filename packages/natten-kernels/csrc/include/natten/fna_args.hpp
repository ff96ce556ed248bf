// Internal (not ABI) argument block handed from the host launchers to the device kernels.
// The C ABI structs in natten_kernels.h are validated and then converted into this.
#pragma once

#include <cstdint>

namespace natten {

constexpr int kMaxRank = 3;

// Neighborhood-attention forward problem, heads-last layout:
//   q   [B, X, (Y), (Z), H,    D ]
//   k   [B, X, (Y), (Z), H_kv, D ]
//   v   [B, X, (Y), (Z), H_kv, Dv]
//   out [B, X, (Y), (Z), H,    Dv]
//   lse [B, X, (Y), (Z), H]        (float32, natural log of the scaled scores; may be null)
// Strides are in elements. Axes beyond `rank` have extent 1, kernel 1, stride 1, dilation 1.
//
// Slabs of a larger grid: q/out/lse hold the slab of the global grid `global_extent` that starts
// at `q_origin` (extent `extent`), k/v the slab at `kv_origin` (extent `kv_extent`); windows are
// placed on the global grid. The whole grid: global_extent = kv_extent = extent, origins 0.
struct FnaForwardArgs {
  int rank;                     // 1..3
  int64_t batch;
  int64_t extent[kMaxRank];     // token grid of q, out and lse (the query slab)
  int64_t global_extent[kMaxRank];  // token grid the windows live on
  int64_t kv_extent[kMaxRank];  // token grid of k and v (the key/value slab)
  int64_t q_origin[kMaxRank];   // global coordinate of the query slab's first token
  int64_t kv_origin[kMaxRank];  // global coordinate of the key/value slab's first token
  int64_t heads;                // H
  int64_t heads_kv;             // H_kv (H % H_kv == 0)
  int64_t head_dim;             // D
  int64_t head_dim_v;           // Dv

  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;                   // nullable

  // strides in elements, index 0 = batch, 1..rank = spatial axes, then head, then dim.
  int64_t q_stride_batch, q_stride_spatial[kMaxRank], q_stride_head;   // dim stride is 1
  int64_t k_stride_batch, k_stride_spatial[kMaxRank], k_stride_head;
  int64_t v_stride_batch, v_stride_spatial[kMaxRank], v_stride_head;
  int64_t o_stride_batch, o_stride_spatial[kMaxRank], o_stride_head;
  int64_t lse_stride_batch, lse_stride_spatial[kMaxRank], lse_stride_head;

  int kernel_size[kMaxRank];
  int stride[kMaxRank];
  int dilation[kMaxRank];
  bool is_causal[kMaxRank];
  float scale;                  // softmax scale (applied to q.k)

  int q_tile[kMaxRank];         // query tile shape in tokens (product = CTA query tile)
  int kv_tile[kMaxRank];        // key tile shape in tokens (product = CTA key tile)

  int kernel_schedule;          // Hopper consumer schedule (sm90/fna_forward.hpp); 0 = default

  // The caller left the tiles to the library (q_tile / kv_tile hold the automatic choice): the SM80
  // forward may then run its small-window kernel instead (sm80/small_window.hpp). The host fills
  // these blocks after a memset to zero (false).
  bool tiles_auto;
};

}  // namespace natten
