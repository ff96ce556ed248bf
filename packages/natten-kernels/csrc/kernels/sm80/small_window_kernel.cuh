// The SM80 small-window forward kernel (design: small_window_plan.hpp): a CTA of 4 warps per query
// region (a box of 64 or 128 queries of one (batch, head, dilation group)); it loads the region's
// Q rows and the K / V halo (the union of the region's windows) into shared memory with 16-byte
// cp.async (zero fill past the real head dims and for padding queries), then each warp computes its
// patches of 16 queries (small_window_mainloop.cuh) and writes them (small_window_epilogue.cuh).
// Work order: regions vary fastest (decode_work), so neighbouring CTAs share halo rows in L2.
#pragma once

#include <cstdint>

#include "small_window_epilogue.cuh"
#include "small_window_mainloop.cuh"

namespace natten {
namespace sm80 {

__device__ __forceinline__ void sw_cp_async16(uint32_t smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(src_bytes));
}

// Registers for 3 CTAs per SM at head dim 32 (168; the shared memory of nat-small's regions allows
// 4, but a 4-CTA build spilled 260 bytes and measured no faster) and 2 at head dim 64.
template <class Element, int kDim>
__global__ void __launch_bounds__(kSwWarps * 32, kDim <= 32 ? 3 : 2) sw_forward_kernel(const __grid_constant__ SwParams sp) {
  extern __shared__ __align__(1024) uint8_t sw_smem[];
  constexpr int kRowBytes = kDim * 2;
  constexpr int kChunks = kDim / 8;
  constexpr int kThreads = kSwWarps * 32;
  constexpr int kRowStep = kThreads / kChunks;  // rows between a thread's loads (32 or 16)
  static_assert((kRowStep * kRowBytes) % 1024 == 0, "a thread's row step keeps its swizzle phase");
  const FnaParams& p = sp.base;
  const Geometry& g = p.geo;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int region_rows = 1 << (g.q_log2[0] + g.q_log2[1] + g.q_log2[2]);
  const uint32_t sq = uint32_t(__cvta_generic_to_shared(sw_smem));
  const uint32_t sk = sq + uint32_t(region_rows * kRowBytes);
  const uint32_t sv = sk + uint32_t(sp.kv_bytes);
  const int ch = tid & (kChunks - 1);  // the 16-byte chunk this thread loads (Q, K and V rows)
  const int row0 = tid / kChunks;      // its first row; then every kRowStep rows

  for (int work = int(blockIdx.x); work < int(g.num_work); work += int(gridDim.x)) {
    const WorkTile w = sw_decode_work(g, sp.divs, work);
    SwTile qt;
    if (!sw_make_tile(g, sp.divs, w, qt)) continue;  // uniform over the CTA

    // Halo: the key range of the whole region per axis (key slab group coordinates).
    int hs[kRank], he[kRank];
    for (int a = 0; a < kRank; ++a) {
      int ks, ke;
      sw_key_range(qt, a, qt.q0[a], qt.q_last[a], ks, ke);
      hs[a] = ks - qt.kv_shift[a];
      he[a] = ke - ks + 1;
    }
    const int64_t kv_head = window::fast_div(int(w.head), sp.heads_per_kv);

    __syncthreads();  // the previous work tile's shared memory is no longer read

    // K / V halo rows: row r of the halo box (last axis fastest) -> shared row r. Each thread walks
    // rows row0, row0 + kRowStep, ... with its box coordinates advanced by the step's mixed-radix
    // digits (each digit below its radix, so one carry per axis at most).
    {
      const Element* kb = static_cast<const Element*>(p.k) +
                          sw_slice_base(w.batch, kv_head, p.k_batch, p.k_head, p.k_spatial, qt.kv_group) + ch * 8;
      const Element* vb = static_cast<const Element*>(p.v) +
                          sw_slice_base(w.batch, kv_head, p.v_batch, p.v_head, p.v_spatial, qt.kv_group) + ch * 8;
      kb += hs[0] * sp.k_step[0] + hs[1] * sp.k_step[1] + hs[2] * sp.k_step[2];
      vb += hs[0] * sp.v_step[0] + hs[1] * sp.v_step[1] + hs[2] * sp.v_step[2];
      const int rows = he[0] * he[1] * he[2];
      const int e12 = he[1] * he[2];
      const float inv12 = sw_rcp(e12), inv2 = sw_rcp(he[2]);
      int x0 = sw_div_small(row0, inv12), x1, x2;
      x1 = row0 - x0 * e12;
      x2 = x1;
      x1 = sw_div_small(x2, inv2);
      x2 -= x1 * he[2];
      const int d0 = sw_div_small(kRowStep, inv12);
      int d1 = kRowStep - d0 * e12;
      const int d2r = d1;
      d1 = sw_div_small(d2r, inv2);
      const int d2 = d2r - d1 * he[2];
      const int kbytes = ch * 8 < p.head_dim ? 16 : 0, vbytes = ch * 8 < p.head_dim_v ? 16 : 0;
      uint32_t soff = sw_swizzle(uint32_t(row0 * kRowBytes + ch * 16));
      for (int row = row0; row < rows; row += kRowStep) {
        sw_cp_async16(sk + soff, kb + (x0 * sp.k_step[0] + x1 * sp.k_step[1] + x2 * sp.k_step[2]), kbytes);
        sw_cp_async16(sv + soff, vb + (x0 * sp.v_step[0] + x1 * sp.v_step[1] + x2 * sp.v_step[2]), vbytes);
        soff += uint32_t(kRowStep * kRowBytes);
        x2 += d2;
        const int c2 = x2 >= he[2] ? 1 : 0;
        x2 -= c2 ? he[2] : 0;
        x1 += d1 + c2;
        const int c1 = x1 >= he[1] ? 1 : 0;
        x1 -= c1 ? he[1] : 0;
        x0 += d0 + c1;
      }
    }
    // Q rows of the region (padding queries: zeros).
    {
      const Element* qb = static_cast<const Element*>(p.q) +
                          sw_slice_base(w.batch, w.head, p.q_batch, p.q_head, p.q_spatial, w.group);
      const int l2 = g.q_log2[2], l12 = g.q_log2[1] + g.q_log2[2];
      const bool real_ch = ch * 8 < p.head_dim;
      for (int row = row0; row < region_rows; row += kRowStep) {
        const int c0 = qt.q0[0] + (row >> l12);
        const int c1 = qt.q0[1] + ((row >> l2) & ((1 << g.q_log2[1]) - 1));
        const int c2 = qt.q0[2] + (row & ((1 << l2) - 1));
        const bool real = real_ch && c0 < qt.n_q[0] && c1 < qt.n_q[1] && c2 < qt.n_q[2];
        const Element* src = real ? qb + (c0 * sp.q_step[0] + c1 * sp.q_step[1] + c2 * sp.q_step[2] + ch * 8) : qb;
        sw_cp_async16(sq + sw_swizzle(uint32_t(row * kRowBytes + ch * 16)), src, real ? 16 : 0);
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();

    Element* const ob = static_cast<Element*>(p.o) +
                        sw_slice_base(w.batch, w.head, p.o_batch, p.o_head, p.o_spatial, w.group);
    float* const lb = p.lse == nullptr ? nullptr
                                       : p.lse + sw_slice_base(w.batch, w.head, p.lse_batch, p.lse_head,
                                                               p.lse_spatial, w.group);
    const int patches = region_rows >> kSwPatchLog2;
    for (int pi = warp; pi < patches; pi += kSwWarps) {
      SwPatch pt;
      int t = pi;
      bool any = true;
      for (int a = kRank - 1; a >= 0; --a) {
        const int nl = g.q_log2[a] - sp.patch_log2[a];
        pt.origin[a] = (t & ((1 << nl) - 1)) << sp.patch_log2[a];
        t >>= nl;
      }
      pt.nkeys = 1;
      for (int a = 0; a < kRank; ++a) {
        pt.q0[a] = qt.q0[a] + pt.origin[a];
        any = any && pt.q0[a] < qt.n_q[a];
        const int q_last = window::imin(pt.q0[a] + (1 << sp.patch_log2[a]) - 1, qt.n_q[a] - 1);
        int ks, ke;
        sw_key_range(qt, a, pt.q0[a], q_last, ks, ke);
        pt.ks[a] = ks;
        pt.e[a] = ke - ks + 1;
        pt.nkeys *= pt.e[a];
      }
      if (!any) continue;  // a patch of padding queries only (uniform over the warp)
      float o[kDim / 8][4], row_max[2], row_sum[2];
      sw_patch_mainloop<Element, kDim>(sp, qt, pt, hs, he, sq, sk, sv, lane, o, row_max, row_sum);
      sw_patch_epilogue<Element, kDim>(sp, qt, pt, ob, lb, sq, lane, o, row_max, row_sum);
    }
  }
}

}  // namespace sm80
}  // namespace natten
