// Host side of the SM90 backward dQ kernel: support check, geometry (128-token query tiles,
// 64-token key tiles, chosen by the shared tile chooser), TMA descriptors of q, dO, k, v, the
// parameter block and the (dtype, head dim) dispatch. Compiled in every build; the launchers
// exist only when NATTEN_HAS_SM90 is set.
#include "sm80/bwd_params.cuh"
#include "sm90/bwd_dq.hpp"

#include <climits>
#include <cstdlib>
#include <cstdint>
#include <cstring>

#include "sm80/fna_forward.hpp"
#include "sm90/bwd_dq_params.cuh"
#include "sm90/fna_forward.hpp"
#include "sm90/key_half_words.hpp"
#include "sm90/tma_host.hpp"

namespace natten {
namespace sm90 {

namespace {
constexpr int kDqTileLog2 = 7;  // query tiles (bwd_dq_traits.cuh kTileQ)

// Key tile of the dQ kernel (bwd_dq_traits.cuh kTileKV), log2 tokens: 64, or 128 at kernel head dim
// 128 where the 128-token tiling (the forward's) visits no more (query, key) pairs than the 64-token
// one and at most kDqKv128MaxMasked of them lie in key tiles that need a mask. Measured (H200,
// 2026-11-29, dQ kernel time, 64 -> 128): -2% to -8% on the GNA rows and dense attention (no mask),
// about -2% on 1d-32k (11% masked), +4.3% on causal-video (90% masked, equal pairs) and +7.5% on
// hunyuan (78% masked, 1.10x the pairs). NATTEN_HOPPER_BWD_DQ_KV (read per call): "64" / "128"
// force either (128 at kernel head dim 128 only).
constexpr double kDqKv128MaxMasked = 0.25;

int dq_key_tile_log2(const FnaForwardArgs& f, int D) {
  if (D != 128) return 6;
  const int forced = env_choice("NATTEN_HOPPER_BWD_DQ_KV", "64", "128");
  if (forced >= 0) return forced == 1 ? 7 : 6;
  double all64 = 0, full64 = 0, all128 = 0, full128 = 0;
  if (!sm80::fna_forward_tiling_pairs(f, kDqTileLog2, 6, &all64, &full64) ||
      !sm80::fna_forward_tiling_pairs(f, kDqTileLog2, 7, &all128, &full128))
    return 6;
  return all128 <= all64 * (1.0 + 1e-9) && all128 - full128 <= kDqKv128MaxMasked * all128 ? 7 : 6;
}
}  // namespace

bool bwd_dq_built() {
#if defined(NATTEN_HAS_SM90)
  return true;
#else
  return false;
#endif
}

bool bwd_dq_can_run(const FnaBackwardArgs& args, int dtype, const char** reason) {
  const FnaForwardArgs& f = args.fwd;
  const char* why = nullptr;
  auto fail = [&](const char* w) {
    if (why == nullptr) why = w;
  };
  if (!bwd_dq_built()) fail("this build has no sm_90a kernel");
  if (dtype != 1 && dtype != 2) fail("the Hopper dQ kernel takes fp16 / bf16");
  if (f.head_dim > INT_MAX || f.head_dim_v > INT_MAX) fail("head dims out of range");
  if (why == nullptr) {
    const int kd = kernel_head_dim(int(f.head_dim), int(f.head_dim_v));
    if (kd != 64 && kd != 128) fail("the Hopper dQ kernel runs max(head_dim, head_dim_v) in (32, 128]");
  }
  if (why == nullptr && !fna_forward_can_run(f, dtype, &why) && why == nullptr) fail("unsupported problem");
  if (why == nullptr) {
    if (!aligned16(args.d_out) || !aligned16(args.d_q)) fail("d_out and d_q must be 16-byte aligned");
    bool ok = stride_ok(args.do_stride_batch, f.batch) && stride_ok(args.do_stride_head, f.heads) &&
              stride_ok(args.dq_stride_batch, f.batch) && stride_ok(args.dq_stride_head, f.heads);
    for (int a = 0; a < f.rank; ++a)
      ok = ok && stride_ok(args.do_stride_spatial[a], f.extent[a]) && stride_ok(args.dq_stride_spatial[a], f.extent[a]);
    if (!ok) fail("d_out / d_q strides must be positive multiples of 16 bytes");
    if (f.rank == 3 && f.batch > 1 && args.do_stride_batch != f.extent[0] * args.do_stride_spatial[0])
      fail("rank 3 with batch > 1 needs d_out batch stride == X * x stride");
  }
  if (reason != nullptr) *reason = why;
  return why == nullptr;
}

bool pdl_enabled() {
  const char* e = std::getenv("NATTEN_HOPPER_PDL");
  return !(e != nullptr && std::strcmp(e, "0") == 0);
}

cudaError_t bwd_dq(const FnaBackwardArgs& args, int dtype, cudaStream_t stream, bool after_dkdv) {
  if (!bwd_dq_can_run(args, dtype, nullptr)) return cudaErrorNotSupported;
#if !defined(NATTEN_HAS_SM90)
  (void)stream;
  (void)after_dkdv;
  return cudaErrorNotSupported;
#else
  const FnaForwardArgs& f = args.fwd;
  for (int a = 0; a < f.rank; ++a)
    if (f.extent[a] == 0) return cudaSuccess;
  if (f.batch == 0 || f.heads == 0) return cudaSuccess;
  if (f.heads_kv <= 0 || f.heads % f.heads_kv != 0) return cudaErrorInvalidValue;
  if (args.workspace == nullptr) return cudaErrorInvalidValue;

  DqParams p;
  std::memset(&p, 0, sizeof(p));
  int qt[3], kt[3];
  const int D = kernel_head_dim(int(f.head_dim), int(f.head_dim_v));
  const int kv_log2 = dq_key_tile_log2(f, D);
  cudaError_t e = sm80::fna_forward_choose_tiles(f, kDqTileLog2, qt, kt, kv_log2);
  if (e != cudaSuccess) return e;
  e = build_geometry(f, qt, kDqTileLog2, kt, kv_log2, &p.geo);
  if (e != cudaSuccess) return e;
  const sm80::Geometry& g = p.geo;
  if (g.num_work > INT_MAX) return cudaErrorNotSupported;

  p.dq = args.d_q;
  p.lse = f.lse;
  p.delta = static_cast<const float*>(args.workspace);
  p.dq_batch = args.dq_stride_batch;
  p.dq_head = args.dq_stride_head;
  p.lse_batch = f.lse_stride_batch;
  p.lse_head = f.lse_stride_head;
  for (int a = 0; a < kRank; ++a) {
    const bool on = a < f.rank;
    p.dq_spatial[a] = on ? args.dq_stride_spatial[a] : 0;
    p.lse_spatial[a] = on ? f.lse_stride_spatial[a] : 0;
  }
  sm80::bwd_delta_strides(g, f.batch, f.heads, p.delta_batch, p.delta_head, p.delta_spatial);
  p.kcols = key_half_words(g.kv_log2, p.kcols_off);
  p.heads_per_kv = int(f.heads / f.heads_kv);
  p.walk_rotate = rotate_walks(g) ? 1 : 0;
  p.decode = make_work_decode(g, p.heads_per_kv);  // dilation 1, num_work <= INT_MAX (checked above)
  p.rank = f.rank;
  p.fold_q = f.rank == 3 ? int(f.extent[0]) : 0;
  p.fold_kv = f.rank == 3 ? int(f.kv_extent[0]) : 0;
  p.dim = int(f.head_dim);
  p.scale = f.scale;
  p.scale_log2 = float(double(f.scale) * 1.4426950408889634074);

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
  const bool dep = after_dkdv && pdl_enabled();
  if (D == 64) return dtype == 1 ? launch_bwd_dq<1, 64, 64>(p, stream, dep) : launch_bwd_dq<2, 64, 64>(p, stream, dep);
  if (kv_log2 == 7)
    return dtype == 1 ? launch_bwd_dq<1, 128, 128>(p, stream, dep) : launch_bwd_dq<2, 128, 128>(p, stream, dep);
  return dtype == 1 ? launch_bwd_dq<1, 128, 64>(p, stream, dep) : launch_bwd_dq<2, 128, 64>(p, stream, dep);
#endif
}

}  // namespace sm90
}  // namespace natten
