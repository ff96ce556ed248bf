// Host side of the SM80 small-window forward kernel: plan (cached per thread), eligibility, launch.
#include "small_window.hpp"

#include <climits>
#include <cstdlib>
#include <cstring>

#include <cutlass/numeric_types.h>

#include "fna_forward.hpp"
#include "small_window_kernel.cuh"

namespace natten {
namespace sm80 {

namespace {

// Shared-memory budget per CTA: Q region + K and V halos. 64 KiB keeps 3 CTAs per SM on the H100
// (227 KiB) and 2 on the A100 (163 KiB) at the budget's limit; nat-small (56x56, 7x7, D 32) needs ~47 KiB.
constexpr int kSwSmemBudget = 64 * 1024;
// Taken automatically where its estimated (query, key) pairs are at most this share of the tiled
// kernel's. H100, 2026-11-27, per-kernel, B 64 x 56x56 x 4 heads, D 32: 3x3 (ratio 0.23) 262 vs
// 378 us, 5x5 (0.35) 269 vs 304, 7x7 (0.42) 294 vs 385; B 16 x 64x64 x 8 heads, D 64, 7x7 (0.42)
// 309 vs 369 (benchmarks/NOTES.md).
constexpr double kSwMaxPairsRatio = 0.45;

// Plan cache (the plan walks every query run of each axis: O(extent) per candidate box).
struct SwCacheEntry {
  bool valid = false;
  unsigned last_use = 0;
  int key[kRank][9];
  int rank = 0, row_bytes = 0;
  bool ok = false;
  SwPlan plan;
};
constexpr int kSwCacheEntries = 8;
struct SwCache {
  SwCacheEntry entry[kSwCacheEntries];
  unsigned clock = 0;
};
thread_local SwCache g_sw_cache;

void axis_key(const Geometry& g, int a, int out[9]) {
  const int k[9] = {g.extent[a], g.q_extent[a], g.kv_extent[a], g.q_origin[a], g.kv_origin[a],
                    g.kernel[a], g.stride[a],  g.dilation[a],  g.causal[a]};
  std::memcpy(out, k, sizeof(k));
}

const SwCacheEntry& cached_plan(const Geometry& g, int rank, int row_bytes) {
  SwCache& c = g_sw_cache;
  int key[kRank][9];
  for (int a = 0; a < kRank; ++a) axis_key(g, a, key[a]);
  SwCacheEntry* victim = &c.entry[0];
  for (SwCacheEntry& e : c.entry) {
    if (e.valid && e.rank == rank && e.row_bytes == row_bytes && std::memcmp(e.key, key, sizeof(key)) == 0) {
      e.last_use = ++c.clock;
      return e;
    }
    if (!e.valid || (victim->valid && e.last_use < victim->last_use)) victim = &e;
  }
  SwCacheEntry& e = *victim;
  e.valid = true;
  e.rank = rank;
  e.row_bytes = row_bytes;
  std::memcpy(e.key, key, sizeof(key));
  e.ok = sw_make_plan(g, rank, row_bytes, kSwSmemBudget, &e.plan);
  e.last_use = ++c.clock;
  return e;
}

// The kernel addresses q / k / v / out inside one (batch, head, dilation group) slice with 32-bit
// offsets from the slice's 64-bit base: every offset must fit.
bool slice_offsets_fit(const int extent[kRank], const int64_t spatial[kRank], int dim) {
  int64_t span = dim;
  for (int a = 0; a < kRank; ++a) span += int64_t(extent[a] > 0 ? extent[a] - 1 : 0) * (spatial[a] < 0 ? -spatial[a] : spatial[a]);
  return span <= int64_t(INT_MAX);
}

template <class Element, int kDim>
cudaError_t launch(const SwParams& sp, int smem, cudaStream_t stream) {
  auto kernel = sw_forward_kernel<Element, kDim>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
  }
  const int64_t work = sp.base.geo.num_work;
  const unsigned grid = unsigned(work < INT_MAX ? work : INT_MAX);  // the kernel strides over the rest
  kernel<<<grid, kSwWarps * 32, smem, stream>>>(sp);
  return cudaGetLastError();
}

}  // namespace

bool small_window_forward(const FnaForwardArgs& args, int dtype, const FnaParams& base, cudaStream_t stream,
                          cudaError_t* result) {
  if (!args.tiles_auto || (dtype != 1 && dtype != 2) || base.aligned == 0) return false;
  const char* env = std::getenv("NATTEN_SM80_SMALL");
  if (env != nullptr && env[0] == '0') return false;
  const bool force = env != nullptr && env[0] == '1';
  const int dmax = base.head_dim > base.head_dim_v ? base.head_dim : base.head_dim_v;
  const int dim = dmax <= 32 ? 32 : (dmax <= 64 ? 64 : 0);
  if (dim == 0) return false;
  const Geometry& g = base.geo;
  if (!slice_offsets_fit(g.q_extent, base.q_spatial, base.head_dim) ||
      !slice_offsets_fit(g.q_extent, base.o_spatial, base.head_dim_v) ||
      !slice_offsets_fit(g.kv_extent, base.k_spatial, base.head_dim) ||
      !slice_offsets_fit(g.kv_extent, base.v_spatial, base.head_dim_v))
    return false;
  int window_keys = 1;
  for (int a = 0; a < kRank; ++a) window_keys *= base.geo.kernel[a];
  if (window_keys > kSwMaxKeys) return false;  // a patch box holds at least one whole window

  const SwCacheEntry& c = cached_plan(base.geo, args.rank, dim * 2);
  if (!c.ok || base.geo.num_work <= 0 || base.heads_per_kv < 1 || base.geo.heads >= int64_t(INT_MAX) ||
      base.geo.batch >= int64_t(INT_MAX))
    return false;
  // The tiled kernel's visited pairs with the automatic tiles (64 x 64 at these head dims).
  if (!force && c.plan.pairs > kSwMaxPairsRatio * fna_forward_default_pairs(args)) return false;

  SwParams sp;
  std::memset(&sp, 0, sizeof(sp));
  sp.base = base;
  for (int a = 0; a < kRank; ++a) {
    sp.base.geo.q_log2[a] = c.plan.region_log2[a];
    sp.base.geo.kv_log2[a] = 0;
    sp.patch_log2[a] = c.plan.patch_log2[a];
  }
  geometry_finalize(sp.base.geo);
  if (sp.base.geo.num_work >= int64_t(INT_MAX)) return false;  // 32-bit work decode (sw_decode_work)
  sp.divs = sw_make_divs(sp.base.geo);
  sp.heads_per_kv = window::make_fast_div(int(base.heads_per_kv));
  for (int a = 0; a < kRank; ++a) {
    const int64_t d = base.geo.dilation[a];
    const int64_t steps[4] = {d * base.q_spatial[a], d * base.k_spatial[a], d * base.v_spatial[a], d * base.o_spatial[a]};
    for (const int64_t s : steps)
      if (s > int64_t(INT_MAX) || s < -int64_t(INT_MAX)) return false;
    sp.q_step[a] = int(steps[0]);
    sp.k_step[a] = int(steps[1]);
    sp.v_step[a] = int(steps[2]);
    sp.o_step[a] = int(steps[3]);
    sp.lse_step[a] = d * base.lse_spatial[a];
  }
  const int row_bytes = dim * 2;
  sp.kv_bytes = ((c.plan.halo_rows * row_bytes + 127) / 128) * 128;
  int region_rows = 1;
  for (int a = 0; a < kRank; ++a) region_rows <<= c.plan.region_log2[a];
  const int smem = region_rows * row_bytes + 2 * sp.kv_bytes;

  if (dtype == 1)
    *result = dim == 32 ? launch<cutlass::half_t, 32>(sp, smem, stream) : launch<cutlass::half_t, 64>(sp, smem, stream);
  else
    *result = dim == 32 ? launch<cutlass::bfloat16_t, 32>(sp, smem, stream)
                        : launch<cutlass::bfloat16_t, 64>(sp, smem, stream);
  return true;
}

}  // namespace sm80
}  // namespace natten
