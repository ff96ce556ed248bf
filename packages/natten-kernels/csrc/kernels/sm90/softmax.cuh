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

  // s: scaled scores (already s' = s * scale_log2, masked entries -inf), overwritten with p.
  // Returns the factors the output rows must be multiplied by (corr[slot]).
  template <class TensorS>
  __device__ __forceinline__ void update(TensorS& s, float corr[2]) {
    float mx[2] = {-INFINITY, -INFINITY};
    CUTE_UNROLL
    for (int e = 0; e < cute::size(s); ++e) mx[frag_slot(e)] = fmaxf(mx[frag_slot(e)], s(e));
    float base[2];
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(row_max[r], quad_max(mx[r]));
      // A row with no attended key so far keeps p = 0 (2^-inf) without -inf - -inf = NaN.
      base[r] = m_new == -INFINITY ? 0.f : m_new;
      corr[r] = fast_exp2(row_max[r] - base[r]);  // 0 while row_max is -inf
      row_max[r] = m_new;
      row_sum[r] *= corr[r];
    }
    CUTE_UNROLL
    for (int e = 0; e < cute::size(s); ++e) {
      const float p = fast_exp2(s(e) - base[frag_slot(e)]);
      s(e) = p;
      row_sum[frag_slot(e)] += p;
    }
  }
};

}  // namespace sm90
}  // namespace natten
