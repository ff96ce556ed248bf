// Online softmax on the S accumulator of one consumer thread (2 row slots x N/4 columns each),
// in the log2 domain with the scale folded in: s' = s * scale * log2(e), p = 2^(s' - m'), where m'
// is the running row maximum of s' (-inf until a row has seen an attended key). Row sums stay
// per-thread partial sums until the epilogue (quad_sum); the row maximum is quad-reduced per tile
// because the rescale factor must be the same for the 4 lanes that share a row.
#pragma once

#include <cmath>

#include "sm90/fragment.cuh"

namespace natten {
namespace sm90 {

struct OnlineSoftmax {
  float row_max[2];  // m' per row slot
  float row_sum[2];  // partial sum of p over this thread's columns

  __device__ __forceinline__ void init() {
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // s: raw scores q.k (masked entries hold mask_value(scale_log2): -inf for a positive scale,
  // +inf for a negative one, so that s * scale_log2 = -inf), overwritten with p = 2^(s * scale_log2
  // - m'). The scale is folded into one FFMA per element (as in FA3) instead of a separate multiply:
  // the row maximum of s * scale_log2 is max(s) * scale_log2 for a positive scale and
  // min(s) * scale_log2 for a negative one (the ABI allows any finite non-zero scale).
  // Returns the factors the output rows must be multiplied by (corr[slot]).
  template <class TensorS>
  __device__ __forceinline__ void update(TensorS& s, float scale_log2, float corr[2]) {
    float mx[2];
    if (scale_log2 > 0.f) {
      mx[0] = mx[1] = -INFINITY;
      CUTE_UNROLL
      for (int e = 0; e < cute::size(s); ++e) mx[frag_slot(e)] = fmaxf(mx[frag_slot(e)], s(e));
      CUTE_UNROLL
      for (int r = 0; r < 2; ++r) mx[r] = quad_max(mx[r]);
    } else {
      mx[0] = mx[1] = INFINITY;
      CUTE_UNROLL
      for (int e = 0; e < cute::size(s); ++e) mx[frag_slot(e)] = fminf(mx[frag_slot(e)], s(e));
      CUTE_UNROLL
      for (int r = 0; r < 2; ++r) mx[r] = quad_min(mx[r]);
    }
    float nbase[2];
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(row_max[r], mx[r] * scale_log2);
      // A row with no attended key so far keeps p = 0 (2^-inf) without -inf - -inf = NaN.
      const float base = m_new == -INFINITY ? 0.f : m_new;
      corr[r] = fast_exp2(row_max[r] - base);  // 0 while row_max is -inf
      row_max[r] = m_new;
      row_sum[r] *= corr[r];
      nbase[r] = -base;
    }
    CUTE_UNROLL
    for (int e = 0; e < cute::size(s); ++e) {
      const float p = fast_exp2(fmaf(s(e), scale_log2, nbase[frag_slot(e)]));
      s(e) = p;
      row_sum[frag_slot(e)] += p;
    }
  }
};

}  // namespace sm90
}  // namespace natten
