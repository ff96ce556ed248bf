// Internal (not ABI) argument block of the fused neighborhood-attention backward, handed from the
// C ABI layer (natten_kernels.cpp, after validation) to the SM80 dispatch (sm80/fna_backward.cu).
#pragma once

#include <cstdint>

#include "natten/fna_args.hpp"

namespace natten {

// Gradients of the forward described by `fwd` (q, k, v, out, lse, window, scale, tiles):
//   d_out [B, X, (Y), (Z), H,    Dv]   dtype
//   d_lse [B, X, (Y), (Z), H]          float32, nullable (gradient of the logsumexp output)
//   d_q   [B, X, (Y), (Z), H,    D ]   dtype (written)
//   d_k   [B, X, (Y), (Z), H_kv, D ]   dtype (written, reduced over the query heads of a kv head)
//   d_v   [B, X, (Y), (Z), H_kv, Dv]   dtype (written, reduced over the query heads of a kv head)
// fwd.lse is required (the saved forward logsumexp). Strides in elements as in FnaForwardArgs.
struct FnaBackwardArgs {
  FnaForwardArgs fwd;

  const void* d_out;
  const float* d_lse;  // nullable
  void* d_q;
  void* d_k;
  void* d_v;

  int64_t do_stride_batch, do_stride_spatial[kMaxRank], do_stride_head;
  int64_t dlse_stride_batch, dlse_stride_spatial[kMaxRank], dlse_stride_head;
  int64_t dq_stride_batch, dq_stride_spatial[kMaxRank], dq_stride_head;
  int64_t dk_stride_batch, dk_stride_spatial[kMaxRank], dk_stride_head;
  int64_t dv_stride_batch, dv_stride_spatial[kMaxRank], dv_stride_head;

  void* workspace;          // >= fna_backward_workspace_bytes(...) bytes, 16-byte aligned
  int64_t workspace_bytes;
  bool deterministic;       // every path of this build is deterministic; kept for future atomics paths
  int kv_splits[kMaxRank];  // dK / dV CTAs per axis sharing the key tiles (<= 0: one CTA per key tile)
};

}  // namespace natten
