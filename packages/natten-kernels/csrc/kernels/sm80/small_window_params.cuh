// Parameter block and shared-memory addressing of the SM80 small-window forward kernel
// (small_window_plan.hpp explains the design).
#pragma once

#include <cstdint>

#include "params.cuh"
#include "small_window_plan.hpp"

namespace natten {
namespace sm80 {

struct SwParams {
  FnaParams base;               // tensors, strides, scale; base.geo.q_log2 = the region box
  SwDivs divs;                  // the geometry's divisors (sw_decode_work, sw_make_tile)
  window::FastDiv heads_per_kv; // query heads per K / V head (GQA)
  int patch_log2[kRank];        // warp patch box (16 queries)
  int kv_bytes;                 // bytes of the K (and of the V) halo array in shared memory
  // Element steps of one dilation group per axis (dilation * spatial stride; a slice's offsets fit
  // 32 bits, checked on the host).
  int q_step[kRank], k_step[kRank], v_step[kRank], o_step[kRank];
  int64_t lse_step[kRank];
};

// Element offset of the (batch, head, dilation group) slice of a tensor: 64-bit.
__device__ __forceinline__ int64_t sw_slice_base(int64_t batch, int64_t head, int64_t stride_batch, int64_t stride_head,
                                                 const int64_t spatial[kRank], const int group[kRank]) {
  return batch * stride_batch + head * stride_head + int64_t(group[0]) * spatial[0] + int64_t(group[1]) * spatial[1] +
         int64_t(group[2]) * spatial[2];
}

// Hardware reciprocal (max 1 ulp): the quotient input of sw_div_small.
__device__ __forceinline__ float sw_rcp(int e) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(float(e)));
  return r;
}

// Shared memory: Q region rows, then the K halo, then the V halo; rows of kDim 16-bit elements
// stored in 16-byte chunks, swizzled inside each 128-byte line (chunk ^= line mod 8) so that 8
// consecutive rows read by one ldmatrix phase hit 8 different bank groups (rows of 64 bytes: 2 per
// line; of 128 bytes: 1 per line).
__device__ __forceinline__ uint32_t sw_swizzle(uint32_t byte) { return byte ^ (((byte >> 7) & 7u) << 4); }

// Exact n / e for 0 <= n, 1 <= e with n * e < 2^32, from m = sw_div_magic(e) (one multiply-high).
__device__ __forceinline__ uint32_t sw_div_magic(uint32_t e) { return 0xffffffffu / e + 1u; }
__device__ __forceinline__ uint32_t sw_div(uint32_t n, uint32_t magic, uint32_t e) {
  return e == 1u ? n : __umulhi(n, magic);
}

}  // namespace sm80
}  // namespace natten
