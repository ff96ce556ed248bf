// Compile-time configuration of the SM90 backward dQ kernel: element type x kernel head dim (64 or
// 128; q, k, v and dO zero-filled by TMA up to it, as in the forward).
//
// CTA = 3 warpgroups: warpgroup 0 produces (one thread issues TMA), warpgroups 1 and 2 consume
// query rows [0, 64) and [64, 128) of the 128-token query tile. Per key tile of N = 64 tokens (or
// 128, kTileKV_ below):
//   S  = Q K^T     SS wgmma 64 x N x D   (Q, K K-major)
//   dP = dO V^T    SS wgmma 64 x N x D   (dO, V K-major: V tiles are stored like K tiles)
//   dS = P * (dP - delta), P = exp(scale * S - lse)   (registers)
//   dQ += dS K     RS wgmma 64 x D x N   (dS from registers; K viewed MN-major over the same bytes)
// Q and dO are loaded once per work tile; K and V share one ring stage per key tile.
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

// kTileKV_: keys per step, 64, or 128 at head dim 128 (NATTEN_HOPPER_BWD_DQ_KV, bwd_dq.cpp): the S and
// dP GEMMs become 64 x 128 x D (Q and dO read from shared memory once per 128 keys instead of twice),
// half as many pipeline steps per key, two 64-column mask words per row.
template <class Element_, int kHeadDim_, int kTileKV_ = 64>
struct DqTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dim 64 or 128");
  static_assert(kTileKV_ == 64 || (kTileKV_ == 128 && kHeadDim == 128), "64-token key tiles, or 128 at head dim 128");

  static constexpr int kTileQ = 128;
  static constexpr int kTileKV = kTileKV_;
  static constexpr int kTileLog2 = 7;
  static constexpr int kTileLog2KV = kTileKV == 128 ? 7 : 6;
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
  static constexpr int kThreads = 128 + kConsumerThreads;
  static constexpr int kChunk = 64;  // head-dim elements per TMA box (128 B, 128B swizzle)
  static constexpr int kChunks = kHeadDim / kChunk;
  static constexpr int kStages = kHeadDim == 64 ? 4 : kTileKV == 128 ? 2 : 3;  // K + V ring (shared memory)
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;

  static constexpr int kTileBytesQ = kTileQ * kHeadDim * int(sizeof(Element));
  static constexpr int kTileBytesKV = kTileKV * kHeadDim * int(sizeof(Element));
  static constexpr int kChunkElemsQ = kTileQ * kChunk;
  static constexpr int kChunkElemsKV = kTileKV * kChunk;

  using AtomLayoutMNK = cute::Layout<cute::Shape<cute::Int<kConsumerWarpgroups>, cute::_1, cute::_1>>;
  using TiledMmaS = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kTileKV>, cute::Int<kHeadDim>>>(),
      AtomLayoutMNK{}));
  using TiledMmaDq = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kHeadDim>, cute::Int<kTileKV>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      AtomLayoutMNK{}));

  using AtomK = cute::GMMA::Layout_K_SW128_Atom<Element>;
  using AtomMN = cute::GMMA::Layout_MN_SW128_Atom<Element>;
  using SmemLayoutQ = decltype(cute::tile_to_shape(AtomK{}, cute::Shape<cute::Int<kTileQ>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kTileKV>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  // K as the (N = head dim, K = keys) B operand of dQ += dS K: MN-major atoms over the same bytes.
  using SmemLayoutKt = decltype(cute::tile_to_shape(
      AtomMN{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kTileKV>, cute::Int<kStages>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = cutlass::PipelineState<kStages>;

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> d_o;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>> v;
    typename Pipeline::SharedStorage pipe_kv;
    cutlass::arch::ClusterTransactionBarrier q_full;  // Q and dO of the current work tile landed
    cutlass::arch::ClusterBarrier q_empty;            // consumers done reading them
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage)) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget");
};

}  // namespace sm90
}  // namespace natten
