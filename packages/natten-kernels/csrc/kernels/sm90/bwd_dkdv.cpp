// Host side of the SM90 backward dK / dV kernel: support check, geometry (64-token query tiles,
// 128-token key tiles, chosen by the shared tile chooser; the SM80 key-parallel walk), its
// workspace (the visit tables after the SM80 preprocess's delta), TMA
// descriptors of q, dO, k, v, the parameter block and the (dtype, head dim) dispatch. Compiled in
// every build; the launchers exist only when NATTEN_HAS_SM90 is set.
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "sm80/fna_backward.hpp"
#include "sm80/fna_forward.hpp"
#include "sm90/bwd_dkdv_params.cuh"
#include "sm80/bwd_params.cuh"
#include "sm90/bwd_dq.hpp"
#include "sm90/fna_forward.hpp"
#include "sm90/tma_host.hpp"

namespace natten {
namespace sm90 {

namespace {
constexpr int kKvQTileLog2 = 6;  // query tiles (bwd_dkdv_traits.cuh kTileQ)
constexpr int kKvTileLog2 = 7;   // key tiles (kTileKV)
}  // namespace

bool bwd_dkdv_can_run(const FnaBackwardArgs& args, int dtype, const char** reason) {
  const char* why = nullptr;
  if (!bwd_dq_can_run(args, dtype, &why)) {
    if (reason != nullptr) *reason = why;
    return false;
  }
  const FnaForwardArgs& f = args.fwd;
  if (!aligned16(args.d_k) || !aligned16(args.d_v)) why = "d_k and d_v must be 16-byte aligned";
  bool ok = stride_ok(args.dk_stride_batch, f.batch) && stride_ok(args.dk_stride_head, f.heads_kv) &&
            stride_ok(args.dv_stride_batch, f.batch) && stride_ok(args.dv_stride_head, f.heads_kv);
  for (int a = 0; a < f.rank; ++a)
    ok = ok && stride_ok(args.dk_stride_spatial[a], f.kv_extent[a]) && stride_ok(args.dv_stride_spatial[a], f.kv_extent[a]);
  if (!ok && why == nullptr) why = "d_k / d_v strides must be positive multiples of 16 bytes";
  for (int a = 0; a < kRank && why == nullptr; ++a)
    if (args.kv_splits[a] > 0) why = "kv_splits asks for the SM80 dK / dV kernel's key parallelism";
  if (reason != nullptr) *reason = why;
  return why == nullptr;
}

#if defined(NATTEN_HAS_SM90)  // helpers of the launch path (builds without sm_90a report no support)
namespace {
// The dK / dV kernel's geometry: 64-token query tiles, 128-token key tiles with the fewest visited
// pairs of its key-parallel walk (sm80::key_walk_choose_tiles; the query walk's count chose 2x4x8 /
// 1x4x32 for hunyuan, 1.5x the walk's pairs of 4x4x4 / 4x8x4 and 1.5x slower on the H100).
cudaError_t dkdv_geometry(const FnaForwardArgs& f, sm80::Geometry* g) {
  int qt[3], kt[3];
  const cudaError_t e = sm80::key_walk_choose_tiles(f, kKvQTileLog2, kKvTileLog2, qt, kt);
  if (e != cudaSuccess) return e;
  return build_geometry(f, qt, kKvQTileLog2, kt, kKvTileLog2, g);
}

// Bytes of one visit table (floats per (batch, head, query tile, token)), rounded to 256; -1 on
// overflow.
int64_t table_bytes(const sm80::Geometry& g, int64_t* tiles_total) {
  int64_t n = 1;
  for (int a = 0; a < kRank; ++a)
    if (__builtin_mul_overflow(n, int64_t(g.q_tiles[a]), &n)) return -1;
  *tiles_total = n;
  int64_t bytes = 0;
  if (__builtin_mul_overflow(n, g.batch, &bytes) || __builtin_mul_overflow(bytes, g.heads, &bytes) ||
      __builtin_mul_overflow(bytes, int64_t(64 * 4), &bytes))
    return -1;
  return bytes;  // a multiple of 256
}

// NATTEN_HOPPER_BWD_ORDER (read per call): "natural" keeps the dK / dV kernel's natural work order.
bool work_order_enabled() {
  const char* e = std::getenv("NATTEN_HOPPER_BWD_ORDER");
  return !(e != nullptr && std::strcmp(e, "natural") == 0);
}

// The dK / dV kernel's work order (bwd_dkdv_order.hpp): fills p.order_tiles and p.tile_order when
// dkdv_order_tiles asks for one. With a CTA's next tile claimed one tile early, the natural
// order's first two rounds are fixed pairs, so a CTA that drew an edge-heavy key tile in each round
// set the end (1d-32k: ~166 us of dK / dV against ~134 of work per SM). Ordered (longest walks
// first) and mirror-paired (the kernel), the pairs even out (NOTES.md, eighteenth and nineteenth
// sessions).
static_assert(sizeof(DkdvParams) <= 4096, "the parameter block (work order included) fits 4 KB");

void set_work_order(DkdvParams& p) {
  p.order_tiles = 0;
  if (!work_order_enabled()) return;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  const int n = dkdv_order_tiles(p.kvg, persistent_grid(p.kvg.num_work, dev));
  if (n == 0) return;
  dkdv_work_order_cached(p.geo, p.kvg, n, p.tile_order);
  p.order_tiles = n;
}

bool empty_problem(const FnaForwardArgs& f) {
  for (int a = 0; a < f.rank; ++a)
    if (f.extent[a] == 0 || f.kv_extent[a] == 0) return true;
  return f.batch == 0 || f.heads == 0;
}
}  // namespace
#endif

int64_t bwd_dkdv_workspace_bytes(const FnaBackwardArgs& args, int dtype) {
#if !defined(NATTEN_HAS_SM90)
  (void)args;
  (void)dtype;
  return 0;
#else
  if (!bwd_dkdv_can_run(args, dtype, nullptr) || empty_problem(args.fwd)) return 0;
  sm80::Geometry g;
  if (dkdv_geometry(args.fwd, &g) != cudaSuccess) return 0;  // the launch reports it
  int64_t tiles = 0;
  const int64_t one = table_bytes(g, &tiles);
  // + the work counter (256)
  return one < 0 || one > INT64_MAX / 2 - 256 ? -1 : 2 * one + 256;
#endif
}

cudaError_t bwd_dkdv(const FnaBackwardArgs& args, int dtype, cudaStream_t stream, bool* launched) {
  if (launched != nullptr) *launched = false;
  if (!bwd_dkdv_can_run(args, dtype, nullptr)) return cudaErrorNotSupported;
#if !defined(NATTEN_HAS_SM90)
  (void)stream;
  return cudaErrorNotSupported;
#else
  const FnaForwardArgs& f = args.fwd;
  if (empty_problem(f)) return cudaSuccess;
  if (f.heads_kv <= 0 || f.heads % f.heads_kv != 0) return cudaErrorInvalidValue;
  if (args.workspace == nullptr) return cudaErrorInvalidValue;

  DkdvParams p;
  std::memset(&p, 0, sizeof(p));
  cudaError_t e = dkdv_geometry(f, &p.geo);
  if (e != cudaSuccess) return e;
  const sm80::Geometry& g = p.geo;
  sm80::kv_geometry_finalize(g, f.heads_kv, p.kvg);
  if (p.kvg.num_work > INT_MAX) return cudaErrorNotSupported;

  // Workspace: delta (the SM80 preprocess), then the two visit tables.
  const int64_t delta_bytes = sm80::fna_backward_workspace_bytes(args);
  const int64_t one_table = table_bytes(g, &p.q_tiles_total);
  if (delta_bytes < 0 || one_table < 0 || args.workspace_bytes - delta_bytes < 2 * one_table + 256)
    return cudaErrorInvalidValue;
  char* tables = static_cast<char*>(args.workspace) + delta_bytes;
  p.tab_lse2 = reinterpret_cast<float*>(tables);
  p.tab_delta = reinterpret_cast<float*>(tables + one_table);
  p.work_counter = reinterpret_cast<unsigned*>(tables + 2 * one_table);
  set_work_order(p);

  p.dk = args.d_k;
  p.dv = args.d_v;
  p.lse = f.lse;
  p.delta = static_cast<const float*>(args.workspace);
  p.dk_batch = args.dk_stride_batch;
  p.dk_head = args.dk_stride_head;
  p.dv_batch = args.dv_stride_batch;
  p.dv_head = args.dv_stride_head;
  p.lse_batch = f.lse_stride_batch;
  p.lse_head = f.lse_stride_head;
  for (int a = 0; a < kRank; ++a) {
    const bool on = a < f.rank;
    p.dk_spatial[a] = on ? args.dk_stride_spatial[a] : 0;
    p.dv_spatial[a] = on ? args.dv_stride_spatial[a] : 0;
    p.lse_spatial[a] = on ? f.lse_stride_spatial[a] : 0;
  }
  sm80::bwd_delta_strides(g, f.batch, f.heads, p.delta_batch, p.delta_head, p.delta_spatial);
  p.qcols = column_words(g.q_log2);
  p.heads_per_kv = int(f.heads / f.heads_kv);
  p.rank = f.rank;
  p.fold_q = f.rank == 3 ? int(f.extent[0]) : 0;
  p.fold_kv = f.rank == 3 ? int(f.kv_extent[0]) : 0;
  p.dim = int(f.head_dim);
  p.dim_v = int(f.head_dim_v);
  p.scale = f.scale;
  p.scale_log2 = float(double(f.scale) * 1.4426950408889634074);

  const int D = kernel_head_dim(int(f.head_dim), int(f.head_dim_v));
  int ql[kRank], kl[kRank];
  for (int a = 0; a < kRank; ++a) {
    ql[a] = g.q_log2[a];
    kl[a] = g.kv_log2[a];
  }
  e = encode_backward_inputs(args, dtype, D, ql, kl, &p.tma_q, &p.tma_do, &p.tma_k, &p.tma_v);
  if (e != cudaSuccess) return e;

#if defined(NATTEN_SM90_TRACE)
  p.trace = trace_buffer_from_env();
#endif
  // The tables kernel is a dependent of the preprocess (or of whatever SM80 kernel ran last: it
  // waits before reading delta either way), the dK / dV kernel one of the tables kernel (pdl.cuh).
  const bool dep = pdl_enabled();
  e = launch_bwd_dkdv_tables(p, stream, dep);
  if (e != cudaSuccess) return e;
  if (dtype == 1)
    e = D == 64 ? launch_bwd_dkdv<1, 64>(p, stream, dep) : launch_bwd_dkdv<1, 128>(p, stream, dep);
  else
    e = D == 64 ? launch_bwd_dkdv<2, 64>(p, stream, dep) : launch_bwd_dkdv<2, 128>(p, stream, dep);
  if (launched != nullptr) *launched = e == cudaSuccess && p.kvg.num_work > 0;
  return e;
#endif
}

}  // namespace sm90
}  // namespace natten
