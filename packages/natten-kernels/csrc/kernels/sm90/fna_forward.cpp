// Host side of the SM90 forward: support checks, tile configurations, TMA descriptors (encoded per
// call with cuTensorMapEncodeTiled, obtained through the runtime's driver entry point: the library
// never links libcuda), parameter block and (dtype, head dim) dispatch. Compiled in every build;
// the launchers exist only when NATTEN_HAS_SM90 (the sm_90a object library) is set.
#include "sm90/fna_forward.hpp"

#include <cuda.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "sm80/fna_forward.hpp"
#include "sm90/bwd_dq.hpp"  // pdl_enabled
#include "sm90/key_half_words.hpp"
#include "sm90/params.cuh"
#include "sm90/tma_host.hpp"
#if defined(NATTEN_HAS_SM90)
#include "sm90/fna_forward_launch.hpp"
#endif

namespace natten {
namespace sm90 {


bool fna_forward_built() {
#if defined(NATTEN_HAS_SM90)
  return true;
#else
  return false;
#endif
}

int env_choice(const char* name, const char* off, const char* on) {
  const char* e = std::getenv(name);
  if (e != nullptr && std::strcmp(e, off) == 0) return 0;
  if (e != nullptr && std::strcmp(e, on) == 0) return 1;
  return -1;
}

int kernel_head_dim(int head_dim, int head_dim_v) {
  const int d = head_dim > head_dim_v ? head_dim : head_dim_v;
  if (head_dim < 8 || head_dim_v < 8 || head_dim % 8 != 0 || head_dim_v % 8 != 0 || d > 256) return 0;
  return d <= 32 ? 32 : d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

bool fna_forward_supports(int head_dim, int head_dim_v, int dtype, const char** reason) {
  const char* why = nullptr;
  if (dtype != 1 && dtype != 2)
    why = "the Hopper kernel supports only fp16 and bf16 (cutlass-fna runs fp32)";
  else if (kernel_head_dim(head_dim, head_dim_v) == 0)
    why = "the Hopper kernel supports head_dim and head_dim_v that are multiples of 8 in [8, 256]";
  if (reason != nullptr) *reason = why;
  return why == nullptr;
}

bool fna_forward_can_run(const FnaForwardArgs& args, int dtype, const char** reason) {
  const char* why = nullptr;
  auto fail = [&](const char* w) {
    if (why == nullptr) why = w;
  };
  if (args.head_dim > INT_MAX || args.head_dim_v > INT_MAX ||
      !fna_forward_supports(int(args.head_dim), int(args.head_dim_v), dtype, &why)) {
    if (why == nullptr) why = "the Hopper kernel supports head dims that are multiples of 8 in [8, 256]";
  }
  if (args.rank < 1 || args.rank > kRank) fail("rank must be 1, 2 or 3");
  if (args.kernel_schedule != kScheduleDefault && args.kernel_schedule != kScheduleCooperative &&
      args.kernel_schedule != kSchedulePingpong)
    fail("kernel_schedule must be 0 (default), 1 (cooperative) or 2 (pingpong)");
  for (int a = 0; a < kRank && why == nullptr; ++a) {
    if (a >= args.rank) continue;
    if (args.dilation[a] != 1)
      fail("the Hopper kernel takes dilation 1 only (natten folds dilation groups into the batch)");
    if (args.global_extent[a] > (int64_t(1) << 30)) fail("the Hopper kernel supports at most 2^30 tokens per axis");
  }
  // Slabs (global_shape / q_origin / kv_origin): the same rules as the SM80 kernel, including a key
  // slab that holds every key the query slab attends.
  if (why == nullptr && args.rank >= 1 && args.rank <= kRank && !sm80::fna_forward_axes_valid(args))
    fail("invalid problem: extents, slabs (the key slab must hold every key the query slab attends), kernel "
         "size, stride or dilation out of range");
  if (why == nullptr) {
    if (!aligned16(args.q) || !aligned16(args.k) || !aligned16(args.v) || !aligned16(args.out))
      fail("the Hopper kernel needs 16-byte aligned q, k, v and out");
    const int64_t* sps[4] = {args.q_stride_spatial, args.k_stride_spatial, args.v_stride_spatial,
                             args.o_stride_spatial};
    const int64_t sbs[4] = {args.q_stride_batch, args.k_stride_batch, args.v_stride_batch, args.o_stride_batch};
    const int64_t shs[4] = {args.q_stride_head, args.k_stride_head, args.v_stride_head, args.o_stride_head};
    const int64_t hs[4] = {args.heads, args.heads_kv, args.heads_kv, args.heads};
    for (int t = 0; t < 4; ++t) {
      const int64_t* ext = (t == 1 || t == 2) ? args.kv_extent : args.extent;  // key/value slab or query slab
      bool ok = stride_ok(sbs[t], args.batch) && stride_ok(shs[t], hs[t]);
      for (int a = 0; a < args.rank; ++a) ok = ok && stride_ok(sps[t][a], ext[a]);
      if (!ok) fail("the Hopper kernel needs batch, token and head strides that are positive multiples of 16 bytes");
      if (args.rank == 3 && args.batch > 1 && t < 3 && sbs[t] != ext[0] * sps[t][0])
        fail("rank 3 with batch > 1 needs q, k and v batch stride == X * x stride (batch is folded into X for TMA)");
    }
    if (args.rank == 3 && args.batch * (args.extent[0] > args.kv_extent[0] ? args.extent[0] : args.kv_extent[0]) + 128 >
                              INT_MAX)
      fail("the Hopper kernel needs batch * X < 2^31 for rank 3");
    if (args.batch > INT_MAX || args.heads > INT_MAX) fail("the Hopper kernel needs batch and heads < 2^31");
  }
  if (reason != nullptr) *reason = why;
  return why == nullptr;
}

int kv_tile_log2(int head_dim, int head_dim_v) {
  return kernel_head_dim(head_dim, head_dim_v) == 256 ? kTileLog2KV256 : kTileLog2;
}

int fna_forward_tile_configs(int rank, int head_dim, int head_dim_v, int* q_tiles, int* kv_tiles, int capacity) {
  if (kernel_head_dim(head_dim, head_dim_v) == 0) return 0;
  return sm80::fna_forward_tile_pairs(rank, kTileLog2, q_tiles, kv_tiles, capacity,
                                      kv_tile_log2(head_dim, head_dim_v));
}

cudaError_t fna_forward_default_tiles(const FnaForwardArgs& args, int q_tile[3], int kv_tile[3]) {
  if (args.head_dim > INT_MAX || args.head_dim_v > INT_MAX) return cudaErrorInvalidValue;
  return sm80::fna_forward_choose_tiles(args, kTileLog2, q_tile, kv_tile,
                                        kv_tile_log2(int(args.head_dim), int(args.head_dim_v)), kMaskedStepCost);
}

#if defined(NATTEN_HAS_SM90)
namespace {
cudaError_t launch_dispatch(const FnaSm90Params& p, int dtype, int D, int kernel_schedule, cudaStream_t stream) {
  const int sched = kernel_schedule == kScheduleDefault ? kDefaultSchedule : kernel_schedule;
  if (dtype == 1) {
    if (D == 32) return launch_fna_forward<1, 32>(p, sched, stream);
    if (D == 64) return launch_fna_forward<1, 64>(p, sched, stream);
    if (D == 128) return launch_fna_forward<1, 128>(p, sched, stream);
    if (D == 256) return launch_fna_forward<1, 256>(p, sched, stream);
  } else {
    if (D == 32) return launch_fna_forward<2, 32>(p, sched, stream);
    if (D == 64) return launch_fna_forward<2, 64>(p, sched, stream);
    if (D == 128) return launch_fna_forward<2, 128>(p, sched, stream);
    if (D == 256) return launch_fna_forward<2, 256>(p, sched, stream);
  }
  return cudaErrorNotSupported;
}

// NATTEN_HOPPER_EPILOGUE (read per call): "deferred" (the default) stores each work tile's O while
// the next tile's first S GEMM runs (epilogue.cuh), "immediate" right after its key walk.
bool defer_epilogue() {
  const char* e = std::getenv("NATTEN_HOPPER_EPILOGUE");
  return !(e != nullptr && std::strcmp(e, "immediate") == 0);
}

// NATTEN_HOPPER_CLUSTER (read per call): "0" never runs cluster pairs (fna_forward_kernel.cuh,
// kCluster), "1" runs them on every launch they fit (static order, kernel head dim 128, query-tile
// pairs with equal key walks: cluster_pair_axis, and the whole persistent grid fits as clusters);
// anything else (or unset): on those launches with at least kClusterMinRounds rounds of the grid.
int cluster_pairs_env() { return env_choice("NATTEN_HOPPER_CLUSTER", "0", "1"); }

// Fewest rounds (work tiles / persistent CTAs) for automatic cluster pairs: measured faster on
// flux-4k-gna (93 rounds) and dense-fmha (31), 2-3% slower on 1d-32k-s256 (2 rounds) (H200,
// benchmarks/NOTES.md, twenty-first session).
constexpr int64_t kClusterMinRounds = 8;

// NATTEN_HOPPER_SCHEDULE (read per call): "static" / "dynamic" force the persistent forward's work
// order (params.cuh); anything else: the automatic rule of use_dynamic_schedule.
int schedule_env() { return env_choice("NATTEN_HOPPER_SCHEDULE", "static", "dynamic"); }

// Dynamic schedule when a CTA runs several work tiles (fewer CTAs than work tiles: persistent_grid)
// and the key walks differ systematically: some axis is causal with more than one query tile (later
// tiles walk more keys: a model of the static round-robin's assignment puts its makespan ~18% above
// the balanced one on dense causal attention). NATTEN_HOPPER_PERSISTENT=0 (one CTA per work tile)
// keeps it static, whatever NATTEN_HOPPER_SCHEDULE says.
bool use_dynamic_schedule(const FnaForwardArgs& args, const Geometry& g) {
  if (!persistent_enabled()) return false;
  const int mode = schedule_env();
  if (mode >= 0) return mode == 1;
  bool causal = false;
  for (int a = 0; a < args.rank; ++a) causal = causal || (args.is_causal[a] && g.q_tiles[a] > 1);
  if (!causal) return false;  // no device query on the common path
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return persistent_grid(g.num_work, dev) < g.num_work;
}

// NATTEN_HOPPER_SPLIT_TAIL (read per call): "0" turns the split tail off; anything else (or unset)
// lets split_plan decide.
bool split_tail_enabled() {
  const char* e = std::getenv("NATTEN_HOPPER_SPLIT_TAIL");
  return !(e != nullptr && std::strcmp(e, "0") == 0);
}

// Shortest key walk (key tiles) of a last-round tile worth splitting: the split saves about
// (1 - 1 / chunks) of one tile's time (~3.7 us + ~1.4 us per 128-key step at head dim 128 on the
// H100, NOTES.md) and costs the combine launch (a few us) and the partials' traffic.
constexpr int kSplitMinSteps = 8;

// Split tail (split_tail.cuh) of a static-order launch: with T work tiles on G persistent CTAs and
// T = F G + r (F >= 1, 0 < r < G), the r tiles of the last round are cut into c = min(G / r, the
// smallest axis-0 key-tile count of those tiles) chunks each, so that r c <= G CTAs share the last
// round instead of r. chunks = 0: no split.
struct SplitPlan {
  int chunks = 0;
  int64_t tiles = 0;  // r
};
SplitPlan split_plan(const FnaSm90Params& p) {
  const Geometry& g = p.geo;
  if (!split_tail_enabled()) return {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return {};
  }
  const int64_t G = persistent_grid(g.num_work, dev);
  if (G <= 0 || g.num_work <= G) return {};
  const int64_t r = g.num_work % G;
  if (r == 0 || G / r < 2) return {};
  int chunks = int(G / r), min_steps = INT_MAX;
  for (int64_t t = g.num_work - r; t < g.num_work; ++t) {
    const WorkContext ctx = make_work_context_fast(g, p.decode, ordered_tile(p, t), 0);
    chunks = ctx.keys.count[0] < chunks ? ctx.keys.count[0] : chunks;
    min_steps = ctx.keys.total < min_steps ? ctx.keys.total : min_steps;
  }
  if (chunks < 2 || min_steps < kSplitMinSteps) return {};
  return {chunks, r};
}

// NATTEN_HOPPER_WALK (read per call): "plain" walks each work tile's key tiles in the odometer order
// from the box's first tile, "rotated" rotates the walks on axis 0 (sm80/tile_scheduler.cuh:
// walk_origin), so that the CTAs of a round read the same K / V tiles at the same steps; anything
// else (or unset): rotated on launches of at most kRotateMaxRounds rounds of the persistent grid.
int walk_env() { return env_choice("NATTEN_HOPPER_WALK", "plain", "rotated"); }

// Most rounds (work tiles / persistent CTAs) for automatic rotated walks. With the L2 flushed before
// every call (the suite's timing), 1-D 32k-token problems (window 2048, stride 256 and 1; 1, 2, 4, 8
// heads) measured rotated -2.4 / -2.8% at 2 rounds, -1.5 / -1.7% at 4, -1.5 / -1.2% at 8 and
// +0.7 / -0.7% at 16 rounds; flux-4k-gna (93 rounds) +1.3 to +1.6%, flux-4k and hunyuan-gna -0.3 to
// +0.9% (H200, benchmarks/NOTES.md, twenty-second session).
constexpr int64_t kRotateMaxRounds = 8;
}  // namespace

bool rotate_walks(const sm80::Geometry& g) {
  const int mode = walk_env();
  if (mode >= 0) return mode == 1;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return g.num_work <= kRotateMaxRounds * persistent_grid(g.num_work, dev);
}

#endif

cudaError_t fna_forward(const FnaForwardArgs& args, int dtype, cudaStream_t stream, const char** detail) {
  if (detail) *detail = nullptr;
  if (!fna_forward_can_run(args, dtype, detail)) return cudaErrorNotSupported;
#if !defined(NATTEN_HAS_SM90)
  (void)stream;
  if (detail) *detail = "this build has no sm_90a kernel (NATTEN_CUDA_ARCHS lacks 90a)";
  return cudaErrorNotSupported;
#else
  for (int a = 0; a < args.rank; ++a)
    if (args.extent[a] == 0) return cudaSuccess;
  if (args.batch == 0 || args.heads == 0) return cudaSuccess;
  if (args.heads_kv <= 0 || args.heads % args.heads_kv != 0) return cudaErrorInvalidValue;

  FnaSm90Params p;
  std::memset(&p, 0, sizeof(p));
  Geometry& g = p.geo;
  const int D = kernel_head_dim(int(args.head_dim), int(args.head_dim_v));
  int ql[kRank], kl[kRank];
  if (!parse_tile(args.q_tile, args.rank, ql, kTileLog2) ||
      !parse_tile(args.kv_tile, args.rank, kl, kv_tile_log2(int(args.head_dim), int(args.head_dim_v))))
    return cudaErrorInvalidValue;
  {
    const cudaError_t ge = build_geometry(args, args.q_tile, kTileLog2, args.kv_tile,
                                          kv_tile_log2(int(args.head_dim), int(args.head_dim_v)), &g);
    if (ge != cudaSuccess) return ge;
  }
  if (g.num_work > INT_MAX) {
    if (detail) *detail = "more than 2^31 - 1 query tiles (batch * heads * tiles) for one launch";
    return cudaErrorNotSupported;
  }

  p.o = args.out;
  p.lse = args.lse;
  p.o_batch = args.o_stride_batch;
  p.o_head = args.o_stride_head;
  p.lse_batch = args.lse_stride_batch;
  p.lse_head = args.lse_stride_head;
  int64_t ext[kRank], kv_ext[kRank];  // query slab, key/value slab
  for (int a = 0; a < kRank; ++a) {
    const bool on = a < args.rank;
    p.o_spatial[a] = on ? args.o_stride_spatial[a] : 0;
    p.lse_spatial[a] = on ? args.lse_stride_spatial[a] : 0;
    ext[a] = on ? args.extent[a] : 1;
    kv_ext[a] = on ? args.kv_extent[a] : 1;
  }
  p.heads_per_kv = int(args.heads / args.heads_kv);
  p.decode = make_work_decode(g, p.heads_per_kv);  // dilation 1 and num_work <= INT_MAX (checked above)
  p.rank = args.rank;
  p.fold_q = args.rank == 3 ? int(args.extent[0]) : 0;
  p.fold_kv = args.rank == 3 ? int(args.kv_extent[0]) : 0;
  p.scale_log2 = float(double(args.scale) * 1.4426950408889634074);
  p.dim_v = int(args.head_dim_v);
  p.kcols = key_half_words(g.kv_log2, p.kcols_off);  // column words of one 64-token half (params.cuh)

  cudaError_t e;
  e = encode_tensor(&p.tma_q, dtype, args.q, args.rank, args.batch, ext, args.heads, args.head_dim, D,
                    args.q_stride_batch, args.q_stride_spatial, args.q_stride_head, ql, detail);
  if (e != cudaSuccess) return e;
  e = encode_tensor(&p.tma_k, dtype, args.k, args.rank, args.batch, kv_ext, args.heads_kv, args.head_dim, D,
                    args.k_stride_batch, args.k_stride_spatial, args.k_stride_head, kl, detail);
  if (e != cudaSuccess) return e;
  e = encode_tensor(&p.tma_v, dtype, args.v, args.rank, args.batch, kv_ext, args.heads_kv, args.head_dim_v, D,
                    args.v_stride_batch, args.v_stride_spatial, args.v_stride_head, kl, detail);
  if (e != cudaSuccess) return e;

  // Dynamic work order: a zeroed 4-byte counter, stream-ordered (allocated, zeroed and freed on the
  // launch's stream, so concurrent launches on other streams and CUDA graph replays each get their
  // own). Without stream-ordered allocation (no memory pools) the static order runs.
  unsigned* counter = nullptr;
  if (use_dynamic_schedule(args, g)) {
    if (cudaMallocAsync(reinterpret_cast<void**>(&counter), sizeof(unsigned), stream) != cudaSuccess) {
      (void)cudaGetLastError();
      counter = nullptr;
    } else if (cudaMemsetAsync(counter, 0, sizeof(unsigned), stream) != cudaSuccess) {
      (void)cudaGetLastError();
      (void)cudaFreeAsync(counter, stream);
      (void)cudaGetLastError();
      counter = nullptr;
    }
  }
  p.work_counter = counter;
  p.reverse_axes = 0;
  p.defer_epilogue = defer_epilogue() ? 1 : 0;
  p.walk_rotate = rotate_walks(g) ? 1 : 0;
  for (int a = 0; a < args.rank && counter != nullptr; ++a)
    if (args.is_causal[a]) p.reverse_axes |= 1 << a;

  // Split tail (static order only; split_tail.cuh): the fp32 partials of the last round's chunks in
  // a stream-ordered workspace, as the counter above. Without it the launch runs unsplit.
  p.num_items = g.num_work;
  p.split_base = g.num_work;
  p.split_chunks = 1;
  p.partial_o = nullptr;
  p.partial_stats = nullptr;
  void* split_ws = nullptr;
  // Cluster pairs (params.cuh) on the launches they fit.
  p.pair_half = 0;
  p.pair_inner = 1;
  p.pair_half_div = window::make_fast_div(1);
  p.pair_inner_div = window::make_fast_div(1);
  const int cluster_env = cluster_pairs_env();
  bool pairs_wanted = counter == nullptr && D == 128 && persistent_enabled() && cluster_env != 0;
  if (pairs_wanted) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
      (void)cudaGetLastError();
      dev = -1;
    }
    const int64_t G = persistent_grid(g.num_work, dev);
    // Every cluster of the grid must fit at once: with a split tail the grid is the persistent G,
    // which the plan below assumes (launch_cluster_pairs).
    const int fit = dtype == 1 ? fna_forward_cluster_fit<1, 128>(dev) : fna_forward_cluster_fit<2, 128>(dev);
    pairs_wanted = (G & 1) == 0 && G / 2 <= int64_t(fit) &&
                   (cluster_env > 0 || g.num_work >= kClusterMinRounds * G);
  }
  if (pairs_wanted) {
    const int a = cluster_pair_axis(g, p.decode);
    if (a >= 0) {
      int inner = 1;
      for (int b = a + 1; b < kRank; ++b) inner *= g.q_tiles[b];
      p.pair_half = g.q_tiles[a] / 2;
      p.pair_inner = inner;
      p.pair_half_div = window::make_fast_div(p.pair_half);
      p.pair_inner_div = window::make_fast_div(inner);
    }
  }
  // With cluster pairs the tail is the last pairs' tiles (ordered_tile) on the same G CTAs.
  if (counter == nullptr) {
    const SplitPlan sp = split_plan(p);
    if (sp.chunks >= 2) {
      constexpr int64_t kTileQ = int64_t(1) << kTileLog2;
      const int64_t r = sp.tiles, items = r * sp.chunks;
      const size_t bytes = size_t(items * kTileQ) * (size_t(D) + 2) * sizeof(float);
      if (cudaMallocAsync(&split_ws, bytes, stream) != cudaSuccess) {
        (void)cudaGetLastError();
        split_ws = nullptr;
      } else {
        p.split_base = g.num_work - r;
        p.num_items = p.split_base + items;
        p.split_chunks = sp.chunks;
        p.partial_o = static_cast<float*>(split_ws);
        p.partial_stats = p.partial_o + items * kTileQ * D;
      }
    }
  }
  // A programmatic dependent of the stream's previous kernel (NATTEN_HOPPER_PDL, pdl.cuh), except
  // right after the dynamic order's counter memset (not a kernel).
  p.pdl = counter == nullptr && pdl_enabled() ? 1 : 0;
  const cudaError_t le = launch_dispatch(p, dtype, D, args.kernel_schedule, stream);
  if (counter != nullptr) {
    const cudaError_t fe = cudaFreeAsync(counter, stream);
    if (le == cudaSuccess && fe != cudaSuccess) return fe;
  }
  if (split_ws != nullptr) {
    const cudaError_t fe = cudaFreeAsync(split_ws, stream);
    if (le == cudaSuccess && fe != cudaSuccess) return fe;
  }
  return le;
#endif
}

}  // namespace sm90
}  // namespace natten
