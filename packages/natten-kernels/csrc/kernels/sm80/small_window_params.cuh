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
  int patch_log2[kRank];        // warp patch box (16 queries)
  int kv_bytes;                 // bytes of the K (and of the V) halo array in shared memory
};

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
