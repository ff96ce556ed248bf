// Compile-time configuration of the SM90 backward dK / dV kernel: element type x kernel head dim (64
// or 128; q, k, v and dO zero-filled by TMA up to it).
//
// CTA = 3 warpgroups: warpgroup 0 produces (one thread issues TMA), warpgroups 1 and 2 own keys
// [0, 64) and [64, 128) of the 128-token key tile (rows = keys, columns = queries). Per visited
// 64-token query tile (of every query head of the kv head's group):
//   S^T  = K Q^T     SS wgmma 64 x 64 x D     dP^T = V dO^T   SS wgmma 64 x 64 x D
//   P^T  = exp(scale S^T - lse[col]),  dS^T = P^T (dP^T - delta[col])   (registers)
//   dV  += P^T dO    RS wgmma 64 x D x 64     dK  += dS^T Q   RS wgmma 64 x D x 64
// (dO and Q as the B operands of the RS GEMMs are viewed MN-major over the bytes TMA wrote.)
// K and V are loaded once per work tile, Q and dO per visit into a ring stage, with the visit's
// VisitTable (lse / delta of its queries, bulk-copied; its origin) in the same stage.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "sm80/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

template <class Element_, int kHeadDim_>
struct DkdvTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dim 64 or 128");

  static constexpr int kTileQ = 64;    // queries per visit (the GEMMs' N / K)
  static constexpr int kTileKV = 128;  // keys per work tile (2 consumer warpgroups x 64)
  static constexpr int kTileLog2 = 6;
  static constexpr int kTileLog2KV = 7;
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
  static constexpr int kThreads = 128 + kConsumerThreads;
  static constexpr int kChunk = 64;
  static constexpr int kChunks = kHeadDim / kChunk;
  static constexpr int kStages = 2;  // Q / dO ring (one visit per stage); 4 measured no faster (H100)
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;

  static constexpr int kTileBytesQ = kTileQ * kHeadDim * int(sizeof(Element));
  static constexpr int kTileBytesKV = kTileKV * kHeadDim * int(sizeof(Element));
  static constexpr int kChunkElemsQ = kTileQ * kChunk;
  static constexpr int kChunkElemsKV = kTileKV * kChunk;

  using AtomLayoutMNK = cute::Layout<cute::Shape<cute::Int<kConsumerWarpgroups>, cute::_1, cute::_1>>;
  using TiledMmaS = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kTileQ>, cute::Int<kHeadDim>>>(),
      AtomLayoutMNK{}));
  using TiledMmaAcc = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kHeadDim>, cute::Int<kTileQ>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      AtomLayoutMNK{}));

  using AtomK = cute::GMMA::Layout_K_SW128_Atom<Element>;
  using AtomMN = cute::GMMA::Layout_MN_SW128_Atom<Element>;
  using SmemLayoutKV = decltype(cute::tile_to_shape(AtomK{}, cute::Shape<cute::Int<kTileKV>, cute::Int<kHeadDim>>{}));
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kTileQ>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  // Q / dO as the (N = head dim, K = queries) B operand of dK / dV += ...: MN-major over the same bytes.
  using SmemLayoutQt = decltype(cute::tile_to_shape(
      AtomMN{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kTileQ>, cute::Int<kStages>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = cutlass::PipelineState<kStages>;

  // What each visit brings into its ring stage besides Q and dO (bulk copies from the visit tables
  // and the producer's store, all on the stage's full barrier): lse (log2 units; +inf for a padding
  // query, so P = 0) and delta of each query of the visited tile, and the tile's origin (query slab
  // coordinates).
  struct alignas(16) VisitTable {
    float lse2[kTileQ];
    float delta[kTileQ];
    int q0[4];
  };
  static constexpr int kTableBytes = 2 * kTileQ * int(sizeof(float));  // bulk-copied per visit

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutKV>> k;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutKV>> v;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> d_o;
    VisitTable tables[kStages];
    typename Pipeline::SharedStorage pipe_q;
    cutlass::arch::ClusterTransactionBarrier kv_full;  // K and V of the current work tile landed
    cutlass::arch::ClusterBarrier kv_empty;            // consumers done reading them
    int64_t work[2];  // next work tile indices by work-tile parity (>= num_work: none), published by kv_full
    int walk_first[3], walk_end[3];  // the producer's visit walk bounds (DkdvProducer)
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage)) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget");
};

}  // namespace sm90
}  // namespace natten
