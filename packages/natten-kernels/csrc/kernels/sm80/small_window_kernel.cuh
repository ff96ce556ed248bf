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
  const FnaParams& p = sp.base;
  const Geometry& g = p.geo;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int region_log2 = g.q_log2[0] + g.q_log2[1] + g.q_log2[2];
  const int region_rows = 1 << region_log2;
  const uint32_t sq = uint32_t(__cvta_generic_to_shared(sw_smem));
  const uint32_t sk = sq + uint32_t(region_rows * kRowBytes);
  const uint32_t sv = sk + uint32_t(sp.kv_bytes);
  const Element* kptr = static_cast<const Element*>(p.k);
  const Element* vptr = static_cast<const Element*>(p.v);
  const Element* qptr = static_cast<const Element*>(p.q);

  for (int64_t work = blockIdx.x; work < g.num_work; work += gridDim.x) {
    const WorkTile w = decode_work(g, work);
    QueryTile qt;
    if (!make_query_tile(g, w, qt)) continue;  // uniform over the CTA

    // Halo: the key range of the whole region per axis (key slab group coordinates).
    int hs[kRank], he[kRank];
    for (int a = 0; a < kRank; ++a) {
      int ks, ke;
      window::tile_key_range(qt.q0[a] + qt.q_shift[a], qt.q_last[a] + qt.q_shift[a], qt.axis[a], ks, ke);
      hs[a] = ks - qt.kv_shift[a];
      he[a] = ke - ks + 1;
    }
    const int64_t kv_head = w.head / p.heads_per_kv;
    const GroupTensor tq = make_group_tensor(w.batch, w.head, p.q_batch, p.q_head, p.q_spatial, w.group, g.dilation);
    const GroupTensor tk = make_group_tensor(w.batch, kv_head, p.k_batch, p.k_head, p.k_spatial, qt.kv_group, g.dilation);
    const GroupTensor tv = make_group_tensor(w.batch, kv_head, p.v_batch, p.v_head, p.v_spatial, qt.kv_group, g.dilation);

    __syncthreads();  // the previous work tile's shared memory is no longer read

    // K / V halo rows. Offsets inside a (batch, head, group) slice fit 32 bits (checked on the host),
    // so only the slice base is 64-bit.
    {
      const Element* kb = kptr + tk.base;
      const Element* vb = vptr + tv.base;
      const int k0 = int(tk.step[0]), k1 = int(tk.step[1]), k2 = int(tk.step[2]);
      const int v0 = int(tv.step[0]), v1 = int(tv.step[1]), v2 = int(tv.step[2]);
      const int rows = he[0] * he[1] * he[2];
      const uint32_t e12 = uint32_t(he[1] * he[2]);
      const uint32_t m12 = sw_div_magic(e12), m2 = sw_div_magic(uint32_t(he[2]));
      for (int i = tid; i < rows * kChunks; i += kThreads) {
        const int row = i / kChunks, ch = i % kChunks;
        const uint32_t x0 = sw_div(uint32_t(row), m12, e12);
        const uint32_t rem = uint32_t(row) - x0 * e12;
        const uint32_t x1 = sw_div(rem, m2, uint32_t(he[2]));
        const int c0 = hs[0] + int(x0), c1 = hs[1] + int(x1), c2 = hs[2] + int(rem - x1 * uint32_t(he[2]));
        const uint32_t off = sw_swizzle(uint32_t(row * kRowBytes + ch * 16));
        sw_cp_async16(sk + off, kb + (c0 * k0 + c1 * k1 + c2 * k2 + ch * 8), ch * 8 < p.head_dim ? 16 : 0);
        sw_cp_async16(sv + off, vb + (c0 * v0 + c1 * v1 + c2 * v2 + ch * 8), ch * 8 < p.head_dim_v ? 16 : 0);
      }
    }
    // Q rows of the region (padding queries: zeros).
    {
      const Element* qb = qptr + tq.base;
      const int s0 = int(tq.step[0]), s1 = int(tq.step[1]), s2 = int(tq.step[2]);
      for (int i = tid; i < region_rows * kChunks; i += kThreads) {
        const int row = i / kChunks, ch = i % kChunks;
        int c[kRank];
        sw_box_coord(row, g.q_log2, c);
        bool real = ch * 8 < p.head_dim;
        for (int a = 0; a < kRank; ++a) {
          c[a] += qt.q0[a];
          real = real && c[a] < qt.n_q[a];
        }
        const Element* src = real ? qb + (c[0] * s0 + c[1] * s1 + c[2] * s2 + ch * 8) : qb;
        sw_cp_async16(sq + sw_swizzle(uint32_t(row * kRowBytes + ch * 16)), src, real ? 16 : 0);
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();

    const GroupTensor to = make_group_tensor(w.batch, w.head, p.o_batch, p.o_head, p.o_spatial, w.group, g.dilation);
    const GroupTensor tl = make_group_tensor(w.batch, w.head, p.lse_batch, p.lse_head, p.lse_spatial, w.group, g.dilation);
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
        window::tile_key_range(pt.q0[a] + qt.q_shift[a], q_last + qt.q_shift[a], qt.axis[a], ks, ke);
        pt.ks[a] = ks;
        pt.e[a] = ke - ks + 1;
        pt.nkeys *= pt.e[a];
      }
      if (!any) continue;  // a patch of padding queries only (uniform over the warp)
      float o[kDim / 8][4], row_max[2], row_sum[2];
      sw_patch_mainloop<Element, kDim>(sp, qt, pt, hs, he, sq, sk, sv, lane, o, row_max, row_sum);
      sw_patch_epilogue<Element, kDim>(sp, qt, pt, to, tl, sq, lane, o, row_max, row_sum);
    }
  }
}

}  // namespace sm80
}  // namespace natten
