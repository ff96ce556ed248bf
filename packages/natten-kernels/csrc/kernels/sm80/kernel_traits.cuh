// Compile-time configuration of the SM80 fused neighborhood-attention forward kernel:
// element type, padded head dim, tile sizes, MMA atom, swizzled shared-memory layouts and the
// ldmatrix copy atoms. Everything that varies per problem (tile *shape*, kernel, stride, dilation,
// causal, real head dims) is a runtime parameter.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cutlass/numeric_types.h>

namespace natten {
namespace sm80 {

template <class Element>
struct MmaAtomFor;
template <>
struct MmaAtomFor<cutlass::half_t> {
  using type = cute::SM80_16x8x16_F32F16F16F32_TN;
};
template <>
struct MmaAtomFor<cutlass::bfloat16_t> {
  using type = cute::SM80_16x8x16_F32BF16BF16F32_TN;
};

// Swizzled smem atom: 8 rows x (64 or 32) halves; 16-byte chunks stay contiguous, the XOR on the
// chunk index removes ldmatrix / cp.async bank conflicts.
template <int kDimPadded>
struct SmemAtom {
  using type = decltype(cute::composition(
      cute::Swizzle<3, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::_64>, cute::Stride<cute::_64, cute::_1>>{}));
};
template <>
struct SmemAtom<32> {
  using type = decltype(cute::composition(
      cute::Swizzle<2, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::_32>, cute::Stride<cute::_32, cute::_1>>{}));
};

// kWarps_: warps per CTA, stacked along the query rows. The default gives each warp 16 rows; with
// kWarps_ = kTileQ_ / 32 each warp owns 32 rows (two MMA row blocks), so every K / V fragment it
// reads from shared memory feeds two MMAs (FlashAttention-2's 128 x 64 tile on 4 warps).
template <class Element_, int kDimPadded_, int kTileQ_ = 64, int kTileKV_ = 64, int kWarps_ = kTileQ_ / 16>
struct FnaForwardTraits {
  using Element = Element_;
  static constexpr int kDim = kDimPadded_;   // head dim of Q/K and of V, padded (32/64/128/256)
  static constexpr int kTileQ = kTileQ_;     // query tokens per CTA
  static constexpr int kTileKV = kTileKV_;   // key tokens per key tile
  static constexpr int kWarps = kWarps_;
  static_assert(kWarps * 16 == kTileQ || kWarps * 32 == kTileQ, "16 or 32 query rows per warp");
  static constexpr int kThreads = kWarps * 32;
  // CTAs per SM the register budget is sized for (__launch_bounds__). 16 rows per warp: head dim 32
  // stays <= 128 registers (4 CTAs / SM), 64 <= 168 (3 CTAs), 128 / 256 take what they need (<= 255).
  // 32 rows per warp (kWarps_ = kTileQ_ / 32, built at head dim 128 only) also takes up to 255
  // registers: 2 CTAs of 4 warps per SM.
  static constexpr int kMinBlocksPerSm = kDimPadded_ <= 32 ? 4 : (kDimPadded_ <= 64 ? 3 : 1);
  // 32 query rows per warp (O: 128 registers at head dim 128). Then the mainloop loads the GEMMs'
  // B fragments one ldmatrix block at a time (gemm_slice_b_by_block) instead of prefetching whole
  // k-slices, and keeps two K buffers (kKStages below).
  static constexpr bool kRows32 = kWarps_ * 32 == kTileQ_;
  // O += P V: prefetch the V fragment of the next k-slice while the current one multiplies. At
  // head dim 256 one slice is 64 registers next to 128 of O, so there ptxas schedules it alone.
  static constexpr bool kPrefetchV = kDimPadded_ <= 128 && !kRows32;
  // S = Q K^T: load the Q / K fragments of the next k-slice while the current one multiplies.
  static constexpr bool kPrefetchQK = !kRows32;
  static constexpr int kTileQLog2 = kTileQ == 128 ? 7 : (kTileQ == 64 ? 6 : (kTileQ == 32 ? 5 : -1));
  static constexpr int kTileKVLog2 = kTileKV == 128 ? 7 : (kTileKV == 64 ? 6 : (kTileKV == 32 ? 5 : -1));

  static_assert(kDim == 32 || kDim == 64 || kDim == 128 || kDim == 256, "padded head dim");
  static_assert(kTileQLog2 > 0 && kTileKVLog2 > 0, "tile sizes");
  static_assert(kTileKV % 16 == 0, "key tile must be a multiple of the MMA K");

  // gmem <-> smem copies: 16-byte chunks (8 halves); kThreadsPerRow threads share a row, each
  // taking kChunksPerThread chunks kThreadsPerRow * 8 columns apart; kRowsPerPass rows per pass.
  // kRowsPerPass is a multiple of the 8-row swizzle atom and the column step a multiple of the
  // atom width, so the smem offset of every (pass, chunk) is the thread's first offset plus a
  // compile-time constant.
  static constexpr int kChunksPerRow = kDim / 8;
  static constexpr int kThreadsPerRow = kChunksPerRow < 16 ? kChunksPerRow : 16;
  static constexpr int kChunksPerThread = kChunksPerRow / kThreadsPerRow;
  static constexpr int kRowsPerPass = kThreads / kThreadsPerRow;
  static_assert(kThreads % kThreadsPerRow == 0 && kRowsPerPass % 8 == 0, "");
  static_assert(kChunksPerThread == 1 || (kThreadsPerRow * 8) % 64 == 0, "");
  static_assert(kTileQ % kRowsPerPass == 0 && kTileKV % kRowsPerPass == 0, "");

  using MmaAtom = typename MmaAtomFor<Element>::type;
  // kWarps warps stacked along M (16 rows per MMA row block); N tile 16 so that ldmatrix.x4 feeds B.
  using TiledMma = cute::TiledMMA<cute::MMA_Atom<MmaAtom>,
                                  cute::Layout<cute::Shape<cute::Int<kWarps>, cute::_1, cute::_1>>,
                                  cute::Tile<cute::Int<16 * kWarps>, cute::_16, cute::_16>>;

  using SmemLayoutAtom = typename SmemAtom<kDim>::type;
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      SmemLayoutAtom{}, cute::Shape<cute::Int<kTileQ>, cute::Int<kDim>>{}));
  using SmemLayoutKV = decltype(cute::tile_to_shape(
      SmemLayoutAtom{}, cute::Shape<cute::Int<kTileKV>, cute::Int<kDim>>{}));
  // V viewed as (dim, key): B operand of O += P V.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutKV{},
      cute::make_layout(cute::Shape<cute::Int<kDim>, cute::Int<kTileKV>>{}, cute::GenRowMajor{})));

  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomT = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;

  // Shared memory: Q (reused for the O staging tile), kKStages K tiles, one V tile, per-row windows.
  static constexpr int kSmemQ = kTileQ * kDim;      // elements
  static constexpr int kSmemKV = kTileKV * kDim;    // elements
  // Masked-path tables: per-row windows (start, length) per axis + the 3 repeat patterns.
  static constexpr int kSmemMaskBytes = kTileQ * 3 * int(sizeof(int2)) + 3 * int(sizeof(unsigned long long));
  // CTA descriptor (CtaTile, mainloop.cuh) after the mask tables.
  static constexpr int kSmemCtaBytes = 512;
  // K buffers: with 32 rows per warp two (K[t + 1] loads during all of step t, issued with V[t]
  // before the score registers are live; mainloop.cuh), else one.
  static constexpr int kKStages = kRows32 ? 2 : 1;
  static constexpr int kSmemBytes =
      int(sizeof(Element)) * (kSmemQ + (kKStages + 1) * kSmemKV) + kSmemMaskBytes + kSmemCtaBytes;
  static_assert(kTileKV <= 64, "the masked path uses one 64-bit column word per row");
};

}  // namespace sm80
}  // namespace natten
