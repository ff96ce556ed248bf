// Mainloop of the SM80 small-window forward kernel: one warp, one patch of 16 queries against the
// patch's key box (small_window_plan.hpp), gathered by ldmatrix from the CTA's shared-memory halo.
//
//   S = Q K^T        m16n8k16 MMAs, n-blocks of 8 keys (up to 16), K rows gathered per lane
//   mask + scale     one bit per score from the row's 128-bit window mask (sw_row_mask)
//   softmax          single pass: the whole box is in registers (no running rescale)
//   O = P V          P from the S registers (fp32 -> 16-bit A fragments), V rows gathered per lane
//                    with the transposing ldmatrix
#pragma once

#include <cmath>
#include <cstdint>

#include <cutlass/numeric_types.h>

#include "small_window_params.cuh"

namespace natten {
namespace sm80 {

__device__ __forceinline__ void sw_ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

__device__ __forceinline__ void sw_ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

template <class Element>
__device__ __forceinline__ void sw_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (cute::is_same_v<Element, cutlass::half_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats -> packed 16-bit pair (lo in the low half).
template <class Element>
__device__ __forceinline__ uint32_t sw_pack(float lo, float hi) {
  uint32_t d;
  if constexpr (cute::is_same_v<Element, cutlass::half_t>) {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  }
  return d;
}

__device__ __forceinline__ float sw_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Row index inside a box of 2^log2[a] per axis (last axis fastest) -> per-axis offsets, and back.
__device__ __forceinline__ void sw_box_coord(int idx, const int log2[kRank], int c[kRank]) {
  c[2] = idx & ((1 << log2[2]) - 1);
  c[1] = (idx >> log2[2]) & ((1 << log2[1]) - 1);
  c[0] = idx >> (log2[1] + log2[2]);
}
__device__ __forceinline__ int sw_box_index(const int c[kRank], const int log2[kRank]) {
  return (c[0] << (log2[1] + log2[2])) | (c[1] << log2[2]) | c[2];
}

// One patch as seen by its warp.
struct SwPatch {
  int origin[kRank];  // patch origin inside the region box
  int q0[kRank];      // first query (query slab group coordinates)
  int ks[kRank];      // key box start (global group coordinates)
  int e[kRank];       // key box extents
  int nkeys;          // e0 * e1 * e2 (<= kSwMaxKeys)
};

// Region row (Q / O shared-memory row) of patch row r.
__device__ __forceinline__ int sw_region_row(const Geometry& g, const int patch_log2[kRank], const SwPatch& pt, int r) {
  int c[kRank];
  sw_box_coord(r, patch_log2, c);
  for (int a = 0; a < kRank; ++a) c[a] += pt.origin[a];
  return sw_box_index(c, g.q_log2);
}

// Computes the un-normalized O of the patch (o), the row maxima (log2 domain, scaled) and row sums
// (quad-reduced) of the thread's two rows (lane / 4 and lane / 4 + 8).
// sq / sk / sv: shared-memory addresses of the Q region, K halo and V halo; hs / he: halo start
// (key slab group coordinates) and extents.
template <class Element, int kDim>
__device__ __forceinline__ void sw_patch_mainloop(const SwParams& sp, const SwTile& qt, const SwPatch& pt,
                                                  const int hs[kRank], const int he[kRank], uint32_t sq, uint32_t sk,
                                                  uint32_t sv, int lane, float (&o)[kDim / 8][4], float (&row_max)[2],
                                                  float (&row_sum)[2]) {
  constexpr int kRowBytes = kDim * 2;
  constexpr int kNB = kSwMaxKeys / 8;  // n-blocks of 8 keys
  const Geometry& g = sp.base.geo;

  // Halo row (byte offset) of key nb * 8 + lane % 8, for every n-block; keys past the box read row 0.
  // The key's box coordinates (x0, x1, x2) advance by the mixed-radix digits of 8 per n-block.
  uint32_t krow[kNB];
  {
    const int e1 = pt.e[1], e2 = pt.e[2], e12 = e1 * e2;
    const float inv12 = sw_rcp(e12), inv2 = sw_rcp(e2);
    const int origin = ((pt.ks[0] - qt.kv_shift[0] - hs[0]) * he[1] + (pt.ks[1] - qt.kv_shift[1] - hs[1])) * he[2] +
                       (pt.ks[2] - qt.kv_shift[2] - hs[2]);
    const int n0 = lane & 7;
    int x0 = sw_div_small(n0, inv12);
    int x2 = n0 - x0 * e12;
    int x1 = sw_div_small(x2, inv2);
    x2 -= x1 * e2;
    const int d0 = sw_div_small(8, inv12);
    int d2 = 8 - d0 * e12;
    const int d1 = sw_div_small(d2, inv2);
    d2 -= d1 * e2;
    CUTE_UNROLL
    for (int nb = 0; nb < kNB; ++nb) {
      const int row = origin + (x0 * he[1] + x1) * he[2] + x2;
      krow[nb] = nb * 8 + n0 < pt.nkeys ? uint32_t(row * kRowBytes) : 0u;
      x2 += d2;
      const int c2 = x2 >= e2 ? 1 : 0;
      x2 -= c2 ? e2 : 0;
      x1 += d1 + c2;
      const int c1 = x1 >= e1 ? 1 : 0;
      x1 -= c1 ? e1 : 0;
      x0 += d0 + c1;
    }
  }
  const int nkb16 = (pt.nkeys + 15) >> 4;  // k-blocks of 16 keys for O = P V
  const int nb_used = 2 * nkb16;

  // Row masks of the thread's two rows, shifted so that score (nb, j) of this thread is bit nb * 8 + j.
  // The combs (bits x * e2 for x < e1, x * e1 * e2 for x < e0) by one ballot per 32 bits: lane L
  // decides positions 32 k + L.
  uint32_t mw[2][4];
  {
    SwCombs combs;
    {
      const int s1 = pt.e[2], s0 = pt.e[1] * pt.e[2];
      const float inv1 = sw_rcp(s1), inv0 = sw_rcp(s0);
      uint32_t c1w[4], c0w[4];
      CUTE_UNROLL
      for (int k = 0; k < 4; ++k) {
        c1w[k] = __ballot_sync(0xffffffffu, sw_comb_bit(32 * k + lane, pt.e[1], s1, inv1));
        c0w[k] = __ballot_sync(0xffffffffu, sw_comb_bit(32 * k + lane, pt.e[0], s0, inv0));
      }
      combs.c1 = Bits128{{uint64_t(c1w[0]) | (uint64_t(c1w[1]) << 32), uint64_t(c1w[2]) | (uint64_t(c1w[3]) << 32)}};
      combs.c0 = Bits128{{uint64_t(c0w[0]) | (uint64_t(c0w[1]) << 32), uint64_t(c0w[2]) | (uint64_t(c0w[3]) << 32)}};
    }
    CUTE_UNROLL
    for (int slot = 0; slot < 2; ++slot) {
      int c[kRank];
      sw_box_coord((lane >> 2) + 8 * slot, sp.patch_log2, c);
      int lo[kRank], hi[kRank];
      for (int a = 0; a < kRank; ++a) {
        const int q = window::imin(pt.q0[a] + c[a], qt.n_q[a] - 1) + qt.q_shift[a];  // padding rows: last real query
        int ws, we;
        window::window_fast(q, qt.axis[a], ws, we);
        lo[a] = ws - pt.ks[a];
        hi[a] = we - pt.ks[a];
      }
      b128_words_shr(sw_row_mask(lo, hi, pt.e, combs), 2 * (lane & 3), mw[slot]);
    }
  }

  // Q fragments (A operand, m16 x kDim).
  uint32_t qa[kDim / 16][4];
  {
    const int r = (lane & 7) + (((lane >> 3) & 1) << 3);
    const uint32_t rowb = uint32_t(sw_region_row(g, sp.patch_log2, pt, r)) * kRowBytes;
    CUTE_UNROLL
    for (int kb = 0; kb < kDim / 16; ++kb)
      sw_ldsm_x4(sq + sw_swizzle(rowb + uint32_t(2 * kb + (lane >> 4)) * 16u), qa[kb][0], qa[kb][1], qa[kb][2],
                 qa[kb][3]);
    const uint32_t flip = sp.base.scale_log2 < 0.f ? 0x80008000u : 0u;  // negative scale: S = (-Q) K^T
    CUTE_UNROLL
    for (int kb = 0; kb < kDim / 16; ++kb)
      for (int i = 0; i < 4; ++i) qa[kb][i] ^= flip;
  }

  // S = Q K^T.
  float s[kNB][4];
  CUTE_UNROLL
  for (int nb = 0; nb < kNB; ++nb) {
    s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
    if (nb < nb_used) {
      CUTE_UNROLL
      for (int i = 0; i < kDim / 32; ++i) {
        uint32_t b0, b1, b2, b3;
        sw_ldsm_x4(sk + sw_swizzle(krow[nb] + uint32_t(4 * i + (lane >> 3)) * 16u), b0, b1, b2, b3);
        sw_mma<Element>(s[nb], qa[2 * i], b0, b1);
        sw_mma<Element>(s[nb], qa[2 * i + 1], b2, b3);
      }
    }
  }

  // Mask, row maxima, p = 2^(s * mul - max * mul) with mul = |scale * log2(e)|: the scale folds into
  // one FFMA per score and the maximum is taken on the raw scores. A negative scale was folded into
  // the scores' sign through Q's sign bits (exp(c s) = exp(|c| (-s)), exact). One code path: with a
  // branch per sign of the scale the compiler predicated both over every score (+190 instructions
  // per patch). The C ABI refuses a zero scale; should one arrive, mul = 1e-30 keeps masked scores'
  // weights at 0 (not -inf * 0 = NaN) and gives the others 2^0 = 1 in float. (This form also
  // measured ~2% faster at head dim 64 than plain |c|: register allocation.)
  const float mul = fmaxf(fabsf(sp.base.scale_log2), 1e-30f);
  float mx[2] = {-INFINITY, -INFINITY};
  CUTE_UNROLL
  for (int nb = 0; nb < kNB; ++nb) {
    CUTE_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int bit = nb * 8 + (e & 1);
      const bool on = (mw[e >> 1][bit >> 5] >> (bit & 31)) & 1u;
      const float v = on ? s[nb][e] : -INFINITY;
      s[nb][e] = v;
      mx[e >> 1] = fmaxf(mx[e >> 1], v);
    }
  }
  CUTE_UNROLL
  for (int slot = 0; slot < 2; ++slot) {
    mx[slot] = fmaxf(mx[slot], __shfl_xor_sync(0xffffffffu, mx[slot], 1));
    mx[slot] = fmaxf(mx[slot], __shfl_xor_sync(0xffffffffu, mx[slot], 2));
    mx[slot] *= mul;
  }
  // Every real query attends at least one key of its box, so mx is finite on real rows; a padding
  // row has the window of the last real query.
  float sum[2] = {0.f, 0.f};
  CUTE_UNROLL
  for (int nb = 0; nb < kNB; ++nb) {  // every block (masked scores give 0): straight-line code
    CUTE_UNROLL
    for (int e = 0; e < 4; ++e) {
      const float p = sw_exp2(fmaf(s[nb][e], mul, -mx[e >> 1]));
      s[nb][e] = p;
      sum[e >> 1] += p;
    }
  }
  CUTE_UNROLL
  for (int slot = 0; slot < 2; ++slot) {
    sum[slot] += __shfl_xor_sync(0xffffffffu, sum[slot], 1);
    sum[slot] += __shfl_xor_sync(0xffffffffu, sum[slot], 2);
    row_max[slot] = mx[slot];
    row_sum[slot] = sum[slot];
  }

  // O = P V.
  CUTE_UNROLL
  for (int j = 0; j < kDim / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  CUTE_UNROLL
  for (int kk = 0; kk < kNB / 2; ++kk) {
    if (kk < nkb16) {
      uint32_t a[4];
      a[0] = sw_pack<Element>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = sw_pack<Element>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = sw_pack<Element>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = sw_pack<Element>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      const uint32_t vrow = ((lane >> 3) & 1) ? krow[2 * kk + 1] : krow[2 * kk];
      CUTE_UNROLL
      for (int dn = 0; dn < kDim / 16; ++dn) {
        uint32_t b0, b1, b2, b3;
        sw_ldsm_x4_t(sv + sw_swizzle(vrow + uint32_t(2 * dn + (lane >> 4)) * 16u), b0, b1, b2, b3);
        sw_mma<Element>(o[2 * dn], a, b0, b1);
        sw_mma<Element>(o[2 * dn + 1], a, b2, b3);
      }
    }
  }
}

}  // namespace sm80
}  // namespace natten
