// Epilogue of the SM80 small-window forward kernel: one warp writes its patch's output.
// O is normalized by the row sums, staged as 16-bit pairs in the patch's own Q rows of shared
// memory (no other warp reads them, and the warp's S MMAs have consumed its Q fragments), then
// stored as 16-byte vectors (real queries and the first Dv columns only); the logsumexp (natural
// log of the scaled scores) by one lane per row.
#pragma once

#include <cmath>
#include <cstdint>

#include "small_window_mainloop.cuh"

namespace natten {
namespace sm80 {

template <class Element, int kDim>
__device__ __forceinline__ void sw_patch_epilogue(const SwParams& sp, const SwTile& qt, const SwPatch& pt,
                                                  Element* ob, float* lb, uint32_t sq,
                                                  int lane, float (&o)[kDim / 8][4], const float (&row_max)[2],
                                                  const float (&row_sum)[2]) {
  constexpr int kRowBytes = kDim * 2;
  constexpr int kChunks = kDim / 8;
  constexpr float kLn2 = 0.69314718055994530942f;
  const FnaParams& p = sp.base;
  const Geometry& g = p.geo;

  float inv[2], lse[2];
  CUTE_UNROLL
  for (int slot = 0; slot < 2; ++slot) {
    const bool has_keys = row_sum[slot] > 0.f;
    inv[slot] = has_keys ? 1.f / row_sum[slot] : 0.f;
    lse[slot] = has_keys ? (row_max[slot] + log2f(row_sum[slot])) * kLn2 : -INFINITY;
  }

  // Registers -> shared memory (the patch's Q rows).
  CUTE_UNROLL
  for (int slot = 0; slot < 2; ++slot) {
    const uint32_t rowb = uint32_t(sw_region_row(g, sp.patch_log2, pt, (lane >> 2) + 8 * slot)) * kRowBytes;
    CUTE_UNROLL
    for (int j = 0; j < kChunks; ++j) {
      const uint32_t v = sw_pack<Element>(o[j][2 * slot] * inv[slot], o[j][2 * slot + 1] * inv[slot]);
      const uint32_t addr = sq + sw_swizzle(rowb + uint32_t(j) * 16u) + uint32_t(lane & 3) * 4u;
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v));
    }
  }
  __syncwarp();

  // Shared memory -> global, 16-byte vectors.
  CUTE_UNROLL
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = i / kChunks, ch = i % kChunks;
    int c[kRank];
    sw_box_coord(r, sp.patch_log2, c);
    int q[kRank];
    bool real = ch * 8 < p.head_dim_v;
    for (int a = 0; a < kRank; ++a) {
      q[a] = pt.q0[a] + c[a];
      real = real && q[a] < qt.n_q[a];
    }
    if (real) {
      const uint32_t addr = sq + sw_swizzle(uint32_t(sw_region_row(g, sp.patch_log2, pt, r)) * kRowBytes + uint32_t(ch) * 16u);
      uint32_t v0, v1, v2, v3;
      asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v0), "=r"(v1), "=r"(v2), "=r"(v3) : "r"(addr));
      Element* dst = ob + (q[0] * sp.o_step[0] + q[1] * sp.o_step[1] + q[2] * sp.o_step[2] + ch * 8);
      asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "r"(v0), "r"(v1), "r"(v2), "r"(v3)
                   : "memory");
    }
  }

  if (lb != nullptr && (lane & 3) == 0) {
    CUTE_UNROLL
    for (int slot = 0; slot < 2; ++slot) {
      int c[kRank];
      sw_box_coord((lane >> 2) + 8 * slot, sp.patch_log2, c);
      int q[kRank];
      bool real = true;
      for (int a = 0; a < kRank; ++a) {
        q[a] = pt.q0[a] + c[a];
        real = real && q[a] < qt.n_q[a];
      }
      if (real) lb[q[0] * sp.lse_step[0] + q[1] * sp.lse_step[1] + q[2] * sp.lse_step[2]] = lse[slot];
    }
  }
  // The next patch of this warp reuses no shared memory of this one (each patch owns its rows).
}

}  // namespace sm80
}  // namespace natten
