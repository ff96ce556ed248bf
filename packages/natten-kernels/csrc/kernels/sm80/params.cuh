// Kernel parameter block of the SM80 fused neighborhood-attention forward kernel (built on the host
// from natten::FnaForwardArgs by fna_forward.cu), and the strided addressing of one dilation group.
#pragma once

#include <cstdint>

#include "tile_scheduler.cuh"
#include "trace.cuh"

namespace natten {
namespace sm80 {

struct FnaParams {
  Geometry geo;

  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;  // nullable

  // element strides: batch, head, spatial axes (dim stride is 1). Missing axes have stride 0.
  int64_t q_batch, q_head, q_spatial[kRank];
  int64_t k_batch, k_head, k_spatial[kRank];
  int64_t v_batch, v_head, v_spatial[kRank];
  int64_t o_batch, o_head, o_spatial[kRank];
  int64_t lse_batch, lse_head, lse_spatial[kRank];

  int64_t heads_per_kv;  // H / H_kv
  int head_dim;          // D (real, multiple of 8)
  int head_dim_v;        // Dv (real, multiple of 8)
  float scale_log2;      // softmax scale * log2(e)
  int aligned;           // every row of q/k/v/out starts on a 16-byte boundary (vector path)
  NATTEN_SM80_TRACE_FIELD  // diagnostic builds only (trace.cuh)
};

// Addressing of one (batch, head, dilation group) slice: the token with group-local coordinates
// c[] lives at element offset base + sum_a c[a] * step[a]  (step = dilation * spatial stride).
struct GroupTensor {
  int64_t base;
  int64_t step[kRank];

  NATTEN_HD int64_t offset(const int c[kRank]) const {
    return base + int64_t(c[0]) * step[0] + int64_t(c[1]) * step[1] + int64_t(c[2]) * step[2];
  }
};

NATTEN_HD GroupTensor make_group_tensor(int64_t batch, int64_t head, int64_t stride_batch,
                                        int64_t stride_head, const int64_t spatial[kRank],
                                        const int group[kRank], const int dilation[kRank]) {
  GroupTensor t;
  t.base = batch * stride_batch + head * stride_head;
  for (int a = 0; a < kRank; ++a) {
    t.base += int64_t(group[a]) * spatial[a];
    t.step[a] = int64_t(dilation[a]) * spatial[a];
  }
  return t;
}

}  // namespace sm80
}  // namespace natten
