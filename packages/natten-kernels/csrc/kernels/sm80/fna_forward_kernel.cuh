// SM80 fused neighborhood-attention forward kernel: tile scheduler + mainloop + epilogue.
#pragma once

#include <cute/tensor.hpp>

#include "epilogue.cuh"
#include "kernel_traits.cuh"
#include "mainloop.cuh"
#include "params.cuh"
#include "tile_scheduler.cuh"

namespace natten {
namespace sm80 {

template <class Traits>
CUTE_DEVICE void fna_forward_cta(FnaParams const& p, WorkTile const& w, QueryTile const& qt, unsigned char* smem) {
  using namespace cute;
  using Element = typename Traits::Element;
  const int tid = threadIdx.x;

  Element* smem_q = reinterpret_cast<Element*>(smem);
  Element* smem_k = smem_q + Traits::kSmemQ;
  Element* smem_v = smem_k + Traits::kKStages * Traits::kSmemKV;  // K buffers, then V
  int2* row_win = reinterpret_cast<int2*>(smem_v + Traits::kSmemKV);
  uint64_t* rep = reinterpret_cast<uint64_t*>(row_win + Traits::kTileQ * kRank);

  static_assert(sizeof(CtaTile) <= Traits::kSmemCtaBytes, "CTA descriptor does not fit");
  CtaTile* cta_smem = reinterpret_cast<CtaTile*>(rep + kRank);
  // Every thread addresses Q and the first K / V tile itself and issues their loads before anything
  // else: they come from DRAM for every CTA of a wave at once, and the CTA descriptor, its barrier and
  // the tables below now run under their latency (clock trace: ~4 us of a 1-D CTA's ~118 us sat
  // before the first load was issued).
  const int64_t kv_head = w.head / p.heads_per_kv;
  const KeyTiles kt = make_key_tiles(p.geo, qt);
  {
    const GroupTensor gq =
        make_group_tensor(w.batch, w.head, p.q_batch, p.q_head, p.q_spatial, w.group, p.geo.dilation);
    const GroupTensor gk =
        make_group_tensor(w.batch, kv_head, p.k_batch, p.k_head, p.k_spatial, qt.kv_group, p.geo.dilation);
    const GroupTensor gv =
        make_group_tensor(w.batch, kv_head, p.v_batch, p.v_head, p.v_spatial, qt.kv_group, p.geo.dilation);
    if (tid == 0) {
      CtaTile& c = *cta_smem;
      c.q = qt;
      c.k = kt;
      c.gq = gq;
      c.gk = gk;
      c.gv = gv;
      c.go = make_group_tensor(w.batch, w.head, p.o_batch, p.o_head, p.o_spatial, w.group, p.geo.dilation);
      const GroupTensor gl =
          make_group_tensor(w.batch, w.head, p.lse_batch, p.lse_head, p.lse_spatial, w.group, p.geo.dilation);
      c.lse_base = gl.base;
      CUTE_UNROLL
      for (int a = 0; a < kRank; ++a) c.lse_step[a] = gl.step[a];
    }
    CollectiveMainloop<Traits>::load_prologue(p, qt, kt, gq, gk, gv, smem_q, smem_k, smem_v, tid);
  }
  __syncthreads();
  NATTEN_SM80_TRACE_MARK(p.trace, kMarkDescriptor);
  CtaTile const& cta = *cta_smem;
  // Pass tables of the K / V loads (load_tile_box_fast; read after the key loop's first barrier).
  if (tid == 0)
    fill_pass_tables<Traits, Traits::kTileKV>(cta_smem->pass_k, cta_smem->pass_v, p.geo.kv_log2, cta.gk.step,
                                              cta.gv.step);

  CollectiveMainloop<Traits>::fill_mask_tables(p.geo, cta.q, row_win, rep, tid);
  NATTEN_SM80_TRACE_MARK(p.trace, kMarkTables);

  typename Traits::TiledMma tiled_mma;
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<Traits::kTileQ>, Int<Traits::kDim>>{});
  constexpr int kRowsPerThread = 2 * (Traits::kTileQ / (16 * Traits::kWarps));
  float row_max[kRowsPerThread];
  float row_sum[kRowsPerThread];

  CollectiveMainloop<Traits>::run(p, cta, smem_q, smem_k, smem_v, row_win, rep, acc_o, row_max, row_sum, tid);
  NATTEN_SM80_TRACE_MARK(p.trace, kMarkLoopEnd);
  CollectiveEpilogue<Traits>::run(p, cta, smem_q, acc_o, row_max, row_sum, tid);
  NATTEN_SM80_TRACE_MARK(p.trace, kMarkExit);
}

// Grid-stride over work tiles (the grid is normally one CTA per work tile).
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm) fna_forward_kernel(const __grid_constant__ FnaParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  NATTEN_SM80_TRACE_MARK(p.trace, kMarkEntry);
  NATTEN_SM80_TRACE_DELAY(p.trace);
  for (int64_t idx = blockIdx.x; idx < p.geo.num_work; idx += gridDim.x) {
    const WorkTile w = decode_work(p.geo, idx);
    QueryTile qt;
    if (!make_query_tile(p.geo, w, qt)) continue;  // tile past the end of a smaller dilation group
    fna_forward_cta<Traits>(p, w, qt, smem);
    __syncthreads();  // smem is reused by the next work tile
  }
#endif
}

}  // namespace sm80
}  // namespace natten
