// Where the values of a consumer thread's wgmma fragments sit in the 128-row tile, the warpgroup
// GEMM helper and small math helpers.
//
// Accumulator of a 64 x N wgmma for one thread (CuTe shape ((2, 2, N/8), 1, 1), compact): flat
// value e = i0 + 2 * i1 + 4 * j holds row  16 * warp_in_wg + lane / 4 + 8 * i1  (+ 64 * consumer
// warpgroup in the 128-row tile) and column  8 * j + 2 * (lane % 4) + i0. Each thread therefore holds
// two rows ("row slots" i1 = 0, 1), each shared by the 4 lanes of a quad.
#pragma once

#include <cute/tensor.hpp>

namespace natten {
namespace sm90 {

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_min(float x) {
  x = fminf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fminf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Row (0..127) of row slot r for consumer thread ct (0..255).
__device__ __forceinline__ int frag_row(int ct, int r) {
  const int wg = ct >> 7, warp = (ct >> 5) & 3, lane = ct & 31;
  return 64 * wg + 16 * warp + (lane >> 2) + 8 * r;
}

// Column of flat accumulator value e for consumer thread ct.
__device__ __forceinline__ int frag_col(int ct, int e) {
  return 8 * (e >> 2) + 2 * (ct & 3) + (e & 1);
}

__device__ __forceinline__ int frag_slot(int e) { return (e >> 1) & 1; }

// Token coordinates of tile row `row` (row-major over a box of 2^log2[a] tokens per axis) at
// origin[], and whether they lie inside bound[] (the slab's extent) on every axis.
__device__ __forceinline__ bool tile_row_coords(int row, const int log2[3], const int origin[3], const int bound[3],
                                                int x[3]) {
  x[2] = row & ((1 << log2[2]) - 1);
  x[1] = (row >> log2[2]) & ((1 << log2[1]) - 1);
  x[0] = row >> (log2[1] + log2[2]);
  bool valid = true;
  CUTE_UNROLL
  for (int a = 0; a < 3; ++a) {
    x[a] += origin[a];
    valid = valid && x[a] < bound[a];
  }
  return valid;
}

// Element offset base + sum x[a] * stride[a].
__device__ __forceinline__ int64_t token_offset(int64_t base, const int x[3], const int64_t stride[3]) {
  return base + int64_t(x[0]) * stride[0] + int64_t(x[1]) * stride[1] + int64_t(x[2]) * stride[2];
}

// One butterfly stage of a 4 x 4 transpose inside a quad: the lane pair (q, q ^ mask) swaps two
// values, the "low" pair (lo0, lo1) of the lane with the bit set (`high`) against the "high" pair
// (hi0, hi1) of its partner.
__device__ __forceinline__ void quad_exchange(uint32_t& lo0, uint32_t& lo1, uint32_t& hi0, uint32_t& hi1, int mask,
                                              bool high) {
  uint32_t s0 = high ? lo0 : hi0, s1 = high ? lo1 : hi1;
  s0 = __shfl_xor_sync(0xffffffffu, s0, mask);
  s1 = __shfl_xor_sync(0xffffffffu, s1, mask);
  if (high) {
    lo0 = s0;
    lo1 = s1;
  } else {
    hi0 = s0;
    hi1 = s1;
  }
}

// Packs row slot r of a 64 x kCols accumulator, times `scale`, into 2-element words: packed[g] holds
// this lane's column pair of 8-column group g (columns 8 g + 2 (ct & 3), + 1), as the accumulator
// lays them out. The input of store_row_packed_vec16.
template <class Element, int kCols, class TensorAcc>
__device__ __forceinline__ void pack_row(const TensorAcc& acc, int r, float scale, uint32_t (&packed)[kCols / 8]) {
  CUTE_UNROLL
  for (int g = 0; g < kCols / 8; ++g) {
    const int e = 4 * g + 2 * r;
    const Element v0 = Element(acc(e) * scale);
    const Element v1 = Element(acc(e + 1) * scale);
    packed[g] = uint32_t(v0.raw()) | (uint32_t(v1.raw()) << 16);
  }
}

// Stores the first `dim` columns (a multiple of 8) of one row, packed by pack_row, at `row`
// (16-byte aligned: every SM90 output row is, the hosts check it) in 16-byte vectors, where `valid`
// (the same for the four lanes of a quad, which share the row). In the accumulator the four lanes
// of a quad hold the four 4-byte column pairs of each 8-column group; a 4 x 4 transpose inside the
// quad (two butterfly shuffle stages, over blocks of four groups) gives lane q the whole of group
// 4 m + q, so one warp store writes 8 rows x 64 contiguous bytes instead of 8 rows x 16 (a quarter
// of the store instructions, whole 32-byte sectors). Every lane of the warp must call it
// (shuffles), valid or not.
template <class Element, int kCols>
__device__ __forceinline__ void store_row_packed_vec16(const uint32_t (&packed)[kCols / 8], int ct, Element* row,
                                                       int dim, bool valid) {
  static_assert(kCols % 32 == 0, "blocks of four 8-column groups");
  const int q = ct & 3;
  const bool hi1 = (q & 1) != 0, hi2 = (q & 2) != 0;
  CUTE_UNROLL
  for (int m = 0; m < kCols / 32; ++m) {
    uint32_t v[4] = {packed[4 * m], packed[4 * m + 1], packed[4 * m + 2], packed[4 * m + 3]};
    // Stage 1 (lanes q, q ^ 2): swap the off-diagonal 2 x 2 blocks.
    quad_exchange(v[0], v[1], v[2], v[3], 2, hi2);
    // Stage 2 (lanes q, q ^ 1): swap the off-diagonal elements of each 2 x 2 block. Now v[k] is
    // lane k's pair of group 4 m + q: columns 8 (4 m + q) + 2 k, + 1.
    quad_exchange(v[0], v[2], v[1], v[3], 1, hi1);
    const int col = 8 * (4 * m + q);
    // One 16-byte store in PTX: written as a uint4 assignment, ptxas split the block m = 0 into four
    // 4-byte stores when the four shuffled values did not sit in an aligned register quad (SASS;
    // ncu counted 43% excess L2 sectors on the forward's global stores at 1d-32k-s256).
    if (valid && col < dim) {
      asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(row + col)), "r"(v[0]),
                   "r"(v[1]), "r"(v[2]), "r"(v[3])
                   : "memory");
    }
  }
}

// Stores the first `dim` columns of row slot r of a 64 x kCols accumulator, times `scale`, at
// `row`: pack_row, then store_row_packed_vec16 (same conditions).
template <class Element, int kCols, class TensorAcc>
__device__ __forceinline__ void store_row_vec16(const TensorAcc& acc, int r, int ct, Element* row, int dim,
                                                float scale, bool valid) {
  uint32_t packed[kCols / 8];
  pack_row<Element, kCols>(acc, r, scale, packed);
  store_row_packed_vec16<Element, kCols>(packed, ct, row, dim, valid);
}

// The 64 x N float accumulator viewed as the A operand (register-sourced, K = N) of the next
// wgmma: ((2, 2, N/8), 1, 1) -> ((2, 2, 2), 1, N/16). A's value (v0, v1, v2) of k-block kb is the
// accumulator's (i0 = v0, i1 = v1, j = 2 * kb + v2): same rows, columns 16 * kb + 8 * v2 + ...
template <int N>
__device__ __forceinline__ auto acc_as_a_layout() {
  using namespace cute;
  return Layout<Shape<Shape<_2, _2, _2>, _1, Int<N / 16>>, Stride<Stride<_1, _2, _4>, _0, _8>>{};
}

// One warpgroup GEMM C (+)= A B over all k-blocks, committed as one batch (not waited for).
// kRegA: A is a register fragment (RS wgmma), else A and B are shared-memory descriptors (SS).
template <bool kZeroInit, bool kRegA, class TiledMma, class TA, class TB, class TC>
__device__ __forceinline__ void warpgroup_gemm(TiledMma& mma, TA const& a, TB const& b, TC& c) {
  using namespace cute;
  if constexpr (kRegA) warpgroup_fence_operand(const_cast<TA&>(a));
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(c);
  if constexpr (kRegA) warpgroup_fence_operand(const_cast<TA&>(a));
}

}  // namespace sm90
}  // namespace natten
