// Compile-time configuration of the SM90 fused NA forward: element type x kernel head dim (32, 64,
// 128 or 256). The tensors' own head dims D (q, k) and Dv (v, out) may be any multiples of 8 up to
// it: the TMA boxes span the kernel head dim and the hardware zero-fills the columns past D or Dv
// (exact: zero columns add nothing to Q K^T, and the output columns past Dv are never stored).
//
// CTA = 3 warpgroups: warpgroup 0 is the producer (one elected thread issues every TMA load),
// warpgroups 1 and 2 are consumers owning query rows [0, 64) and [64, 128) of the 128-token query
// tile. S = Q K^T is an SS wgmma (64 x 128 x D per warpgroup), O += P V an RS wgmma (P from
// registers, 64 x D x 128). Q, K and V tiles are rows of D elements in shared memory, split into
// head-dim chunks of kChunk = min(D, 64) elements (128 or 64 bytes) with the swizzle of that width,
// exactly as one TMA box per chunk writes them: chunk c of an R-row tile is R * kChunk elements
// at offset c * R * kChunk, row r of it at r * kChunk elements (16-byte pieces XOR-swizzled by
// the row). K is read K-major (B operand of S), V MN-major (B operand of PV: its N = head dim is
// the contiguous axis), Q K-major (A operand of S). D = 32 uses the 64-byte swizzle atoms.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace natten {
namespace sm90 {

template <class Element_, int kHeadDim_>
struct FnaSm90Traits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim == 32 || kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256,
                "head dim 32, 64, 128 or 256");

  static constexpr int kTileQ = 128;      // query tokens per CTA (2 consumer warpgroups x 64 rows)
  // Key tokens per key tile: 128, or 64 at head dim 256 (the 64 x 256 fp32 O accumulator takes 128
  // registers per consumer thread; a 64-key S leaves room without spills).
  static constexpr int kTileKV = kHeadDim == 256 ? 64 : 128;
  static constexpr int kTileLog2 = 7;                          // log2 kTileQ
  static constexpr int kTileLog2KV = kHeadDim == 256 ? 6 : 7;  // log2 kTileKV
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
  static constexpr int kThreads = 128 + kConsumerThreads;  // 384
  static constexpr int kChunk = kHeadDim < 64 ? kHeadDim : 64;  // head-dim elements per TMA box (64 / 128 B)
  static constexpr int kChunks = kHeadDim / kChunk;
  static constexpr int kStages = kHeadDim <= 64 ? 4 : 2;  // K and V ring depth
  // Intra-warpgroup overlap (S(t) issued with O += P(t-1) V(t-1)) keeps O, S(t) and P(t-1) live:
  // 128 + 32 + 16 registers per thread at head dim 256 (64-key tiles), which spilled at the 240
  // budget (ptxas, CUDA 13.0). There the consumer waits for each PV GEMM before issuing the next S
  // GEMM (mainloop_consumer.cuh); the two warpgroups still alternate on the tensor cores (pingpong).
  static constexpr bool kOverlap = kHeadDim <= 128;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;  // 128 * 24 + 256 * 240 <= 64 K registers

  static constexpr int kTileBytesQ = kTileQ * kHeadDim * int(sizeof(Element));
  static constexpr int kTileBytesKV = kTileKV * kHeadDim * int(sizeof(Element));
  static constexpr int kChunkElemsQ = kTileQ * kChunk;    // elements of one Q TMA box
  static constexpr int kChunkElemsKV = kTileKV * kChunk;  // elements of one K / V TMA box

  using AtomLayoutMNK = cute::Layout<cute::Shape<cute::Int<kConsumerWarpgroups>, cute::_1, cute::_1>>;
  using TiledMmaS = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kTileKV>, cute::Int<kHeadDim>>>(),
      AtomLayoutMNK{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kHeadDim>, cute::Int<kTileKV>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      AtomLayoutMNK{}));

  // Swizzle atoms of the chunk width: 8 rows x 64 elements (128 B) or 8 x 32 (64 B, D = 32).
  using AtomK = std::conditional_t<kChunk == 64, cute::GMMA::Layout_K_SW128_Atom<Element>,
                                   cute::GMMA::Layout_K_SW64_Atom<Element>>;
  using AtomMN = std::conditional_t<kChunk == 64, cute::GMMA::Layout_MN_SW128_Atom<Element>,
                                    cute::GMMA::Layout_MN_SW64_Atom<Element>>;
  // (rows, head dim): 8 x kChunk swizzle atoms, rows first, then head-dim chunks.
  using SmemLayoutQ = decltype(cute::tile_to_shape(AtomK{}, cute::Shape<cute::Int<kTileQ>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kTileKV>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  // V as the (N = head dim, K = keys) B operand: kChunk x 8 MN-major atoms over the same bytes, keys
  // first (so each chunk of all 128 keys is one contiguous box), then chunks.
  using SmemLayoutV = decltype(cute::tile_to_shape(
      AtomMN{},
      cute::Shape<cute::Int<kHeadDim>, cute::Int<kTileKV>, cute::Int<kStages>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = cutlass::PipelineState<kStages>;

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>> v;
    typename Pipeline::SharedStorage pipe_k;
    typename Pipeline::SharedStorage pipe_v;
    cutlass::arch::ClusterTransactionBarrier q_full;  // Q of the current work tile landed
    cutlass::arch::ClusterBarrier q_empty;            // consumers done reading it (persistent loop)
    // Dynamic work order (fna_forward_kernel.cuh): work[(i + 1) & 1] = the CTA's work index after
    // its tile i, published with tile i's q_full.
    int64_t work[2];
  };
  // + 1 KiB: the kernel aligns the dynamic shared memory base up to 1024 bytes itself.
  static constexpr int kSmemBytes = int(sizeof(SharedStorage)) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget");
};

}  // namespace sm90
}  // namespace natten
