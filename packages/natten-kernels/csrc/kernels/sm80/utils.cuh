// Small device helpers of the SM80 FNA forward kernel: accumulator layout views, conversions,
// fast exp2, quad reductions and the strided tile-box copies between global and shared memory.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm80.hpp>
#include <cutlass/numeric_conversion.h>

#include "params.cuh"

namespace natten {
namespace sm80 {

// ((2, 2), MMA_M, MMA_N) accumulator of m16n8 MMAs -> ((2, MMA_M), (2, MMA_N)) = (rows, cols).
// Mode (0,0) of the value is the column pair, mode (0,1) is the row +8 half.
template <class Layout>
CUTE_HOST_DEVICE auto acc_rowcol(Layout const& acc) {
  using namespace cute;
  static_assert(decltype(rank(acc))::value == 3, "");
  static_assert(decltype(size<0>(acc))::value == 4, "");
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                     make_layout(get<0, 0>(acc), get<2>(acc)));
}

// Accumulator of S (m16n8k16: ((2, 2), MMA_M, MMA_N)) reused as the A operand of the next GEMM:
// two neighbouring n8 blocks form one k16 block -> (((2, 2), 2), MMA_M, MMA_N / 2).
template <class Layout>
CUTE_HOST_DEVICE auto acc_as_a_operand(Layout const& acc) {
  using namespace cute;
  static_assert(decltype(size<0>(acc))::value == 4, "");
  auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

// float register tensor -> owning register tensor of To with the same (compact, static) layout,
// converted with packed cvt instructions.
template <class To, class Engine, class Layout>
CUTE_DEVICE auto convert_fragment(cute::Tensor<Engine, Layout> const& t) {
  using namespace cute;
  using From = typename Engine::value_type;
  constexpr int N = decltype(cosize(Layout{}))::value;
  static_assert(decltype(size(Layout{}))::value == N, "compact fragment expected");
  cutlass::NumericArrayConverter<To, From, N> conv;
  Tensor out = make_tensor<To>(t.layout());
  *reinterpret_cast<cutlass::Array<To, N>*>(out.data()) =
      conv(*reinterpret_cast<cutlass::Array<From, N> const*>(t.data()));
  return out;
}

CUTE_DEVICE float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

CUTE_DEVICE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}

CUTE_DEVICE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

// Opaque to the optimizer: keeps per-pass index math inside the key loop instead of letting
// loop-invariant code motion park dozens of values in registers across the whole mainloop.
CUTE_DEVICE int opaque(int x) {
  asm volatile("" : "+r"(x));
  return x;
}

// Copy a tile box of kRows tokens (rows numbered by tile_coord with log2 shape `lg`, box origin
// `org` in group-local coordinates, group extents `n`) from global memory into a swizzled smem
// tile of Traits::kDim columns. Columns >= `dim` and rows outside the group are zero-filled;
// nothing is read outside the tensor. Vector path: 16-byte cp.async (caller commits / waits).
// Unaligned path: scalar loads + 16-byte smem stores (synchronous).
template <class Traits, int kRows, bool kAligned, class Element, class SmemLayout>
CUTE_DEVICE void load_tile_box_impl(Element* smem, SmemLayout const& layout, Element const* gmem,
                                    GroupTensor const& gt, const int org[kRank], const int lg[kRank],
                                    const int n[kRank], int dim, int tid) {
  constexpr int kTpr = Traits::kThreadsPerRow;
  constexpr int kCpt = Traits::kChunksPerThread;
  constexpr int kRpp = Traits::kRowsPerPass;
  const int r0 = tid / kTpr;
  const int col0 = (tid % kTpr) * 8;
  Element* dst0 = smem + layout(r0, col0);
  CUTE_UNROLL
  for (int pass = 0; pass < kRows / kRpp; ++pass) {
    const int r = opaque(r0 + pass * kRpp);
    int c[kRank];
    tile_coord(r, lg, c);
    bool row_ok = true;
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) {
      c[a] += org[a];
      row_ok = row_ok && c[a] < n[a];
    }
    Element const* src_row = gmem + (row_ok ? gt.offset(c) : int64_t(0));
    CUTE_UNROLL
    for (int j = 0; j < kCpt; ++j) {
      const int col = col0 + j * kTpr * 8;
      const bool ok = row_ok && col < dim;
      Element* dst = dst0 + layout(pass * kRpp, j * kTpr * 8);
      Element const* src = ok ? src_row + col : gmem;
      if constexpr (kAligned) {
        cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
            *reinterpret_cast<cute::uint128_t const*>(src), *reinterpret_cast<cute::uint128_t*>(dst), ok);
      } else {
        uint16_t h[8];
        CUTE_UNROLL
        for (int e = 0; e < 8; ++e) h[e] = ok ? reinterpret_cast<uint16_t const*>(src)[e] : uint16_t(0);
        uint4 packed;
        packed.x = uint32_t(h[0]) | (uint32_t(h[1]) << 16);
        packed.y = uint32_t(h[2]) | (uint32_t(h[3]) << 16);
        packed.z = uint32_t(h[4]) | (uint32_t(h[5]) << 16);
        packed.w = uint32_t(h[6]) | (uint32_t(h[7]) << 16);
        *reinterpret_cast<uint4*>(dst) = packed;
      }
    }
  }
}

// log2 of a power of two (compile time).
constexpr int ilog2(int x) { return x <= 1 ? 0 : 1 + ilog2(x / 2); }

// Is the box at `org` (log2 shape `lg`) inside the group extents `n` on every axis, with aligned rows?
// Branch-free (`&`: n usually lives in shared memory; see key_tile_advance).
CUTE_DEVICE bool box_inside(const int org[kRank], const int lg[kRank], const int n[kRank], bool aligned) {
  bool inside = aligned;
  CUTE_UNROLL
  for (int a = 0; a < kRank; ++a) inside &= (org[a] >= 0) & (org[a] + (1 << lg[a]) <= n[a]);
  return inside;
}

// w[b] = offset of box row 2^b * kRowsPerPass from row 0, in units of `unit` per element step
// (1: elements, sizeof(Element): bytes): the pass offsets of load_tile_box_inside_w / store_tile_box.
template <class Traits, int kBits>
CUTE_DEVICE void pass_bit_offsets(const int lg[kRank], const int64_t step[kRank], int64_t unit, int64_t (&w)[kBits]) {
  CUTE_UNROLL
  for (int b = 0; b < kBits; ++b) {
    int dc[kRank];
    tile_coord((1 << b) * Traits::kRowsPerPass, lg, dc);
    w[b] = (int64_t(dc[0]) * step[0] + int64_t(dc[1]) * step[1] + int64_t(dc[2]) * step[2]) * unit;
  }
}

// Offset of copy pass `pass` from pass 0: the sum of w[b] over the set bits b of `pass` (w from
// pass_bit_offsets; `pass` is a compile-time constant after unrolling).
template <int kBits>
CUTE_DEVICE int64_t pass_offset(int pass, const int64_t (&w)[kBits]) {
  int64_t po = 0;
  CUTE_UNROLL
  for (int b = 0; b < kBits; ++b)
    if (pass & (1 << b)) po += w[b];
  return po;
}

// load_tile_box (aligned path) for a box whose rows all lie inside the group: row p * kRowsPerPass
// + r0 of the box sits sum_b w[b] bytes after row r0, over the set bits b of p (tile_coord of r0 <
// kRowsPerPass and of the multiple of kRowsPerPass occupy disjoint bits, and so do those of the pass
// index's bits, so their coordinates add): each pass costs 64-bit adds instead of a row decode, three
// bound checks and a scaled address. w[b]: byte offset of row 2^b * kRowsPerPass from row 0.
// Padding columns (>= dim) copy 0 bytes from a column inside the row (no select per pass).
template <class Traits, int kRows, class Element, class SmemLayout>
CUTE_DEVICE void load_tile_box_inside_w(Element* smem, SmemLayout const& layout, Element const* gmem,
                                        GroupTensor const& gt, const int64_t (&w)[ilog2(kRows / Traits::kRowsPerPass)],
                                        const int org[kRank], const int lg[kRank], int dim, int tid) {
  constexpr int kTpr = Traits::kThreadsPerRow;
  constexpr int kCpt = Traits::kChunksPerThread;
  constexpr int kRpp = Traits::kRowsPerPass;
  constexpr int kPasses = kRows / kRpp;
  constexpr int kBits = ilog2(kPasses);
  static_assert((1 << kBits) == kPasses, "power-of-two pass count");
  const int r0 = tid / kTpr;
  const int col0 = (tid % kTpr) * 8;
  int c[kRank];
  tile_coord(r0, lg, c);
  int64_t off = gt.base;
  CUTE_UNROLL
  for (int a = 0; a < kRank; ++a) off += int64_t(org[a] + c[a]) * gt.step[a];
  const uint32_t sdst0 = cute::cast_smem_ptr_to_uint(smem + layout(r0, col0));
  char const* src_chunk[kCpt];
  int bytes[kCpt];
  CUTE_UNROLL
  for (int j = 0; j < kCpt; ++j) {
    const int col = col0 + j * kTpr * 8;
    bytes[j] = col < dim ? 16 : 0;
    src_chunk[j] = reinterpret_cast<char const*>(gmem + off + (col < dim ? col : dim - 8));
  }
  CUTE_UNROLL
  for (int pass = 0; pass < kPasses; ++pass) {
    const int64_t po = pass_offset(pass, w);
    CUTE_UNROLL
    for (int j = 0; j < kCpt; ++j) {
      const uint32_t dst = sdst0 + uint32_t(layout(pass * kRpp, j * kTpr * 8) * int(sizeof(Element)));
      asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src_chunk[j] + po),
                   "r"(bytes[j]));
    }
  }
}

// load_tile_box_inside_w with the offsets from a pass table in shared memory (fill_pass_table: entry
// p for row p * kRowsPerPass): only entries 1, 2 and 4 are read, issued up front instead of one read
// per pass right before its add (ncu: those adds stalled on the reads).
template <class Traits, int kRows, class Element, class SmemLayout>
CUTE_DEVICE void load_tile_box_inside(Element* smem, SmemLayout const& layout, Element const* gmem,
                                      GroupTensor const& gt, int64_t const* pass_off, const int org[kRank],
                                      const int lg[kRank], int dim, int tid) {
  static_assert(kRows / Traits::kRowsPerPass == 8, "load_tile_box_inside: 8 copy passes (load_tile_box_fast)");
  const int64_t w[3] = {pass_off[1], pass_off[2], pass_off[4]};
  load_tile_box_inside_w<Traits, kRows>(smem, layout, gmem, gt, w, org, lg, dim, tid);
}

// Whether MMA block n (mode 1) of a B register fragment with layout `frag` lies in copy block cb
// (mode 1) of the copy's view of the same registers, layout `view` (cute retile_D): mode-1 offsets
// of both are register-element offsets of the one fragment, and a copy block spans size<0>(view)
// consecutive elements. Compile-time after unrolling (static layouts). The rule holds for the
// fragments of the 32-rows-per-warp forward that uses it (tests/sm80_layout_test.cu checks every
// thread); it does not for every tiling (the V fragment at head dim 32 fails it).
template <class FragLayout, class ViewLayout>
CUTE_HOST_DEVICE constexpr bool mma_block_in_copy_block(FragLayout const& frag, int n, ViewLayout const& view,
                                                        int cb) {
  const int off = int(cute::layout<1>(frag)(n));
  const int lo = int(cute::layout<1>(view)(cb));
  return off >= lo && off < lo + int(cute::size<0>(view));
}

// 4-byte asynchronous copy global -> shared (cache at all levels; the caller commits / waits).
CUTE_DEVICE void cp_async_f32(float* smem, float const* gmem) {
  const uint32_t dst = cute::cast_smem_ptr_to_uint(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem));
}

// Pass table of load_tile_box_inside: out[p] = byte offset of tile row p * rows_per_pass from row 0
// for per-axis element steps `step` and elements of `elem_bytes` bytes (p < passes).
CUTE_DEVICE void fill_pass_table(int64_t* out, int passes, int rows_per_pass, const int lg[kRank],
                                 const int64_t step[kRank], int elem_bytes) {
  for (int p = 0; p < passes; ++p) {
    int dc[kRank];
    tile_coord(p * rows_per_pass, lg, dc);
    out[p] = (int64_t(dc[0]) * step[0] + int64_t(dc[1]) * step[1] + int64_t(dc[2]) * step[2]) * elem_bytes;
  }
}

struct Int3 {
  int v[kRank];
};

// Unaligned fallback, kept out of line: it is rare and would otherwise double the mainloop code.
template <class Traits, int kRows, class Element, class SmemLayout>
__device__ __noinline__ void load_tile_box_unaligned(Element* smem, Element const* gmem, GroupTensor gt, Int3 org,
                                                     Int3 lg, Int3 n, int dim, int tid) {
  load_tile_box_impl<Traits, kRows, false>(smem, SmemLayout{}, gmem, gt, org.v, lg.v, n.v, dim, tid);
}

template <class Traits, int kRows, class Element, class SmemLayout>
CUTE_DEVICE void load_tile_box(Element* smem, SmemLayout const& layout, Element const* gmem,
                               GroupTensor const& gt, const int org[kRank], const int lg[kRank],
                               const int n[kRank], int dim, bool aligned, int tid) {
  if (aligned) {
    load_tile_box_impl<Traits, kRows, true>(smem, layout, gmem, gt, org, lg, n, dim, tid);
  } else {
    Int3 o, l, e;
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) {
      o.v[a] = org[a];
      l.v[a] = lg[a];
      e.v[a] = n[a];
    }
    load_tile_box_unaligned<Traits, kRows, Element, SmemLayout>(smem, gmem, gt, o, l, e, dim, tid);
  }
}

// load_tile_box that takes the pass-table path when the tile has >= 8 copy passes (head dims 128 /
// 256; at 2-4 passes the per-call setup outweighs the saving) and every row of the box is inside the
// group. `pass_off` must have been written before the last barrier.
template <class Traits, int kRows, class Element, class SmemLayout>
CUTE_DEVICE void load_tile_box_fast(Element* smem, SmemLayout const& layout, Element const* gmem, GroupTensor const& gt,
                                    int64_t const* pass_off, const int org[kRank], const int lg[kRank],
                                    const int n[kRank], int dim, bool aligned, int tid) {
  if constexpr (kRows / Traits::kRowsPerPass >= 8) {
    if (box_inside(org, lg, n, aligned)) {
      load_tile_box_inside<Traits, kRows>(smem, layout, gmem, gt, pass_off, org, lg, dim, tid);
      return;
    }
  }
  load_tile_box<Traits, kRows>(smem, layout, gmem, gt, org, lg, n, dim, aligned, tid);
}

// load_tile_box for a CTA's first tiles (Q, K[0], V[0]), before any table exists: an inside box
// (aligned, every row in the group, >= 8 passes) takes its pass offsets from log2(passes) row decodes
// done here, the rest the general path. Each row decode of the general path costs ~30 dependent
// instructions; at the start of a CTA they were most of the ~5 us before its first key step (clock
// trace, benchmarks/NOTES.md).
template <class Traits, int kRows, class Element, class SmemLayout>
CUTE_DEVICE void load_tile_box_first(Element* smem, SmemLayout const& layout, Element const* gmem,
                                     GroupTensor const& gt, const int org[kRank], const int lg[kRank],
                                     const int n[kRank], int dim, bool aligned, int tid) {
  constexpr int kPasses = kRows / Traits::kRowsPerPass;
  if constexpr (kPasses >= 8 && (kPasses & (kPasses - 1)) == 0) {
    if (box_inside(org, lg, n, aligned)) {
      constexpr int kBits = ilog2(kPasses);
      int64_t w[kBits];
      pass_bit_offsets<Traits, kBits>(lg, gt.step, int64_t(sizeof(Element)), w);
      load_tile_box_inside_w<Traits, kRows>(smem, layout, gmem, gt, w, org, lg, dim, tid);
      return;
    }
  }
  load_tile_box<Traits, kRows>(smem, layout, gmem, gt, org, lg, n, dim, aligned, tid);
}

// Store a tile box from swizzled smem to global memory; rows outside the group and columns
// >= dim are skipped.
template <class Traits, int kRows, class Element, class SmemLayout>
CUTE_DEVICE void store_tile_box(Element const* smem, SmemLayout const& layout, Element* gmem,
                                GroupTensor const& gt, const int org[kRank], const int lg[kRank],
                                const int n[kRank], int dim, bool aligned, int tid) {
  constexpr int kTpr = Traits::kThreadsPerRow;
  constexpr int kCpt = Traits::kChunksPerThread;
  constexpr int kRpp = Traits::kRowsPerPass;
  constexpr int kPasses = kRows / kRpp;
  const int r0 = tid / kTpr;
  const int col0 = (tid % kTpr) * 8;
  Element const* src0 = smem + layout(r0, col0);
  if constexpr (kPasses >= 8 && (kPasses & (kPasses - 1)) == 0) {
    // Every row inside the group (aligned): pass offsets from log2(passes) row decodes, as in
    // load_tile_box_first, instead of a decode, three bound checks and a scaled address per pass.
    if (box_inside(org, lg, n, aligned)) {
      constexpr int kBits = ilog2(kPasses);
      int64_t w[kBits];
      pass_bit_offsets<Traits, kBits>(lg, gt.step, 1, w);
      int c[kRank];
      tile_coord(r0, lg, c);
      CUTE_UNROLL
      for (int a = 0; a < kRank; ++a) c[a] += org[a];
      Element* dst0 = gmem + gt.offset(c);
      CUTE_UNROLL
      for (int pass = 0; pass < kPasses; ++pass) {
        const int64_t po = pass_offset(pass, w);
        CUTE_UNROLL
        for (int j = 0; j < kCpt; ++j) {
          const int col = col0 + j * kTpr * 8;
          if (col >= dim) continue;
          *reinterpret_cast<uint4*>(dst0 + po + col) =
              *reinterpret_cast<uint4 const*>(src0 + layout(pass * kRpp, j * kTpr * 8));
        }
      }
      return;
    }
  }
  CUTE_UNROLL
  for (int pass = 0; pass < kPasses; ++pass) {
    const int r = r0 + pass * kRpp;
    int c[kRank];
    tile_coord(r, lg, c);
    bool row_ok = true;
    CUTE_UNROLL
    for (int a = 0; a < kRank; ++a) {
      c[a] += org[a];
      row_ok = row_ok && c[a] < n[a];
    }
    if (!row_ok) continue;
    Element* dst_row = gmem + gt.offset(c);
    CUTE_UNROLL
    for (int j = 0; j < kCpt; ++j) {
      const int col = col0 + j * kTpr * 8;
      if (col >= dim) continue;
      const uint4 v = *reinterpret_cast<uint4 const*>(src0 + layout(pass * kRpp, j * kTpr * 8));
      Element* dst = dst_row + col;
      if (aligned) {
        *reinterpret_cast<uint4*>(dst) = v;
      } else {
        uint16_t* d16 = reinterpret_cast<uint16_t*>(dst);
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
        CUTE_UNROLL
        for (int e = 0; e < 4; ++e) {
          d16[2 * e] = uint16_t(w[e] & 0xffffu);
          d16[2 * e + 1] = uint16_t(w[e] >> 16);
        }
      }
    }
  }
}

}  // namespace sm80
}  // namespace natten
